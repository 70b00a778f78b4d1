"""How much pairing a half-gamma trial with its reference shrinks the standard error of the move.

Run: ``python -m benchmarks paired_moves [--steps N]``.

``calibrate auto`` runs each half-gamma trial beside a continuation at the reference's settings,
from the same chain states with the same SGLD noise and minibatches, and measures the move on
the two runs' difference (docs/calibration.md, "Half-gamma trials run paired"). Here, for each
case, 4 chains first settle at (epsilon, gamma); from their states three runs follow: the
reference at gamma, the half gamma with the reference's seed (paired), and the half gamma with
another seed (independent). Printed: the three LLCs, the move paired and independent with
their standard errors (after the half-gamma run's measured burn-in), and the ratio of their
variances, the factor by which pairing cuts the steps a resolved move needs (before its 2x
cost). About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from llcv import SamplerSettings
from llcv.calibration import trace_array
from llcv.calibration.trials import BURNIN_SHARES, LLC_SCALE_FLOOR, chains_standard_error, measured_burnin
from llcv.known_models import KnownCase, dln_case, polynomial_case
from llcv.sampling import estimate_llc_states
from llcv.sampling import SamplingData

CASES = {  # name: (case, epsilon, gamma, batch size or None for full batches)
    "polynomial-2-4, gamma 3.6": (lambda: polynomial_case((2, 4), seed=3), 3.45e-4, 3.62, None),
    "polynomial-2-4, gamma 0.9": (lambda: polynomial_case((2, 4), seed=3), 3.45e-4, 0.9, None),
    "dln-6-4-4-6-r2, gamma 1": (lambda: dln_case((6, 4, 4, 6), 2, num_samples=1000, seed=3), None, 1.0, None),
    "dln-6-4-4-6-r2, gamma 1, batch 64": (lambda: dln_case((6, 4, 4, 6), 2, num_samples=1000, seed=3), None, 1.0, 64),
}


def _run(case: KnownCase, epsilon: float, gamma: float, batch: int | None, steps: int, seed: int, start) -> tuple[np.ndarray, list]:
    size = len(case.dataset)
    settings = SamplerSettings(
        epsilon=epsilon, gamma=gamma, nbeta=case.nbeta, num_chains=4, num_draws=steps, num_burnin_steps=0,
        batch_size=batch or size, num_samples=size, seed=seed, precision="fp32",
    )  # fmt: skip
    data = SamplingData(case.dataset, settings, torch.device("cpu"))
    result, states = estimate_llc_states(case.model, data, settings, loss=case.loss, device="cpu", start=start)
    return trace_array(result.llc_trace), states


def compare(name: str, steps: int) -> None:
    build, epsilon, gamma, batch = CASES[name]
    case = build()
    epsilon = epsilon or case.epsilon
    _, start = _run(case, epsilon, gamma, batch, steps // 2, 1, None)
    reference, _ = _run(case, epsilon, gamma, batch, steps, 7, start)
    paired, _ = _run(case, epsilon, gamma / 2, batch, steps, 7, start)
    independent, _ = _run(case, epsilon, gamma / 2, batch, steps, 99, start)
    # as the search does: after the half-gamma run's burn-in and the difference's, the later
    scale = max(abs(float(paired.mean())), LLC_SCALE_FLOOR)
    burnin = max(measured_burnin(paired) or 0, measured_burnin(paired - reference, scale) or 0) or int(BURNIN_SHARES[-1] * steps)
    reference, paired, independent = reference[:, burnin:], paired[:, burnin:], independent[:, burnin:]
    paired_se = chains_standard_error(paired - reference)
    independent_se = math.hypot(chains_standard_error(reference), chains_standard_error(independent))
    print(
        f"{name}: LLC {reference.mean():.4g}, at half gamma {paired.mean():.4g} (paired), {independent.mean():.4g} (independent); "
        f"move paired {(paired - reference).mean():+.3g} ± {paired_se:.2g}, independent "
        f"{independent.mean() - reference.mean():+.3g} ± {independent_se:.2g}; variance ratio {(independent_se / paired_se) ** 2:.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks paired_moves", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="steps of each compared run (the settling run is half that)")
    arguments = parser.parse_args(argv)
    for name in CASES:
        compare(name, arguments.steps)


if __name__ == "__main__":
    main()
