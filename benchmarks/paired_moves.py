"""How much pairing a half-gamma, half-epsilon or doubled-batch trial with its reference shrinks the standard error of the move.

Run: ``python -m benchmarks paired_moves [--steps N] [--knob gamma|epsilon|both|batch]``.

``calibrate auto`` runs each half-gamma trial beside a continuation at the reference's settings,
from the same chain states with the same SGLD noise and minibatches, and measures the move on
the two runs' difference (docs/calibration.md, "Half-gamma trials run paired"); each
half-epsilon trial runs coupled with its reference, which takes at each of its steps the summed
noise of two of the trial's ("Half-epsilon trials run coupled"); the doubled batch runs beside
that reference, on its noise and the two minibatches of each of its steps joined, its draws read
on the first ("The doubled batch runs beside"). Here, for each case, 4 chains
first settle at (epsilon, gamma); from their states three runs follow: the reference, the
changed setting with the reference's seed (paired or coupled), and the changed setting with
another seed (independent). Printed: the three LLCs, the move paired and independent with
their standard errors (after the changed run's measured burn-in and the difference's), and the
ratio of their variances, the factor by which pairing cuts the steps a resolved move needs
(before the pair's cost: 2 times a trial's steps for gamma, 1.5 for epsilon, half a trial's for
the batch beside an epsilon pair). About 4 minutes on 2 CPU cores for gamma and epsilon; the batch
runs on the cases with minibatches only.
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


def _run(
    case: KnownCase, epsilon: float, gamma: float, batch: int | None, steps: int, seed: int, start, coupled: int = 1, whole: bool = False
) -> tuple[np.ndarray, list]:
    size = len(case.dataset)
    settings = SamplerSettings(
        epsilon=epsilon, gamma=gamma, nbeta=case.nbeta, num_chains=4, num_draws=steps, num_burnin_steps=0,
        batch_size=batch or size, num_samples=size, seed=seed, precision="fp32",
    )  # fmt: skip
    data = SamplingData(case.dataset, settings, torch.device("cpu"))
    result, states = estimate_llc_states(
        case.model, data, settings, loss=case.loss, device="cpu", start=start, coupled_steps=coupled, whole_coupled_batches=whole
    )
    return trace_array(result.llc_trace), states


def compare(name: str, steps: int, knob: str) -> None:
    """One case's move when ``knob`` (gamma or epsilon) is halved, or the batch doubled, paired and independent."""
    build, epsilon, gamma, batch = CASES[name]
    case = build()
    epsilon = epsilon or case.epsilon
    _, start = _run(case, epsilon, gamma, batch, steps // 2, 1, None)
    if knob == "gamma":
        reference, _ = _run(case, epsilon, gamma, batch, steps, 7, start)
        paired, _ = _run(case, epsilon, gamma / 2, batch, steps, 7, start)
        independent, _ = _run(case, epsilon, gamma / 2, batch, steps, 99, start)
    elif knob == "batch":
        # As beside a half-epsilon pair: both take the summed noise of two steps; the doubled batch
        # joins their two minibatches. Independent: an ordinary run at twice the batch.
        reference, _ = _run(case, epsilon, gamma, batch, steps, 7, start, coupled=2)
        paired, _ = _run(case, epsilon, gamma, batch, steps, 7, start, coupled=2, whole=True)
        independent, _ = _run(case, epsilon, gamma, 2 * batch, steps, 99, start)
    else:
        # The half step runs twice the steps over the same time; the reference takes the summed
        # noise of each two of them, and is compared with the first of the two (the same time and minibatch).
        reference, _ = _run(case, epsilon, gamma, batch, steps, 7, start, coupled=2)
        paired = _run(case, epsilon / 2, gamma, batch, 2 * steps, 7, start)[0][:, ::2]
        independent = _run(case, epsilon / 2, gamma, batch, 2 * steps, 99, start)[0][:, ::2]
    # as the search does: after the changed run's burn-in and the difference's, the later
    scale = max(abs(float(paired.mean())), LLC_SCALE_FLOOR)
    burnin = max(measured_burnin(paired) or 0, measured_burnin(paired - reference, scale) or 0) or int(BURNIN_SHARES[-1] * steps)
    reference, paired, independent = reference[:, burnin:], paired[:, burnin:], independent[:, burnin:]
    paired_se = chains_standard_error(paired - reference)
    independent_se = math.hypot(chains_standard_error(reference), chains_standard_error(independent))
    print(
        f"{name}, {'doubled batch' if knob == 'batch' else f'half {knob}'}: LLC {reference.mean():.4g}, changed {paired.mean():.4g} (paired), {independent.mean():.4g} (independent); "
        f"move paired {(paired - reference).mean():+.3g} ± {paired_se:.2g}, independent "
        f"{independent.mean() - reference.mean():+.3g} ± {independent_se:.2g}; variance ratio {(independent_se / paired_se) ** 2:.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks paired_moves", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="steps of each compared run (the settling run is half that)")
    parser.add_argument("--knob", choices=("gamma", "epsilon", "both", "batch"), default="both", help="the setting halved (or doubled: batch)")
    arguments = parser.parse_args(argv)
    for knob in ("gamma", "epsilon") if arguments.knob == "both" else (arguments.knob,):
        for name, (_, _, _, batch) in CASES.items():
            if knob != "batch" or batch is not None:
                compare(name, arguments.steps, knob)


if __name__ == "__main__":
    main()
