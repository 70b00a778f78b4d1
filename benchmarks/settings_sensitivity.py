"""Whether an LLC is the model's or the sampler's: the demo's last checkpoint estimated at the
settings a reader would suspect, with llcv 0.9's demo pick (before) and ``calibrate auto``'s (after).

Run: ``python -m benchmarks settings_sensitivity [--checkpoint CK] [--budget-steps N] [--only before|after]
[--store calibration.json]``.

Without ``--checkpoint`` it trains the demo's model as ``llcv demo`` does (``llcv.demo.FULL``) into
a temporary folder. It then times ``calibrate auto`` on the last checkpoint beside one fixed
4-chain x 200-step estimate at batch 256 (the issue's yardstick: the calibration should cost at
most 30 of them), and estimates each pick and its variations with 4 chains: the pick itself,
batch 32 and batch 256 (n, and so the data's nbeta, unchanged), gamma halved and epsilon halved
(with twice the burn-in and draws, since a chain relaxes and mixes in a number of steps
proportional to 1 / (epsilon gamma)). ``--store`` keeps the calibration's trials in that file and
reuses those already there (``llcv calibrate auto --batch-size 64`` writes one); the time is the
calibration's own, stored with its trials. Each row prints the LLC with its standard error and health,
and its move from the pick with the move's standard error; "moves" marks a move of more than 10%
of the pick's LLC beyond two standard errors. About 25 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from llcv import SamplerSettings, estimate_llc
from llcv.calibration import Budget, calibrate_auto
from llcv.calibration.outcome import SETTINGS_DEPENDENT
from llcv.demo import FULL, SAMPLER_BATCH_SIZE
from llcv.settings import DEFAULT_BUDGET_STEPS, load_settings
from llcv.targets import Target
from llcv.training import train

# llcv 0.9's demo pick (docs/calibration.md): devinterp's temperature at batch 32 (nbeta 9.23), a
# strong localization, and 4 x 200 draws after 200 burn-in steps.
BEFORE = SamplerSettings(epsilon=1e-5, gamma=1000.0, nbeta="batch", batch_size=32, num_burnin_steps=200, num_draws=200, sampler="sgld")


def demo_checkpoint(folder: Path) -> Path:
    """The last checkpoint of the demo's training run, trained into ``folder``."""
    settings = load_settings(
        ("data", "model", "train"),
        overrides={
            "data": {"dataset": "digits", "image_size": FULL.image_size},
            "model": {"name": "smallcnn"},
            "train": {
                "epochs": FULL.epochs, "batch_size": 64, "lr": 0.05, "device": "cpu", "checkpoints_dir": folder,
                "log_checkpoints": FULL.log_checkpoints, "checkpoint_every_epochs": 0,
            },
        },
    )  # fmt: skip
    return train(settings).checkpoints[-1]


def variations(pick: SamplerSettings) -> dict[str, SamplerSettings]:
    """The pick and the settings a reader would suspect of moving it."""
    burnin = pick.num_burnin_steps if isinstance(pick.num_burnin_steps, int) else 0
    longer = {"num_burnin_steps": 2 * burnin, "num_draws": 2 * pick.num_draws}
    return {
        "pick": pick,
        "batch 32": pick.model_copy(update={"batch_size": 32}),
        "batch 256": pick.model_copy(update={"batch_size": 256}),
        "gamma / 2": pick.model_copy(update={"gamma": pick.gamma / 2, **longer}),
        "epsilon / 2": pick.model_copy(update={"epsilon": pick.epsilon / 2, **longer}),
    }


def estimate_rows(label: str, target, pick: SamplerSettings) -> None:
    """Estimate the pick and its variations and print one row each."""
    base = None
    for name, settings in variations(pick).items():
        started = time.perf_counter()
        result = estimate_llc(target.model, target.dataset, settings, device="cpu")
        seconds = time.perf_counter() - started
        se = result.diagnostics.llc_se or 0.0
        if base is None:
            base = (result.llc_mean, se)
            move = ""
        elif result.llc_mean is not None and base[0] is not None:
            difference, difference_se = result.llc_mean - base[0], math.hypot(se, base[1])
            moves = abs(difference) - 2 * difference_se > SETTINGS_DEPENDENT * abs(base[0])
            move = f"{difference / base[0]:+7.1%} ± {difference_se / abs(base[0]):5.1%}{'  moves' if moves else ''}"
        else:
            move = "no estimate"
        shown = "—" if result.llc_mean is None else f"{result.llc_mean:8.3f} ± {se:6.3f}"
        health = "healthy" if result.healthy else "unhealthy: " + "; ".join(failure.brief for failure in result.health_failures)
        print(
            f"{label:6s} {name:12s} eps {settings.epsilon:8.3g} gamma {settings.gamma:7.3g} batch {settings.batch_size:4d} "
            f"nbeta {result.nbeta:7.2f}  LLC {shown}  {move:24s} R-hat {result.diagnostics.r_hat or math.nan:.3f} "
            f"ESS {result.diagnostics.ess or 0:5.0f}  {health}  ({seconds:.0f} s)",
            flush=True,
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks settings_sensitivity")
    parser.add_argument("--checkpoint", type=Path, help="default: train the demo's model and take its last checkpoint")
    parser.add_argument("--budget-steps", type=int, default=DEFAULT_BUDGET_STEPS)
    parser.add_argument("--only", choices=("before", "after"))
    parser.add_argument("--store", type=Path, help="calibration.json to keep the trials in and resume from")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = options.checkpoint or demo_checkpoint(Path(folder))
        target = Target(checkpoint).load()
        print(f"checkpoint {checkpoint}: {len(target.dataset)} samples", flush=True)
        if options.only != "after":
            estimate_rows("before", target, BEFORE)
        if options.only == "before":
            return
        yardstick = SamplerSettings(batch_size=256, num_burnin_steps=0, num_draws=200, num_chains=4)
        started = time.perf_counter()
        estimate_llc(target.model, target.dataset, yardstick, device="cpu")
        one_estimate = time.perf_counter() - started
        base = SamplerSettings(batch_size=SAMPLER_BATCH_SIZE)
        budget = Budget(chain_steps=options.budget_steps)
        calibration = calibrate_auto(target.model, target.dataset, device="cpu", base=base, budget=budget, store=options.store)
        seconds = calibration.spent.seconds
        print(
            f"calibrate auto: {seconds:.0f} s = {seconds / one_estimate:.1f} x a 4 x 200 estimate at batch 256 ({one_estimate:.1f} s); "
            f"{calibration.spent.trials} trials, {calibration.spent.chain_steps:,} chain-steps",
            flush=True,
        )
        print(f"  {calibration.reason}", flush=True)
        for entry in calibration.sensitivity:
            print(f"  sensitivity {entry.knob}: {entry.value:g} -> {entry.changed_to:g}: move {entry.move}, se {entry.move_se}, {entry.note}")
        estimate_rows("after", target, calibration.recommended)
