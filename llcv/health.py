"""Health of an LLC estimate: the checks that say whether its number can be read, and why not.

One list of checks serves two readers: every estimate's ``healthy`` / ``health_reasons``
(``LLCResult``, result records, ``summary.csv``, the plot) and the calibration rule
(``llcv.calibration.apply_rule``), which judges each sweep row by the same checks in the same
order. Noise is judged by its known size: a mean LLC or a chain counts as below the checkpoint's
loss only when it lies more than ``SIGNIFICANCE`` standard errors below 0 (``trace_evidence``: the
chains' error, and that of the initial loss it is measured from), and drift
is Geweke's early-against-late comparison in standard errors, so a short trace or a small
positive LLC is not rejected for noise alone.

A failed check is a ``HealthFailure``, made where the check runs, with each form its readers show:
the full sentence (``health_reasons``), the brief numeric form for one-line listings, and the
check's name, by which a sweep row's verdict is stated as a rule (``rule_texts``). Readers choose
a form by attribute; no reader takes a reason apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

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
class HealthFailure:
    """A failed health check, in each form its readers show it, made where the check ran.

    Attributes:
        check: the check's name (``CHECKS``: ``"r_hat"``); None for a failed estimate's error
            and for a reason read from a result that recorded only its sentence (``from_sentence``).
        sentence: the reason in plain language with its numbers and limit (``health_reasons``):
            ``the chains disagree: R-hat 1.422 > 1.1``.
        brief: the measured number against its limit, for one-line listings: ``R-hat 1.422 > 1.1``.
    """

    check: str | None
    sentence: str
    brief: str

    @classmethod
    def of_error(cls, error: str) -> "HealthFailure":
        """A failed estimate's error as its one reason (no check ran)."""
        return cls(None, error, error)

    @classmethod
    def from_sentence(cls, sentence: str) -> "HealthFailure":
        """The reason of a result written before llcv 0.12, which recorded only the sentence.

        The brief form is cut from the sentence: the part between ``": "`` separators that holds
        a comparison (``the chains disagree: R-hat 1.422 > 1.1`` -> ``R-hat 1.422 > 1.1``), else
        the whole sentence. Results since then record ``health_failures``, read as they are.
        """
        brief = next((part.strip() for part in sentence.split(": ") if "<" in part or ">" in part), sentence)
        return cls(None, sentence, brief)


@dataclass(frozen=True)
class RuleText:
    """A check as the calibration rule states it, with its threshold: a sweep row's verdict."""

    reason: str  # as a sweep row records it: ``r_hat > 1.1``
    short: str  # for table cells and figures: ``R-hat > 1.1``


class _Found(NamedTuple):
    """What a failed check says: its sentence and its brief numeric form (``HealthFailure``)."""

    sentence: str
    brief: str


@dataclass(frozen=True)
class Check:
    """One check: its name, what fails it, and which way to move the grid."""

    name: str
    failure: Callable[[Evidence, HealthThresholds], _Found | None]  # what it found, or None when it passes
    advice: str


def _diverged(evidence: Evidence, _: HealthThresholds) -> _Found | None:
    if evidence.llc_mean is None:
        return _Found("every chain diverged", "every chain diverged")
    if evidence.diverged_chains:
        said = f"{evidence.diverged_chains} of {evidence.num_chains} chains diverged"
        return _Found(said, said)
    return None


def _unrelaxed(evidence: Evidence, _: HealthThresholds) -> _Found | None:
    if evidence.burnin_steps is None or evidence.relaxation_steps is None:
        return None
    if evidence.burnin_steps < evidence.relaxation_steps:
        never = math.isinf(evidence.relaxation_steps)
        needed = "no burn-in is enough at gamma 0" if never else f"needs {evidence.relaxation_steps:,.0f}"
        brief = f"burn-in {evidence.burnin_steps:,} < " + ("2/(epsilon*gamma) = inf at gamma 0" if never else f"2/(epsilon*gamma) = {evidence.relaxation_steps:,.0f}")
        if evidence.burnin_capped:
            return _Found(
                f"the burn-in was cut short by its cap: {evidence.burnin_steps:,} steps ({AUTO_BURNIN_DRAW_FACTOR} x the draws' steps), "
                f"the chains' relaxation 2 / (epsilon * gamma) {needed}",
                brief + " (capped)",
            )
        return _Found(f"the chains had not relaxed from the checkpoint: {evidence.burnin_steps:,} burn-in steps, 2 / (epsilon * gamma) {needed}", brief)
    return None


def _negative(evidence: Evidence, _: HealthThresholds) -> _Found | None:
    error = evidence.llc_se if evidence.llc_se is not None else evidence.llc_mcse or 0.0
    if evidence.llc_mean + SIGNIFICANCE * error < 0:
        return _Found(
            f"LLC {evidence.llc_mean:.4g} lies below 0 by more than {SIGNIFICANCE:g} standard errors ({error:.2g})",
            f"LLC {evidence.llc_mean:.4g} < {-SIGNIFICANCE * error:.2g} (-{SIGNIFICANCE:g} standard errors)",
        )
    return None


def _negative_chains(evidence: Evidence, limits: HealthThresholds) -> _Found | None:
    share = evidence.negative_chains
    if share is None:
        return _Found("the chains' LLC is undefined", "chains' LLC undefined")
    if share > limits.max_negative_fraction:
        return _Found(
            f"{share:.0%} of chains sit below the checkpoint's loss (more than {SIGNIFICANCE:g} standard errors; limit {limits.max_negative_fraction:.0%})",
            f"chains below 0 {share:.0%} > {limits.max_negative_fraction:.0%}",
        )
    return None


def _drift(evidence: Evidence, limits: HealthThresholds) -> _Found | None:
    if evidence.drift_z is None:
        return _Found("drift undefined (trace too short)", "drift undefined")
    if abs(evidence.drift_z) > limits.max_drift_z:
        return _Found(
            f"the LLC drifts: late draws differ from early ones by {evidence.drift_z:+.1f} standard errors (limit {limits.max_drift_z:g})",
            f"|drift z| {abs(evidence.drift_z):.1f} > {limits.max_drift_z:g}",
        )
    return None


def _r_hat(evidence: Evidence, limits: HealthThresholds) -> _Found | None:
    if evidence.r_hat is not None and evidence.r_hat > limits.max_r_hat:
        brief = f"R-hat {evidence.r_hat:.3f} > {limits.max_r_hat:g}"
        return _Found(f"the chains disagree: {brief}", brief)
    return None


def _ess(evidence: Evidence, limits: HealthThresholds) -> _Found | None:
    if limits.min_ess is not None and (evidence.ess is None or evidence.ess < limits.min_ess):
        shown = "undefined" if evidence.ess is None else f"{evidence.ess:.0f}"
        brief = f"ESS {shown} < {limits.min_ess:g}"
        return _Found(f"too few effective samples: {brief}", brief)
    return None


def _acceptance(evidence: Evidence, limits: HealthThresholds) -> _Found | None:
    if evidence.mala_acceptance is not None and evidence.mala_acceptance < limits.target_acceptance:
        brief = f"MALA acceptance {evidence.mala_acceptance:.3f} < {limits.target_acceptance:g}"
        return _Found(f"{brief}: epsilon is too large for the curvature", brief)
    return None


CHECKS = (
    Check("diverged", _diverged, "chains left the basin: try smaller epsilons or larger gammas"),
    Check("relaxed", _unrelaxed,
          "the chains were still spreading out from the checkpoint: more burn-in steps (with the automatic burn-in, "
          "more draws, or set num_burnin_steps), or larger epsilons or gammas"),
    Check("negative_llc", _negative,
          "chains found lower loss than the checkpoint: try larger gammas or smaller epsilons (or a checkpoint closer to a minimum)"),
    Check("negative_chains", _negative_chains,
          "some chains settle below the checkpoint's loss: try larger gammas or smaller epsilons"),
    Check("drift", _drift, "the LLC has not settled: try larger epsilons, or more draws or burn-in steps"),
    Check("r_hat", _r_hat, "the chains disagree: try larger epsilons, or more draws or burn-in steps"),
    Check("ess", _ess, "take more draws, or a larger epsilon"),
    Check("mala_acceptance", _acceptance, "steps are too large for the posterior's curvature: try smaller epsilons"),
)  # fmt: skip


CHECKS_BY_NAME = {check.name: check for check in CHECKS}


def failed_checks(evidence: Evidence, limits: HealthThresholds, require_acceptance: bool = False) -> list[HealthFailure]:
    """Every check ``evidence`` fails, in order; a diverged estimate fails only that.

    Args:
        require_acceptance: an unmeasured MALA acceptance fails (the calibration rule needs it).
    """
    failed = []
    for check in CHECKS:
        found = check.failure(evidence, limits)
        if found is None and check.name == "mala_acceptance" and require_acceptance and evidence.mala_acceptance is None:
            found = _Found("MALA acceptance was not measured", "MALA acceptance not measured")
        if found is not None:
            failed.append(HealthFailure(check.name, found.sentence, found.brief))
        if failed and failed[0].check == "diverged":
            return failed  # a diverged estimate's other numbers are undefined
    return failed


def rule_limits(rule: Mapping[str, float]) -> HealthThresholds:
    """The thresholds the calibration rule judges sweep rows by, from its ``rule`` settings
    (``target_acceptance``, ``max_negative_fraction``, ``max_drift_z``, ``max_r_hat``): the
    ESS is not checked, since calibration sweeps are short by design."""
    # only the thresholds this llcv knows: a sweep.json from a newer one may record more
    return HealthThresholds(min_ess=None, **{field: value for field, value in rule.items() if field in HealthThresholds.model_fields})


def rule_texts(limits: HealthThresholds) -> dict[str, RuleText]:
    """Each check, by its name, as the calibration rule states it with ``limits``' thresholds."""
    ess = f" < {limits.min_ess:g}" if limits.min_ess is not None else ""
    return {
        "diverged": RuleText("diverged", "diverged"),
        "relaxed": RuleText("burn-in < 2/(epsilon*gamma)", "not relaxed"),
        "negative_llc": RuleText("llc_mean < 0", "LLC < 0"),
        "negative_chains": RuleText(f"negative_chains > {limits.max_negative_fraction:g}", f"neg > {limits.max_negative_fraction:g}"),
        "drift": RuleText(f"|drift_z| > {limits.max_drift_z:g}", f"drift z > {limits.max_drift_z:g}"),
        "r_hat": RuleText(f"r_hat > {limits.max_r_hat:g}", f"R-hat > {limits.max_r_hat:g}"),
        "ess": RuleText(f"ess{ess}", f"ESS{ess}"),
        "mala_acceptance": RuleText(f"mala_acceptance < {limits.target_acceptance:g}", f"MALA < {limits.target_acceptance:g}"),
    }


def sweep_row_verdict(row: Mapping[str, Any], rule: Mapping[str, float]) -> str:
    """The first rule a judged sweep row fails, abbreviated for table cells and figures
    (``RuleText.short``: ``R-hat > 1.1``); "" where it qualifies.

    Args:
        row: a row of ``llcv.calibration.apply_rule`` or of a sweep.json; its ``failed_check``
            names the check. Rows written before llcv 0.12 lack it and record only the rule's text
            (``reason``): the rule is the one that reads exactly so under the sweep's thresholds,
            and a text that none reads (a newer llcv's rule) is shown as it is.
        rule: the thresholds the row was judged by (sweep.json's ``rule``).
    """
    texts = rule_texts(rule_limits(rule))
    if row.get("failed_check") in texts:
        return texts[row["failed_check"]].short
    reason = row.get("reason") or ""
    return next((text.short for text in texts.values() if text.reason == reason), reason)
