"""A burn-in at a larger step against one at the estimate's own step, side by side on one case.

Run: ``python -m benchmarks hot_burnin [--weights N] [--epsilon E --gamma G --burnin-epsilon B] [--draws D]``.

Chains started at the checkpoint relax in a number of steps proportional to 1 / step, and the
epsilon an estimate needs is set by the posterior's stiffest directions, where the step's bias
lives (docs/calibration.md, "The automatic burn-in"). Here the deep linear network of
``llcv.known_families.scale_cases`` (seed 0) is estimated twice from the checkpoint at batch 256
and (epsilon, gamma): once with the automatic hot burn-in (relaxing at ``--burnin-epsilon``, then
cooling at epsilon) and once with a burn-in of the same number of steps at epsilon alone. Printed
for each: the LLC with its standard error and health, the draws' chain-mean LLC in ten blocks
(flat once relaxed), the truth, and the seconds. The defaults are what ``calibrate auto`` chose
for the 10^5-weight network (epsilon 1.07e-6, gamma 4.57, the largest safe step 3.42e-5): about
7 minutes on 2 CPU cores; ``--weights 10000`` takes the 10^4 network, with its own settings to give.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llcv import SamplerSettings
from llcv.calibration import trace_array
from llcv.known_families import scale_cases
from llcv.sampling import estimate_llc, resolve_burnin


def _estimate(case, settings: SamplerSettings, label: str) -> None:
    started = time.perf_counter()
    result = estimate_llc(case.model, case.dataset, settings, loss=case.loss, device="cpu")
    seconds = time.perf_counter() - started
    blocks = [round(float(block.mean())) for block in np.array_split(trace_array(result.llc_trace).mean(axis=0), 10)]
    health = "healthy" if result.healthy else "unhealthy: " + "; ".join(failure.brief for failure in result.health_failures)
    print(
        f"{label}: burn-in {result.burnin_steps:,} ({result.burnin_rule}), LLC {result.llc_mean:.5g} ± {result.diagnostics.llc_se:.2g} "
        f"({(result.llc_mean - case.true_llc) / case.true_llc:+.1%} of {case.true_llc:g}), {health}; draws in ten blocks {blocks}; "
        f"{seconds:.0f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks hot_burnin", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=int, default=100_000, help="the scale case's size (10000 or 100000)")
    parser.add_argument("--epsilon", type=float, default=1.07e-6)
    parser.add_argument("--gamma", type=float, default=4.57)
    parser.add_argument("--burnin-epsilon", type=float, default=3.42e-5)
    parser.add_argument("--draws", type=int, default=3000, help="draws per chain after the burn-in")
    arguments = parser.parse_args(argv)
    case = scale_cases((arguments.weights,), seed=0)[0]
    size = len(case.dataset)
    hot = SamplerSettings(
        epsilon=arguments.epsilon, gamma=arguments.gamma, burnin_epsilon=arguments.burnin_epsilon, nbeta=case.nbeta,
        num_chains=4, num_draws=arguments.draws, batch_size=256, num_samples=size, seed=0, precision="fp32",
    )  # fmt: skip
    weights = sum(parameter.numel() for parameter in case.model.parameters())
    print(f"{case.name}: {weights:,} weights, truth {case.true_llc:g}, nbeta {case.nbeta:.4g}", flush=True)
    _estimate(case, hot, f"hot burn-in at {arguments.burnin_epsilon:g}")
    same_length = {"burnin_epsilon": None, "num_burnin_steps": resolve_burnin(hot).steps}
    _estimate(case, hot.model_copy(update=same_length), f"burn-in at {arguments.epsilon:g}")


if __name__ == "__main__":
    main()
