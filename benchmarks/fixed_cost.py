"""What an estimate costs besides its sampling steps, in sampling steps, at ResNet18 scale.

Run: ``python -m benchmarks fixed_cost [--draws N] [--samples N] [--statistics-samples N] [--device cpu|cuda]``.

A CIFAR-stem ResNet18 on 32x32 images (random, ``--samples`` of them, so the initial loss (and,
in ``bn_mode="eval"``, the BatchNorm statistics) read their default 4,096) is estimated with the default sampler
settings at 2 chains x ``--draws`` draws, twice, as ``estimate-all`` does for two checkpoints of
one run: the first estimate decides how the chains run (batched or not, and for
``precision="auto"`` times fp32 against bf16 and, the chains running one at a time, fp32's two
layouts); the second reuses that. For each, the fixed cost
is the elapsed time minus the sampling steps at their median step time (so the first step's
warm-up counts as fixed cost), shown in seconds and in steps, with its parts: copying the model,
deciding the execution, recomputing BatchNorm statistics, the initial loss.

The target (issue "Performance that holds on every machine") is a fixed cost of at most 5
sampling steps per estimate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.utils.data import TensorDataset

from llcv import SamplerSettings, build_model, estimate_llc, sampling
from llcv.devices import resolve_device
from llcv.progress import Reporter
from llcv.sampling import SamplingData

TARGET_STEPS = 5.0
# The parts of an estimate's set-up, as llcv.sampling names them: estimate_llc looks each up
# there (llcv.sampling.execution's _execution_plan included), so that is where they are wrapped.
PARTS = {
    "_copy_in_mode": "copy the model",
    "_execution_plan": "decide execution (precision, layout)",
    "_normalise_batchnorm": "recompute BatchNorm statistics",
    "_initial_loss": "initial loss",
}


class _StepClock(Reporter):
    """The time of every sampling step, from the chains' progress hook."""

    def __init__(self, device: torch.device):
        self.device = device
        self.steps: list[float] = []

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self, key: str, description: str, total: int | None) -> None:
        self.last = self._now()

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        now = self._now()
        self.steps.append(now - self.last)
        self.last = now


def _timed_parts(device: torch.device) -> dict[str, float]:
    """Wraps the set-up functions of llcv.sampling so each call adds its time to the returned dict."""
    spent: dict[str, float] = defaultdict(float)

    def wrap(name: str):
        original = getattr(sampling, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                spent[name] += time.perf_counter() - started

        setattr(sampling, name, timed)

    for name in PARTS:
        wrap(name)
    return spent


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks fixed_cost")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--statistics-samples", type=int, default=None,
                        help="bn_samples and init_loss_samples (default: the settings' defaults, 4096 each)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(args.samples, 3, 32, 32, generator=generator), torch.randint(0, 10, (args.samples,), generator=generator))
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, "cifar")
    samples = {} if args.statistics_samples is None else {"bn_samples": args.statistics_samples, "init_loss_samples": args.statistics_samples}
    settings = SamplerSettings(num_chains=2, num_draws=args.draws, **samples)
    prepared = SamplingData(data, settings, device)
    spent = _timed_parts(device)
    print(
        f"ResNet18 (CIFAR stem), {args.samples} samples 32x32, default settings (batch {settings.batch_size}; BatchNorm "
        f"{settings.bn_mode} mode, initial loss on {settings.init_loss_samples} samples), 2 chains x {args.draws} draws, {device}:"
    )
    for label in ("first estimate of a run", "next checkpoint (reuses the decision)"):
        spent.clear()
        clock = _StepClock(device)
        started = time.perf_counter()
        result = estimate_llc(model, prepared, settings, device=device, reporter=clock)
        elapsed = time.perf_counter() - started
        step = statistics.median(clock.steps)
        fixed = elapsed - step * len(clock.steps)
        verdict = "meets" if fixed <= TARGET_STEPS * step else "misses"
        print(f"  {label}: {elapsed:.1f} s, {len(clock.steps)} steps of {step:.3f} s ({result.precision}: {result.precision_choice['reason']})")
        print(f"    fixed cost {fixed:.2f} s = {fixed / step:.1f} steps ({verdict} the target of {TARGET_STEPS:g})")
        for name, part in PARTS.items():
            print(f"      {part:<38} {spent[name]:6.2f} s = {spent[name] / step:4.1f} steps")
        with torch.no_grad():  # the next checkpoint: same architecture, other weights
            for parameter in model.parameters():
                parameter.mul_(1.01)
