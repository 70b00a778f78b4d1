"""The calibration rule: which sweep rows qualify, and which one is recommended (docs/calibration.md).

A row qualifies when it passes ``llcv.health``'s checks; among qualifying rows the pick looks for
a plateau in epsilon (and in gamma), so neither the step size nor the localization biases the LLC.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from llcv.health import CHECKS, Evidence, failed_checks, rule_limits, rule_texts
from llcv.relaxation import relaxation_steps
from llcv.settings import CalibrateSettings

# The thresholds of the rule; their defaults are CalibrateSettings' defaults.
RULE_FIELDS = ("target_acceptance", "max_negative_fraction", "max_drift_z", "max_r_hat")
RULE_DEFAULTS = CalibrateSettings()
# Two LLCs agree when they differ by at most this many combined Monte Carlo standard errors and
# by at most PLATEAU_TOLERANCE of the larger in size. Between two epsilons the difference is read
# as SGLD's first-order step-size bias: extrapolated linearly to epsilon = 0 it may be at most
# PLATEAU_TOLERANCE of the LLC. Short sweeps have MCSEs wide enough to hide a 20% bias, and a
# comparison that cannot resolve one must not pass for a plateau.
AGREEMENT = 2.0
PLATEAU_TOLERANCE = 0.1


def row_evidence(row: dict[str, Any], num_chains: int = 2) -> Evidence:
    """What the health checks read from a sweep row."""
    return Evidence(
        num_chains=num_chains,
        diverged_chains=int(bool(row.get("diverged"))),
        llc_mean=None if row.get("diverged") else row.get("llc_mean"),
        llc_mcse=row.get("llc_mcse"),
        llc_se=row.get("llc_se"),
        negative_chains=row.get("negative_chains"),
        drift_z=row.get("drift_z"),
        r_hat=row.get("r_hat"),
        ess=row.get("ess"),
        mala_acceptance=row.get("mala_acceptance"),
        burnin_steps=row.get("num_burnin_steps"),
        relaxation_steps=relaxation_steps(row["epsilon"], row["gamma"]),
    )


def apply_rule(
    rows: Sequence[dict[str, Any]],
    *,
    target_acceptance: float = RULE_DEFAULTS.target_acceptance,
    max_negative_fraction: float = RULE_DEFAULTS.max_negative_fraction,
    max_drift_z: float = RULE_DEFAULTS.max_drift_z,
    max_r_hat: float = RULE_DEFAULTS.max_r_hat,
) -> tuple[list[dict[str, Any]], int | None, str]:
    """The calibration rule: which rows qualify, and which one is recommended.

    A row qualifies if it passes the health checks of ``llcv.health``, in this order: it did not
    diverge; its chains had relaxed from the checkpoint, ``num_burnin_steps >= 2 / (epsilon * gamma)``
    (``llcv.relaxation.relaxation_steps``; never at gamma 0; unchecked in a row without
    ``num_burnin_steps``); ``llc_mean`` is not below 0 by more than 2 standard errors (``llc_se``,
    ``llcv.health.trace_evidence``; the MCSE in rows from before llcv 0.9); at most ``max_negative_fraction``
    of its chains have a mean significantly below 0; ``|drift_z| <= max_drift_z`` (Geweke);
    ``r_hat <= max_r_hat`` (skipped where null: one chain); ``mala_acceptance >= target_acceptance``.

    Among qualifying rows, per (gamma, nbeta), the pick is the largest epsilon whose LLC agrees
    with that of the next smaller qualifying epsilon: within ``AGREEMENT`` combined MCSE, and with
    a step-size bias, extrapolated linearly in epsilon to 0 through the two, of at most
    ``PLATEAU_TOLERANCE`` of the LLC: a
    plateau in epsilon, so the step size is not biasing the estimate. Where no two neighbours
    agree, the smallest qualifying epsilon (least discretisation bias). Across gammas, picks on
    an epsilon plateau come first, then those whose LLC also agrees with the pick at a
    neighbouring gamma (a plateau in gamma), then the smallest gamma (least localization bias),
    then the largest epsilon.

    Args:
        rows: sweep rows (``ROW_FIELDS``); ``qualifies``, ``reason`` and ``failed_check`` are ignored.

    Returns:
        New rows with ``qualifies``, ``reason`` (the first rule failed, as ``llcv.health.rule_texts``
        states it, or "") and ``failed_check`` (that check's name, or ""), the index
        of the recommended row (None if none qualifies), and a sentence saying why: which
        row won and on what evidence, or which rule failed most and which way to move the grid.
        "Failed most" counts every rule a row fails, except that a diverged row counts only as diverged.
    """
    limits = rule_limits({
        "target_acceptance": target_acceptance, "max_negative_fraction": max_negative_fraction, "max_drift_z": max_drift_z,
        "max_r_hat": max_r_hat,
    })  # fmt: skip
    texts = rule_texts(limits)
    judged, failures = [], {check.name: 0 for check in CHECKS}
    for row in rows:
        failed = failed_checks(row_evidence(row), limits, require_acceptance=True)
        for failure in failed:
            failures[failure.check] += 1
        first = failed[0].check if failed else ""
        judged.append({**row, "qualifies": not failed, "reason": texts[first].reason if failed else "", "failed_check": first})
    qualifying = [index for index, row in enumerate(judged) if row["qualifies"]]
    if qualifying:
        best, why = _pick(judged, qualifying)
        row = judged[best]
        reason = (
            f"epsilon={row['epsilon']:g}, gamma={row['gamma']:g}, nbeta={row['nbeta']:.4g}: {why} "
            f"({len(qualifying)} of {len(judged)} combinations qualify), MALA acceptance "
            f"{row['mala_acceptance']:.3f}, LLC {row['llc_mean']:.4g} ± {row['llc_mcse'] or 0:.2g} (MCSE)"
        )
        return judged, best, reason
    if not judged:
        return judged, None, "the grid is empty"
    worst = max(CHECKS, key=lambda check: failures[check.name])
    reason = (
        f"no combination qualifies: '{texts[worst.name].reason}' failed most ({failures[worst.name]} of {len(judged)} "
        f"combinations); {worst.advice}"
    )
    return judged, None, reason


def _agree(first: dict[str, Any], second: dict[str, Any], share: float = 1.0) -> bool:
    """Whether two rows' LLCs differ by at most ``AGREEMENT`` combined MCSE and by at most
    ``share * PLATEAU_TOLERANCE`` of the larger in size. The MCSE alone: rows of one sweep share
    their initial loss, so its error moves both LLCs alike and cancels from their difference."""
    spread = math.hypot(first["llc_mcse"] or 0.0, second["llc_mcse"] or 0.0)
    difference = abs(first["llc_mean"] - second["llc_mean"])
    scale = max(abs(first["llc_mean"]), abs(second["llc_mean"]))
    return difference <= AGREEMENT * spread and difference <= share * PLATEAU_TOLERANCE * scale


def _on_epsilon_plateau(smaller: dict[str, Any], larger: dict[str, Any]) -> bool:
    """Whether ``larger``'s step-size bias, extrapolated linearly in epsilon to 0 through
    ``smaller``, is within ``PLATEAU_TOLERANCE`` (and the two agree within their MCSE)."""
    return _agree(smaller, larger, share=1.0 - smaller["epsilon"] / larger["epsilon"])


def _pick(rows: list[dict[str, Any]], qualifying: list[int]) -> tuple[int, str]:
    """The recommended row among qualifying ones (``apply_rule``'s docstring), and why in words."""
    by_gamma: dict[tuple[float, float], list[int]] = {}
    for index in qualifying:
        by_gamma.setdefault((rows[index]["nbeta"], rows[index]["gamma"]), []).append(index)
    picks = {}  # (nbeta, gamma) -> (index, on an epsilon plateau)
    for key, indices in by_gamma.items():
        ordered = sorted(indices, key=lambda index: rows[index]["epsilon"])
        plateau = [upper for lower, upper in zip(ordered, ordered[1:]) if _on_epsilon_plateau(rows[lower], rows[upper])]
        picks[key] = (plateau[-1], True) if plateau else (ordered[0], False)

    def gamma_plateau(key: tuple[float, float]) -> bool:
        same_nbeta = sorted(other for other in picks if other[0] == key[0])
        position = same_nbeta.index(key)
        neighbours = same_nbeta[max(position - 1, 0) : position] + same_nbeta[position + 1 : position + 2]
        return any(_agree(rows[picks[key][0]], rows[picks[other][0]]) for other in neighbours)

    best_key = max(picks, key=lambda key: (picks[key][1], gamma_plateau(key), -key[1], rows[picks[key][0]]["epsilon"]))
    index, on_plateau = picks[best_key]
    if on_plateau:
        why = (
            "the largest epsilon whose LLC agrees with the next smaller qualifying epsilon's within the combined MCSE, "
            f"with a step-size bias, extrapolated to epsilon 0, under {PLATEAU_TOLERANCE:.0%}"
        )
    else:
        why = "the smallest qualifying epsilon (no two qualifying epsilons agree at this gamma, so no step-size plateau was seen)"
    if len(picks) > 1:
        why += "; its LLC agrees with a neighbouring gamma's" if gamma_plateau(best_key) else "; the smallest such gamma"
    return index, why


def rule_thresholds(settings: Any) -> dict[str, float]:
    """The rule's thresholds by name, from anything that has them as fields: the ``[calibrate]``
    settings or a ``SweepGrid``."""
    return {field: getattr(settings, field) for field in RULE_FIELDS}


def recommended_row(rows: Sequence[Mapping[str, Any]], recommended: Mapping[str, Any] | None) -> int | None:
    """The index of the qualifying row with the recommended (epsilon, gamma, nbeta), or None.

    Args:
        recommended: the recommendation as in ``recommended.json`` or sweep.json's ``recommended``.
    """
    if not recommended:
        return None
    key = (recommended.get("epsilon"), recommended.get("gamma"), recommended.get("nbeta"))
    return next(
        (index for index, row in enumerate(rows) if row.get("qualifies") and (row.get("epsilon"), row.get("gamma"), row.get("nbeta")) == key),
        None,
    )
