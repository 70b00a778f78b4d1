"""One trial of the automatic calibration: a short estimate at (epsilon, gamma, batch size), its
burn-in measured on its own chains, summarised as a ``Trial``.

A trial runs its chains from the checkpoint with no burn-in and records every step. Where the
transient ends is then read off the chains (``measured_burnin``) instead of assumed: the
smallest of a few candidate burn-ins after which the draws no longer drift (Geweke). The trial's
LLC, its standard error and its health are those of the draws after that burn-in.
"""

from __future__ import annotations

import math
import warnings
from enum import StrEnum
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

from llcv.diagnostics import GEWEKE_FIRST, GEWEKE_LAST, effective_sample_size, geweke_z, mcse_of_mean, split_r_hat

# Chains per trial: as many as the estimate runs, so that the chains' spread, which carries the
# slow wander the MCSE misses, is measured as the estimate will see it.
TRIAL_CHAINS = 4
# Candidate burn-ins, as shares of a trial's steps: the smallest after which the draws pass the
# drift test is the trial's measured burn-in. At most 30%: a drift test sees a slow transient only
# in a trace a few times longer than it, so a trial that needs more is continued instead.
BURNIN_SHARES = (0.1, 0.2, 0.3)
# A candidate burn-in qualifies when the rest of the trace drifts by at most this many standard
# errors (Geweke: the first fifth of the draws against the last half). Stricter than the 3 of an
# estimate's health check because the smallest of five candidates is taken: each extra look is
# another chance for a drifting trace to pass by noise.
MAX_BURNIN_DRIFT_Z = 2.0
# A drift this small a share of the LLC does not hold a trial back, however many standard errors it
# is: the search does not resolve moves below this either (llcv.calibration.auto.NEGLIGIBLE_MOVE).
NEGLIGIBLE_DRIFT = 0.025
MAX_R_HAT = 1.1
# An LLC's scale is its size, but at least this: near 0 a share of the LLC is no yardstick.
LLC_SCALE_FLOOR = 0.1
# A trial keeps its chain-mean trace at most this long (thinned by block means) for the figures.
TRACE_POINTS = 400
# A mean LLC this many standard errors below 0 (or a chain's) means the chains found lower loss
# than the checkpoint: the localization let them escape (llcv.health.SIGNIFICANCE).
SIGNIFICANCE = 2.0


class TrialStatus(StrEnum):
    """A trial's health: whether its LLC can be compared with another's, and if not, why.

    The values are what calibration.json and trials.csv record (docs/formats.md).
    """

    OK = "ok"
    DIVERGED = "diverged"  # a chain left the basin
    ESCAPED = "escaped"  # the chains settle below the checkpoint's loss
    UNRELAXED = "unrelaxed"  # the draws still drift after every candidate burn-in
    UNMIXED = "unmixed"  # R-hat above MAX_R_HAT

    @property
    def left_the_basin(self) -> bool:
        """The chains ended where the next trial must not go on from: diverged, or below the checkpoint's loss."""
        return self in (TrialStatus.DIVERGED, TrialStatus.ESCAPED)


class Trial(BaseModel):
    """One trial estimate of the search and what was measured on it (docs/calibration.md).

    Attributes:
        epsilon, gamma, batch_size: the settings tried (nbeta, sampler and chains are the search's).
        steps: SGLD steps each chain ran, burn-in included.
        burnin: the measured burn-in (steps), or None when no candidate let the draws settle.
        llc: the mean LLC of the draws after ``burnin`` (after the largest candidate when unrelaxed).
        se: its standard error from the chains alone: the larger of the MCSE and the chains'
            spread over sqrt(chains). Trials of one search share their initial loss, whose error
            cancels from their differences, so it is left out.
        ess, r_hat, drift_z: of the draws after the burn-in.
        status: ``TrialStatus``: ok, or why the trial's LLC cannot be compared with another's.
        from_checkpoint: whether the chains started at the checkpoint (else where the previous
            trial left them, so the burn-in measured is a re-settling, not the relaxation).
        chain_steps: steps times chains: what the trial cost in gradient evaluations.
        seconds: its wall time.
        trace: the chains' mean per-draw LLC over all steps, in at most ``TRACE_POINTS`` block means.
        paired_epsilon, paired_gamma, paired_move, paired_move_se: for a trial run paired with a
            reference (the search's half-gamma and half-epsilon trials): the reference's epsilon and
            gamma, and the move of the LLC from the reference measured on the difference of the two
            runs, which shared their start, noise and minibatches (a half-epsilon trial's reference
            took the sum of its two steps' noise at each of its steps), with its standard error;
            None otherwise (``paired_epsilon`` also in files written before llcv 0.16, where only
            half-gamma trials ran paired, at their reference's epsilon). ``chain_steps`` then counts
            both runs.
        reference_diverged: for a half-epsilon trial (or the doubled batch beside its reference),
            whether a chain of its reference run (at twice its epsilon: the pick's) left the basin
            while its own did not: that step is unstable there over this longer run, and the move
            is not measured.
        paired_batch_size: the reference's batch size where it is not the trial's: a doubled-batch
            trial run beside the reference of the pick's half-epsilon trial (llcv 0.17); else None.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float
    gamma: float
    batch_size: int
    steps: int
    burnin: int | None
    llc: float | None
    se: float | None
    ess: float | None
    r_hat: float | None
    drift_z: float | None
    status: TrialStatus
    from_checkpoint: bool
    chain_steps: int
    seconds: float
    trace: list[float | None]
    paired_gamma: float | None = None
    paired_epsilon: float | None = None
    paired_move: float | None = None
    paired_move_se: float | None = None
    reference_diverged: bool = False
    paired_batch_size: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the trial's LLC can be compared with another's."""
        return self.status is TrialStatus.OK

    @property
    def settled(self) -> bool:
        """Whether the chains stopped drifting in the basin: ok, or unmixed (chains that settled at
        levels of their own, as chains too slow to cross between them do). Its burn-in is then a
        measured relaxation, which is what a burn-in from the checkpoint needs, mixed or not."""
        return self.status in (TrialStatus.OK, TrialStatus.UNMIXED)

    @property
    def reference_epsilon(self) -> float | None:
        """The epsilon of the reference this trial ran paired with, or None when it ran alone."""
        if self.paired_gamma is None:
            return None
        return self.paired_epsilon if self.paired_epsilon is not None else self.epsilon

    @property
    def reference_batch_size(self) -> int:
        """The batch size of the reference this trial ran paired with (its own, unless doubled beside it)."""
        return self.paired_batch_size or self.batch_size

    def draws_for(self, standard_error: float) -> int | None:
        """The draws after the burn-in that would bring the standard error down to ``standard_error``
        at this trial's rate of mixing (standard errors fall as one over the square root of the draws)."""
        if self.se is None or self.burnin is None or standard_error <= 0:
            return None
        draws = self.steps - self.burnin
        return math.ceil(draws * (self.se / standard_error) ** 2)


def summarise_trial(
    trace: np.ndarray, diverged: np.ndarray, epsilon: float, gamma: float, batch_size: int, seconds: float, from_checkpoint: bool
) -> Trial:
    """The trial of a chains x steps per-draw LLC trace (NaN after a chain diverged), with its
    burn-in measured on the trace itself."""
    chains, steps = trace.shape
    common = dict(epsilon=epsilon, gamma=gamma, batch_size=batch_size, steps=steps, chain_steps=steps * chains, seconds=seconds,
                  from_checkpoint=from_checkpoint)
    if diverged.any() or not np.isfinite(trace).all():
        shown = trace[~diverged] if (~diverged).any() else trace
        return Trial(**common, burnin=None, llc=None, se=None, ess=None, r_hat=None, drift_z=None, status=TrialStatus.DIVERGED, trace=_thinned(shown))
    burnin = measured_burnin(trace)
    draws = trace[:, (burnin if burnin is not None else int(round(BURNIN_SHARES[-1] * steps))) :]
    llc, se = float(draws.mean()), chains_standard_error(draws)
    r_hat = split_r_hat(draws)
    status = TrialStatus.OK
    if _escaped(draws, llc, se):
        status = TrialStatus.ESCAPED
    elif burnin is None:
        status = TrialStatus.UNRELAXED
    elif r_hat is not None and r_hat > MAX_R_HAT:
        status = TrialStatus.UNMIXED
    return Trial(
        **common, burnin=burnin, llc=llc, se=se, ess=effective_sample_size(draws), r_hat=r_hat, drift_z=geweke_z(draws),
        status=status, trace=_thinned(trace),
    )  # fmt: skip


def _escaped(draws: np.ndarray, llc: float, se: float) -> bool:
    """Whether the chains found materially lower loss than the checkpoint: the LLC, or a chain's
    own mean, lies more than ``SIGNIFICANCE`` standard errors below 0 and by more than
    ``NEGLIGIBLE_DRIFT`` of the LLC's scale (its size, at least ``LLC_SCALE_FLOOR``). Chains that
    barely move from a degenerate checkpoint read LLCs of nearly 0 with tiny errors, whose sign
    is noise."""
    material = NEGLIGIBLE_DRIFT * max(abs(llc), LLC_SCALE_FLOOR)
    chain_errors = [mcse_of_mean(chain[None, :]) or 0.0 for chain in draws]
    values = [(llc, se), *zip(draws.mean(axis=1), chain_errors)]
    return any(value + SIGNIFICANCE * error < 0 and value < -material for value, error in values)


def measured_burnin(trace: np.ndarray, scale: float | None = None) -> int | None:
    """The smallest of ``BURNIN_SHARES`` of the steps after which a chains x steps LLC trace has
    settled (``settled``, with ``scale``), in steps; None when none has."""
    steps = trace.shape[1]
    for share in BURNIN_SHARES:
        burnin = int(round(share * steps))
        if settled(trace[:, burnin:], scale):
            return burnin
    return None


def settled(draws: np.ndarray, scale: float | None = None) -> bool:
    """Whether a chains x draws LLC trace no longer drifts: its late draws (the last half) differ
    from its early ones (the first fifth) by at most ``MAX_BURNIN_DRIFT_Z`` standard errors
    (Geweke), or by at most ``NEGLIGIBLE_DRIFT`` of ``scale`` (by default the trace's mean, the
    LLC; for a difference of two runs, the LLC they differ about). The second clause stops a long
    trace, whose small standard errors resolve ever slower creeps, from never counting as settled
    over a drift too small to matter."""
    z = geweke_z(draws)
    if z is None:
        return False
    if abs(z) <= MAX_BURNIN_DRIFT_Z:
        return True
    length = draws.shape[1]
    early = draws[:, : int(round(GEWEKE_FIRST * length))].mean()
    late = draws[:, length - int(round(GEWEKE_LAST * length)) :].mean()
    return abs(late - early) <= NEGLIGIBLE_DRIFT * abs(draws.mean() if scale is None else scale)


def chains_standard_error(draws: np.ndarray) -> float:
    """The larger of the MCSE and the spread of the chains' means over sqrt(chains)
    (``llcv.health.trace_evidence``: independent chains show the slow wander the MCSE misses)."""
    mcse = mcse_of_mean(draws) or 0.0
    spread = float(draws.mean(axis=1).std(ddof=1)) / math.sqrt(len(draws)) if len(draws) > 1 else 0.0
    return max(mcse, spread)


def _thinned(trace: np.ndarray) -> list[float | None]:
    if not trace.size:
        return []
    if np.isfinite(trace).any():
        with warnings.catch_warnings():
            # a step after every chain diverged has no finite value: NaN there is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(trace, axis=0)
    else:
        mean = trace[0]
    block = max(1, math.ceil(len(mean) / TRACE_POINTS))
    usable = len(mean) // block * block
    values = mean[:usable].reshape(-1, block).mean(axis=1) if usable else mean
    return [float(value) if np.isfinite(value) else None for value in values]


def trace_array(nested: Sequence[Sequence[float | None]]) -> np.ndarray:
    """A result's per-chain trace (``LLCResult.llc_trace``: chains x draws, None where a draw is
    missing) as a float array with NaN in those places."""
    return np.array([[np.nan if value is None else value for value in row] for row in nested], dtype=float).reshape(
        len(nested), -1
    )
