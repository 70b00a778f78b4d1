"""How much running a calibration trial's reference at once with it saves, against one after another.

Run: ``python -m benchmarks runs_beside [--steps N]``.

``calibrate auto`` runs a paired trial's reference (and the doubled batch beside a half-epsilon
pair) beside the trial's own run. The runs share nothing while they run, so where torch may use a
thread per run they go at once, each on its share of the threads
(``llcv.calibration.beside.run_concurrently``). Here a half-gamma pair of 4 chains on the smallcnn
at 8x8 digits (batch 64, nbeta n/ln n, the demo's setting), the trial and its reference, runs
three ways side by side: one after another on one thread, one after another on two, and at once
on two. Printed: the seconds of each, the ratios, and whether the three gave the same traces
(they must). About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from llcv.calibration.beside import RunBeside, run_concurrently
from llcv.data import load_dataset
from llcv.models import build_model
from llcv.sampling import SamplingData, estimate_llc_states
from llcv.settings import SamplerSettings


def _pair(model, data: SamplingData, settings: SamplerSettings, steps: int, threads: int, at_once: bool) -> tuple[float, list]:
    """One half-gamma pair of ``steps`` steps on ``threads`` torch threads; its seconds and traces."""

    def sample(*args, **options):
        return estimate_llc_states(model, *args, loss="cross_entropy", device="cpu", **options)

    reference = RunBeside(settings.model_copy(update={"gamma": 2 * settings.gamma}), 1, None)
    available = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        trial_settings = settings.model_copy(update={"num_draws": steps, "seed": 7})
        if at_once:
            with run_concurrently([reference], sample, data, steps, seed=7):
                trial, _ = sample(data, trial_settings)
        else:
            trial, _ = sample(data, trial_settings)
            reference.run(sample, data, steps, 7)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(available)
    return seconds, [trial.llc_trace, reference.trace.tolist()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks runs_beside", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps of each run of the pair")
    arguments = parser.parse_args(argv)
    train, _, info = load_dataset("digits", image_size=8)
    model = build_model("smallcnn", info.num_classes, info.in_channels, image_size=8)
    size = len(train)
    settings = SamplerSettings(
        epsilon=2.18e-5, gamma=28.7, nbeta=size / math.log(size), batch_size=64, num_samples=size, num_chains=4, num_burnin_steps=0,
        seed=3, precision="fp32",
    )  # fmt: skip
    data = SamplingData(train, settings, torch.device("cpu"))
    _pair(model, data, settings, 50, 1, False)  # warm-up
    one, traces = _pair(model, data, settings, arguments.steps, 1, False)
    two, traces_two = _pair(model, data, settings, arguments.steps, 2, False)
    at_once, traces_at_once = _pair(model, data, settings, arguments.steps, 2, True)
    print(
        f"half-gamma pair, {arguments.steps} steps each run: one after another on 1 thread {one:.2f} s, on 2 threads {two:.2f} s, "
        f"at once on 2 threads {at_once:.2f} s: {one / at_once:.2f}x and {two / at_once:.2f}x faster; "
        f"same traces: {traces == traces_two == traces_at_once}",
        flush=True,
    )


if __name__ == "__main__":
    main()
