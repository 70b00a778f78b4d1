"""Convergence diagnostics for sampler traces: R-hat, effective sample size, MCSE, drift.

R-hat, ESS and the Monte Carlo standard error come from ArviZ's ``arviz-stats``, the reference
implementation the field uses (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-
normalization, folding, and localization: an improved R-hat"): R-hat is rank-normalised split
R-hat (the larger of the bulk and the folded tail value), ESS the bulk ESS, and the MCSE of a
mean is computed from the ESS of the raw draws. Here they take a chains x draws array and say
None where a diagnostic is undefined, instead of returning NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from arviz_stats.base import array_stats

# A diagnostic needs at least this many draws per chain (each split half then has two).
MIN_DRAWS = 4


def _defined(traces: np.ndarray, min_chains: int = 1) -> bool:
    return traces.ndim == 2 and traces.shape[0] >= min_chains and traces.shape[1] >= MIN_DRAWS and bool(np.isfinite(traces).all())


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def split_r_hat(traces: np.ndarray) -> float | None:
    """Rank-normalised split R-hat of a chains x draws array; None with fewer than 2 chains or 4 draws.

    Values near 1 mean the chains agree; above about 1.1 they have not mixed. Chains that are
    all constant and equal give 1.0.
    """
    traces = np.asarray(traces, dtype=float)
    if not _defined(traces, min_chains=2):
        return None
    if np.ptp(traces) == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant chains that differ: inf, as it should be
        value = float(array_stats.rhat(traces, chain_axis=0, draw_axis=1, method="rank"))
    return float("inf") if np.isnan(value) or value == np.inf else value


def effective_sample_size(traces: np.ndarray) -> float | None:
    """Bulk effective sample size of a chains x draws array; None if undefined."""
    traces = np.asarray(traces, dtype=float)
    if not _defined(traces):
        return None
    if np.ptp(traces) == 0:
        return float(traces.size)
    return _finite(array_stats.ess(traces, chain_axis=0, draw_axis=1, method="bulk"))


def trace_drift(llc_trace: np.ndarray) -> float | None:
    """Relative change of the running LLC mean over the second half of the draws.

    ``(running[-1] - running[mid]) / |running[-1]|`` averaged over chains' mean trace; a stable
    estimate has |drift| well under 0.1. None when undefined (too short or a zero mean).
    """
    trace = np.asarray(llc_trace, dtype=float)
    if trace.ndim == 2:
        trace = np.nanmean(trace, axis=0)
    if len(trace) < 4 or not np.isfinite(trace).all():
        return None
    running = np.cumsum(trace) / np.arange(1, len(trace) + 1)
    final = running[-1]
    if final == 0:
        return None
    return float((final - running[len(running) // 2 - 1]) / abs(final))


def mcse_of_mean(traces: np.ndarray) -> float | None:
    """Monte Carlo standard error of the mean of a chains x draws array.

    None where it is undefined (fewer than 4 draws a chain, non-finite values); 0 for constant draws.
    """
    traces = np.asarray(traces, dtype=float)
    if not _defined(traces):
        return None
    if np.ptp(traces) == 0:
        return 0.0
    return _finite(array_stats.mcse(traces, chain_axis=0, draw_axis=1, method="mean"))


# Geweke (1992) compares the first 10% with the last 50%; with the short traces of a sweep a
# tenth is a handful of draws, so the early window is a fifth.
GEWEKE_FIRST = 0.2
GEWEKE_LAST = 0.5


def geweke_z(traces: np.ndarray, first: float = GEWEKE_FIRST, last: float = GEWEKE_LAST) -> float | None:
    """How far the early draws' mean lies from the late draws', in standard errors.

    Geweke's convergence diagnostic on a chains x draws array: ``(mean(late) - mean(early)) /
    sqrt(MCSE(early)^2 + MCSE(late)^2)``, each MCSE from the segment's multi-chain ESS, so a
    short or strongly autocorrelated trace needs a larger difference before it counts as drift.
    The early segment is often too short to measure its own autocorrelation (a sweep's 20 draws
    a chain against an autocorrelation time of 20 or more), which understates its MCSE: on
    stationary AR(1) chains with autocorrelation time 39, 2 x 100 draws, |z| exceeded 3 in 6-8% of
    traces instead of 0.3%. So its MCSE is at least what the late segment's noise (around the
    segment's linear trend, so that a trend does not hide itself) gives for a segment of the
    early one's length: 4-5% there (docs/calibration.md). Positive: the trace is still rising.
    None when a segment is too short or undefined.
    """
    traces = np.asarray(traces, dtype=float)
    if traces.ndim == 1:
        traces = traces[None, :]
    length = traces.shape[1]
    early = traces[:, : int(round(first * length))]
    late = traces[:, length - int(round(last * length)) :]
    early_error, late_error = _segment_error(early), _segment_error(late)
    if early_error is None or late_error is None:
        return None
    late_noise = _segment_error(_detrended(late))
    if late_noise is not None:
        early_error = max(early_error, late_noise * np.sqrt(late.shape[1] / early.shape[1]))
    spread = float(np.hypot(early_error, late_error))
    difference = float(late.mean() - early.mean())
    if spread == 0:
        return 0.0 if difference == 0 else float("inf") * np.sign(difference)
    return difference / spread


def _detrended(segment: np.ndarray) -> np.ndarray:
    """Each chain of a chains x draws segment less its least-squares line, keeping its mean."""
    steps = np.arange(segment.shape[1])
    slopes, intercepts = np.polyfit(steps, segment.T, 1)
    return segment - np.outer(slopes, steps) - intercepts[:, None] + segment.mean(axis=1, keepdims=True)


def _segment_error(segment: np.ndarray) -> float | None:
    """A segment's MCSE; a segment too short for an ESS (under 4 draws a chain) counts its draws as independent."""
    error = mcse_of_mean(segment)
    if error is None and segment.size >= 2 and np.isfinite(segment).all():
        error = float(np.std(segment, ddof=1) / np.sqrt(segment.size))
    return error
