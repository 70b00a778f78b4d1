"""Health of an LLC estimate: the checks that say whether its number can be read, and why not.

One list of checks serves two readers: every estimate's ``healthy`` / ``health_reasons``
(``LLCResult``, result records, ``summary.csv``, the plot) and the calibration rule
(``llcv.calibration.apply_rule``), which judges each sweep row by the same checks in the same
order. Noise is judged by its known size: a mean LLC or a chain counts as below the checkpoint's
loss only when it lies more than ``SIGNIFICANCE`` standard errors below 0 (``trace_evidence``: the
chains' error, and that of the initial loss it is measured from), and drift
is Geweke's early-against-late comparison in standard errors, so a short trace or a small
positive LLC is not rejected for noise alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from llcv.diagnostics import geweke_z, mcse_of_mean
from llcv.relaxation import AUTO_BURNIN_DRAW_FACTOR

# A mean below 0 by more than this many standard errors is below the checkpoint's loss, not noise around 0.
SIGNIFICANCE = 2.0


class HealthThresholds(BaseModel):
    """The limits the checks use; the calibration rule takes them from ``[calibrate]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_negative_fraction: float = 0.0  # share of chains whose mean lies significantly below 0
    max_drift_z: float = 3.0  # |Geweke z| of the per-draw LLC
    max_r_hat: float = 1.1
    min_ess: float | None = 100.0  # None: not checked (calibration sweeps are short by design)
    target_acceptance: float = 0.9  # MALA; checked only where it was measured, unless required


@dataclass(frozen=True)
class Evidence:
    """The numbers the checks read, from an estimate or a sweep row."""

    num_chains: int
    diverged_chains: int
    llc_mean: float | None
    llc_mcse: float | None
    negative_chains: float | None  # share of chains significantly below 0
    drift_z: float | None
    r_hat: float | None
    ess: float | None
    mala_acceptance: float | None
    # The burn-in the chains ran and the steps they need to relax from the checkpoint
    # (llcv.relaxation.relaxation_steps; infinite at gamma 0): sweep rows, and estimates whose
    # burn-in was automatic. None: not checked.
    burnin_steps: int | None = None
    relaxation_steps: float | None = None
    # The burn-in was the automatic one, held to its cap (llcv.relaxation.auto_burnin_steps).
    burnin_capped: bool = False
    # The standard error of llc_mean (trace_evidence); None (sweep rows before llcv 0.9): the MCSE stands in.
    llc_se: float | None = None


def trace_evidence(llc_trace: np.ndarray, healthy: np.ndarray, init_loss_error: float | None = 0.0) -> dict[str, float | None]:
    """``llc_mcse``, ``llc_se``, ``negative_chains`` and ``drift_z`` of a chains x draws LLC trace.

    ``llc_se``, the standard error of the mean LLC, has two parts. The chains' part is the larger
    of the MCSE and the spread of the chains' means over sqrt(chains): SGLD's per-draw LLC is
    mostly white minibatch noise, under which the slow wander of the weights along weakly
    constrained directions (over about 1 / (epsilon * gamma) steps) hides from the
    autocorrelations the ESS, and so the MCSE, rests on, while independent chains show it in
    their spread. The other part is the initial loss's error: every draw is measured from it, so
    it adds to the mean's error and to each chain's, but not to the drift.

    Args:
        llc_trace: per-draw LLC, NaN after a chain diverged.
        healthy: which chains did not diverge; only those count.
        init_loss_error: the standard error, in LLC units (nbeta times the loss's), of the initial
            loss; None: unknown, counted as 0 (``llc_se`` is then the chains' part alone).
    """
    chains = np.asarray(llc_trace, dtype=float)[np.asarray(healthy, dtype=bool)]
    if not chains.size or not np.isfinite(chains).all():
        return {"llc_mcse": None, "llc_se": None, "negative_chains": None, "drift_z": None}
    common = init_loss_error or 0.0
    below = []
    for chain in chains:  # whether this chain's own average lies below 0: its own MCSE
        error = mcse_of_mean(chain[None, :])
        below.append(error is not None and chain.mean() + SIGNIFICANCE * math.hypot(error, common) < 0)
    mcse = mcse_of_mean(chains)
    spread = float(chains.mean(axis=1).std(ddof=1)) / math.sqrt(len(chains)) if len(chains) > 1 else 0.0
    return {
        "llc_mcse": mcse,
        "llc_se": None if mcse is None else math.hypot(max(mcse, spread), common),
        "negative_chains": float(np.mean(below)),
        "drift_z": geweke_z(chains),
    }


@dataclass(frozen=True)
class Check:
    """One check: its name (a sweep row's ``reason``), what fails it, and which way to move the grid."""

    name: str
    failure: Callable[[Evidence, HealthThresholds], str | None]  # the reason with its numbers, or None
    advice: str


def _diverged(evidence: Evidence, _: HealthThresholds) -> str | None:
    if evidence.llc_mean is None:
        return "every chain diverged"
    if evidence.diverged_chains:
        return f"{evidence.diverged_chains} of {evidence.num_chains} chains diverged"
    return None


def _unrelaxed(evidence: Evidence, _: HealthThresholds) -> str | None:
    if evidence.burnin_steps is None or evidence.relaxation_steps is None:
        return None
    if evidence.burnin_steps < evidence.relaxation_steps:
        needed = "no burn-in is enough at gamma 0" if math.isinf(evidence.relaxation_steps) else f"needs {evidence.relaxation_steps:,.0f}"
        if evidence.burnin_capped:
            return (
                f"the burn-in was cut short by its cap: {evidence.burnin_steps:,} steps ({AUTO_BURNIN_DRAW_FACTOR} x the draws' steps), "
                f"the chains' relaxation 2 / (epsilon * gamma) {needed}"
            )
        return f"the chains had not relaxed from the checkpoint: {evidence.burnin_steps:,} burn-in steps, 2 / (epsilon * gamma) {needed}"
    return None


def _negative(evidence: Evidence, _: HealthThresholds) -> str | None:
    error = evidence.llc_se if evidence.llc_se is not None else evidence.llc_mcse or 0.0
    if evidence.llc_mean + SIGNIFICANCE * error < 0:
        return f"LLC {evidence.llc_mean:.4g} lies below 0 by more than {SIGNIFICANCE:g} standard errors ({error:.2g})"
    return None


def _negative_chains(evidence: Evidence, limits: HealthThresholds) -> str | None:
    share = evidence.negative_chains
    if share is None:
        return "the chains' LLC is undefined"
    if share > limits.max_negative_fraction:
        return f"{share:.0%} of chains sit below the checkpoint's loss (more than {SIGNIFICANCE:g} standard errors; limit {limits.max_negative_fraction:.0%})"
    return None


def _drift(evidence: Evidence, limits: HealthThresholds) -> str | None:
    if evidence.drift_z is None:
        return "drift undefined (trace too short)"
    if abs(evidence.drift_z) > limits.max_drift_z:
        return f"the LLC drifts: late draws differ from early ones by {evidence.drift_z:+.1f} standard errors (limit {limits.max_drift_z:g})"
    return None


def _r_hat(evidence: Evidence, limits: HealthThresholds) -> str | None:
    if evidence.r_hat is not None and evidence.r_hat > limits.max_r_hat:
        return f"the chains disagree: R-hat {evidence.r_hat:.3f} > {limits.max_r_hat:g}"
    return None


def _ess(evidence: Evidence, limits: HealthThresholds) -> str | None:
    if limits.min_ess is not None and (evidence.ess is None or evidence.ess < limits.min_ess):
        shown = "undefined" if evidence.ess is None else f"{evidence.ess:.0f}"
        return f"too few effective samples: ESS {shown} < {limits.min_ess:g}"
    return None


def _acceptance(evidence: Evidence, limits: HealthThresholds) -> str | None:
    if evidence.mala_acceptance is not None and evidence.mala_acceptance < limits.target_acceptance:
        return f"MALA acceptance {evidence.mala_acceptance:.3f} < {limits.target_acceptance:g}: epsilon is too large for the curvature"
    return None


CHECKS = (
    Check("diverged", _diverged, "chains left the basin: try smaller epsilons or larger gammas"),
    Check("relaxed", _unrelaxed,
          "the chains were still spreading out from the checkpoint: more burn-in steps (with the automatic burn-in, "
          "more draws, or set num_burnin_steps), or larger epsilons or gammas"),
    Check("llc_mean < 0", _negative,
          "chains found lower loss than the checkpoint: try larger gammas or smaller epsilons (or a checkpoint closer to a minimum)"),
    Check("negative_chains", _negative_chains,
          "some chains settle below the checkpoint's loss: try larger gammas or smaller epsilons"),
    Check("drift", _drift, "the LLC has not settled: try larger epsilons, or more draws or burn-in steps"),
    Check("r_hat", _r_hat, "the chains disagree: try larger epsilons, or more draws or burn-in steps"),
    Check("ess", _ess, "take more draws, or a larger epsilon"),
    Check("mala_acceptance", _acceptance, "steps are too large for the posterior's curvature: try smaller epsilons"),
)  # fmt: skip


def failed_checks(evidence: Evidence, limits: HealthThresholds, require_acceptance: bool = False) -> list[tuple[Check, str]]:
    """Every check ``evidence`` fails, in order, with its reason; a diverged estimate fails only that.

    Args:
        require_acceptance: an unmeasured MALA acceptance fails (the calibration rule needs it).
    """
    failed = []
    for check in CHECKS:
        message = check.failure(evidence, limits)
        if message is None and check.name == "mala_acceptance" and require_acceptance and evidence.mala_acceptance is None:
            message = "MALA acceptance was not measured"
        if message is not None:
            failed.append((check, message))
        if failed and failed[0][0].name == "diverged":
            return failed  # a diverged estimate's other numbers are undefined
    return failed


def short_reason(reason: str) -> str:
    """A sweep row's reason with the rule names abbreviated, for table cells and figures."""
    for name, label in (("burn-in < 2/(epsilon*gamma)", "not relaxed"), ("mala_acceptance", "MALA"), ("negative_chains", "neg"), ("|drift_z|", "drift z"), ("r_hat", "R-hat"), ("llc_mean", "LLC")):
        reason = reason.replace(name, label)
    return reason


def brief_reason(reason: str) -> str:
    """A health reason cut to its numbers where it has a comparison, for one-line listings:
    ``the chains disagree: R-hat 1.422 > 1.1`` -> ``R-hat 1.422 > 1.1``; other reasons unchanged."""
    for part in reason.split(": "):
        if "<" in part or ">" in part:
            return part.strip()
    return reason


def brief_reasons(reasons: Sequence[str]) -> str:
    """Health reasons for one line, each cut to its numbers: ``ESS 67 < 100; R-hat 1.422 > 1.1``."""
    return "; ".join(brief_reason(reason) for reason in reasons)
