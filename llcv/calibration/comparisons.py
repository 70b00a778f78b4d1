"""How the automatic calibration compares two trials: the move of the LLC between them with its
standard error, whether the search counts it as a move, the sensitivity entry it makes of it at
the pick, and the paired runs whose difference
measures a move with the noise they share cancelled (docs/calibration.md, "Half-gamma trials run
paired" and "Half-epsilon trials run coupled"). Apart from ``llcv.calibration.auto`` so that the search reads as its rules."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llcv.calibration.outcome import SETTINGS_DEPENDENT, Sensitivity
from llcv.calibration.trials import BURNIN_SHARES, LLC_SCALE_FLOOR, NEGLIGIBLE_DRIFT, Trial, TrialStatus, chains_standard_error, measured_burnin
from llcv.relaxation import relaxation_steps

# The search resolves moves of this share of the LLC: trials run until two standard errors of a
# difference between two of them, 2 * sqrt(2) * se, is at most this share (or the budget ends).
RESOLUTION = 0.05
# A move smaller than this share of the LLC is not chased further, however small its noise: the
# bias left past a halving that moves less is a few times this at most (docs/calibration.md).
NEGLIGIBLE_MOVE = NEGLIGIBLE_DRIFT
# Below this share of its size at the change, the slowest response is over: no asymptote is fitted.
SLOW_PART_DIED_OUT = 1e-6


def measured_move(reference: Trial, changed: Trial) -> tuple[float, float]:
    """How far ``changed``'s LLC lies from ``reference``'s, with its standard error: measured on the
    paired runs' difference when ``changed`` was run paired with ``reference``'s settings, else
    the difference of the two trials' LLCs, whose errors add."""
    if _paired(reference, changed):
        return changed.paired_move, changed.paired_move_se
    return changed.llc - reference.llc, math.hypot(reference.se, changed.se)


def _paired(reference: Trial, changed: Trial) -> bool:
    """Whether ``changed`` ran paired with ``reference``'s settings, its move measured on their difference."""
    return changed.paired_move is not None and (changed.reference_epsilon, changed.paired_gamma, changed.reference_batch_size) == (
        reference.epsilon, reference.gamma, reference.batch_size
    )


def differs(reference: Trial, changed: Trial) -> bool:
    """Whether ``changed``'s LLC differs from ``reference``'s by more than two standard errors of the
    move and by more than ``NEGLIGIBLE_MOVE`` of the LLC, or ``changed`` is a half-epsilon trial whose
    reference's chains left the basin beside its own: the halving changed more than the LLC."""
    if changed.reference_diverged:
        return True
    move, move_se = measured_move(reference, changed)
    return abs(move) > 2 * move_se and abs(move) > NEGLIGIBLE_MOVE * abs(reference.llc)


def with_paired_move(
    trial: Trial, trace: np.ndarray, reference_trace: np.ndarray, reference_epsilon: float, reference_gamma: float,
    reference_diverged: bool = False, reference_batch_size: int | None = None,
) -> Trial:
    """``trial`` (run beside a reference from the same states with the same noise and minibatches)
    with the move from the reference measured on the two runs' difference once both have settled.

    Common random numbers: the chains of both runs see the same minibatch at each step, so the
    minibatch's noise and the excursions both runs make together cancel from the difference,
    which keeps only what the changed setting does. Measured on a normal-crossing polynomial its
    variance was 12-16 times smaller than that of the difference of two independent trials, on
    a deep linear network about 4 times (docs/calibration.md); the pair costs twice the steps.

    A reference at k times the trial's epsilon (a half-epsilon trial: k = 2) took at each step the
    summed noise and the first minibatch of k of the trial's steps (``estimate_llc_states``'s
    ``coupled_steps``), so its draw j is compared with the trial's draw k j, at the same time
    epsilon * steps and on the same minibatch; the pair costs 1 + 1/k times the trial's steps.
    ``reference_diverged`` (only for such a trial: a half-gamma pair whose reference diverged counts
    as diverged itself): the reference's chains left the basin and the trial's did not; the move is
    then not measured, and the trial says so. ``reference_batch_size``: for a trial at twice the
    batch, run at the reference's settings beside the reference of another trial (the pick's
    half-epsilon trial), whose chain-steps count that reference: the trial's own are all it adds.
    Each of its steps took the two minibatches of the other trial's step pair joined, so its
    batch contains the reference's."""
    ratio = round(reference_epsilon / trial.epsilon)
    update: dict[str, Any] = {"paired_gamma": reference_gamma, "paired_epsilon": reference_epsilon}
    if reference_batch_size is None:
        update["chain_steps"] = trial.chain_steps + reference_trace.size
    else:
        update["paired_batch_size"] = reference_batch_size
    if reference_diverged:
        update["reference_diverged"] = True
    elif trial.llc is not None:
        difference = _paired_difference(trace, reference_trace, ratio)
        # The two runs part as the changed one relaxes to its own setting. Without their shared
        # noise the difference shows that relaxation where the changed run's own trace hides it
        # in its noise, so the move waits until the difference has settled as well.
        settled_at = _difference_settled_at(difference, trial.llc)
        if settled_at is None and trial.ok:
            update["status"] = TrialStatus.UNRELAXED
        start = max(math.ceil((trial.burnin or 0) / ratio), settled_at or 0) or int(round(BURNIN_SHARES[-1] * difference.shape[1]))
        window = difference[:, start:]
        if settled_at is None:
            # Still parting: the difference starts at 0 and relaxes towards the move, so its mean so
            # far is the move reached, at least the move where the relaxation heads one way. An
            # asymptote fitted to a relaxation the run barely covers would be a guess.
            move, inflation = float(window.mean()), 1.0
        else:
            # A drift test passes a creep below the noise, and the slowest directions creep for about
            # 2 / (epsilon gamma) steps: the move is where the difference heads, not its mean so far.
            # In the reference's steps, the trial's slowest directions relax at reference_epsilon * gamma.
            move, inflation = slowest_response_asymptote(window.mean(axis=0), start, reference_epsilon * trial.gamma)
        update.update(paired_move=move, paired_move_se=chains_standard_error(window) * inflation)
    return trial.model_copy(update=update)


def drifting_together(reference: Trial, trial: Trial, trace: np.ndarray, reference_trace: np.ndarray) -> bool:
    """Whether a half-epsilon ``trial``, run coupled beside ``reference``'s settings, has shown that
    halving the step does not move the LLC although its own chains have not settled: the
    difference of its runs has settled, resolves ``RESOLUTION`` of the LLC and is no move
    (``differs``), so what still drifts is a relaxation both runs share (at the first gamma, the
    chains still relaxing from the checkpoint), which cancels from the comparison. Continued, the
    trial would only wait out that shared drift (on the demo's CNN, a quarter of its budget). It
    stays unrelaxed (its own level is), so it cannot move epsilon: only a halving that moves
    nothing ends this way."""
    if trial.status is not TrialStatus.UNRELAXED or trial.paired_move is None or trial.reference_epsilon is None:
        return False
    ratio = round(trial.reference_epsilon / trial.epsilon)
    if ratio < 2 or _difference_settled_at(_paired_difference(trace, reference_trace, ratio), trial.llc) is None:
        return False
    error, target = resolving_error(trial)
    return error <= target and not differs(reference, trial)


def _paired_difference(trace: np.ndarray, reference_trace: np.ndarray, ratio: int) -> np.ndarray:
    """A paired trial's draws minus its reference's, at the same times: draw ``ratio * j`` of a trial
    at 1/``ratio`` of the reference's epsilon against the reference's draw ``j``."""
    return trace[:, ::ratio][:, : reference_trace.shape[1]] - reference_trace


def _difference_settled_at(difference: np.ndarray, llc: float) -> int | None:
    """Where the difference of two paired runs has settled, with the LLC they differ about as the
    scale of a negligible drift (``measured_burnin``)."""
    return measured_burnin(difference, scale=max(abs(llc), LLC_SCALE_FLOOR))


def slowest_response_asymptote(mean_trace: np.ndarray, start: int, rate: float) -> tuple[float, float]:
    """Where a response heads, and how many times the standard error of its plain mean its own is.

    ``mean_trace`` follows a change made ``start`` steps before its first value. Its faster parts
    have settled (the trace starts after its burn-in); what may still move follows the slowest
    relaxation the change can set off, ``exp(-rate * t)`` (the variance along a direction only the
    localization holds, ``rate = epsilon * gamma``). The least-squares fit of ``A - B exp(-rate
    t)`` gives the asymptote ``A``: the mean where the trace is flat, an extrapolation where it
    still creeps. Its error is the mean's times ``sqrt(1 + n s^2 / S)`` (``s`` the mean of the
    exponential over the trace's ``n`` values, ``S`` its sum of squared deviations): 1 once the
    slow part has died out, large where the trace covers little of it, infinite where it covers
    none of it measurably.
    """
    mean = float(mean_trace.mean())
    slow = np.exp(-rate * (start + np.arange(mean_trace.size)))
    level = float(slow.mean())
    spread = float(((slow - level) ** 2).sum())
    if level < SLOW_PART_DIED_OUT:
        return mean, 1.0
    if spread <= 0.0:
        return mean, math.inf
    creep = -float(((slow - level) * (mean_trace - mean)).sum()) / spread  # B: what the slow part has yet to move
    return mean + creep * level, math.sqrt(1.0 + mean_trace.size * level**2 / spread)


def resolving_error(trial: Trial) -> tuple[float | None, float]:
    """The standard error that decides whether ``trial`` resolves ``RESOLUTION`` of the LLC, and the
    most it may be: the move's for a paired trial (two of them resolve it: sqrt(2) times
    ``target_se``, which is one side of an unpaired difference), else the trial's own."""
    if trial.paired_move_se is not None:
        return trial.paired_move_se, math.sqrt(2) * target_se(trial.llc)
    return trial.se, target_se(trial.llc)


def target_se(llc: float | None) -> float:
    """The standard error a trial aims for: two standard errors of a difference of two trials,
    2 * sqrt(2) * se, resolve ``RESOLUTION`` of the LLC (of at least 0.1, for LLCs near 0)."""
    return RESOLUTION * max(abs(llc or 0.0), LLC_SCALE_FLOOR) / (2 * math.sqrt(2))


def sensitivity_entry(knob, value: float, changed_to: float, pick: Trial, changed: Trial | None, not_run: str = "the budget ran out") -> Sensitivity:
    """The move from ``pick`` to ``changed`` and its verdict; ``not_run`` says why ``changed`` is None."""
    if changed is None:
        return Sensitivity(knob=knob, value=value, changed_to=changed_to, llc=pick.llc, llc_changed=None, move=None,
                           move_se=None, relative=None, settings_dependent=None, note=f"not run: {not_run}")  # fmt: skip
    if changed.status is TrialStatus.UNRELAXED and _paired(pick, changed) and _beyond_tolerance(changed.paired_move, changed.paired_move_se, pick.llc):
        # The pair had not settled, but the move its difference had reached is already more than the
        # tolerance: the knob moves the LLC by at least that much, whatever is left of the relaxation.
        return Sensitivity(knob=knob, value=value, changed_to=changed_to, llc=pick.llc, llc_changed=changed.llc,
                           move=changed.paired_move, move_se=changed.paired_move_se, relative=changed.paired_move / pick.llc if pick.llc else None,
                           settings_dependent=True, at_least=True,
                           note="the changed trial had not relaxed: the move it reached, a lower bound")  # fmt: skip
    if not changed.ok or changed.reference_diverged:
        why = "the pick's chains diverged beside it" if changed.reference_diverged else f"the changed trial is {changed.status}"
        return Sensitivity(knob=knob, value=value, changed_to=changed_to, llc=pick.llc, llc_changed=changed.llc, move=None,
                           move_se=None, relative=None, settings_dependent=None, note=why)  # fmt: skip
    move, move_se = measured_move(pick, changed)
    relative = move / pick.llc if pick.llc else None
    dependent = _beyond_tolerance(move, move_se, pick.llc)
    # A move seen is a move (at least that large); a move not seen in a trial too short for the
    # localization's slowest directions to respond is not a measurement that it holds.
    short = too_short_for_gamma(changed) if knob == "gamma" and not dependent else None
    return Sensitivity(knob=knob, value=value, changed_to=changed_to, llc=pick.llc, llc_changed=changed.llc, move=move,
                       move_se=move_se, relative=relative, settings_dependent=None if short else dependent, note=short or "")  # fmt: skip


def _beyond_tolerance(move: float, move_se: float, llc: float) -> bool:
    """Whether a move exceeds ``SETTINGS_DEPENDENT`` of the LLC beyond two standard errors."""
    return abs(move) - 2 * move_se > SETTINGS_DEPENDENT * abs(llc)


def decides_a_halving(pick: Trial, smaller_step: Trial | None) -> bool:
    """Whether halving the pick's epsilon moved the estimate, so that the step goes on down: the
    half-step trial is healthy and ``differs`` from the pick, or the pick's own chains diverged
    beside it (its step is unstable there over a longer run, whatever the half step's health)."""
    if smaller_step is None:
        return False
    return smaller_step.reference_diverged or (smaller_step.ok and differs(pick, smaller_step))


def share_of(move: float, llc: float) -> float:
    """The size of ``move`` as a share of ``llc``: how sensitive the estimate is, whatever its scale
    (an LLC squeezed to nearly 0 is all sensitivity)."""
    return abs(move) / abs(llc) if llc else math.inf


def too_short_for_gamma(trial: Trial) -> str | None:
    """Why a trial at a weaker gamma cannot show gamma's move, or None when it can: it ran fewer
    steps than the directions only the localization holds take to relax at its gamma and epsilon
    (``llcv.relaxation.relaxation_steps``), so its chains had not yet spread to the weaker pull."""
    needed = relaxation_steps(trial.epsilon, trial.gamma)
    if trial.steps >= needed:
        return None
    return f"at half the gamma the chains ran {trial.steps:,} steps of the {needed:,.0f} (2/(epsilon*gamma)) they need to respond"
