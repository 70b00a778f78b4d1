"""The demo: the whole pipeline on the embedded digits data, offline, on a CPU.

Train a small CNN with log-spaced checkpoints, calibrate the sampler once on the final
checkpoint (``llcv.estimation.calibrate_run``, what ``estimate-all --calibrate`` runs),
estimate the LLC at every checkpoint with the calibrated settings, plot it over training, read
the figure and the settings' sensitivity in a paragraph (``llcv.figures.report.read_figure``,
``llcv.figures.report.calibration_reading``) and write the run's report page. Everything lands under
one results folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llcv.calibration import Budget
from llcv.devices import resolve_device
from llcv.estimation import calibrate_run, estimate_all
from llcv.progress import SILENT, Reporter
from llcv.figures import calibration_reading, read_figure, write_report
from llcv.results import load_results
from llcv.settings import DEFAULT_BUDGET_STEPS, EstimateSettings, PlotSettings, SamplerSettings, load_settings
from llcv.training import train


@dataclass(frozen=True)
class DemoSize:
    """How much work each stage of the demo does.

    Attributes:
        epochs, log_checkpoints: the training run.
        budget_steps: the calibration's budget, in chain-steps (SGLD steps x chains).
        num_chains, num_draws: each estimate's length; None: the calibration's.
        image_size: the digits' side in pixels: their own 8, so that the thousands of steps an
            estimate at the data's temperature takes cost seconds (the default 32 upsamples them).
    """

    epochs: int
    log_checkpoints: int
    budget_steps: int
    num_chains: int | None = None
    num_draws: int | None = None
    image_size: int = 8


# The calibration gets a third of the default budget: the full search on this CNN took about 12
# minutes on 2 cores before half-gamma trials were paired (docs/calibration.md), so the demo's pick
# says which sensitivities it measured and how (since llcv 0.17 all three: gamma's as a lower
# bound). A budget in steps, not seconds, so that the pick, and with it every estimate, is the
# same on a busy machine as on an idle one. The estimates draw 2,000 per chain rather than the
# calibration's length: it asks for at least as many as its pick's trial ran, and since llcv 0.15
# runs that trial until its extrapolated move resolves (4,999 draws here), which took the demo from
# 4 min 18 s to 7 min 20 s on 2 cores; at 2,000 the last checkpoint's estimate is healthy (37.3,
# R-hat 1.01, ESS 949, measured beside the 4,999 draws' 37.4).
FULL = DemoSize(epochs=12, log_checkpoints=5, budget_steps=DEFAULT_BUDGET_STEPS // 3, num_draws=2000)
# CI size: the same pipeline in seconds; the numbers mean little.
TINY = DemoSize(epochs=2, log_checkpoints=4, budget_steps=20_000, num_chains=2, num_draws=20)
# Twice devinterp's customary 32: the minibatch noise heats the chains in proportion to epsilon
# over the batch, so a larger batch samples the same posterior with larger, fewer steps; here 64
# costs 1.4 times 32's step (measured, 8x8 digits).
SAMPLER_BATCH_SIZE = 64
# The checkpoints' estimates are independent, so on a CPU they run two at a time, one process
# each: this CNN's steps are too small for torch's threads to share (one estimate at the demo's
# pick took 24.8 s on one thread and 26.3 s on two; two at once, one thread each, 26.2 s each;
# 2-core AMD EPYC), so a second process doubles the throughput where a second thread does not.
CPU_WORKERS = 2
# fp32, pinned: "auto" picks fp32 or bf16 by timing this machine, so the demo could read other
# numbers elsewhere; pinned, they are the same everywhere (as the budget in steps keeps the pick),
# and the device workers need not wait for the first checkpoint to decide the run's precision.
SAMPLER_PRECISION = "fp32"


def estimate_workers(device: str) -> list[str] | None:
    """``CPU_WORKERS`` CPU processes for the estimates where the demo runs on a CPU with that many
    cores; None (this process, on ``device``) otherwise."""
    if resolve_device(device).type != "cpu" or (os.cpu_count() or 1) < CPU_WORKERS:
        return None
    return ["cpu"] * CPU_WORKERS


@dataclass
class DemoResult:
    """Where every output of the demo is, and what the figure shows."""

    checkpoints_dir: Path
    calibration_dir: Path
    estimates_dir: Path
    figure: Path
    report: Path
    recommended: SamplerSettings | None
    calibration_reason: str
    reading: str
    outputs: dict[str, Path] = field(default_factory=dict)


def run_demo(
    results_dir: Path = Path("results/demo"),
    device: str = "auto",
    tiny: bool = False,
    reporter: Reporter = SILENT,
    *,
    size: DemoSize | None = None,
) -> DemoResult:
    """Run train -> calibrate auto -> estimate-all -> plot on digits under ``results_dir``.

    Args:
        tiny: the CI size (``TINY``) instead of ``FULL``.
        size: any other size, the calibration's budget included (overrides ``tiny``).

    Raises:
        EstimationError: the calibration found no usable settings within its budget; the demo
            stops after it (its trials and figures are written) rather than estimate with
            settings it did not find.
    """
    size = size or (TINY if tiny else FULL)
    results_dir = Path(results_dir)
    checkpoints_dir = results_dir / "checkpoints"
    reporter.note(f"1/4 training smallcnn on {size.image_size}x{size.image_size} digits for {size.epochs} epochs -> {checkpoints_dir}")
    training = train(
        load_settings(
            ("data", "model", "train"),
            overrides={
                "data": {"dataset": "digits", "image_size": size.image_size},
                "model": {"name": "smallcnn"},
                "train": {
                    "epochs": size.epochs, "batch_size": 64, "lr": 0.05, "device": device,
                    "checkpoints_dir": checkpoints_dir, "log_checkpoints": size.log_checkpoints,
                    "checkpoint_every_epochs": 0,
                },
            },
        ),
        reporter,
    )

    estimates_dir = results_dir / "llc_estimations"
    options = EstimateSettings(results_dir=estimates_dir, device=device, devices=estimate_workers(device))
    base = SamplerSettings(batch_size=SAMPLER_BATCH_SIZE, precision=SAMPLER_PRECISION)
    reporter.note(f"2/4 calibrating the sampler on {training.checkpoints[-1].name} (a budget of {size.budget_steps:,} steps)")
    calibrated = calibrate_run(checkpoints_dir, base, options, budget=Budget(chain_steps=size.budget_steps), reporter=reporter)
    reporter.note(f"   {calibrated.calibration.reason}")
    length = {"num_chains": size.num_chains, "num_draws": size.num_draws}
    chosen = calibrated.settings.model_copy(update={key: value for key, value in length.items() if value is not None})

    reporter.note(f"3/4 estimating the LLC at {len(training.checkpoints)} checkpoints -> {estimates_dir}")
    entry = calibrated.settings_entry()
    summary = estimate_all(checkpoints_dir, chosen, options, calibration=entry, reporter=reporter)

    from llcv.figures import plot_llc

    figure, report = results_dir / "llc.png", results_dir / "report.html"
    records = load_results(estimates_dir, summary.settings_hash)
    reporter.note(f"4/4 plotting -> {figure}, and the report -> {report}")
    plot_llc([records], figure, log_x=True, mark_transitions=True)
    write_report(
        [estimates_dir], report, labels=["demo"], settings_hash=summary.settings_hash,
        calibration_dir=calibrated.directory, plot=PlotSettings(log_x=True), reporter=reporter,
    )
    return DemoResult(
        checkpoints_dir=checkpoints_dir,
        calibration_dir=calibrated.directory,
        estimates_dir=summary.folder,
        figure=figure,
        report=report,
        recommended=chosen,
        calibration_reason=calibrated.calibration.reason,
        reading=f"{read_figure(records)} {calibration_reading(entry)}",
    )
