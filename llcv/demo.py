"""The demo: the whole pipeline on the embedded digits data, in about a minute on a CPU.

Train a small CNN with log-spaced checkpoints, calibrate the sampler on the final checkpoint,
estimate the LLC at every checkpoint with the recommended settings, plot it over training, and
read the figure in a paragraph. Everything lands under one results folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llcv.calibration import calibrate_sweep, output_dir, save_sweep
from llcv.errors import EstimationError
from llcv.estimation import estimate_all
from llcv.progress import SILENT, Reporter
from llcv.results import find_transitions, health_label, load_results, record_health
from llcv.settings import SamplerSettings, load_settings
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
    num_burnin_steps: int


# The grid brackets what the default rule accepts on this model with batches of 32 (nbeta 9.2):
# MALA acceptance 0.97 at epsilon 1e-5 and 0.90 at 3e-5 with gamma 300, falling with both
# epsilon and gamma (docs/calibration.md); 100 burn-in steps let the chains reach the posterior.
FULL = DemoSize(
    epochs=12, log_checkpoints=8, epsilons=(1e-5, 3e-5), gammas=(300.0, 1000.0),
    calibration_draws=100, num_chains=4, num_draws=200, num_burnin_steps=100,
)
# CI size: the same pipeline in seconds; the numbers mean little.
TINY = DemoSize(
    epochs=2, log_checkpoints=4, epsilons=(1e-5, 3e-5), gammas=(300.0,),
    calibration_draws=30, num_chains=2, num_draws=20, num_burnin_steps=30,
)
SAMPLER_BATCH_SIZE = 32


@dataclass
class DemoResult:
    """Where every output of the demo is, and what the figure shows."""

    checkpoints_dir: Path
    calibration_dir: Path
    estimates_dir: Path
    figure: Path
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
    base = SamplerSettings(
        num_chains=2, num_draws=size.calibration_draws, num_burnin_steps=size.num_burnin_steps, batch_size=SAMPLER_BATCH_SIZE
    )
    calibration_dir = output_dir(results_dir / "calibration", final)
    reporter.note(f"2/4 calibration sweep on {final.name}: epsilon {list(size.epsilons)} x gamma {list(size.gammas)} -> {calibration_dir}")
    target = load_target(final)
    sweep = calibrate_sweep(
        target.model, target.dataset, size.epsilons, size.gammas, base=base, device=device,
        sweep_file=calibration_dir / "sweep.json", checkpoint=final.name, reporter=reporter,
    )
    save_sweep(sweep, calibration_dir)
    if sweep.recommended is None:
        raise EstimationError(
            f"the demo's calibration sweep qualified no settings by the default rule: {sweep.reason}. "
            f"It stops here rather than estimate with settings the rule rejected; the sweep's table and "
            f"figures are in {calibration_dir}"
        )
    chosen = sweep.recommended.model_copy(
        update={"num_chains": size.num_chains, "num_draws": size.num_draws, "num_burnin_steps": size.num_burnin_steps}
    )
    reporter.note(f"   recommended {sweep.reason}")

    estimates_dir = results_dir / "llc_estimations"
    reporter.note(f"3/4 estimating the LLC at {len(training.checkpoints)} checkpoints -> {estimates_dir}")
    summary = estimate_all(checkpoints_dir, estimates_dir, chosen, device=device, reporter=reporter)

    from llcv.plotting import plot_llc

    figure = results_dir / "llc.png"
    records = load_results(estimates_dir, summary.settings_hash)
    reporter.note(f"4/4 plotting -> {figure}")
    plot_llc([records], figure, log_x=True, mark_transitions=True)
    return DemoResult(
        checkpoints_dir=checkpoints_dir,
        calibration_dir=calibration_dir,
        estimates_dir=summary.folder,
        figure=figure,
        recommended=sweep.recommended,
        calibration_reason=sweep.reason,
        reading=read_figure(records),
    )


def _std(record: dict) -> float:
    return record["result"].get("llc_std") or 0.0


_LISTED = 5  # unhealthy checkpoints named one by one; the rest are counted


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _with_reasons(judged: list[tuple[dict, list[str]]]) -> str:
    """``step 12 (R-hat 1.42 > 1.1) and step 24 (2 of 4 chains diverged)``: each with its first reason."""
    named = [health_label(record, reasons) for record, reasons in judged[:_LISTED]]
    if len(judged) > _LISTED:
        named.append(f"{len(judged) - _LISTED} more")
    return _and(named)


def _not_read(unhealthy: list[tuple[dict, list[str]]], failed: list[dict]) -> list[str]:
    """The sentences naming the estimates the paragraph leaves out, and the checkpoints without one."""
    sentences = []
    if unhealthy:
        many = len(unhealthy) > 1
        sentences.append(
            f"Not read: {_with_reasons(unhealthy)}, whose estimate{'s are' if many else ' is'} unhealthy; "
            f"{'they are' if many else 'it is'} hollow in the figure."
        )
    if failed:
        sentences.append(f"No estimate at {_with_reasons([(record, [str(record.get('error') or 'failed')]) for record in failed])}.")
    return sentences


def read_figure(records: list[dict]) -> str:
    """A plain-language paragraph on how the LLC moved against loss and accuracy.

    Only estimates that can be read at face value count (healthy ones, and those written before
    health verdicts, except where chains diverged); the others are named with their first reason.
    """
    whole = sorted(
        (record for record in records if record.get("scope", "model") == "model"),
        key=lambda record: (record.get("step") is None, record.get("step") or 0),
    )
    estimated = [record for record in whole if record.get("status") == "done" and (record.get("result") or {}).get("llc_mean") is not None]
    failed = [record for record in whole if record.get("status") == "failed"]
    judged = [(record, *record_health(record)) for record in estimated]
    done = [record for record, healthy, _ in judged if healthy is not False]
    unhealthy = [(record, reasons) for record, healthy, reasons in judged if healthy is False]
    if len(done) < 2:
        if not unhealthy:
            return " ".join(["Too few checkpoints were estimated to read a trend.", *_not_read([], failed)])
        if len(estimated) == 1:
            count = "the only estimate is unhealthy"
        else:
            count = f"{'only 1' if done else 'none'} of the {len(estimated)} estimates is healthy"
        return " ".join([f"Too few trustworthy estimates to read a trend: {count}.", *_not_read(unhealthy, failed)])
    first, last = done[0], done[-1]

    def llc(record: dict) -> float:
        return record["result"]["llc_mean"]

    def metric(record: dict, name: str) -> float | None:
        return (record.get("metrics") or {}).get(name)

    steps = [record.get("step") for record in done]
    rises = [(llc(b) - llc(a), a, b) for a, b in zip(done, done[1:])]
    biggest, start, end = max(rises, key=lambda item: abs(item[0]))
    sentences = [
        f"The LLC went from {llc(first):.2f} at step {steps[0]} to {llc(last):.2f} at step {steps[-1]}: "
        f"as training proceeded the model {'grew more' if llc(last) > llc(first) else 'became less'} complex "
        "in the sense of singular learning theory, i.e. its loss basin became "
        f"{'sharper in more directions' if llc(last) > llc(first) else 'flatter'}."
    ]
    first_loss, last_loss = metric(first, "val_loss"), metric(last, "val_loss")
    first_acc, last_acc = metric(first, "val_acc"), metric(last, "val_acc")
    if None not in (first_loss, last_loss, first_acc, last_acc):
        sentences.append(
            f"Meanwhile validation loss fell from {first_loss:.2f} to {last_loss:.2f} and accuracy rose from "
            f"{first_acc:.0%} to {last_acc:.0%} (lower panel)."
        )
    peak = max(done, key=llc)
    if peak is not first and peak is not last and llc(peak) > max(llc(first), llc(last)) + 2 * _std(peak):
        peak_loss = metric(peak, "val_loss")
        sentences.append(
            f"On the way it peaked at {llc(peak):.2f} at step {peak.get('step')}"
            + (f" (validation loss {peak_loss:.2f} there)," if peak_loss is not None else ",")
            + " and came back down as the model settled: a rise and fall of complexity, the kind of"
            " developmental stage the LLC is tracked to find."
        )
    sentences.append(
        f"The largest change between neighbouring checkpoints came between steps {start.get('step')} and "
        f"{end.get('step')} ({biggest:+.2f})."
    )
    transitions = find_transitions(done)
    if transitions:
        listed = ", ".join(f"step {transition.step} ({transition.kind})" for transition in transitions)
        sentences.append(f"Candidate transitions, where the slope against log-step turns or peaks: {listed}; read them with the ± std band.")
    sentences.extend(_not_read(unhealthy, failed))
    return " ".join(sentences)
