"""``recommend_settings``: SGLD settings for a final estimate, found by sweeping a grid sized to
the model's curvature and data, widened and lengthened a bounded number of times."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv.calibration.sweep import SweepResult, calibrate_sweep
from llcv.devices import resolve_device
from llcv.errors import EstimationError
from llcv.langevin import relaxation_steps
from llcv.losses import LossSpec, resolve_loss
from llcv.progress import SILENT, Reporter
from llcv.sampling import default_nbeta, working_copy
from llcv.sampling_data import SamplingData
from llcv.settings import SamplerSettings

# recommend_settings: the final estimate aims for this many effective samples over all chains.
TARGET_ESS = 400
FINAL_NUM_CHAINS = 4
# recommend_settings' grid, in units of the stiffest curvature nbeta * h (see its docstring).
# Epsilons a factor 2-2.5 apart, so the plateau test compares neighbours close enough to agree,
# and no larger than 0.2 / s: SGLD overestimates the variance along the stiffest direction by
# about epsilon * s / 4, 5% there (linear regression came out 11% high at 0.5 / s).
RECOMMEND_EPSILON_FACTORS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2)
RECOMMEND_GAMMA_FACTORS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
# Each further round adds these and doubles the relaxation budget.
RECOMMEND_WIDER_EPSILON_FACTORS = (1e-4, 3e-4)
RECOMMEND_WIDER_GAMMA_FACTORS = (1e-4, 3e-4, 10.0)
RECOMMEND_ROUNDS = 2
# The longest burn-in a first-round sweep may take; pairs that would need more wait for the next
# round's doubled budget, and a gamma with no such pair is skipped.
MAX_RELAXATION_STEPS = 4000
RECOMMEND_MAX_SAMPLES = 2048


def recommend_settings(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    base: SamplerSettings | None = None,
    num_draws: int = 200,
    reporter: Reporter = SILENT,
) -> SamplerSettings:
    """Sweep a grid sized to the model and data, and return settings for a final estimate.

    The grid is scaled by the stiffest direction of the posterior, ``s = nbeta * h``, where
    ``h`` is the largest Hessian eigenvalue of the loss at the checkpoint (power iteration on
    one minibatch); SGLD is stable for ``epsilon * (s + gamma) < 2``. The epsilons are
    ``RECOMMEND_EPSILON_FACTORS / s``. Localization pulls the chains toward the checkpoint and
    so biases the LLC down, so gammas are tried from weak to strong, ``RECOMMEND_GAMMA_FACTORS * s``,
    stopping at the first gamma where a combination qualifies; ``apply_rule`` picks the epsilon
    (a plateau in epsilon). A weak gamma mixes slowly: along a direction the loss does not
    constrain, the chains relax only at the rate ``epsilon * gamma``. So each gamma's sweep
    (``FINAL_NUM_CHAINS`` chains, as many as the estimate will run, so that a rare divergence
    or a chain that strays is seen before it is recommended) takes only the epsilons that relax
    within ``MAX_RELAXATION_STEPS`` (a gamma with none is skipped), and runs ``relaxation_steps``
    of the smallest of them, at least ``num_draws``, as burn-in and again as draws; it is
    repeated once with twice as many when most combinations fail only because the chains have
    not mixed. When even the smallest of those epsilons failed for its step size (divergence or
    MALA acceptance), the next smaller epsilon of the grid is swept alone at that gamma, with
    the longer relaxation it needs, before a stronger gamma is tried. When no gamma qualifies, the
    search is repeated ``RECOMMEND_ROUNDS - 1`` more times, each round with the grid widened
    (``RECOMMEND_WIDER_*_FACTORS``) and the budget and minimum length doubled. nbeta is
    ``base.nbeta`` or its default.

    The returned settings are the recommended (epsilon, gamma, nbeta, sampler) with
    ``FINAL_NUM_CHAINS`` chains, the qualifying sweep's burn-in steps, and enough draws for an
    effective sample size of about ``TARGET_ESS`` at the sweep's mixing rate (at least that
    sweep's draws, and at most ``10 * num_draws`` or four times the sweep's draws, whichever is
    more); the rest comes from ``base``.

    Args:
        base: batch size, samples, seed and sampler. Default: full batches of the data, or of a
            seeded subset of ``RECOMMEND_MAX_SAMPLES`` samples for larger data, so that the MALA
            acceptance and the losses are those of one fixed potential (docs/calibration.md).
        num_draws: the fewest burn-in steps and draws per chain in the first round's sweeps.

    Raises:
        EstimationError: no combination qualifies in any round; the message gives each sweep's reason.
    """
    device = resolve_device(device)
    if base is None and isinstance(data, SamplingData):
        base = SamplerSettings(batch_size=data.batch_size, num_samples=data.num_samples)
    elif base is None:
        size = min(len(data.dataset) if isinstance(data, DataLoader) else len(data), RECOMMEND_MAX_SAMPLES)
        base = SamplerSettings(batch_size=size, num_samples=size)
    sampling = data if isinstance(data, SamplingData) else SamplingData(data, base, device)
    nbeta = base.nbeta if base.nbeta is not None else default_nbeta(sampling.batch_size)
    stiffness = nbeta * top_hessian_eigenvalue(model, sampling, loss, base)
    reasons = []
    for round_index in range(RECOMMEND_ROUNDS):
        epsilon_factors, gamma_factors = RECOMMEND_EPSILON_FACTORS, RECOMMEND_GAMMA_FACTORS
        if round_index:
            epsilon_factors = sorted({*RECOMMEND_WIDER_EPSILON_FACTORS, *epsilon_factors})
            gamma_factors = sorted({*RECOMMEND_WIDER_GAMMA_FACTORS, *gamma_factors})
        budget = MAX_RELAXATION_STEPS * 2**round_index
        all_epsilons = [float(f"{factor / stiffness:.3g}") for factor in epsilon_factors]
        for factor in gamma_factors:
            gamma = float(f"{factor * stiffness:.3g}")
            epsilons = [epsilon for epsilon in all_epsilons if relaxation_steps(epsilon, gamma) <= budget]
            if not epsilons:
                reasons.append(f"gamma={gamma:g}: no epsilon lets the chains relax within {budget} steps")
                continue
            shortest = num_draws * 2**round_index
            sweep, draws = _sweep_gamma(model, sampling, epsilons, gamma, nbeta, base, shortest, loss, device, reporter)
            smaller = [epsilon for epsilon in all_epsilons if epsilon < min(epsilons)]
            if sweep.recommended is None and smaller and _steps_too_large(min(sweep.rows, key=lambda row: row["epsilon"])):
                # The budget cut the grid off just where the steps became small enough: one epsilon
                # further down, whatever its relaxation takes (at most the grid's spacing times the
                # budget), before a stronger gamma biases the LLC down.
                reasons.append(f"gamma={gamma:g}, {draws} draws: {sweep.reason}")
                sweep, draws = _sweep_gamma(model, sampling, [max(smaller)], gamma, nbeta, base, shortest, loss, device, reporter)
            index = sweep.recommended_index
            if sweep.recommended is not None and index is not None:
                return _final_settings(sweep, index, draws, num_draws)
            reasons.append(f"gamma={gamma:g}, {draws} draws: {sweep.reason}")
    raise EstimationError("recommend_settings found no usable SGLD settings; " + "; ".join(reasons))


def _sweep_gamma(
    model: nn.Module,
    sampling: SamplingData,
    epsilons: list[float],
    gamma: float,
    nbeta: float,
    base: SamplerSettings,
    shortest: int,
    loss: LossSpec,
    device: torch.device,
    reporter: Reporter,
) -> tuple[SweepResult, int]:
    """One gamma's sweep, with the smallest epsilon's relaxation (at least ``shortest`` steps) as
    burn-in and again as draws, repeated once with twice as many when most rows have not mixed.
    Returns the last sweep and its draws."""
    settle = max(shortest, relaxation_steps(min(epsilons), gamma))
    for draws in (settle, 2 * settle):
        sweep_settings = base.model_copy(update={"num_chains": FINAL_NUM_CHAINS, "num_draws": draws, "num_burnin_steps": draws})
        sweep = calibrate_sweep(model, sampling, epsilons, [gamma], [nbeta], base=sweep_settings, loss=loss, device=device, reporter=reporter)
        if sweep.recommended is not None or not _mostly_unmixed(sweep.rows):
            break
    return sweep, draws


def _final_settings(sweep: SweepResult, index: int, draws: int, num_draws: int) -> SamplerSettings:
    """The recommended row as settings for a final estimate: its mixing rate sets the draws."""
    row = sweep.rows[index]
    ess_per_draw = (row["ess"] or 0.0) / (sweep.base.num_chains * draws)
    # At most ten times the fewest draws, or four times the sweep's own where its chains mixed so
    # slowly that the sweep itself was longer: the estimate then costs about as much as the search.
    most = max(10 * num_draws, 4 * draws)
    needed = math.ceil(TARGET_ESS / (FINAL_NUM_CHAINS * ess_per_draw)) if ess_per_draw > 0 else most
    return sweep.recommended.model_copy(
        update={
            "num_chains": FINAL_NUM_CHAINS,
            "num_draws": max(draws, min(needed, most)),
            "num_burnin_steps": draws,
        }
    )


def _steps_too_large(row: dict[str, Any]) -> bool:
    """Whether a row failed first because its steps were too large (divergence or MALA acceptance)."""
    return row["reason"].startswith(("diverged", "mala_acceptance"))


def _mostly_unmixed(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether most rows failed a mixing rule first (trace drift or R-hat): longer chains may qualify."""
    unmixed = sum(row["reason"].startswith(("|drift_z|", "r_hat")) for row in rows)
    return unmixed > len(rows) / 2


def top_hessian_eigenvalue(
    model: nn.Module, data: SamplingData, loss: LossSpec, settings: SamplerSettings, iterations: int = 20
) -> float:
    """The largest |eigenvalue| of the loss Hessian at the model's weights, on one minibatch.

    Power iteration with Hessian-vector products, on the chains' working copy of the model
    (their BatchNorm mode and statistics). Falls back to 1.0 where the model does not support
    double backward or the value is not a positive finite number.
    """
    work, _ = working_copy(model, data, resolve_loss(loss), settings)
    parameters = [parameter for parameter in work.parameters() if parameter.requires_grad]
    batch = next(data.batches(settings.seed))
    generator = torch.Generator().manual_seed(settings.seed)
    try:
        gradients = torch.autograd.grad(resolve_loss(loss)(work, batch), parameters, create_graph=True)
        vector = [torch.randn(parameter.shape, generator=generator).to(parameter.device) for parameter in parameters]
        eigenvalue = 0.0
        for _ in range(iterations):
            norm = torch.sqrt(sum((part**2).sum() for part in vector))
            vector = [part / norm for part in vector]
            product = torch.autograd.grad(gradients, parameters, grad_outputs=vector, retain_graph=True)
            eigenvalue = float(sum((p * v).sum() for p, v in zip(product, vector)))
            vector = [part.detach() for part in product]
    except RuntimeError:
        return 1.0
    eigenvalue = abs(eigenvalue)
    return eigenvalue if math.isfinite(eigenvalue) and eigenvalue > 0 else 1.0
