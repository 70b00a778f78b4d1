"""``calibrate_auto``: settings for an estimate of the model's LLC, found by measuring how the
estimate responds to the sampler's settings, within a stated budget (docs/calibration.md).

The search runs short trial estimates (``llcv.calibration.trials``) and follows rules read off
the chains rather than thresholds fitted to cases:

1. **epsilon by its plateau.** SGLD's step-size bias (discretisation, and the extra heat of
   minibatch gradients) grows with epsilon. From a step scaled to the posterior's stiffest
   curvature, epsilon is halved while halving it moves the estimate by more than its noise; a
   trial whose chains diverge quarters it. Each half-epsilon trial runs coupled with its
   reference: from the same states, the reference taking at each step the summed noise of two of
   the trial's steps (multilevel Monte Carlo's coupling), so their paths stay close and the move is
   measured on their difference.
2. **gamma by its sensitivity.** The localization squeezes the posterior and biases the LLC down.
   From a strong gamma, it is halved while halving it moves the estimate by more than its noise
   and by a smaller share of it than the halving before did, and while the chains stay healthy at
   the weaker gamma. Where the shares grow again the chains have begun to wander along the loss's
   flat valleys, and the last gamma halved from, where the estimate depends least on gamma, is the
   pick; a share grown by the step (epsilon halved at the weaker gamma moves the LLC) is measured
   again at the smaller step first. Epsilon's plateau is then checked again at the pick, and
   settled anew if it moved.
   Each half-gamma trial runs paired with its reference, from the same states with the same noise
   and minibatches, and its move is measured on the two runs' difference (common random numbers:
   the noise both share cancels, so a move is resolved in fewer steps), read where that difference
   heads under the slowest relaxation, so that a short trial does not show part of the move as all
   of it.
3. **burn-in by measurement.** Each trial's burn-in is where its own chains stop drifting; the
   estimate's is measured on a last trial rerun from the checkpoint at the pick.

The trials form one continued run: each starts where the previous one's chains stood, so a trial
pays only for re-settling after its change, not for relaxing from the checkpoint. Each runs until
it has settled and its standard error can resolve a move of ``RESOLUTION`` of the LLC, within its
share of the budget.

The comparisons at the pick are its sensitivity: how far the estimate moves when gamma is halved,
when epsilon is halved, and when the sampling batch size doubles (n fixed), each with its standard
error. A move of more than ``SETTINGS_DEPENDENT`` of the LLC beyond two standard errors flags the
pick as settings-dependent, naming the knob. The doubled batch runs beside the reference of the
pick's half-epsilon trial, coupled to it by nested minibatches (its batch joins the two the
half-step trial sees in one reference step), so it is measured wherever epsilon is.

Why one module: the rules and the trials they call share one state, where the chains stand and
what the budget has left, which every trial reads and moves on; split, each half would reach into
the other's. The file format is apart (``auto_store``), as are the comparisons (``comparisons``)
and the runs beside a trial (``beside``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv import sampling
from llcv.calibration.comparisons import (
    decides_a_halving,
    differs,
    drifting_together,
    measured_move,
    resolving_error,
    sensitivity_entry,
    share_of,
    target_se,
    too_short_for_gamma,
    with_paired_move,
)
from llcv.calibration.curvature import top_hessian_eigenvalue
from llcv.calibration.beside import RunBeside, run_concurrently
from llcv.calibration.auto_store import AUTO_FORMAT, AUTO_FORMAT_VERSION, payload_dict, search_fingerprint
from llcv.calibration.outcome import AutoCalibration, Budget, Sensitivity, Spent
from llcv.calibration.trials import (
    BURNIN_SHARES,
    TRIAL_CHAINS,
    Trial,
    TrialStatus,
    summarise_trial,
    trace_array,
)
from llcv.sampling import ChainState
from llcv.devices import resolve_device
from llcv.errors import EstimationError
from llcv.fileio import atomic_write_json
from llcv.sampling import LossSpec
from llcv.progress import SILENT, Reporter
from llcv.sampling import SamplingData
from llcv.settings import SamplerSettings

# The first trial's steps per chain; later trials scale the steps their neighbours needed.
FIRST_TRIAL_STEPS = 1000
# The first epsilon, in units of 1 / (the posterior's stiffest curvature): SGLD is stable for
# epsilon * curvature < 2. RMSProp-SGLD multiplies the step by up to 1 / RMSPROP_EPS = 10 where
# gradients are small (at the checkpoint, everywhere), so it starts ten times lower.
FIRST_EPSILON = {"sgld": 0.05, "rmsprop_sgld": 0.005}
# The first gamma, in units of the stiffest curvature: strong enough that the search starts on the
# squeezed side of gamma's plateau (it only weakens gamma), weak enough that the stiffer directions
# already keep most of their share: the plateaus seen so far lay at 0.003-0.01 of it.
FIRST_GAMMA = 0.05
# Chains that settle below the checkpoint's loss get a gamma four times stronger, up to this many
# times the stiffest curvature (beyond it the localization, not the loss, shapes every direction).
MAX_GAMMA = 10.0
# A trial that did not settle is rerun this many times longer, up to MAX_TRIAL_GROWTH times the
# steps first planned for it.
TRIAL_GROWTH = 2
MAX_TRIAL_GROWTH = 16
# A search takes about six trials; no one trial may take more than this share of the budget, so
# that one slowly mixing trial cannot leave nothing for the comparisons that decide.
MAX_TRIAL_SHARE = 1 / 6
# The shortest run worth starting: a trial the budget cannot give this many more steps per chain ends.
MIN_SEGMENT_STEPS = 50
# The final estimate aims for this many effective samples, as many draws as the pick's trial at least.
TARGET_ESS = 400
# Seeds per trial: a trial's k-th segment runs with seed base + SEGMENT_SEEDS * (trials before it) + k.
SEGMENT_SEEDS = 1000


def calibrate_auto(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    base: SamplerSettings = SamplerSettings(),
    budget: Budget = Budget(),
    store: Path | None = None,
    checkpoint: str | None = None,
    reporter: Reporter = SILENT,
) -> AutoCalibration:
    """Find (epsilon, gamma) and the burn-in for an estimate of the model's LLC (module docstring).

    Args:
        base: the estimate's other settings: nbeta (its rule or number), batch size, samples,
            sampler, seed; its epsilon, gamma, burn-in and length are what the search decides.
        budget: the most the search may spend; it stops with the best it has when that runs out.
        store: a JSON file that keeps every trial as it finishes; a rerun with the same model,
            data and base settings reuses them instead of sampling again.

    Raises:
        EstimationError: no trial was healthy within the budget.

    Why these parameters: ``estimate_llc``'s (model, data, loss, device, reporter), what the
    search decides within (``base``, ``budget``: settings objects), and where it keeps its trials
    with the checkpoint they name (``store``, ``checkpoint``); ``calibrate_and_save`` calls it with
    a loaded checkpoint.
    """
    trial_base = base.model_copy(update={"num_chains": TRIAL_CHAINS, "mala": False, "num_burnin_steps": 0})
    prepared = data if isinstance(data, SamplingData) else SamplingData(data, trial_base, resolve_device(device))
    return _Search(model, prepared, loss, trial_base, budget, store, checkpoint, reporter).run()


def recommend_settings(
    model: nn.Module,
    data: Dataset | DataLoader | SamplingData,
    loss: LossSpec = "cross_entropy",
    device: str | torch.device = "auto",
    *,
    base: SamplerSettings = SamplerSettings(),
    budget: Budget = Budget(),
    reporter: Reporter = SILENT,
) -> SamplerSettings:
    """The settings ``calibrate_auto`` recommends, for code that needs nothing else of it.

    Raises:
        EstimationError: no trial was healthy within the budget.
    """
    return calibrate_auto(model, data, loss, device, base=base, budget=budget, reporter=reporter).recommended


class _Search:
    def __init__(self, model: nn.Module, data: SamplingData, loss: LossSpec, base: SamplerSettings, budget: Budget,
                 store: Path | None, checkpoint: str | None, reporter: Reporter):  # fmt: skip
        """``base``: the trials' settings (their chains, no MALA, no burn-in); ``data`` carries the device."""
        self.model, self.data, self.loss, self.base, self.budget, self.store, self.checkpoint, self.reporter = (
            model, data, loss, base, budget, store, checkpoint, reporter,
        )  # fmt: skip
        self.device = data.device
        self.nbeta = sampling.resolve_nbeta(self.base.nbeta, self.data.num_samples, self.data.batch_size)
        self.fingerprint = search_fingerprint(model, self.data, loss, self.base)
        self.trials: list[Trial] = []
        self.current: dict[tuple[float, float, int], Trial] = {}
        self.started = time.perf_counter()
        self.spent_seconds = 0.0
        self.stiffness = 0.0
        self.pending_chain_steps = 0  # the running trial's, until it is kept
        self.budget_refused = False  # whether the budget has cut a trial short or refused one
        self.states: list[ChainState] | None = None  # where the chains stand: the next trial goes on from there
        # The last paired trial run here, and where its reference run left its chains (at the
        # reference's settings); None when that trial diverged or escaped.
        self.reference_states: tuple[Trial, list[ChainState]] | None = None
        self._restore()

    # --- budget and storage -------------------------------------------------------------------

    @property
    def chain_steps(self) -> int:
        return sum(trial.chain_steps for trial in self.trials)

    def _restore(self) -> None:
        if self.store is None or not Path(self.store).exists():
            return
        try:
            stored = json.loads(Path(self.store).read_text())
            if stored.get("format") != AUTO_FORMAT or stored.get("format_version") != AUTO_FORMAT_VERSION:
                raise ValueError("not a calibration of this version")
            if stored.get("fingerprint") != json.loads(json.dumps(self.fingerprint)):
                self.reporter.note(f"{self.store} was made with a different model, data or settings; calibrating afresh")
                return
            self.stiffness = float(stored["stiffness"])
            self.spent_seconds = float(stored["spent"]["seconds"])
            for payload in stored["trials"]:
                self._keep(Trial.model_validate(payload))
        except (OSError, ValueError, KeyError, TypeError) as error:
            self.reporter.note(f"{self.store} is not a readable calibration ({error}); calibrating afresh")
            self.trials, self.current, self.spent_seconds = [], {}, 0.0
            return
        self.reporter.note(f"resuming the calibration: {len(self.trials)} trials already run")
        self.started = time.perf_counter()

    def _keep(self, trial: Trial) -> None:
        self.trials.append(trial)
        key = _key(trial.epsilon, trial.gamma, trial.batch_size)
        # A second trial at the same settings is the one rerun from the checkpoint to time its relaxation.
        self.current[(*key, "from checkpoint") if key in self.current and trial.from_checkpoint else key] = trial

    def _save(self, result: AutoCalibration | None = None) -> None:
        if self.store is None:
            return
        payload = result if result is not None else self._outcome(None, "in progress", None, [])
        atomic_write_json(self.store, payload_dict(payload, complete=result is not None))

    # --- trials ---------------------------------------------------------------------------------

    def trial(
        self, epsilon: float, gamma: float, batch_size: int | None = None, from_checkpoint: bool = False, paired_with: Trial | None = None,
        with_doubled_batch: bool = False,
    ) -> Trial | None:
        """The trial at these settings: reused when already run, else run on from where the chains
        stand (continued while it has not settled or cannot resolve ``RESOLUTION``); None when the
        budget cannot pay for it. ``from_checkpoint``: a second trial at settings already tried,
        started at the checkpoint, to measure how long the chains take to relax from it; planned
        long enough to measure the relaxation the earlier trials from the checkpoint predict there.
        ``paired_with``: a trial at the same batch size, at this epsilon (a half-gamma trial) or
        twice it (a half-epsilon trial), whose settings are run beside this one, from the same
        states with the same noise and minibatches (for twice the epsilon, coupled: the sum of the
        noise of two of this trial's steps at each of its own), so that the move between them is
        measured on the difference of the two runs (``with_paired_move``). ``with_doubled_batch``
        (a half-epsilon trial): a third run beside them at the reference's settings and twice the
        batch, coupled to the reference (its noise, and this trial's two minibatches of each of
        its steps as one batch, which contains the reference's), kept as the reference's trial at
        twice the batch with its move measured on its difference from the reference, for half a
        step's cost per step of this trial."""
        batch_size = batch_size or self.data.batch_size
        key = _key(epsilon, gamma, batch_size)
        if from_checkpoint:
            earlier = self.current.get(key)
            if earlier is not None and earlier.from_checkpoint:
                return earlier
            key = (*key, "from checkpoint")
            self.states = None
        if key in self.current:
            return self.current[key]
        # A reference at k times this epsilon runs one step for k of this trial's.
        coupled = 1 if paired_with is None else round(paired_with.epsilon / epsilon)
        planned = self._planned_steps(epsilon, batch_size) if coupled == 1 else self._planned_coupled_steps(paired_with, coupled)
        if from_checkpoint:
            # Long enough to measure the relaxation the search expects (a trial can measure a
            # burn-in of up to the largest of its burn-in shares), whatever the continued trials
            # at these settings needed.
            planned = max(planned, math.ceil(_expected_relaxation(self.trials, epsilon, gamma) / BURNIN_SHARES[-1]))
        trace = np.empty((TRIAL_CHAINS, 0))
        trial, seconds, steps, segments = None, 0.0, planned, 0
        # Any trial with no chains to go on from (the first, a rerun, one after chains left the
        # basin) starts at the checkpoint, and its burn-in is a relaxation from there.
        starts_at_checkpoint = self.states is None
        settings = self.base.model_copy(update={"epsilon": epsilon, "gamma": gamma, "nbeta": self.nbeta, "batch_size": batch_size})
        data = self.data if batch_size == self.data.batch_size else SamplingData(self.data.dataset, settings, self.device)
        self.reporter.note(f"trial epsilon={epsilon:.3g}, gamma={gamma:.3g}, batch {batch_size}" + (" (from the checkpoint)" if self.states is None else ""))
        cap = self._trial_cap(planned)
        reference = doubled = None
        if paired_with is not None:
            reference = RunBeside(settings.model_copy(update={"epsilon": paired_with.epsilon, "gamma": paired_with.gamma}), coupled, self.states)
            doubled_key = _key(paired_with.epsilon, paired_with.gamma, coupled * batch_size)
            joined_fits = not data.is_full_batch and coupled * batch_size <= self.data.num_samples
            if with_doubled_batch and coupled > 1 and joined_fits and doubled_key not in self.current:
                doubled = RunBeside(reference.settings, coupled, self.states, whole_batches=True)
        runs_beside = [run for run in (reference, doubled) if run is not None]
        cost_per_step = 1 + len(runs_beside) / coupled
        while trial is None or self._worth_extending(trial, planned):
            segment = _whole_steps(max(min(steps, cap) - trace.shape[1], MIN_SEGMENT_STEPS), coupled)
            affordable = _whole_steps(int(self._affordable_steps() / cost_per_step), coupled, down=True)
            if segment > affordable:
                # Run what the budget still pays for, if that is worth starting.
                self.budget_refused = True
                if affordable < MIN_SEGMENT_STEPS:
                    break
                segment = affordable
            started = time.perf_counter()
            # Each segment draws fresh noise and batches: the same seed would repeat the last one's.
            run = settings.model_copy(update={"num_draws": segment, "seed": self.base.seed + SEGMENT_SEEDS * len(self.trials) + segments})
            with run_concurrently(runs_beside, self._sample, data, segment, run.seed) as beside_cost:
                result, states = self._sample(data, run, reporter=self.reporter, start=self.states)
            diverged = np.array([value is None for value in result.llc_per_chain])
            segment_cost = segment * TRIAL_CHAINS + beside_cost.total
            segments += 1
            seconds += time.perf_counter() - started
            self.pending_chain_steps += segment_cost
            self.reporter.advance("calibrate", segment_cost)
            trace = np.concatenate([trace, trace_array(result.llc_trace)], axis=1)
            # A half-gamma pair whose reference diverged is no comparison: the pair counts as
            # diverged. A half-epsilon trial keeps its own health: its reference (the larger step)
            # diverging beside its healthy chains is what the halving showed.
            if reference is not None and coupled == 1:
                diverged |= reference.diverged
            trial = summarise_trial(trace, diverged, epsilon, gamma, batch_size, seconds, starts_at_checkpoint)
            if reference is not None:
                trial = with_paired_move(trial, trace, reference.trace, paired_with.epsilon, paired_with.gamma, reference.unstable_beside(diverged))
            # Chains that left the basin or settled below the checkpoint are no place to start from.
            self.states = None if trial.status.left_the_basin else states
            if coupled > 1 and drifting_together(paired_with, trial, trace, reference.trace):
                break
            steps = self._extended_steps(trial)
        self.pending_chain_steps = 0
        if trial is not None:
            if reference is not None:
                self.reference_states = None if self.states is None else (trial, reference.states)
            self._keep(trial)
            self._note_kept(trial)
            if doubled is not None and doubled.trace.size:
                larger = summarise_trial(doubled.trace, doubled.diverged, paired_with.epsilon, paired_with.gamma, coupled * batch_size,
                                         doubled.seconds, starts_at_checkpoint)  # fmt: skip
                self._keep(with_paired_move(larger, doubled.trace, reference.trace, paired_with.epsilon, paired_with.gamma,
                                            reference.unstable_beside(doubled.diverged), reference_batch_size=batch_size))  # fmt: skip
                self._note_kept(self.trials[-1], f"beside it, epsilon={paired_with.epsilon:.3g} at batch {larger.batch_size}: ")
            self._save()
        return trial

    def _sample(self, data: SamplingData, settings: SamplerSettings, **options) -> tuple[sampling.LLCResult, list[ChainState]]:
        """``estimate_llc_states`` on this search's model, loss and device (looked up at each call)."""
        return sampling.estimate_llc_states(self.model, data, settings, loss=self.loss, device=self.device, **options)

    def _note_kept(self, trial: Trial, label: str = "") -> None:
        shown = "undefined" if trial.llc is None else f"{trial.llc:.4g} ± {trial.se:.2g}"
        self.reporter.note(f"   {label}{trial.steps} steps: LLC {shown}, burn-in {trial.burnin}, {trial.status}")

    def _trial_cap(self, planned: int) -> int:
        """The most steps a trial planned at ``planned`` may run: ``MAX_TRIAL_GROWTH`` times that,
        and ``MAX_TRIAL_SHARE`` of the budget."""
        cap = MAX_TRIAL_GROWTH * planned
        if self.budget.chain_steps is not None:
            cap = min(cap, max(MIN_SEGMENT_STEPS, int(MAX_TRIAL_SHARE * self.budget.chain_steps) // TRIAL_CHAINS))
        return cap

    def _affordable_steps(self) -> int:
        """Steps per chain left in the budget. Seconds left are turned into steps at the rate the
        search has run so far (its overheads included), so that a trial stops near the time limit
        instead of running past it."""
        spent_steps = self.chain_steps + self.pending_chain_steps
        affordable = 2**62
        if self.budget.seconds is not None:
            elapsed = self.spent_seconds + time.perf_counter() - self.started
            if elapsed >= self.budget.seconds:
                return 0
            if spent_steps:
                affordable = int((self.budget.seconds - elapsed) * spent_steps / elapsed) // TRIAL_CHAINS
        if self.budget.chain_steps is not None:
            affordable = min(affordable, max(0, self.budget.chain_steps - spent_steps) // TRIAL_CHAINS)
        return affordable

    def _worth_extending(self, trial: Trial, planned: int) -> bool:
        if trial.steps >= self._trial_cap(planned) or trial.status.left_the_basin or trial.reference_diverged:
            return False
        if trial.status in (TrialStatus.UNRELAXED, TrialStatus.UNMIXED):
            return True
        error, target = resolving_error(trial)
        return error is not None and error > target

    @staticmethod
    def _extended_steps(trial: Trial) -> int:
        """The length a trial that has not decided runs on to: twice its length when it has not
        settled or its paired move shows none of its slowest part yet, else the draws that would
        resolve ``RESOLUTION`` at its rate of mixing, at most four times its length."""
        if not trial.ok:
            return TRIAL_GROWTH * trial.steps
        error, target = resolving_error(trial)
        if not math.isfinite(error):  # a paired move whose slowest part the trial has not begun to show
            return TRIAL_GROWTH * 2 * trial.steps
        needed = trial.burnin + math.ceil((trial.steps - trial.burnin) * (error / target) ** 2)
        return min(max(needed, trial.steps + 1), TRIAL_GROWTH * 2 * trial.steps)

    def _planned_steps(self, epsilon: float, batch_size: int) -> int:
        """Steps for a trial at ``epsilon``: what the nearest settled trial needed, scaled by the
        ratio of the step sizes (relaxation and mixing take a number of steps proportional to
        1 / epsilon)."""
        settled = [trial for trial in self.current.values() if trial.ok and trial.batch_size == batch_size]
        if not settled:
            return FIRST_TRIAL_STEPS
        nearest = min(settled, key=lambda trial: abs(math.log(trial.epsilon / epsilon)))
        needed = nearest.burnin + (nearest.draws_for(target_se(nearest.llc)) or nearest.steps - nearest.burnin)
        steps = max(FIRST_TRIAL_STEPS // 2, math.ceil(needed * nearest.epsilon / epsilon))
        return steps

    @staticmethod
    def _planned_coupled_steps(reference: Trial, coupled: int) -> int:
        """Steps for a trial at 1/``coupled`` of ``reference``'s epsilon run coupled with it: long
        enough to measure a re-settling as slow as the reference's own (at the smaller step, in
        ``coupled`` times its steps), not the length an independent trial needs to resolve its
        noise: the coupled difference is nearly free of it (docs/calibration.md)."""
        return max(FIRST_TRIAL_STEPS // 2, math.ceil(coupled * (reference.burnin or 0) / BURNIN_SHARES[-1]))

    # --- the search ---------------------------------------------------------------------------

    def run(self) -> AutoCalibration:
        total = self.budget.chain_steps
        self.reporter.start("calibrate", f"Calibration (budget {total:,} steps)" if total else "Calibration", total)
        self.reporter.advance("calibrate", self.chain_steps)
        try:
            if not self.stiffness:
                curvature = top_hessian_eigenvalue(self.model, self.data, self.loss, self.base)
                self.stiffness = self.nbeta * curvature
            outcome = self._search()
        finally:
            self.reporter.finish("calibrate")
        self._save(outcome)
        return outcome

    def _search(self) -> AutoCalibration:
        epsilon = _rounded(FIRST_EPSILON[self.base.sampler] / self.stiffness)
        gamma = _rounded(FIRST_GAMMA * self.stiffness)
        pick, epsilon = self._settle_epsilon(epsilon, gamma)
        if pick is None:
            return self._give_up(f"no epsilon gave healthy chains at gamma={gamma:g} within the budget")
        while True:
            pick, weaker, stop = self._weaken_gamma(pick)
            # The doubled batch runs beside this pair's reference, at the pick's settings: its move is
            # measured wherever epsilon's is, at half a step's cost.
            smaller_step = self.trial(_rounded(pick.epsilon / 2), pick.gamma, paired_with=pick, with_doubled_batch=True)
            if not decides_a_halving(pick, smaller_step):
                break
            # The step was too large at this gamma (the chains reach stiffer regions where gamma is
            # weaker): settle epsilon here, then see whether gamma can still weaken.
            settled, _ = self._settle_epsilon(smaller_step.epsilon, pick.gamma)
            if settled is None:
                break
            pick = settled
        doubled = 2 * self.data.batch_size
        larger_batch = self.trial(pick.epsilon, pick.gamma, doubled) if doubled <= self.data.num_samples else None
        # The estimate starts at the checkpoint: time the chains' relaxation from there at the pick.
        self.trial(pick.epsilon, pick.gamma, from_checkpoint=True)
        sensitivity = [
            sensitivity_entry("gamma", pick.gamma, pick.gamma / 2, pick, weaker),
            sensitivity_entry("epsilon", pick.epsilon, pick.epsilon / 2, pick, smaller_step),
            sensitivity_entry("batch_size", self.data.batch_size, doubled, pick, larger_batch,
                         not_run="twice the batch is more than the data" if doubled > self.data.num_samples else "the budget ran out"),
        ]
        return self._outcome(pick, self._reason(pick, sensitivity, stop), self._recommended(pick), sensitivity)

    def _settle_epsilon(self, epsilon: float, gamma: float) -> tuple[Trial | None, float]:
        """Epsilon's plateau at ``gamma``: the trial at the largest epsilon (from ``epsilon`` down)
        whose half moves the LLC by no more than its noise. A diverged trial quarters the step; an
        escaped or unrelaxed one quadruples gamma (up to ``MAX_GAMMA`` times the stiffness)."""
        while True:
            pick = self.trial(epsilon, gamma)
            if pick is None:
                return None, epsilon
            if pick.status is TrialStatus.DIVERGED:
                epsilon = _rounded(epsilon / 4)
                continue
            if pick.status in (TrialStatus.ESCAPED, TrialStatus.UNRELAXED) and gamma < MAX_GAMMA * self.stiffness:
                # Hold the chains closer. Escaped: they found lower loss than the checkpoint.
                # Unrelaxed: they did not settle within the longest trial the budget allows; they
                # relax in about 2 / (epsilon gamma) steps, and a smaller epsilon would only slow
                # them. The descent in gamma then weakens it as far as its trials settle.
                gamma = _rounded(gamma * 4)
                continue
            if not pick.ok:
                return None, epsilon
            smaller_step = self.trial(_rounded(epsilon / 2), gamma, paired_with=pick)
            if not decides_a_halving(pick, smaller_step):
                return pick, epsilon
            epsilon = _rounded(epsilon / 2)

    def _weaken_gamma(self, pick: Trial) -> tuple[Trial, Trial | None, str]:
        """Halve gamma from ``pick`` while halving moves the LLC by more than its noise and by a
        smaller share of it than the halving before did. Returns the pick (the last gamma halved
        from: the weaker end of the least sensitive halving), its half-gamma trial, and why it stopped.

        Localization squeezes the posterior: weakening it raises the LLC by a smaller and smaller
        share until the directions the loss constrains keep theirs (a plateau). The shares, not the
        moves themselves, decide: deep in the squeezed regime the LLC nearly doubles at each
        halving, so its moves grow while their share falls (a quartic's, a CNN's first halvings).
        Weakened further, the chains wander along the loss's flat valleys to where the model is
        less degenerate, and the shares grow again. The pick is where the estimate depends least on
        gamma, the principle of minimal sensitivity for a result that depends on a parameter of
        the method only (Stevenson 1981). A share can also grow because the weaker gamma lets the
        chains reach stiffer regions, where the step biases the LLC up: before a growing share
        stops the descent, epsilon is halved at the weaker gamma, and where that moves the LLC the
        halving is measured again at the smaller step, its share still compared with the one before
        (measured at the larger step: comparing shares at the finer step only let the descent run on
        into the wandering regime, docs/calibration.md). At finite nbeta a singular model may show
        no plateau at all: then this is the best the estimator can say, and the pick's
        sensitivity says how much that is."""
        previous_share = math.inf
        while True:
            weaker = self.trial(pick.epsilon, _rounded(pick.gamma / 2), paired_with=pick)
            if weaker is None:
                return pick, None, "the budget ran out"
            share = share_of(measured_move(pick, weaker)[0], pick.llc) if weaker.ok else None
            stop = None
            if not weaker.ok:
                stop = f"at half the gamma the chains were {weaker.status}"
            elif not differs(pick, weaker):
                short = too_short_for_gamma(weaker)
                stop = "halving it moves the LLC by no more than its noise" + (f", but {short}" if short else "")
            elif share >= previous_share:
                finer = self._finer_step_at(weaker)
                remeasured = self.trial(finer.epsilon, pick.gamma) if finer is not None else None
                if remeasured is not None and remeasured.ok:
                    # The step, not gamma, grew the move: measure this halving again at the finer step.
                    pick = remeasured
                    continue
                # Past the least sensitive halving: its weaker end is the pick, with less of the
                # localization's squeeze, and this growing move is the pick's sensitivity.
                stop = "halving it moved the LLC by no smaller a share than the halving before did"
            if stop is not None:
                return self._stop_at(pick, weaker, stop)
            previous_share, pick = share, weaker

    def _finer_step_at(self, weaker: Trial) -> Trial | None:
        """The trial at half ``weaker``'s epsilon, at its gamma, when halving the step decides (it moves
        the LLC, or ``weaker``'s chains diverged beside it: the step is too large at the weaker
        gamma); else None."""
        finer = self.trial(_rounded(weaker.epsilon / 2), weaker.gamma, paired_with=weaker)
        return finer if decides_a_halving(weaker, finer) else None

    def _stop_at(self, pick: Trial, weaker: Trial, stop: str) -> tuple[Trial, Trial | None, str]:
        """End the descent at ``pick`` with ``weaker`` its half-gamma trial. The next trials are at
        the pick's settings: go on from the chains of this pair's reference run, which ran there,
        rather than re-settle from the half gamma's (only when the pair just ran: a trial reused
        from the store has no chains)."""
        if self.reference_states is not None and self.reference_states[0] is weaker:
            self.states = self.reference_states[1]
        return pick, weaker, stop

    def _recommended(self, pick: Trial) -> SamplerSettings:
        draws = pick.steps - pick.burnin
        ess_per_draw = (pick.ess or 0.0) / (TRIAL_CHAINS * draws)
        needed = math.ceil(TARGET_ESS / (TRIAL_CHAINS * ess_per_draw)) if ess_per_draw > 0 else draws
        # A burn-in measured on a trial holds for draws as long as that trial's: a drift test
        # passed over a long window can fail on a short one right after the burn-in, where what
        # is left of the relaxation weighs most (the digits CNN: 1,667 burn-in steps measured
        # over 15,000 draws, then 960 draws drifted).
        timed = _timed_from_checkpoint(self.current, pick)
        measured_over = timed.steps - timed.burnin if timed is not None else 0
        return self.base.model_copy(
            update={
                "epsilon": pick.epsilon, "gamma": pick.gamma, "nbeta": self.base.nbeta,
                "num_burnin_steps": self._burnin_from_checkpoint(pick), "num_draws": max(draws, needed, measured_over),
                "num_chains": TRIAL_CHAINS, "mala": False,
            }
        )  # fmt: skip

    def _burnin_from_checkpoint(self, pick: Trial) -> int:
        """The burn-in an estimate at the pick needs from the checkpoint: what the chains of the
        trial rerun from the checkpoint at the pick's settings took to settle. Where the budget left
        no room for that trial, the longest relaxation measured on other trials that started at the
        checkpoint, scaled to the pick's settings: a relaxation takes a number of steps
        proportional to 1 / epsilon, and along directions only the localization holds to
        1 / (epsilon * gamma); which of the two a model's loss feels is not known, so the larger
        scaling is taken."""
        timed = _timed_from_checkpoint(self.current, pick)
        if timed is not None:
            return timed.burnin
        return _expected_relaxation(self.trials, pick.epsilon, pick.gamma) or pick.burnin

    def _reason(self, pick: Trial, sensitivity: list[Sensitivity], stop: str) -> str:
        """The pick in words: what decided gamma and epsilon, as measured, and the burn-in."""
        by_knob = {entry.knob: entry for entry in sensitivity}
        words = [f"epsilon={pick.epsilon:g}, gamma={pick.gamma:g}: LLC {pick.llc:.4g} ± {pick.se:.2g}"]
        words.append(f"gamma: {stop}" if stop else "gamma: halving it moves the LLC by no more than its noise")
        step = by_knob["epsilon"]
        if step.move is None:
            words.append(f"epsilon: its plateau was not checked ({step.note})")
        else:
            words.append(f"epsilon: halving it moves the LLC by {'at least ' if step.at_least else ''}{step.move:+.3g} ± {step.move_se:.2g}")
        words.append(f"burn-in {self._burnin_from_checkpoint(pick)} steps, from the relaxation measured on the chains")
        dependent = [entry.knob for entry in sensitivity if entry.settings_dependent]
        if dependent:
            words.append("settings-dependent: " + ", ".join(dependent))
        unresolved = [entry.knob for entry in sensitivity if entry.unresolved]
        if unresolved:
            words.append("unresolved (too noisy to rule out a settings-dependent move): " + ", ".join(unresolved))
        return "; ".join(words)

    def _give_up(self, why: str) -> AutoCalibration:
        outcome = self._outcome(None, why, None, [])
        self._save(outcome)
        raise EstimationError(f"calibrate auto found no usable settings: {why}")

    def _outcome(self, pick: Trial | None, reason: str, recommended: SamplerSettings | None, sensitivity: list[Sensitivity]) -> AutoCalibration:
        seconds = self.spent_seconds + time.perf_counter() - self.started
        exhausted = self.budget_refused or self._affordable_steps() < MIN_SEGMENT_STEPS
        return AutoCalibration(
            recommended=recommended,
            reason=reason,
            nbeta=self.nbeta,
            stiffness=self.stiffness,
            trials=list(self.trials),
            pick=None if pick is None else self.trials.index(pick),
            sensitivity=sensitivity,
            spent=Spent(trials=len(self.trials), chain_steps=self.chain_steps, seconds=seconds, budget=self.budget, exhausted=exhausted),
            checkpoint=self.checkpoint,
            fingerprint=self.fingerprint,
        )


def _expected_relaxation(trials: list[Trial], epsilon: float, gamma: float) -> int:
    """The longest relaxation measured on the trials that started at the checkpoint, scaled to
    (``epsilon``, ``gamma``) as ``_Search._burnin_from_checkpoint`` says; 0 when none was measured."""
    measured = [
        trial.burnin * trial.epsilon / epsilon * max(1.0, trial.gamma / gamma)
        for trial in trials if trial.from_checkpoint and trial.settled
    ]  # fmt: skip
    return math.ceil(max(measured, default=0))


def _timed_from_checkpoint(current: dict, pick: Trial) -> Trial | None:
    """The trial at the pick's settings that started at the checkpoint and settled there, if any
    (``Trial.settled``: its relaxation was measured, whether or not its chains agree)."""
    key = _key(pick.epsilon, pick.gamma, pick.batch_size)
    timed = current.get((*key, "from checkpoint")) or (pick if pick.from_checkpoint else None)
    return timed if timed is not None and timed.settled else None


def _whole_steps(steps: int, coupled: int, down: bool = False) -> int:
    """``steps`` rounded to whole steps of a reference coupled to ``coupled`` of them (up, or ``down``)."""
    return (steps // coupled if down else -(-steps // coupled)) * coupled


def _key(epsilon: float, gamma: float, batch_size: int) -> tuple[float, float, int]:
    return (_rounded(epsilon), _rounded(gamma), int(batch_size))


def _rounded(value: float) -> float:
    return float(f"{value:.4g}")
