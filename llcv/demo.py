"""The demo: the whole pipeline on the embedded digits data, in about a minute on a CPU.

Train a small CNN with log-spaced checkpoints, calibrate the sampler on the final checkpoint,
estimate the LLC at every checkpoint with the recommended settings, plot it over training,
read the figure in a paragraph (``llcv.report.read_figure``) and write the run's report page.
Everything lands under one results folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llcv.calibration import calibrate_sweep, output_dir, save_sweep
from llcv.errors import EstimationError
from llcv.estimation import estimate_all
from llcv.progress import SILENT, Reporter
from llcv.report import read_figure, write_report
from llcv.results import load_results
from llcv.settings import EstimateSettings, PlotSettings, SamplerSettings, load_settings
from llcv.targets import load_target
from llcv.training import train


@dataclass(frozen=True)
class DemoSize:
    """How much work each stage of the demo does."""

    epochs: int
    log_checkpoints: int
    epsilons: tuple[float, ...]
    gammas: tuple[float, ...]
    calibration_draws: int
    num_chains: int
    num_draws: int


# The grid brackets what the default rule accepts on this model with batches of 32 (nbeta 9.2):
# MALA acceptance 0.96 at epsilon 1e-5 and 0.80 at 3e-5 with gamma 1000, falling with both
# epsilon and gamma (docs/calibration.md). Each row burns in until its chains have relaxed,
# 2 / (epsilon * gamma) steps, and the estimates take the pick's burn-in. At gamma 300 the
# chains of epsilon 1e-5 need 667 steps to relax, more than the sweep's cap (4 x 100).
FULL = DemoSize(
    epochs=12, log_checkpoints=8, epsilons=(1e-5, 3e-5), gammas=(1000.0, 3000.0),
    calibration_draws=100, num_chains=4, num_draws=200,
)
# CI size: the same pipeline in seconds; the numbers mean little. At gamma 1000 both epsilons'
# chains relax within the short sweep's burn-in cap (4 x 50 steps).
TINY = DemoSize(
    epochs=2, log_checkpoints=4, epsilons=(1e-5, 3e-5), gammas=(1000.0,),
    calibration_draws=50, num_chains=2, num_draws=20,
)
SAMPLER_BATCH_SIZE = 32


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


def run_demo(results_dir: Path = Path("results/demo"), device: str = "auto", tiny: bool = False, reporter: Reporter = SILENT) -> DemoResult:
    """Run train -> calibrate sweep -> estimate-all -> plot on digits under ``results_dir``.

    Raises:
        EstimationError: no calibration pair qualifies by the default rule; the demo stops after
            the sweep (its table and figures are written) rather than estimate with settings
            the rule rejected.
    """
    size = TINY if tiny else FULL
    results_dir = Path(results_dir)
    checkpoints_dir = results_dir / "checkpoints"
    reporter.note(f"1/4 training smallcnn on digits for {size.epochs} epochs -> {checkpoints_dir}")
    training = train(
        load_settings(
            ("data", "model", "train"),
            overrides={
                "data": {"dataset": "digits"},
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

    final = training.checkpoints[-1]
    base = SamplerSettings(num_chains=2, num_draws=size.calibration_draws, batch_size=SAMPLER_BATCH_SIZE)
    calibration_dir = output_dir(results_dir / "calibration", final)
    reporter.note(f"2/4 calibration sweep on {final.name}: epsilon {list(size.epsilons)} x gamma {list(size.gammas)} -> {calibration_dir}")
    target = load_target(final)
    sweep = calibrate_sweep(
        target.model, target.dataset, size.epsilons, size.gammas, base=base, device=device, relax_burnin=True,
        sweep_file=calibration_dir / "sweep.json", checkpoint=final.name, reporter=reporter,
    )
    save_sweep(sweep, calibration_dir)
    if sweep.recommended is None:
        raise EstimationError(
            f"the demo's calibration sweep qualified no settings by the default rule: {sweep.reason}. "
            f"It stops here rather than estimate with settings the rule rejected; the sweep's table and "
            f"figures are in {calibration_dir}"
        )
    chosen = sweep.recommended.model_copy(update={"num_chains": size.num_chains, "num_draws": size.num_draws})
    reporter.note(f"   recommended {sweep.reason}")

    estimates_dir = results_dir / "llc_estimations"
    reporter.note(f"3/4 estimating the LLC at {len(training.checkpoints)} checkpoints -> {estimates_dir}")
    summary = estimate_all(checkpoints_dir, chosen, EstimateSettings(results_dir=estimates_dir, device=device), reporter=reporter)

    from llcv.plotting import plot_llc

    figure, report = results_dir / "llc.png", results_dir / "report.html"
    records = load_results(estimates_dir, summary.settings_hash)
    reporter.note(f"4/4 plotting -> {figure}, and the report -> {report}")
    plot_llc([records], figure, log_x=True, mark_transitions=True)
    write_report(
        [estimates_dir], report, labels=["demo"], settings_hash=summary.settings_hash,
        calibration_dir=calibration_dir, plot=PlotSettings(log_x=True), reporter=reporter,
    )
    return DemoResult(
        checkpoints_dir=checkpoints_dir,
        calibration_dir=calibration_dir,
        estimates_dir=summary.folder,
        figure=figure,
        report=report,
        recommended=sweep.recommended,
        calibration_reason=sweep.reason,
        reading=read_figure(records),
    )
