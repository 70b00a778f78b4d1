"""Convergence diagnostics for sampler traces: split R-hat, effective sample size, drift.

Formulas follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
folding, and localization: an improved R-hat" (without the rank normalisation), and Stan's
ESS estimator with Geyer's initial monotone sequence.
"""

from __future__ import annotations

import numpy as np


def _split_chains(traces: np.ndarray) -> np.ndarray:
    half = traces.shape[1] // 2
    return np.concatenate([traces[:, :half], traces[:, half : 2 * half]], axis=0)


def split_r_hat(traces: np.ndarray) -> float | None:
    """Split R-hat of a chains x draws array; None with fewer than 2 chains or 4 draws.

    Values near 1 mean the chains agree; above about 1.1 they have not mixed.
    """
    traces = np.asarray(traces, dtype=float)
    if traces.ndim != 2 or traces.shape[0] < 2 or traces.shape[1] < 4 or not np.isfinite(traces).all():
        return None
    split = _split_chains(traces)
    length = split.shape[1]
    within = split.var(axis=1, ddof=1).mean()
    between_over_n = split.mean(axis=1).var(ddof=1)
    if within == 0:
        return 1.0 if between_over_n == 0 else float("inf")
    pooled = (length - 1) / length * within + between_over_n
    return float(np.sqrt(pooled / within))


def _autocovariance(chain: np.ndarray) -> np.ndarray:
    length = len(chain)
    centred = chain - chain.mean()
    padded = np.fft.rfft(centred, n=2 * length)
    autocovariance = np.fft.irfft(padded * np.conjugate(padded))[:length]
    return autocovariance / length


def effective_sample_size(traces: np.ndarray) -> float | None:
    """Effective sample size of a chains x draws array (Stan's estimator); None if undefined."""
    traces = np.asarray(traces, dtype=float)
    if traces.ndim != 2 or traces.shape[1] < 4 or not np.isfinite(traces).all():
        return None
    num_chains, length = traces.shape
    autocovariances = np.stack([_autocovariance(chain) for chain in traces])
    chain_variances = autocovariances[:, 0] * length / (length - 1)
    within = chain_variances.mean()
    pooled = (length - 1) / length * within + (traces.mean(axis=1).var(ddof=1) if num_chains > 1 else 0.0)
    if pooled <= 0:
        return float(num_chains * length)
    rho = 1.0 - (within - autocovariances.mean(axis=0)) / pooled
    rho[0] = 1.0
    # Geyer's initial positive sequence of pair sums, made monotone.
    pair_sums = []
    for start in range(0, length - 1, 2):
        pair = rho[start] + rho[start + 1]
        if pair <= 0:
            break
        pair_sums.append(min(pair, pair_sums[-1]) if pair_sums else pair)
    tau = -1.0 + 2.0 * float(np.sum(pair_sums)) if pair_sums else 1.0
    tau = max(tau, 1.0 / np.log10(num_chains * length + 10))
    return float(num_chains * length / tau)


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
    """Monte Carlo standard error of the mean of a chains x draws array: ``sd / sqrt(ESS)``.

    None where the ESS is undefined (fewer than 4 draws, non-finite values).
    """
    traces = np.asarray(traces, dtype=float)
    ess = effective_sample_size(traces)
    if ess is None or ess <= 0:
        return None
    return float(np.std(traces, ddof=1) / np.sqrt(ess)) if traces.size > 1 else None


# Geweke (1992) compares the first 10% with the last 50%; with the short traces of a sweep a
# tenth is a handful of draws, so the early window is a fifth.
GEWEKE_FIRST = 0.2
GEWEKE_LAST = 0.5


def geweke_z(traces: np.ndarray, first: float = GEWEKE_FIRST, last: float = GEWEKE_LAST) -> float | None:
    """How far the early draws' mean lies from the late draws', in standard errors.

    Geweke's convergence diagnostic on a chains x draws array: ``(mean(late) - mean(early)) /
    sqrt(MCSE(early)^2 + MCSE(late)^2)``, each MCSE from the segment's multi-chain ESS, so a
    short or strongly autocorrelated trace needs a larger difference before it counts as drift.
    Positive: the trace is still rising. None when a segment is too short or undefined.
    """
    traces = np.asarray(traces, dtype=float)
    if traces.ndim == 1:
        traces = traces[None, :]
    length = traces.shape[1]
    early = traces[:, : int(round(first * length))]
    late = traces[:, length - int(round(last * length)) :]
    errors = [_segment_error(segment) for segment in (early, late)]
    if None in errors:
        return None
    spread = float(np.hypot(*errors))
    difference = float(late.mean() - early.mean())
    if spread == 0:
        return 0.0 if difference == 0 else float("inf") * np.sign(difference)
    return difference / spread


def _segment_error(segment: np.ndarray) -> float | None:
    """A segment's MCSE; a segment too short for an ESS (under 4 draws a chain) counts its draws as independent."""
    error = mcse_of_mean(segment)
    if error is None and segment.size >= 2 and np.isfinite(segment).all():
        error = float(np.std(segment, ddof=1) / np.sqrt(segment.size))
    return error
