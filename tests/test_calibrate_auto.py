"""``calibrate_auto``'s rules and its trials' measurements (docs/calibration.md).

The trial measurements (``llcv.calibration.trials``) are checked on synthetic chains x steps
traces. The search (``llcv.calibration.auto``) runs on ``FakeChains``: each trial's chains read an
LLC defined here as a function of (epsilon, gamma, batch size), plus white noise, so each rule of
the search is checked against a response whose right answer is known; no sampling. One real
search on a linear regression closes the file.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
from pydantic import ValidationError
import torch
from torch import nn
from torch.utils.data import TensorDataset

from _helpers import plain_mean_asymptote
from llcv import sampling
from llcv.calibration import auto, comparisons
from llcv.calibration.auto import (
    FIRST_EPSILON,
    FIRST_GAMMA,
    MAX_GAMMA,
    MAX_TRIAL_GROWTH,
    MIN_SEGMENT_STEPS,
    TARGET_ESS,
    TRIAL_CHAINS,
    TRIAL_GROWTH,
    _Search,
    _key,
    calibrate_auto,
)
from llcv.calibration.auto_files import sensitivity_verdict, trials_csv
from llcv.calibration.comparisons import NEGLIGIBLE_MOVE, sensitivity_entry, slowest_response_asymptote, with_paired_move
from llcv.calibration.outcome import SETTINGS_DEPENDENT, Budget
from llcv.calibration.trials import (
    BURNIN_SHARES,
    MAX_BURNIN_DRIFT_Z,
    MAX_R_HAT,
    NEGLIGIBLE_DRIFT,
    TRACE_POINTS,
    Trial,
    TrialStatus,
    chains_standard_error,
    measured_burnin,
    settled,
    summarise_trial,
)
from llcv.diagnostics import GEWEKE_FIRST, GEWEKE_LAST, geweke_z, mcse_of_mean
from llcv.errors import EstimationError
from llcv.sampling import estimate_llc
from llcv.settings import SamplerSettings

# --- the trials' measurements, on synthetic traces -------------------------------------------------

STEPS = 2000


def noise(chains: int = 4, steps: int = STEPS, scale: float = 0.1, seed: int = 0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal((chains, steps))


def relaxing(tau: float, level: float = 2.0, seed: int = 0) -> np.ndarray:
    """Chains that start at the checkpoint (LLC 0) and relax to ``level`` with time constant ``tau``."""
    return level * (1 - np.exp(-np.arange(STEPS) / tau)) + noise(seed=seed)


def make_trial(**changes) -> Trial:
    fields = dict(
        epsilon=1e-3, gamma=1.0, batch_size=32, steps=1000, burnin=100, llc=5.0, se=0.1, ess=400.0, r_hat=1.0,
        drift_z=0.0, status="ok", from_checkpoint=True, chain_steps=4000, seconds=1.0, trace=[],
    )  # fmt: skip
    return Trial(**{**fields, **changes})


@pytest.mark.parametrize(("tau", "share"), [(STEPS / 40, BURNIN_SHARES[0]), (STEPS / 20, BURNIN_SHARES[1]), (STEPS / 13, BURNIN_SHARES[2])])
def test_measured_burnin_is_the_smallest_candidate_after_which_the_transient_has_ended(tau, share):
    assert measured_burnin(relaxing(tau)) == int(round(share * STEPS))


def test_measured_burnin_of_a_trace_that_keeps_rising_is_none():
    rising = np.linspace(0.0, 5.0, STEPS) + noise()
    assert measured_burnin(rising) is None
    # ... and of one whose transient outlasts every candidate
    assert measured_burnin(relaxing(STEPS / 4)) is None


def _ramp(relative_drift: float, level: float = 5.0, steps: int = 20_000) -> np.ndarray:
    """A long trace at ``level`` whose late draws (the last GEWEKE_LAST) lie ``relative_drift *
    level`` above its early ones (the first GEWEKE_FIRST), plus noise."""
    centres = 1 - GEWEKE_LAST / 2 - GEWEKE_FIRST / 2  # a line's late-window mean less its early-window mean, per unit of rise
    rise = relative_drift * level / centres
    return level - rise / 2 + rise * np.linspace(0, 1, steps) + noise(steps=steps, scale=0.1)


def test_settled_forgives_a_negligible_drift_however_significant_and_rejects_a_large_one():
    tiny = _ramp(NEGLIGIBLE_DRIFT / 2)
    assert geweke_z(tiny) > 3 * MAX_BURNIN_DRIFT_Z  # resolved by the long trace: the z-test alone would reject it
    assert settled(tiny)
    large = _ramp(4 * NEGLIGIBLE_DRIFT)
    assert not settled(large)
    assert settled(5.0 + noise())  # no drift at all


def test_summarise_trial_of_steady_chains_is_ok_with_the_draws_after_the_smallest_burnin():
    trace = 5.0 + noise()
    trial = summarise_trial(trace, np.zeros(4, bool), 1e-3, 2.0, 32, 1.5, True)
    burnin = int(round(BURNIN_SHARES[0] * STEPS))
    assert trial.status == "ok" and trial.ok and trial.burnin == burnin
    assert trial.llc == pytest.approx(trace[:, burnin:].mean())
    assert trial.se == pytest.approx(chains_standard_error(trace[:, burnin:]))
    assert (trial.steps, trial.chain_steps, trial.epsilon, trial.gamma, trial.batch_size) == (STEPS, 4 * STEPS, 1e-3, 2.0, 32)
    assert trial.from_checkpoint and trial.seconds == 1.5
    assert 0 < len(trial.trace) <= TRACE_POINTS and np.mean(trial.trace) == pytest.approx(trace.mean(), abs=1e-3)
    assert trial.ess > 1000 and trial.r_hat < MAX_R_HAT


def test_summarise_trial_of_a_relaxing_trace_keeps_only_the_draws_after_its_transient():
    trace = relaxing(STEPS / 20)
    trial = summarise_trial(trace, np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True)
    assert trial.status == "ok" and trial.burnin == int(round(BURNIN_SHARES[1] * STEPS))
    assert trial.llc == pytest.approx(2.0, abs=0.01)  # the transient, all of it below 2, is left out


def test_a_trials_status_is_typed_and_its_files_keep_the_word():
    trial = make_trial(status="unmixed")  # as calibration.json has it
    assert trial.status is TrialStatus.UNMIXED and not trial.ok and not trial.status.left_the_basin
    assert [status for status in TrialStatus if status.left_the_basin] == [TrialStatus.DIVERGED, TrialStatus.ESCAPED]
    assert json.loads(json.dumps(trial.model_dump(mode="json")))["status"] == "unmixed"
    header, line = trials_csv([trial]).splitlines()
    assert dict(zip(header.split(","), line.split(",")))["status"] == "unmixed"
    with pytest.raises(ValidationError):
        make_trial(status="fine")  # not a status: a misspelt one is caught where the trial is made


def test_summarise_trial_status_diverged():
    trace = 5.0 + noise()
    trace[1, 700:] = np.nan
    trial = summarise_trial(trace, np.array([False, True, False, False]), 1e-3, 2.0, 32, 1.0, True)
    assert trial.status == "diverged" and not trial.ok
    assert trial.llc is trial.se is trial.burnin is None
    assert all(value is not None for value in trial.trace)  # the trace shown is the healthy chains'


def test_summarise_trial_status_escaped_for_the_mean_or_one_chain_significantly_below_zero():
    assert summarise_trial(-0.5 + noise(), np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True).status == "escaped"
    one_chain = 5.0 + noise()
    one_chain[2] -= 10.0  # the mean is still 2.5 above 0
    assert summarise_trial(one_chain, np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True).status == "escaped"
    # within noise of 0 is a small LLC, not an escape
    assert summarise_trial(0.0 + noise(), np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True).status == "ok"


def test_chains_that_barely_leave_a_degenerate_checkpoint_have_not_escaped_however_small_their_errors():
    """Near 0 an LLC's sign is noise: a chain below 0 by many of its tiny standard errors, but by
    less than NEGLIGIBLE_DRIFT of the LLC's scale (at least LLC_SCALE_FLOOR), has not escaped."""
    from llcv.calibration.trials import LLC_SCALE_FLOOR

    still = 0.001 * noise()
    still[1] -= 0.5 * NEGLIGIBLE_DRIFT * LLC_SCALE_FLOOR  # dozens of its MCSEs below 0, immaterially
    assert still[1].mean() + 10 * mcse_of_mean(still[1][None, :]) < 0
    assert summarise_trial(still, np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True).status == "unmixed"  # not "escaped"
    still[1] -= 2 * NEGLIGIBLE_DRIFT * LLC_SCALE_FLOOR
    assert summarise_trial(still, np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True).status == "escaped"


def test_summarise_trial_status_unrelaxed_measures_after_the_largest_candidate():
    rising = np.linspace(0.0, 5.0, STEPS) + noise()
    trial = summarise_trial(rising, np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True)
    assert trial.status == "unrelaxed" and trial.burnin is None
    assert trial.llc == pytest.approx(rising[:, int(round(BURNIN_SHARES[-1] * STEPS)) :].mean())
    assert trial.draws_for(0.01) is None  # no burn-in, no rate to extrapolate from


def test_summarise_trial_status_unmixed_when_chains_sit_at_different_levels():
    trace = np.array([[4.0], [4.5], [5.0], [5.5]]) + noise()
    trial = summarise_trial(trace, np.zeros(4, bool), 1e-3, 2.0, 32, 1.0, True)
    assert trial.r_hat > MAX_R_HAT and trial.status == "unmixed" and trial.burnin is not None


def test_chains_standard_error_is_at_least_the_spread_of_chain_means_and_the_mcse():
    # chains a little apart (0.01 between neighbours, against a noise of 0.1 a draw): the MCSE misses it
    separated = np.array([[-0.015], [-0.005], [0.005], [0.015]]) + 5.0 + noise()
    spread = separated.mean(axis=1).std(ddof=1) / math.sqrt(4)
    assert spread > 3 * mcse_of_mean(separated)
    assert chains_standard_error(separated) == pytest.approx(spread)
    steady = 5.0 + noise()
    assert chains_standard_error(steady) >= mcse_of_mean(steady) >= steady.mean(axis=1).std(ddof=1) / 4 > 0
    assert chains_standard_error(steady[:1]) == pytest.approx(mcse_of_mean(steady[:1]))  # one chain: no spread


def test_draws_for_scales_the_draws_with_the_squared_ratio_of_standard_errors():
    trial = make_trial(steps=1000, burnin=200, se=0.2)
    assert trial.draws_for(0.1) == 4 * 800
    assert trial.draws_for(0.2) == 800
    assert trial.draws_for(0.3) == math.ceil(800 * (0.2 / 0.3) ** 2)
    assert trial.draws_for(0.0) is None
    assert make_trial(se=None).draws_for(0.1) is None
    assert make_trial(burnin=None).draws_for(0.1) is None


# --- the search, on synthetic chains ---------------------------------------------------------------

CURVATURE = 10.0  # top_hessian_eigenvalue, faked
NBETA = 10.0
STIFFNESS = NBETA * CURVATURE
EPSILON = auto._rounded(FIRST_EPSILON["sgld"] / STIFFNESS)  # the search's first epsilon
GAMMA = auto._rounded(FIRST_GAMMA * STIFFNESS)  # and gamma
BATCH = 32
SAMPLES = 64  # the doubled batch of the sensitivity check fits the data
FIRST_STEPS = 100
TRUE_LLC = 5.0
SHARED_NOISE = 0.9  # the correlation of the fake noise of two runs with one seed
Level = Callable[[float, float, int], "float | None"]  # LLC at (epsilon, gamma, batch size); None: a chain diverges


def halvings(value: float, first: float) -> int:
    """How many times ``first`` was halved to give ``value`` (negative: doubled)."""
    return round(math.log2(first / value))


class FakeChains:
    """Stands in for ``llcv.sampling`` in ``llcv.calibration.auto``: ``estimate_llc_states`` returns
    chains whose per-draw LLC is ``level(epsilon, gamma, batch_size)`` plus each chain's offset plus
    white noise (one chain turning NaN half way when the level is None), and stand-in chain
    states, so that a trial after a healthy one goes on from them. Every other name is the real one.

    It records each call, and with ``store`` the number of trials that file held at the call.
    """

    def __init__(self, level: Level, noise: float = 0.05, store=None, offsets=(0.0,) * TRIAL_CHAINS):
        self.level, self.noise, self.store, self.offsets = level, noise, store, np.asarray(offsets)[:, None]
        self.calls: list[tuple[float, float, int, int, bool]] = []
        self.starts: list[str | None] = []  # each call's first chain state (None: from the checkpoint)
        self.stored: list[int] = []
        self.coupled: list[int] = []  # each call's coupled_steps

    def estimate_llc_states(
        self, model, data, settings, loss="cross_entropy", device="auto", reporter=None, precision=None, start=None, coupled_steps=1,
        whole_coupled_batches=False,
    ):
        if whole_coupled_batches:  # each step joins the minibatches of k steps: k times the batch
            settings = settings.model_copy(update={"batch_size": coupled_steps * settings.batch_size})
        self.calls.append((settings.epsilon, settings.gamma, settings.batch_size, settings.num_draws, start is None))
        self.coupled.append(coupled_steps)
        if self.store is not None:
            self.stored.append(len(json.loads(self.store.read_text())["trials"]) if self.store.exists() else 0)
        assert settings.nbeta == NBETA and settings.num_chains == TRIAL_CHAINS and settings.num_burnin_steps == 0
        value = self.level(settings.epsilon, settings.gamma, settings.batch_size)
        # Runs with the same seed share most of their noise (the SGLD noise and minibatches they
        # have in common), as paired trials do; the rest is the run's own.
        # A run coupled to k steps of another shares the noise of every k-th of them.
        shape = (settings.num_chains, settings.num_draws)
        shared = np.random.default_rng(settings.seed).standard_normal((shape[0], shape[1] * coupled_steps))[:, coupled_steps - 1 :: coupled_steps]
        key = [settings.seed, round(settings.gamma * 1e9), settings.batch_size] + ([coupled_steps] if coupled_steps > 1 else [])
        own = np.random.default_rng(key).standard_normal(shape)
        trace = self.noise * (SHARED_NOISE * shared + math.sqrt(1 - SHARED_NOISE**2) * own)
        per_chain: list[float | None]
        if value is None:
            trace[0, settings.num_draws // 2 :] = np.nan
            per_chain = [None] + list(trace[1:].mean(axis=1))
        else:
            trace += value + self.offsets
            per_chain = list(trace.mean(axis=1))
        self.starts.append(None if start is None else start[0])
        # a chain's state says at which gamma it last ran
        return SimpleNamespace(llc_trace=trace.tolist(), llc_per_chain=per_chain), [f"gamma {settings.gamma:g}"] * settings.num_chains

    def __getattr__(self, name):
        return getattr(sampling, name)


def fake_search(monkeypatch, level: Level, *, noise: float = 0.05, store=None, offsets=(0.0,) * TRIAL_CHAINS) -> FakeChains:
    fake = FakeChains(level, noise, store, offsets)
    monkeypatch.setattr(auto, "sampling", fake)
    monkeypatch.setattr(auto, "top_hessian_eigenvalue", lambda *args, **kwargs: CURVATURE)
    monkeypatch.setattr(auto, "FIRST_TRIAL_STEPS", FIRST_STEPS)
    # Fake chains take the level of their settings at once: every direction has responded to a
    # change of gamma from the first step (test_a_half_gamma_trial_too_short... runs the real rule).
    monkeypatch.setattr(comparisons, "relaxation_steps", lambda epsilon, gamma: 0)
    # ...so a paired move is the mean of the difference: nothing is left to creep.
    monkeypatch.setattr(comparisons, "slowest_response_asymptote", plain_mean_asymptote)
    return fake


def tiny_problem(seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    """A model and data the fake chains never look at, the same for the same seed (so is the store's fingerprint)."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(2, 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model, TensorDataset(torch.randn(SAMPLES, 2, generator=generator), torch.randn(SAMPLES, 1, generator=generator))


BASE = SamplerSettings(nbeta=NBETA, batch_size=BATCH, seed=0)


def search(budget: Budget = Budget(), store=None, base: SamplerSettings = BASE, problem=None):
    model, data = problem or tiny_problem()
    return calibrate_auto(model, data, loss="mse", device="cpu", base=base, budget=budget, store=store)


def pick_of(result):
    return result.trials[result.pick]


def tried(result, batch: int = BATCH) -> list[tuple[int, int]]:
    """The trials run, as (halvings of epsilon, halvings of gamma) from the first ones, in order."""
    return [(halvings(t.epsilon, EPSILON), halvings(t.gamma, GAMMA)) for t in result.trials if t.batch_size == batch]


def _runs(trials: list[Trial], index: int) -> int:
    """The sampler calls a one-segment trial made: two when it ran paired with a reference, and one
    more when a doubled-batch trial ran beside them (kept next, with no calls of its own)."""
    trial = trials[index]
    if trial.paired_batch_size is not None:
        return 0
    beside = index + 1 < len(trials) and trials[index + 1].paired_batch_size is not None
    return (1 if trial.paired_gamma is None else 2) + beside


def half_gamma_trial(result) -> Trial:
    """The trial at half the pick's gamma, run paired with the pick."""
    pick = pick_of(result)
    return next(trial for trial in result.trials if trial.paired_gamma == pick.gamma and trial.gamma < pick.gamma)


def entry(result, knob: str):
    return next(item for item in result.sensitivity if item.knob == knob)


def test_epsilon_is_halved_while_halving_moves_the_llc_and_stops_at_its_plateau(monkeypatch):
    # A step-size bias linear in epsilon: halving from epsilon0 / 2**k moves the LLC by
    # 6 * NEGLIGIBLE_MOVE * TRUE_LLC / 2**k, so by more than NEGLIGIBLE_MOVE of it for k <= 2 only.
    bias = 12 * NEGLIGIBLE_MOVE * TRUE_LLC
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC + bias * epsilon / EPSILON)
    result = search()
    pick = pick_of(result)
    assert halvings(pick.epsilon, EPSILON) == 3 and pick.gamma == GAMMA
    assert tried(result)[:5] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]  # down the plateau, at the first gamma
    assert result.recommended.epsilon == pick.epsilon and result.recommended.gamma == GAMMA
    assert entry(result, "epsilon").settings_dependent is False and entry(result, "epsilon").changed_to == pick.epsilon / 2
    assert result.recommended.nbeta == NBETA and result.nbeta == NBETA and result.stiffness == STIFFNESS


def test_each_half_epsilon_trial_runs_coupled_with_the_trial_at_twice_its_step(monkeypatch):
    bias = 12 * NEGLIGIBLE_MOVE * TRUE_LLC
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC + bias * epsilon / EPSILON)
    result = search()
    # the descent's trials (not the doubled batch, nor the pick rerun from the checkpoint)
    halved = [t for t in result.trials if (t.gamma, t.batch_size) == (GAMMA, BATCH) and t.epsilon < EPSILON and not t.from_checkpoint]
    assert len(halved) == 4
    for trial in halved:
        reference = next(t for t in result.trials if (t.epsilon, t.gamma) == (auto._rounded(2 * trial.epsilon), GAMMA))
        assert (trial.reference_epsilon, trial.paired_gamma) == (reference.epsilon, reference.gamma)
        move, move_se = comparisons.measured_move(reference, trial)
        assert (move, move_se) == (trial.paired_move, trial.paired_move_se)
        assert move == pytest.approx(-bias * trial.epsilon / EPSILON, abs=3 * move_se)  # half the reference's bias
        # the reference ran one step for two of the trial's: the pair costs 1.5 times the trial's steps
        assert trial.chain_steps == TRIAL_CHAINS * trial.steps * 3 // 2
    # the sampler saw each coupled reference run once per segment, at twice the trial's epsilon
    coupled_calls = [call for call, coupled in zip(fake.calls, fake.coupled) if coupled == 2]
    assert {auto._rounded(call[0]) for call in coupled_calls} == {auto._rounded(2 * trial.epsilon) for trial in halved}
    # planned from the reference's re-settling (in twice its steps), not from its noise
    first_half = halved[0]
    reference = result.trials[0]
    first_call = next(call for call in fake.calls if auto._rounded(call[0]) == first_half.epsilon)
    planned = max(FIRST_STEPS // 2, math.ceil(2 * reference.burnin / BURNIN_SHARES[-1]))
    assert first_call[3] == planned + planned % 2  # whole steps of the reference


class DriftingChains(FakeChains):
    """Chains still relaxing at the first gamma after they leave the checkpoint: every run that goes
    on from chain states there drifts up by the same amount at the same time (epsilon times steps),
    as two coupled runs relaxing together do; with ``own_only`` only the runs at the half step drift,
    so the drift is the halving's own and shows in their difference."""

    def __init__(self, level: Level, own_only: bool = False):
        super().__init__(level)
        self.own_only = own_only

    def estimate_llc_states(self, model, data, settings, start=None, coupled_steps=1, **options):
        result, states = super().estimate_llc_states(model, data, settings, start=start, coupled_steps=coupled_steps, **options)
        drifts = settings.gamma == GAMMA and start is not None and not (self.own_only and settings.epsilon == EPSILON)
        if not drifts:
            return result, states
        times = settings.epsilon * np.arange(1, settings.num_draws + 1)
        trace = np.asarray(result.llc_trace) + TRUE_LLC * times / (FIRST_STEPS * EPSILON)
        return SimpleNamespace(llc_trace=trace.tolist(), llc_per_chain=trace.mean(axis=1).tolist()), states


@pytest.mark.parametrize("own_only", [False, True])
def test_a_half_step_pair_drifting_together_ends_once_its_difference_shows_no_move(monkeypatch, own_only):
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)
    fake = DriftingChains(lambda epsilon, gamma, batch: TRUE_LLC, own_only=own_only)
    monkeypatch.setattr(auto, "sampling", fake)
    result = search()
    first_half = next(t for t in result.trials if (halvings(t.epsilon, EPSILON), halvings(t.gamma, GAMMA)) == (1, 0))
    planned = max(FIRST_STEPS // 2, math.ceil(2 * result.trials[0].burnin / BURNIN_SHARES[-1]))
    if own_only:
        # the halving drifts on its own: its difference has not settled, so the pair goes on
        assert first_half.steps > planned + planned % 2
        return
    # the drift both runs share cancels from their difference: the pair ends after its first
    # segment, unrelaxed (its own level is), and the step stays
    assert first_half.steps == planned + planned % 2 and first_half.status == "unrelaxed"
    assert abs(first_half.paired_move) <= 2 * first_half.paired_move_se + NEGLIGIBLE_MOVE * TRUE_LLC
    assert halvings(pick_of(result).epsilon, EPSILON) == 0


def test_a_step_whose_chains_diverge_beside_its_half_is_given_up_for_the_half(monkeypatch):
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)  # no step biases the LLC
    run = fake.estimate_llc_states

    def longer_runs_diverge_at_the_first_step(model, data, settings, **options):
        # the first epsilon looked healthy in its own trial, but not when run on beside its half
        if options.get("coupled_steps") == 2 and auto._rounded(settings.epsilon) == EPSILON:
            level, fake.level = fake.level, lambda epsilon, gamma, batch: None
            try:
                return run(model, data, settings, **options)
            finally:
                fake.level = level
        return run(model, data, settings, **options)

    monkeypatch.setattr(fake, "estimate_llc_states", longer_runs_diverge_at_the_first_step, raising=False)
    result = search()
    first = result.trials[0]
    half = next(t for t in result.trials if t.reference_epsilon == EPSILON and t.epsilon == auto._rounded(EPSILON / 2))
    assert first.ok and half.ok and half.reference_diverged and half.paired_move is None
    assert comparisons.differs(first, half)  # halving the step decided whether the chains stay: a move
    assert halvings(pick_of(result).epsilon, EPSILON) == 1  # so epsilon settled from the half step on


def test_a_coupled_move_compares_the_finer_runs_draws_at_the_references_times():
    rng = np.random.default_rng(2)
    steps = 4000
    # both runs follow the same slow wander; the finer run is sampled twice as often and sits 0.2
    # higher; each draw's loss is read on its step's minibatch, and the reference's draw j on the
    # finer run's batch 2j: compared with the finer run's draw 2j + 1 that batch noise would not cancel
    wander = np.cumsum(0.05 * rng.standard_normal((TRIAL_CHAINS, steps)), axis=1) + 5.0
    batch_noise = 0.5 * rng.standard_normal((TRIAL_CHAINS, steps))
    finer = wander + batch_noise + 0.2 + 0.002 * rng.standard_normal((TRIAL_CHAINS, steps))
    reference = (wander + batch_noise)[:, ::2] + 0.002 * rng.standard_normal((TRIAL_CHAINS, steps // 2))
    trial = summarise_trial(finer, np.zeros(TRIAL_CHAINS, bool), 1e-3, 1.0, BATCH, 1.0, False)
    paired = with_paired_move(trial, finer, reference, 2e-3, 1.0)
    assert (paired.reference_epsilon, paired.paired_gamma) == (2e-3, 1.0)
    assert paired.paired_move == pytest.approx(0.2, abs=0.005) and paired.paired_move_se < 0.005
    assert paired.chain_steps == TRIAL_CHAINS * (steps + steps // 2)
    # the same runs compared as independent trials cannot even tell the move from the wander
    assert math.hypot(trial.se, chains_standard_error(reference)) > 0.2


def test_a_diverged_trial_quarters_epsilon_and_the_next_starts_from_the_checkpoint(monkeypatch):
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: None if epsilon > EPSILON / 2 else TRUE_LLC)
    result = search()
    assert result.trials[0].status == "diverged" and halvings(result.trials[1].epsilon, EPSILON) == 2
    assert all(halvings(t.epsilon, EPSILON) != 1 for t in result.trials)  # epsilon / 2 was never tried
    assert halvings(pick_of(result).epsilon, EPSILON) == 2
    # chains that diverged are no place to go on from; chains that did not are
    assert [t.from_checkpoint for t in result.trials[:3]] == [True, True, False]
    assert [call[4] for call in fake.calls[:3]] == [True, True, False]


def test_an_escaped_first_trial_quadruples_gamma_and_an_unhealthy_weaker_gamma_stops_the_descent(monkeypatch):
    # The chains escape below the checkpoint's loss unless gamma is at least 3 times the first one.
    fake_search(monkeypatch, lambda epsilon, gamma, batch: -TRUE_LLC if gamma < 3 * GAMMA else TRUE_LLC)
    result = search()
    assert result.trials[0].status == "escaped"
    assert tried(result)[:3] == [(0, 0), (0, -2), (1, -2)]  # gamma quadrupled, then epsilon's plateau there
    pick = pick_of(result)
    assert (halvings(pick.epsilon, EPSILON), halvings(pick.gamma, GAMMA)) == (0, -2)
    assert (0, -1) in tried(result)  # half the gamma was tried, and escaped
    assert "at half the gamma the chains were escaped" in result.reason
    gamma = entry(result, "gamma")
    assert gamma.settings_dependent is None and gamma.move is None and gamma.note == "the changed trial is escaped"


class SlowChains(FakeChains):
    """Chains that never settle below gamma 3 GAMMA: their per-draw LLC keeps rising over every
    step run there, trial after trial (relaxation that outlasts any trial the budget allows)."""

    def __init__(self, level: Level):
        super().__init__(level)
        self.draws_at_weak_gamma = 0

    def estimate_llc_states(self, model, data, settings, **options):
        result, states = super().estimate_llc_states(model, data, settings, **options)
        if settings.gamma >= 3 * GAMMA:
            return result, states
        start, self.draws_at_weak_gamma = self.draws_at_weak_gamma, self.draws_at_weak_gamma + settings.num_draws
        trace = np.asarray(result.llc_trace) + TRUE_LLC * np.arange(start, self.draws_at_weak_gamma) / FIRST_STEPS
        return SimpleNamespace(llc_trace=trace.tolist(), llc_per_chain=trace.mean(axis=1).tolist()), states


def test_an_unrelaxed_first_trial_quadruples_gamma_instead_of_giving_up(monkeypatch):
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)  # its curvature and trial length
    monkeypatch.setattr(auto, "sampling", SlowChains(lambda epsilon, gamma, batch: TRUE_LLC))
    result = search()
    assert result.trials[0].status == "unrelaxed" and result.recommended is not None
    assert tried(result)[:2] == [(0, 0), (0, -2)]  # gamma quadrupled, at the same epsilon
    pick = pick_of(result)
    assert (halvings(pick.epsilon, EPSILON), halvings(pick.gamma, GAMMA)) == (0, -2)
    assert "at half the gamma the chains were unrelaxed" in result.reason
    # Unrelaxed, yet the move its pair had reached is already far beyond the tolerance: gamma is
    # called settings-dependent, with that move as a lower bound.
    gamma = entry(result, "gamma")
    assert gamma.settings_dependent is True and gamma.at_least
    assert gamma.move - 2 * gamma.move_se > 0.1 * gamma.llc
    assert "lower bound" in gamma.note and "gamma" in result.settings_dependent
    assert sensitivity_verdict(gamma) == "settings-dependent"


def test_chains_that_escape_at_every_gamma_up_to_the_cap_raise(monkeypatch, tmp_path):
    fake_search(monkeypatch, lambda epsilon, gamma, batch: -TRUE_LLC)
    store = tmp_path / "calibration.json"
    with pytest.raises(EstimationError, match="no epsilon gave healthy chains"):
        search(store=store)
    stored = json.loads(store.read_text())
    gammas = [trial["gamma"] for trial in stored["trials"]]
    assert [trial["status"] for trial in stored["trials"]] == ["escaped"] * len(gammas)
    assert gammas == [auto._rounded(GAMMA * 4**k) for k in range(len(gammas))]
    assert gammas[-2] < MAX_GAMMA * STIFFNESS <= gammas[-1]
    assert stored["complete"] is True and stored["recommended"] is None and stored["pick"] is None


def test_gamma_is_halved_while_the_moves_are_significant_and_shrinking(monkeypatch):
    # The localization's bias, linear in gamma: halving from gamma0 / 2**k moves the LLC by
    # 6 * NEGLIGIBLE_MOVE * TRUE_LLC / 2**k: significant for k <= 2 only.
    squeeze = 12 * NEGLIGIBLE_MOVE * TRUE_LLC
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC - squeeze * gamma / GAMMA)
    result = search()
    pick = pick_of(result)
    assert (halvings(pick.epsilon, EPSILON), halvings(pick.gamma, GAMMA)) == (0, 3)
    # the last is the pick's rerun from the checkpoint, timing its relaxation
    assert [g for e, g in tried(result) if e == 0] == [0, 1, 2, 3, 4, 3]
    assert result.trials[-1].from_checkpoint and "gamma: halving it moves the LLC by no more than its noise" in result.reason
    gamma = entry(result, "gamma")
    assert gamma.changed_to == pick.gamma / 2 and gamma.move == pytest.approx(squeeze / 16, rel=0.1)
    assert gamma.settings_dependent is False


def test_moves_that_grow_while_their_share_of_the_llc_shrinks_do_not_stop_the_descent(monkeypatch):
    """Deep in the squeezed regime the LLC nearly doubles at each halving: the moves grow (0.9,
    then 1.5) while their share of the LLC falls (90%, then 79%), as on a quartic or a CNN from a
    strong gamma. The descent goes on to the plateau."""
    llc_by_halvings = {0: 1.0, 1: 1.9, 2: 3.4, 3: 4.6, 4: 5.0}
    fake_search(monkeypatch, lambda epsilon, gamma, batch: llc_by_halvings.get(halvings(gamma, GAMMA), 5.0), noise=0.01)
    result = search()
    assert halvings(pick_of(result).gamma, GAMMA) == 4  # 5.0 -> 5.0: its first halving moves nothing
    assert "gamma: halving it moves the LLC by no more than its noise" in result.reason


def test_a_share_grown_by_too_large_a_step_at_the_weaker_gamma_is_measured_again_at_a_finer_step(monkeypatch):
    """At gamma0 / 8 and weaker the chains reach stiffer regions, where the step biases the LLC up
    (by 0.8 at epsilon0, linear in epsilon): at epsilon0 the halving to gamma0 / 8 grows the share
    (0.9 / 4.5 after 0.5 / 4). Halving epsilon there moves the LLC, so the halving is measured again
    at epsilon0 / 2 (0.5 / 4.5: it shrinks) and the descent goes on, instead of stopping on the step's
    bias at gamma0 / 4."""
    squeeze = {0: 3.0, 1: 4.0, 2: 4.5}

    def level(epsilon, gamma, batch):
        weakened = halvings(gamma, GAMMA)
        return squeeze.get(weakened, 4.6) + (0.8 * epsilon / EPSILON if weakened >= 3 else 0.0)

    fake_search(monkeypatch, level, noise=0.01)
    result = search()
    steps = tried(result)
    assert steps[:7] == [(0, 0), (1, 0), (0, 1), (0, 2), (0, 3), (1, 3), (1, 2)]  # epsilon checked at gamma0 / 8, the halving again
    assert (1, 4) in steps  # the descent went on past gamma0 / 8
    pick = pick_of(result)
    assert halvings(pick.gamma, GAMMA) == 3 and halvings(pick.epsilon, EPSILON) >= 2  # on epsilon's plateau at the weaker gamma


def test_a_half_gamma_trial_too_short_for_the_localizations_slowest_directions_does_not_show_that_gamma_holds(monkeypatch):
    from llcv import relaxation

    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)  # gamma moves nothing the trials can see
    monkeypatch.setattr(comparisons, "relaxation_steps", relaxation.relaxation_steps)
    result = search()
    pick = pick_of(result)
    weaker = half_gamma_trial(result)
    needed = relaxation.relaxation_steps(pick.epsilon, pick.gamma / 2)
    assert weaker.ok and weaker.steps < needed  # 2 / (epsilon * gamma) = 1,600 steps at the search's first epsilon and half its first gamma
    gamma = entry(result, "gamma")
    assert gamma.settings_dependent is None and gamma.move is not None  # the move is kept, but is no verdict
    phrase = f"at half the gamma the chains ran {weaker.steps:,} steps of the {needed:,} (2/(epsilon*gamma)) they need to respond"
    assert gamma.note == phrase and sensitivity_verdict(gamma) == f"not measured: {phrase}"
    assert f"gamma: halving it moves the LLC by no more than its noise, but {phrase}" in result.reason
    assert result.not_measured == ["gamma"] and result.settings_dependent == []


def test_a_move_seen_in_a_short_half_gamma_trial_is_settings_dependent_all_the_same(monkeypatch):
    from llcv import relaxation

    unit = 4 * NEGLIGIBLE_MOVE * TRUE_LLC  # the moves of the next test: the pick's half-gamma move grows past 10% of its LLC
    llc_by_halvings = {0: 3.0, 1: 3.0 + 2 * unit, 2: 3.0 + 3 * unit, 3: 3.0 + 3.6 * unit, 4: 3.0 + 4.8 * unit, 5: 3.0 + 8 * unit}
    fake_search(monkeypatch, lambda epsilon, gamma, batch: llc_by_halvings[halvings(gamma, GAMMA)])
    monkeypatch.setattr(comparisons, "relaxation_steps", relaxation.relaxation_steps)
    result = search()
    weaker = half_gamma_trial(result)
    assert weaker.steps < relaxation.relaxation_steps(weaker.epsilon, weaker.gamma)
    assert entry(result, "gamma").settings_dependent is True and entry(result, "gamma").note == ""


def test_the_descent_picks_the_weaker_end_of_the_least_sensitive_halving(monkeypatch):
    """The LLC against gamma rises, flattens, then rises again (the chains wander off along the
    flat valleys): the pick is the last gamma halved from, and the growing move is its sensitivity."""
    unit = 4 * NEGLIGIBLE_MOVE * TRUE_LLC  # every move is several times what counts as one
    llc_by_halvings = {0: 3.0, 1: 3.0 + 2 * unit, 2: 3.0 + 3 * unit, 3: 3.0 + 3.6 * unit, 4: 3.0 + 4.8 * unit, 5: 3.0 + 8 * unit}
    fake_search(monkeypatch, lambda epsilon, gamma, batch: llc_by_halvings[halvings(gamma, GAMMA)])
    result = search()
    pick = pick_of(result)
    assert halvings(pick.gamma, GAMMA) == 3  # moves 2, 1, 0.6 units, then 1.2: 0.6 was the smallest
    assert max(g for _, g in tried(result)) == 4  # the descent went no further than the growing move
    assert "halving it moved the LLC by no smaller a share than the halving before did" in result.reason
    gamma = entry(result, "gamma")
    assert gamma.move == pytest.approx(1.2 * unit, rel=0.05)
    assert 1.2 * unit > SETTINGS_DEPENDENT * pick.llc and gamma.settings_dependent is True


def test_a_smaller_step_that_still_moves_after_the_descent_settles_epsilon_again_at_that_gamma(monkeypatch):
    """At gamma0 / 4 and weaker the first epsilon is too large (the chains reach stiffer regions):
    the descent, at epsilon0, stops there; halving epsilon then moves the LLC, so epsilon's
    plateau is found again at that gamma and the descent goes on from it."""
    jump = 8 * NEGLIGIBLE_MOVE * TRUE_LLC

    def level(epsilon, gamma, batch):
        squeeze = {0: 3.0, 1: 4.0}.get(halvings(gamma, GAMMA), 4.5 - jump)
        return squeeze + (jump if halvings(gamma, GAMMA) >= 2 and halvings(epsilon, EPSILON) == 0 else 0.0)

    fake_search(monkeypatch, level)
    result = search()
    steps = tried(result)
    assert steps[: steps.index((0, 3)) + 1] == [(0, 0), (1, 0), (0, 1), (0, 2), (0, 3)]  # the descent at epsilon0
    assert steps[steps.index((0, 3)) + 1 :][:2] == [(1, 2), (2, 2)]  # then epsilon's plateau at gamma0 / 4
    pick = pick_of(result)
    assert (halvings(pick.epsilon, EPSILON), halvings(pick.gamma, GAMMA)) == (1, 2)
    assert (1, 3) in steps  # the descent went on from the new pick
    assert halvings(entry(result, "gamma").changed_to, GAMMA) == 3 and entry(result, "epsilon").settings_dependent is False


def test_sensitivity_entries_measure_each_knob_at_the_pick(monkeypatch):
    shift = 2 * SETTINGS_DEPENDENT * TRUE_LLC  # doubling the batch moves the LLC by twice what is flagged
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC + (shift if batch == 2 * BATCH else 0.0))
    result = search()
    pick = pick_of(result)
    assert (halvings(pick.epsilon, EPSILON), halvings(pick.gamma, GAMMA)) == (0, 0)
    assert [item.knob for item in result.sensitivity] == ["gamma", "epsilon", "batch_size"]
    changed = {
        "gamma": next(t for t in result.trials if t.gamma == auto._rounded(GAMMA / 2)),
        "epsilon": next(t for t in result.trials if t.epsilon == auto._rounded(EPSILON / 2)),
        "batch_size": next(t for t in result.trials if t.batch_size == 2 * BATCH),
    }
    for item in result.sensitivity:
        trial = changed[item.knob]
        assert (item.llc, item.llc_changed) == (pick.llc, trial.llc)
        if item.knob in ("gamma", "epsilon"):  # run paired with the pick: the move is the runs' difference
            assert (trial.reference_epsilon, trial.paired_gamma) == (pick.epsilon, pick.gamma)
            assert (item.move, item.move_se) == (trial.paired_move, trial.paired_move_se)
            if item.knob == "gamma":  # the shared noise cancels (the coupled pairs: test_a_coupled_move...)
                assert item.move_se < math.hypot(pick.se, trial.se) / 2
        else:
            assert trial.paired_move is None
            assert item.move == pytest.approx(trial.llc - pick.llc)
            assert item.move_se == pytest.approx(math.hypot(pick.se, trial.se))
        assert item.relative == pytest.approx(item.move / pick.llc)
        assert item.settings_dependent is (abs(item.move) - 2 * item.move_se > SETTINGS_DEPENDENT * abs(pick.llc))
    assert (entry(result, "batch_size").value, entry(result, "batch_size").changed_to) == (BATCH, 2 * BATCH)
    assert entry(result, "batch_size").move == pytest.approx(shift, rel=0.05)
    assert result.settings_dependent == ["batch_size"] and "settings-dependent: batch_size" in result.reason
    assert result.recommended.batch_size == BATCH  # the base's batch size is not the search's to change


def test_the_doubled_batch_runs_beside_the_reference_of_the_picks_half_epsilon_trial(monkeypatch):
    shift = 2 * SETTINGS_DEPENDENT * TRUE_LLC
    # halving the first gamma moves the LLC, the next halving does not: the pick is half the first
    # gamma, where epsilon is first halved, so its half-epsilon pair is new
    level = lambda epsilon, gamma, batch: TRUE_LLC + (0.5 if gamma == GAMMA else 0.0) + (shift if batch == 2 * BATCH else 0.0)  # noqa: E731
    fake = fake_search(monkeypatch, level)
    result = search()
    pick = pick_of(result)
    assert halvings(pick.gamma, GAMMA) == 1
    larger = next(trial for trial in result.trials if trial.batch_size == 2 * BATCH)
    half_step = next(trial for trial in result.trials if trial.gamma == pick.gamma and trial.epsilon == auto._rounded(pick.epsilon / 2))
    assert result.trials.index(larger) == result.trials.index(half_step) + 1  # kept beside it
    # run at the pick's settings beside the pair's reference, coupled to it: no run of its own
    assert (larger.epsilon, larger.gamma, larger.reference_epsilon, larger.paired_gamma) == (pick.epsilon, pick.gamma, pick.epsilon, pick.gamma)
    assert larger.paired_batch_size == BATCH and larger.reference_batch_size == BATCH
    doubled_calls = [coupled for call, coupled in zip(fake.calls, fake.coupled) if call[2] == 2 * BATCH]
    assert doubled_calls and doubled_calls == [2] * len(doubled_calls)
    # its chain-steps are its own (the reference's are the half-epsilon trial's): half the trial's
    assert larger.chain_steps == larger.steps * TRIAL_CHAINS and 2 * larger.steps == half_step.steps
    assert result.spent.chain_steps == sum(call[3] for call in fake.calls) * TRIAL_CHAINS
    batch = entry(result, "batch_size")
    assert (batch.move, batch.move_se) == (larger.paired_move, larger.paired_move_se)
    assert batch.move == pytest.approx(shift, rel=0.05) and batch.move_se < math.hypot(pick.se, larger.se) / 2
    assert batch.settings_dependent is True and result.settings_dependent == ["batch_size"]


# A half-gamma trial long enough for the localization's slowest directions to respond: 2 / (1e-3 * 1.0) steps.
RESPONDED = 2000


def test_a_doubled_batch_larger_than_the_data_is_said_to_be_why_the_batch_was_not_measured(monkeypatch):
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)
    result = search(base=BASE.model_copy(update={"batch_size": SAMPLES}))  # full batches: nothing to double into
    assert all(call[2] == SAMPLES for call in fake.calls)
    batch = entry(result, "batch_size")
    assert batch.settings_dependent is None and batch.note == "not run: twice the batch is more than the data"
    assert result.not_measured == ["batch_size"]


def test_settings_dependent_needs_the_move_beyond_two_standard_errors():
    pick = make_trial(llc=5.0, se=0.1)
    limit = SETTINGS_DEPENDENT * 5.0
    within_noise = sensitivity_entry("gamma", 1.0, 0.5, pick, make_trial(llc=5.0 + limit + 0.1, se=0.1, steps=RESPONDED))
    assert within_noise.relative > SETTINGS_DEPENDENT and within_noise.settings_dependent is False
    beyond = sensitivity_entry("gamma", 1.0, 0.5, pick, make_trial(llc=5.0 - limit - 0.3, se=0.1, steps=RESPONDED))
    assert beyond.move == pytest.approx(-limit - 0.3) and beyond.settings_dependent is True
    not_run = sensitivity_entry("epsilon", 1e-3, 5e-4, pick, None)
    assert not_run.settings_dependent is None and not_run.move is None and "not run" in not_run.note
    unhealthy = sensitivity_entry("epsilon", 1e-3, 5e-4, pick, make_trial(status="diverged", llc=None, se=None))
    assert unhealthy.settings_dependent is None and unhealthy.note == "the changed trial is diverged"
    unstable_pick = sensitivity_entry("epsilon", 1e-3, 5e-4, pick, make_trial(epsilon=5e-4, paired_gamma=1.0, paired_epsilon=1e-3, reference_diverged=True))
    assert unstable_pick.move is None and unstable_pick.settings_dependent is None
    assert unstable_pick.note == "the pick's chains diverged beside it"


def test_an_unrelaxed_pair_that_already_moved_beyond_the_tolerance_makes_the_pick_settings_dependent():
    from llcv.calibration.auto_files import relative_move_words, sensitivity_sentence

    pick = make_trial(llc=40.0, se=0.5)
    # half the gamma, paired with the pick, still parting when the trial ended: its move so far is 19 ± 0.7
    parting = make_trial(gamma=0.5, llc=57.0, status="unrelaxed", burnin=None, paired_gamma=1.0, paired_epsilon=1e-3,
                         paired_move=19.0, paired_move_se=0.7)  # fmt: skip
    bound = sensitivity_entry("gamma", 1.0, 0.5, pick, parting)
    assert bound.settings_dependent is True and bound.at_least
    assert (bound.move, bound.move_se, bound.relative) == (19.0, 0.7, pytest.approx(19.0 / 40.0))
    assert relative_move_words(bound) == "at least +48% ± 1.7%"
    assert "halving gamma moves the LLC by at least +48%" in sensitivity_sentence([bound])
    from rich.console import Console

    from llcv.cli_render import sensitivity_table

    console = Console(width=120, record=True)
    console.print(sensitivity_table([bound], "sensitivity"))
    row = next(line for line in console.export_text().splitlines() if line.startswith("gamma"))
    assert "≥ +19 ± 0.7" in row and "≥ +48%" in row and row.rstrip().endswith("settings-dependent")
    assert "57 unrelaxed" in row  # the changed trial's LLC says it had not relaxed
    # a move reached within the tolerance says nothing of where it heads: not measured
    small = sensitivity_entry("gamma", 1.0, 0.5, pick, parting.model_copy(update={"paired_move": 3.0}))
    assert small.settings_dependent is None and small.move is None and small.note == "the changed trial is unrelaxed"
    # nor does a move paired with other settings than the pick's
    other = sensitivity_entry("gamma", 1.0, 0.5, pick, parting.model_copy(update={"paired_gamma": 2.0}))
    assert other.settings_dependent is None


def test_a_move_too_noisy_to_rule_out_a_settings_dependent_one_is_unresolved_not_holding():
    from llcv.calibration.auto_files import sensitivity_sentence

    pick = make_trial(llc=0.1, se=0.015)  # a polynomial's trial: its noise is 15% of its LLC
    noisy = sensitivity_entry("gamma", 3.6, 1.8, pick, make_trial(llc=0.12, se=0.015, steps=RESPONDED))
    assert noisy.settings_dependent is False and noisy.unresolved
    assert sensitivity_verdict(noisy) == "unresolved"
    precise = sensitivity_entry("gamma", 3.6, 1.8, pick.model_copy(update={"se": 0.001}), make_trial(llc=0.105, se=0.001, steps=RESPONDED))
    assert not precise.unresolved and sensitivity_verdict(precise) == "holds"
    dependent = sensitivity_entry("gamma", 3.6, 1.8, pick, make_trial(llc=0.3, se=0.015, steps=RESPONDED))
    assert dependent.settings_dependent and not dependent.unresolved
    sentence = sensitivity_sentence([noisy])
    assert "none is settings-dependent, but the move of gamma is unresolved" in sentence
    # recomputed from the stored numbers: a calibration.json written before the verdict existed
    assert sensitivity_verdict(noisy.model_dump(mode="json")) == "unresolved"


def test_after_the_descent_stops_the_next_trial_goes_on_from_the_reference_runs_chains(monkeypatch):
    # gamma's first halving moves the LLC by 1 (paired, resolved), the second by nothing: the
    # descent stops with the pick at GAMMA / 2, and its half-epsilon check runs next
    level = lambda epsilon, gamma, batch: TRUE_LLC - (1.0 if gamma >= GAMMA else 0.0)  # noqa: E731
    fake = fake_search(monkeypatch, level)
    result = search()
    pick = pick_of(result)
    assert halvings(pick.gamma, GAMMA) == 1 and halvings(pick.epsilon, EPSILON) == 0
    half_step = next(index for index, call in enumerate(fake.calls) if call[:2] == (auto._rounded(EPSILON / 2), pick.gamma))
    # the call before it was the reference run of the last pair (at the pick's gamma); the chains
    # go on from there, not from the half gamma's run before that
    assert fake.calls[half_step - 2][1] == auto._rounded(pick.gamma / 2) and fake.calls[half_step - 1][1] == pick.gamma
    assert fake.starts[half_step] == f"gamma {pick.gamma:g}"


def test_a_paired_move_is_read_after_the_difference_of_the_runs_has_settled():
    rng = np.random.default_rng(0)
    steps = 2000
    # the noise both runs see: slow (correlated over ~100 steps), so each run's own drift test is lenient
    shared = np.empty((TRIAL_CHAINS, steps))
    shared[:, 0] = rng.standard_normal(TRIAL_CHAINS)
    for step in range(1, steps):
        shared[:, step] = 0.99 * shared[:, step - 1] + 0.14 * rng.standard_normal(TRIAL_CHAINS)
    shared += 5.0
    own = 0.01 * rng.standard_normal((TRIAL_CHAINS, steps))
    healthy = np.zeros(TRIAL_CHAINS, bool)

    relaxing = 0.3 * (1 - np.exp(-np.arange(steps) / 150.0))  # the half-gamma run parts over ~150 steps
    trace = shared + relaxing + own
    # at gamma 5 nothing relaxes slower than 1 / (epsilon gamma) = 200 steps: the move is all seen
    paired = with_paired_move(summarise_trial(trace, healthy, 1e-3, 5.0, BATCH, 1.0, False), trace, shared, 1e-3, 10.0)
    assert paired.ok and paired.paired_gamma == 10.0
    assert paired.paired_move == pytest.approx(0.3, abs=0.01) and paired.paired_move_se < 0.005

    # still parting at the end: the half-gamma run's own trace passes its drift test in the slow
    # noise, the difference does not, so the pair has not relaxed and says so
    drifting = shared + 0.3 * np.arange(steps) / steps + own
    alone = summarise_trial(drifting, healthy, 1e-3, 0.5, BATCH, 1.0, False)
    assert alone.ok
    still = with_paired_move(alone, drifting, shared, 1e-3, 1.0)
    assert still.status == "unrelaxed" and not still.ok and still.chain_steps == 2 * alone.chain_steps
    # its move is what the difference reached after the trial's own burn-in, not an
    # extrapolation: below the 0.3 it is heading for, at the plain mean's own error
    start = alone.burnin
    reached = (drifting - shared)[:, start:]
    assert still.paired_move == pytest.approx(reached.mean()) and still.paired_move < 0.3
    assert still.paired_move_se == pytest.approx(comparisons.chains_standard_error(reached))


def test_the_slowest_response_asymptote_extrapolates_a_creep_with_the_error_of_doing_so():
    rate, start, size = 1 / 4000, 400, 1600
    steps = start + np.arange(size)
    exact = 2.0 - 1.5 * np.exp(-rate * steps)  # creeping toward 2 at the slowest rate, a third of the way there
    heads, inflation = slowest_response_asymptote(exact, start, rate)
    assert heads == pytest.approx(2.0, rel=1e-9) and exact.mean() < 1.0
    assert inflation == pytest.approx(math.sqrt(1 + size * np.exp(-rate * steps).mean() ** 2 / np.exp(-rate * steps).var() / size))
    assert inflation > 5  # the window covers a third of the relaxation: extrapolating costs precision
    # long after the change the slow part has died out: the plain mean, at its own error
    assert slowest_response_asymptote(np.full(100, 3.0), 10**8, rate) == (3.0, 1.0)
    # a window too short to tell the slow part from a constant cannot say where it heads
    assert slowest_response_asymptote(np.full(100, 3.0), 0, 1e-20) == (3.0, math.inf)


def test_a_pair_whose_extrapolated_move_has_no_measurable_error_runs_on_to_the_longest_extension():
    unresolved = make_trial(steps=1000, burnin=100, paired_gamma=2.0, paired_move=0.1, paired_move_se=math.inf)
    assert _Search._extended_steps(unresolved) == TRIAL_GROWTH * 2 * 1000
    resolved = unresolved.model_copy(update={"paired_move_se": 1e-6})
    assert _Search._extended_steps(resolved) == 1001  # already resolves: one step more is the least extension


def test_a_paired_move_creeping_below_the_drift_test_is_read_where_it_heads():
    """The half-gamma run parts from its reference as slowly as the localization allows (1 /
    (epsilon gamma) = 8,000 steps) and has moved 13% of the way in a 2,000-step trial: the
    difference creeps by less than a drift test notices, its mean reads a seventh of the move, and
    the asymptote reads the move, with an error that says the trial was short for it."""
    rng = np.random.default_rng(1)
    steps, epsilon, gamma = 2000, 1e-3, 0.125
    reference = 5.0 + 0.2 * rng.standard_normal((TRIAL_CHAINS, steps))
    trace = reference + 0.5 * (1 - np.exp(-epsilon * gamma * np.arange(steps))) + 0.005 * rng.standard_normal((TRIAL_CHAINS, steps))
    trial = summarise_trial(trace, np.zeros(TRIAL_CHAINS, bool), epsilon, gamma, BATCH, 1.0, False)
    paired = with_paired_move(trial, trace, reference, epsilon, 2 * gamma)
    assert paired.ok  # the difference passed its drift test
    plain = float((trace - reference)[:, paired.burnin :].mean())
    assert plain < 0.1 and paired.paired_move == pytest.approx(0.5, abs=3 * paired.paired_move_se)
    assert paired.paired_move_se > 5 * comparisons.chains_standard_error((trace - reference)[:, paired.burnin :])


def test_knobs_the_budget_or_the_data_could_not_pay_for_are_noted_not_run(monkeypatch):
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)
    full = search()
    assert [item.settings_dependent for item in full.sensitivity] == [False, False, False]
    # a budget that pays for about the first trial and its half step only
    budget = Budget(chain_steps=sum(trial.chain_steps for trial in full.trials[:2]))
    short = search(budget)
    assert short.spent.exhausted and short.spent.chain_steps <= budget.chain_steps
    unmeasured = [item for item in short.sensitivity if item.settings_dependent is None]
    assert unmeasured and all("not run" in item.note for item in unmeasured)
    assert short.recommended is not None  # the best it has
    # full batches: no larger batch to try
    whole = search(base=BASE.model_copy(update={"batch_size": SAMPLES}))
    assert all(trial.batch_size == SAMPLES for trial in whole.trials)
    assert entry(whole, "batch_size").settings_dependent is None and "not run" in entry(whole, "batch_size").note


def test_an_exhausted_budget_before_the_first_trial_raises(monkeypatch):
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC)
    with pytest.raises(EstimationError, match="no epsilon gave healthy chains"):
        search(Budget(chain_steps=MIN_SEGMENT_STEPS * TRIAL_CHAINS - 1))
    with pytest.raises(EstimationError):
        search(Budget(chain_steps=None, seconds=0.0))
    assert fake.calls == []


def test_a_budget_in_seconds_stops_a_trial_near_the_limit_instead_of_running_it_past(monkeypatch):
    # Chains at 1 ms per chain-step on a fake clock: a search that only checked the clock between
    # segments would overshoot by a whole trial; converting the seconds left into steps at the
    # rate measured so far stops within one minimal segment of the limit.
    clock = SimpleNamespace(now=0.0)
    # noisy enough that the first trial is extended in ever longer segments
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC, noise=20.0)
    real_states = fake.estimate_llc_states

    def timed_states(model, data, settings, *args, **kwargs):
        clock.now += 1e-3 * settings.num_chains * settings.num_draws
        return real_states(model, data, settings, *args, **kwargs)

    monkeypatch.setattr(fake, "estimate_llc_states", timed_states, raising=False)
    monkeypatch.setattr(auto, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    limit = 2.5 * 1e-3 * TRIAL_CHAINS * FIRST_STEPS  # two and a half first trials' worth
    result = search(Budget(chain_steps=None, seconds=limit))
    assert result.spent.exhausted
    assert result.spent.chain_steps * 1e-3 <= limit + 1e-3 * TRIAL_CHAINS * MIN_SEGMENT_STEPS
    assert result.spent.chain_steps * 1e-3 >= limit - 1e-3 * TRIAL_CHAINS * MIN_SEGMENT_STEPS


def test_the_recommended_burnin_scales_the_cold_trials_relaxation_to_the_pick():
    pick = make_trial(epsilon=2.5e-4, gamma=1.0, burnin=30, from_checkpoint=False)
    cold = make_trial(epsilon=1e-3, gamma=4.0, burnin=100, from_checkpoint=True)
    search = SimpleNamespace(trials=[cold, pick], current={})
    # 4 times the step and 4 times the gamma: 16 times the steps at the pick
    assert _Search._burnin_from_checkpoint(search, pick) == 100 * 4 * 4
    # a cold trial at a weaker gamma than the pick's scales with epsilon only
    weaker = make_trial(epsilon=5e-4, gamma=0.5, burnin=300, from_checkpoint=True)
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[weaker, pick], current={}), pick) == 300 * 2
    # the longest counts; warm trials and ones that never settled do not, unmixed ones (settled apart) do
    ignored = [make_trial(burnin=10**6, from_checkpoint=False), make_trial(burnin=None, status="unrelaxed"), make_trial(burnin=10**6, status="diverged")]
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[cold, weaker, *ignored, pick], current={}), pick) == 1600
    apart = make_trial(epsilon=2.5e-4, gamma=1.0, burnin=2000, from_checkpoint=True, status="unmixed")
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[cold, weaker, apart, pick], current={}), pick) == 2000
    # no cold trial: the pick's own
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[pick], current={}), pick) == 30
    # a rerun from the checkpoint at the pick's settings is what counts
    rerun = make_trial(epsilon=2.5e-4, gamma=1.0, burnin=700, from_checkpoint=True)
    current = {(2.5e-4, 1.0, rerun.batch_size, "from checkpoint"): rerun}
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[cold, pick, rerun], current=current), pick) == 700
    # also when its chains settled at levels of their own (too slow to mix), not when they never settled
    current[next(iter(current))] = rerun.model_copy(update={"status": "unmixed"})
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[cold, pick, rerun], current=current), pick) == 700
    current[next(iter(current))] = rerun.model_copy(update={"status": "unrelaxed", "burnin": None})
    assert _Search._burnin_from_checkpoint(SimpleNamespace(trials=[cold, pick, rerun], current=current), pick) == 1600


def test_the_rerun_from_the_checkpoint_is_planned_long_enough_to_measure_the_relaxation_expected_of_it(monkeypatch):
    """The pick's continued trials needed few steps, but its rerun from the checkpoint must relax
    from there: it is planned for the first trial's relaxation scaled to the pick (8 times the step
    smaller), which it can measure only as the largest burn-in share of its length."""
    bias = 12 * NEGLIGIBLE_MOVE * TRUE_LLC
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC + bias * epsilon / EPSILON)
    result = search()
    pick = pick_of(result)
    first = result.trials[0]
    rerun = result.trials[-1]
    assert first.from_checkpoint and rerun.from_checkpoint and (rerun.epsilon, rerun.gamma) == (pick.epsilon, pick.gamma)
    expected = first.burnin * first.epsilon / pick.epsilon
    assert rerun.steps >= expected / BURNIN_SHARES[-1] > pick.steps


def test_the_recommended_draws_follow_the_picks_effective_samples_per_draw():
    base = SamplerSettings(nbeta="data", num_chains=TRIAL_CHAINS, num_burnin_steps=0, mala=False)
    search = SimpleNamespace(base=base, _burnin_from_checkpoint=lambda pick: 123, current={})
    slow = make_trial(steps=1000, burnin=200, ess=80.0)  # 80 effective samples in 4 x 800 draws
    settings = _Search._recommended(search, slow)
    per_draw = 80.0 / (TRIAL_CHAINS * 800)
    assert settings.num_draws == math.ceil(TARGET_ESS / (TRIAL_CHAINS * per_draw)) > 800
    assert (settings.epsilon, settings.gamma, settings.num_burnin_steps, settings.num_chains) == (slow.epsilon, slow.gamma, 123, TRIAL_CHAINS)
    assert settings.nbeta == "data"  # the rule, as the base has it
    fast = make_trial(steps=1000, burnin=200, ess=100 * TARGET_ESS)  # more than enough: at least the trial's draws
    assert _Search._recommended(search, fast).num_draws == 800
    assert _Search._recommended(search, make_trial(steps=1000, burnin=200, ess=None)).num_draws == 800


def test_the_estimate_draws_at_least_as_long_as_the_trial_its_burnin_was_measured_on():
    # A burn-in measured over 4,800 draws from the checkpoint holds for windows that long, not for
    # the pick's 800 right after it.
    base = SamplerSettings(nbeta="data", num_chains=TRIAL_CHAINS, num_burnin_steps=0, mala=False)
    fast = make_trial(steps=1000, burnin=200, ess=100 * TARGET_ESS)
    timed = make_trial(steps=6000, burnin=1200, from_checkpoint=True)
    current = {(*_key(fast.epsilon, fast.gamma, fast.batch_size), "from checkpoint"): timed}
    search = SimpleNamespace(base=base, _burnin_from_checkpoint=lambda pick: 1200, current=current)
    assert _Search._recommended(search, fast).num_draws == 4800
    # an unhealthy rerun, or none: the pick's own length
    current[next(iter(current))] = make_trial(steps=6000, burnin=1200, from_checkpoint=True, status="unrelaxed")
    assert _Search._recommended(search, fast).num_draws == 800
    assert _Search._recommended(SimpleNamespace(base=base, _burnin_from_checkpoint=lambda pick: 1200, current={}), fast).num_draws == 800


def test_the_search_recommends_the_burnin_and_draws_of_its_rules(monkeypatch):
    # The plateau of the first test: the pick is at epsilon0 / 8; the first trial and the pick's
    # rerun started at the checkpoint, and the rerun's relaxation is the burn-in.
    bias = 12 * NEGLIGIBLE_MOVE * TRUE_LLC
    fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC + bias * epsilon / EPSILON, noise=1.0)
    result = search()
    pick = pick_of(result)
    cold = [trial for trial in result.trials if trial.from_checkpoint]
    assert [trial.epsilon for trial in cold] == [EPSILON, pick.epsilon] and cold[1].gamma == pick.gamma
    assert result.recommended.num_burnin_steps == cold[1].burnin > 0
    per_draw = pick.ess / (TRIAL_CHAINS * (pick.steps - pick.burnin))
    needed = math.ceil(TARGET_ESS / (TRIAL_CHAINS * per_draw))
    assert result.recommended.num_draws == max(pick.steps - pick.burnin, needed, cold[1].steps - cold[1].burnin)
    assert result.recommended.num_chains == TRIAL_CHAINS and result.recommended.mala is False


UNMIXED = (-0.75, -0.25, 0.25, 0.75)  # chains that keep to their own levels: R-hat far above MAX_R_HAT


def test_a_trial_that_has_not_mixed_is_run_on_longer_up_to_its_cap_then_the_search_gives_up(monkeypatch):
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC, offsets=UNMIXED)
    with pytest.raises(EstimationError, match="no epsilon gave healthy chains"):
        search()
    steps = np.cumsum([call[3] for call in fake.calls])  # one trial, run on segment by segment
    assert steps[0] == FIRST_STEPS and all(later == TRIAL_GROWTH * earlier for earlier, later in zip(steps, steps[1:]))
    assert steps[-2] < MAX_TRIAL_GROWTH * FIRST_STEPS <= steps[-1]
    assert [call[4] for call in fake.calls] == [True] + [False] * (len(fake.calls) - 1)  # each segment goes on from the last


def test_a_search_never_spends_more_than_its_budget(monkeypatch):
    fake = fake_search(monkeypatch, lambda epsilon, gamma, batch: TRUE_LLC, offsets=UNMIXED)
    budget = Budget(chain_steps=2 * FIRST_STEPS * TRIAL_CHAINS)
    with pytest.raises(EstimationError):
        search(budget)
    assert sum(call[3] for call in fake.calls) * TRIAL_CHAINS <= budget.chain_steps


def test_the_store_is_written_after_each_trial_and_a_rerun_reuses_it(monkeypatch, tmp_path):
    store = tmp_path / "calibration.json"
    level = lambda epsilon, gamma, batch: TRUE_LLC + (0.5 if gamma == GAMMA else 0.0)  # noqa: E731
    first = fake_search(monkeypatch, level, store=store)
    result = search(store=store)
    # each call (one per trial, two for a paired one: steady chains need no second segment) saw
    # every trial before it stored
    assert first.stored == [index for index in range(len(result.trials)) for _ in range(_runs(result.trials, index))]
    assert len(result.trials) > 3 and any(trial.paired_gamma is not None for trial in result.trials)
    stored = json.loads(store.read_text())
    assert stored["complete"] is True and stored["pick"] == result.pick and len(stored["trials"]) == len(result.trials)

    again = fake_search(monkeypatch, level, store=store)
    rerun = search(store=store)
    assert again.calls == []
    assert rerun.recommended == result.recommended and rerun.trials == result.trials

    # other weights: another fingerprint, so the search runs afresh and replaces the store
    fresh = fake_search(monkeypatch, level, store=store)
    model, data = tiny_problem()
    with torch.no_grad():
        model.weight.add_(1.0)
    search(store=store, problem=(model, data))
    assert len(fresh.calls) == sum(_runs(result.trials, index) for index in range(len(result.trials)))


def test_an_interrupted_search_resumes_with_the_trials_it_had_not_run(monkeypatch, tmp_path):
    store = tmp_path / "calibration.json"
    level = lambda epsilon, gamma, batch: TRUE_LLC - 2.0 * gamma / GAMMA  # noqa: E731
    whole = fake_search(monkeypatch, level)
    expected = search()

    class Interrupted(Exception):
        pass

    stop = fake_search(monkeypatch, level, store=store)
    real = stop.estimate_llc_states

    def interrupt_the_fourth_trial(*args, **kwargs):
        if store.exists() and len(json.loads(store.read_text())["trials"]) == 3:
            raise Interrupted
        return real(*args, **kwargs)

    stop.estimate_llc_states = interrupt_the_fourth_trial
    with pytest.raises(Interrupted):
        search(store=store)
    assert json.loads(store.read_text())["complete"] is False and len(json.loads(store.read_text())["trials"]) == 3
    rest = fake_search(monkeypatch, level, store=store)
    resumed = search(store=store)
    done = sum(_runs(expected.trials, index) for index in range(3))
    assert [call[:3] for call in rest.calls] == [call[:3] for call in whole.calls[done:]]
    assert resumed.recommended == expected.recommended


# --- one real search -------------------------------------------------------------------------------


def test_a_real_search_on_a_linear_regression_recovers_half_its_dimension(monkeypatch):
    """A regular model of d = 8 weights: its LLC is d / 2 where gamma is small against nbeta times
    the loss's curvature. The inputs are whitened so that the mse's Hessian is the identity:
    nbeta 50 against a first gamma of FIRST_GAMMA * 50, a 5% squeeze. Short first trials and a
    budget for a few: the search compares the first gamma with its half."""
    monkeypatch.setattr(auto, "FIRST_TRIAL_STEPS", 200)
    dim, size, nbeta = 8, 200, 50.0
    generator = torch.Generator().manual_seed(0)
    inputs = torch.linalg.qr(torch.randn(size, dim, generator=generator))[0] * math.sqrt(size / 2)  # 2 X^T X / n = I
    targets = inputs @ torch.randn(dim, 1, generator=generator) + 0.1 * torch.randn(size, 1, generator=generator)
    model = nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    data = TensorDataset(inputs, targets)
    base = SamplerSettings(nbeta=nbeta, batch_size=size, seed=0)
    result = calibrate_auto(model, data, loss="mse", device="cpu", base=base, budget=Budget(chain_steps=60_000))
    assert result.stiffness == pytest.approx(nbeta, rel=1e-3)
    settings = result.recommended
    assert settings is not None and settings.batch_size == size and settings.nbeta == nbeta
    assert settings.gamma <= auto._rounded(FIRST_GAMMA * result.stiffness) and settings.epsilon * result.stiffness < 2  # a weak gamma, a stable step
    assert settings.num_burnin_steps > 0 and settings.num_draws >= TARGET_ESS / TRIAL_CHAINS
    estimate = estimate_llc(model, data, settings, loss="mse", device="cpu")
    assert abs(estimate.llc_mean / (dim / 2) - 1) < 0.2
    # the half-gamma trials ran paired with their references: on real chains the shared noise
    # cancels from the move, which is then known better than two independent trials would know it
    paired = [trial for trial in result.trials if trial.paired_gamma is not None and trial.ok]
    assert paired
    for trial in paired:
        reference = next(t for t in result.trials if (t.epsilon, t.gamma, t.batch_size) == (trial.epsilon, trial.paired_gamma, trial.batch_size))
        assert trial.paired_move_se < math.hypot(reference.se, trial.se) / 2


def test_the_trials_table_says_where_the_larger_step_diverged_beside_a_healthy_half_step():
    from types import SimpleNamespace

    from rich.console import Console

    from llcv.cli_render import auto_trials_table

    first = make_trial()
    half = make_trial(epsilon=5e-4, from_checkpoint=False, paired_gamma=1.0, paired_epsilon=1e-3, reference_diverged=True)
    console = Console(width=200, record=True)
    console.print(auto_trials_table(SimpleNamespace(trials=[first, half], pick=0), "Trials"))
    rows = console.export_text().splitlines()
    assert any("ok (continued) (the larger step diverged beside it)" in row for row in rows)
    assert sum("diverged beside it" in row for row in rows) == 1  # the first trial's row says nothing of it


def test_runs_beside_a_trial_give_the_same_numbers_at_once_as_one_after_another():
    import threading

    from llcv.calibration.beside import RunBeside, run_concurrently
    from llcv.sampling import SamplingData, estimate_llc_states

    generator = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 1)
    dataset = TensorDataset(torch.randn(400, 3, generator=generator), torch.randn(400, 1, generator=generator))
    settings = SamplerSettings(epsilon=1e-4, gamma=1.0, nbeta=100.0, batch_size=50, num_chains=TRIAL_CHAINS, num_burnin_steps=0, seed=3)
    data = SamplingData(dataset, settings, torch.device("cpu"))
    threads_seen: list[int] = []
    callers: set[int] = set()

    def sample(*args, **options):
        threads_seen.append(torch.get_num_threads())
        callers.add(threading.get_ident())
        return estimate_llc_states(model, *args, loss="mse", device="cpu", **options)

    reference = settings.model_copy(update={"epsilon": 2e-4})
    threads = torch.get_num_threads()
    outcomes = {}
    try:
        for available in (1, 3):  # too few threads for three runs at once, then one each
            torch.set_num_threads(available)
            threads_seen.clear()
            callers.clear()
            runs = [RunBeside(reference, 2, None), RunBeside(reference, 2, None, whole_batches=True)]
            with run_concurrently(runs, sample, data, 200, seed=7) as cost:
                trial, _ = sample(data, settings.model_copy(update={"num_draws": 200, "seed": 7}))
            assert torch.get_num_threads() == available  # restored
            assert sorted(threads_seen) == [1, 1, 1]  # at once, each ran on its share of the three
            assert len(callers) == (1 if available == 1 else 3)  # one after another, or each on a thread of its own
            outcomes[available] = (trial.llc_trace, [run.trace.tolist() for run in runs], cost.total)
    finally:
        torch.set_num_threads(threads)
    assert outcomes[1] == outcomes[3]
    assert outcomes[3][2] == 2 * 100 * TRIAL_CHAINS  # each run beside: 100 steps of 4 chains
