"""Calibration: the rule on hand-made rows, grids, the sweep (divergence, resume), curve and chains, figures."""

from __future__ import annotations

from dataclasses import replace

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset

from llcv import SamplerSettings, SweepResult, calibrate_sweep, recommend_settings
from llcv import calibration, sampling
from llcv.calibration import SweepGrid, apply_rule, chains_from_result, curve_from_result, parse_grid, rule_thresholds, save_sweep
from llcv.errors import SettingsError
from llcv.health import sweep_row_verdict, trace_evidence
from llcv.relaxation import RELAXATION_EFOLDS, relaxation_steps
from llcv.calibration.figures import plot_chains, plot_curve, plot_sweep_heatmap, plot_sweep_traces
from llcv.progress import Reporter
from llcv.sampling import estimate_llc
from llcv.settings import CalibrateSettings
from llcv.targets import Target

# Full batches: the MALA acceptance then measures the step size alone (docs/calibration.md).
TINY = SamplerSettings(num_chains=2, num_draws=24, num_burnin_steps=8, batch_size=200, seed=0)


def regression(dim: int = 4, size: int = 200, seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    """A linear regression at its least-squares fit: a regular model with LLC = dim / 2."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, dim, generator=generator)
    targets = inputs @ torch.randn(dim, 1, generator=generator) + 0.1 * torch.randn(size, 1, generator=generator)
    model = nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(inputs, targets).solution.T)
    return model, TensorDataset(inputs, targets)


@pytest.fixture(scope="module")
def linear():
    return regression()


@pytest.fixture(scope="module")
def template(linear):
    """A real LLCResult to reshape into hand-made ones (2 chains x 24 draws)."""
    model, data = linear
    return estimate_llc(model, data, TINY, loss="mse", device="cpu")


def shaped(template, llc_trace, *, burnin=None, diverged_chains=0, mala=0.95):
    """``template`` with the given chains x draws per-draw LLC (init loss 0, nbeta 10)."""
    trace = np.asarray(llc_trace, dtype=float)
    chains = len(trace)
    healthy = [None if index < diverged_chains else float(row.mean()) for index, row in enumerate(trace)]
    values = [value for value in healthy if value is not None]
    healthy_chains = np.arange(chains) >= diverged_chains
    diagnostics = template.diagnostics.model_copy(
        update={"diverged_chains": diverged_chains, "r_hat": None, "ess": None, **trace_evidence(trace, healthy_chains)}
    )
    return template.model_copy(
        update={
            "llc_trace": trace.tolist(),
            "loss_trace": (trace / 10).tolist(),
            "burnin_loss_trace": [list(np.asarray(burnin if burnin is not None else []) / 10)] * chains,
            "llc_per_chain": healthy,
            "llc_mean": float(np.mean(values)) if values else None,
            "llc_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "init_loss": 0.0,
            "nbeta": 10.0,
            "mala_acceptance": mala,
            "diagnostics": diagnostics,
        }
    )


# The rule, on hand-made rows.

RULE = rule_thresholds(CalibrateSettings())  # the default thresholds, as a sweep records them


def row(**changes):
    """A row that passes every rule; ``changes`` break one. Its chains burned in for just as long
    as they need to relax, unless ``num_burnin_steps`` is given."""
    base = dict(
        epsilon=1e-4, gamma=100.0, nbeta=10.0, mala_acceptance=0.95, llc_mean=5.0, llc_std=0.1, llc_mcse=0.1,
        llc_final=5.0, diverged=False, negative_fraction=0.0, negative_chains=0.0, trace_drift=0.01, drift_z=0.5,
        r_hat=1.01, ess=100.0,
    )
    made = {**base, **changes}
    if "num_burnin_steps" not in made:  # at gamma 0 no burn-in is enough
        made["num_burnin_steps"] = relaxation_steps(made["epsilon"], made["gamma"]) if made["gamma"] else 0
    return made


def test_a_healthy_row_qualifies_and_is_recommended():
    rows, index, reason = apply_rule([row()])
    assert rows[0]["qualifies"] is True and rows[0]["reason"] == ""
    assert index == 0
    assert "epsilon=0.0001" in reason and "smallest qualifying epsilon" in reason


@pytest.mark.parametrize(
    ("changes", "failed", "check", "shown"),
    [
        (dict(diverged=True), "diverged", "diverged", "diverged"),
        (dict(llc_mean=None, llc_std=None, mala_acceptance=None, diverged=True), "diverged", "diverged", "diverged"),
        (dict(num_burnin_steps=199), "burn-in < 2/(epsilon*gamma)", "relaxed", "not relaxed"),  # 2 / (1e-4 * 100) = 200
        (dict(gamma=0.0, num_burnin_steps=10**6), "burn-in < 2/(epsilon*gamma)", "relaxed", "not relaxed"),  # nothing pulls the chains back
        (dict(llc_mean=-0.21), "llc_mean < 0", "negative_llc", "LLC < 0"),
        (dict(llc_mean=-2.0), "llc_mean < 0", "negative_llc", "LLC < 0"),
        (dict(negative_chains=0.5), "negative_chains > 0", "negative_chains", "neg > 0"),
        (dict(drift_z=3.1), "|drift_z| > 3", "drift", "drift z > 3"),
        (dict(drift_z=-3.1), "|drift_z| > 3", "drift", "drift z > 3"),
        (dict(drift_z=None), "|drift_z| > 3", "drift", "drift z > 3"),
        (dict(r_hat=1.11), "r_hat > 1.1", "r_hat", "R-hat > 1.1"),
        (dict(mala_acceptance=0.89), "mala_acceptance < 0.9", "mala_acceptance", "MALA < 0.9"),
        (dict(mala_acceptance=None), "mala_acceptance < 0.9", "mala_acceptance", "MALA < 0.9"),
    ],
)
def test_each_rule_failing_alone_disqualifies_with_its_name(changes, failed, check, shown):
    rows, index, reason = apply_rule([row(**changes)])
    assert rows[0]["qualifies"] is False
    assert rows[0]["reason"] == failed and rows[0]["failed_check"] == check
    assert sweep_row_verdict(rows[0], RULE) == shown  # tables and figures show the rule abbreviated
    assert index is None
    assert f"'{failed}' failed most (1 of 1" in reason


def test_a_sweep_row_written_before_failed_check_shows_its_rule_abbreviated():
    """Rows before llcv 0.12 record only the rule's text: it names the rule under the sweep's own thresholds."""
    strict = {**RULE, "max_r_hat": 1.05, "target_acceptance": 0.95}
    assert sweep_row_verdict({"qualifies": False, "reason": "r_hat > 1.05"}, strict) == "R-hat > 1.05"
    assert sweep_row_verdict({"qualifies": False, "reason": "mala_acceptance < 0.95"}, strict) == "MALA < 0.95"
    assert sweep_row_verdict({"qualifies": False, "reason": "burn-in < 2/(epsilon*gamma)"}, strict) == "not relaxed"
    assert sweep_row_verdict({"qualifies": False, "reason": "a rule of a newer llcv"}, strict) == "a rule of a newer llcv"
    assert sweep_row_verdict({"qualifies": True, "reason": ""}, strict) == ""
    # the check's name wins over the text where a row has both
    assert sweep_row_verdict({"qualifies": False, "reason": "r_hat > 1.05", "failed_check": "drift"}, strict) == "drift z > 3"


def test_noise_is_judged_by_its_standard_error():
    """A mean within 2 MCSE of 0, or many negative draws, is noise around a small LLC, not a failure."""
    rows, _, _ = apply_rule([row(llc_mean=-0.19, llc_mcse=0.1), row(llc_mean=0.02, negative_fraction=0.45)])
    assert [r["qualifies"] for r in rows] == [True, True]
    # the standard error with the initial loss's error is the yardstick where a row has it
    rows, _, _ = apply_rule([row(llc_mean=-0.5, llc_mcse=0.1, llc_se=0.3), row(llc_mean=-0.5, llc_mcse=0.1, llc_se=0.2)])
    assert [r["reason"] for r in rows] == ["", "llc_mean < 0"] and [r["failed_check"] for r in rows] == ["", "negative_llc"]


def test_boundaries_pass_and_one_chain_needs_no_r_hat():
    rows, index, _ = apply_rule([row(drift_z=-3.0, r_hat=1.1, mala_acceptance=0.9, num_burnin_steps=200), row(r_hat=None)])
    assert [r["qualifies"] for r in rows] == [True, True]


def test_the_first_failed_rule_is_the_reason():
    rows, _, _ = apply_rule([row(negative_chains=0.5, mala_acceptance=0.1, r_hat=3.0)])
    assert rows[0]["reason"] == "negative_chains > 0"


def test_thresholds_come_from_the_arguments():
    rows, index, _ = apply_rule(
        [row(mala_acceptance=0.6, drift_z=4.0, r_hat=1.3, negative_chains=0.25)],
        target_acceptance=0.5, max_drift_z=5.0, max_r_hat=1.5, max_negative_fraction=0.25,
    )
    assert rows[0]["qualifies"] and index == 0
    rows, _, _ = apply_rule([row(mala_acceptance=0.93)], target_acceptance=0.95)
    assert rows[0]["reason"] == "mala_acceptance < 0.95"


def test_the_largest_epsilon_on_a_plateau_wins():
    """1e-5 and 1e-4 agree within their MCSE; 1e-3 is biased upward: 1e-4 is recommended."""
    rows = [row(epsilon=1e-5, llc_mean=5.0), row(epsilon=1e-4, llc_mean=5.2), row(epsilon=1e-3, llc_mean=6.5)]
    _, index, reason = apply_rule(rows)
    assert index == 1
    assert "agrees with the next smaller qualifying epsilon" in reason


def test_without_a_plateau_the_smallest_qualifying_epsilon_wins():
    rows = [row(epsilon=1e-5, llc_mean=3.0), row(epsilon=1e-4, llc_mean=5.0), row(epsilon=1e-3, diverged=True)]
    _, index, reason = apply_rule(rows)
    assert index == 0 and "no step-size plateau" in reason


def test_noisy_rows_that_differ_by_more_than_the_plateau_tolerance_do_not_make_a_plateau():
    """Within 2 combined MCSE but 20% apart: a short sweep that cannot resolve a 20% step-size
    bias is no evidence of a plateau, so the smaller epsilon wins; 5% apart, the larger."""
    noisy = dict(llc_mcse=1.0)
    _, index, reason = apply_rule([row(epsilon=1e-5, llc_mean=5.0, **noisy), row(epsilon=1e-4, llc_mean=6.0, **noisy)])
    assert index == 0 and "no step-size plateau" in reason
    _, index, reason = apply_rule([row(epsilon=1e-5, llc_mean=5.0, **noisy), row(epsilon=1e-4, llc_mean=5.25, **noisy)])
    assert index == 1 and "extrapolated to epsilon 0, under 10%" in reason
    # 8% apart at epsilons a factor 2 apart: linear in epsilon, the larger one's bias is 16%
    _, index, _ = apply_rule([row(epsilon=1e-4, llc_mean=5.0, **noisy), row(epsilon=2e-4, llc_mean=5.4, **noisy)])
    assert index == 0


def test_across_gammas_a_plateau_then_agreement_then_the_weakest_gamma():
    plateau_at_10 = [row(gamma=10.0, epsilon=1e-5, llc_mean=5.0), row(gamma=10.0, epsilon=1e-4, llc_mean=5.1)]
    lone_at_1 = [row(gamma=1.0, epsilon=1e-4, llc_mean=5.0)]
    assert apply_rule(lone_at_1 + plateau_at_10)[1] == 2  # the plateau beats a weaker gamma without one
    plateau_at_1 = [row(gamma=1.0, epsilon=1e-5, llc_mean=9.0), row(gamma=1.0, epsilon=1e-4, llc_mean=9.1)]
    plateau_at_100 = [row(gamma=100.0, epsilon=1e-5, llc_mean=5.0), row(gamma=100.0, epsilon=1e-4, llc_mean=5.0)]
    # 10 and 100 agree with each other, 1 agrees with neither: 10, the weaker of the agreeing pair
    _, index, reason = apply_rule(plateau_at_1 + plateau_at_10 + plateau_at_100)
    assert index == 3 and "agrees with a neighbouring gamma" in reason


def test_none_qualifies_names_the_rule_failing_most_and_the_direction():
    rows = [row(epsilon=1e-3, diverged=True), row(epsilon=1e-4, mala_acceptance=0.5), row(epsilon=1e-5, mala_acceptance=0.7, drift_z=5.0)]
    judged, index, reason = apply_rule(rows)
    assert index is None and not any(r["qualifies"] for r in judged)
    assert "'mala_acceptance < 0.9' failed most (2 of 3 combinations)" in reason
    assert "smaller epsilons" in reason
    # A diverged row's missing numbers do not count against the other rules.
    _, _, reason = apply_rule([row(diverged=True, mala_acceptance=None, llc_mean=None)] * 2 + [row(mala_acceptance=0.5)])
    assert "'diverged' failed most (2 of 3" in reason
    _, _, reason = apply_rule([row(diverged=True), row(diverged=True, epsilon=1e-3)])
    assert "'diverged' failed most" in reason and "smaller epsilons or larger gammas" in reason
    _, _, reason = apply_rule([row(drift_z=4.0)])
    assert "larger epsilons, or more draws or burn-in steps" in reason


def test_apply_rule_does_not_change_the_rows_it_is_given():
    given = [row(mala_acceptance=0.1)]
    apply_rule(given)
    assert "qualifies" not in given[0]


# Grid flags.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-6,1e-5,1e-4", [1e-6, 1e-5, 1e-4]),
        ("1e-6:1e-2:5", [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
        ("1:1000:4", [1.0, 10.0, 100.0, 1000.0]),
        ("0.5", [0.5]),
        ("3:3:1", [3.0]),
    ],
)
def test_grids_are_lists_or_log_ranges(text, expected):
    assert parse_grid(text, "--epsilons") == expected


@pytest.mark.parametrize("text", ["", "1e-6,,1e-4", "a,b", "1e-6:1e-2", "1e-6:1e-2:x", "1e-6:1e-2:2.5", "1:2:3:4", "0:1:3", "1:10:0", "-1", "0", "nan", "inf"])
def test_bad_grids_name_the_flag(text):
    with pytest.raises(SettingsError, match="^--epsilons: "):
        parse_grid(text, "--epsilons")


def test_gammas_may_include_zero():
    assert parse_grid("0,10", "--gammas", allow_zero=True) == [0.0, 10.0]


def test_output_folder_is_named_after_the_checkpoint(tmp_path):
    assert calibration.output_dir(tmp_path, tmp_path / "ck" / "step_00000036.pt") == tmp_path / "step_00000036"
    assert calibration.output_dir(tmp_path, "x/checkpoint_epoch_39.pth.tar") == tmp_path / "checkpoint_epoch_39"


# The sweep.


def test_sweep_on_a_trained_model_flags_a_huge_epsilon_and_recommends_a_healthy_pair(trained_run):
    _, run = trained_run
    target = Target(run.checkpoints[-1]).load()
    base = SamplerSettings(num_chains=2, num_draws=12, batch_size=64, num_samples=128)
    # Short chains on minibatches: the thresholds are loosened so that the healthy pairs can pass.
    grid = SweepGrid([1e-5, 1e-4, 1e3], [1e4], relax_burnin=True, target_acceptance=0.2, max_negative_fraction=0.5, max_drift_z=100.0, max_r_hat=3.0)
    result = calibrate_sweep(target.model, target.dataset, grid, base=base, device="cpu")
    assert isinstance(result, SweepResult)
    assert [(r["epsilon"], r["gamma"]) for r in result.rows] == [(1e-5, 1e4), (1e-4, 1e4), (1e3, 1e4)]
    assert set(result.rows[0]) == set(calibration.ROW_FIELDS)
    huge = result.rows[2]
    assert huge["diverged"] is True and huge["qualifies"] is False and huge["reason"] == "diverged"
    assert result.recommended is not None, result.rows
    chosen = result.rows[result.recommended_index]
    assert not chosen["diverged"] and chosen["qualifies"] and result.recommended.epsilon == chosen["epsilon"]
    assert result.recommended.nbeta == pytest.approx(128 / math.log(128))  # the default, n / ln n of the sampled data, resolved
    assert (result.recommended.num_chains, result.recommended.num_draws) == (2, 12)  # the rest is the base
    # the rows measured MALA acceptance; the recommendation keeps the base's choice (off: it costs)
    assert chosen["mala_acceptance"] is not None and result.recommended.mala is False
    # each row burned in for 2 / (epsilon * gamma) steps, and the pick carries its own
    assert [r["num_burnin_steps"] for r in result.rows] == [20, 2, 1]
    assert result.recommended.num_burnin_steps == chosen["num_burnin_steps"]


def test_a_sweep_without_nbetas_runs_at_the_samplers_temperature_resolved_on_its_data(linear):
    model, data = linear  # 200 samples
    for nbeta, expected in (("data", 200 / math.log(200)), ("batch", 50 / math.log(50)), (7.0, 7.0)):
        base = TINY.model_copy(update={"nbeta": nbeta, "batch_size": 50, "num_draws": 4, "num_burnin_steps": 0})
        assert calibrate_sweep(model, data, SweepGrid([1e-3], [1.0]), base=base, loss="mse", device="cpu").rows[0]["nbeta"] == pytest.approx(expected)


def test_sweep_rows_are_built_from_the_estimates(linear):
    model, data = linear
    result = calibrate_sweep(model, data, SweepGrid([1e-3], [1.0], nbetas=[5.0, 20.0]), base=TINY, loss="mse", device="cpu")
    assert [r["nbeta"] for r in result.rows] == [5.0, 20.0]
    for row_, trace in zip(result.rows, result.traces):
        assert len(trace) == TINY.num_draws
        assert row_["llc_final"] == pytest.approx(np.mean(trace[-3:]))  # last 10% of 24 draws: 3
        assert 0.0 <= row_["negative_fraction"] <= 1.0
        assert row_["r_hat"] is not None and row_["mala_acceptance"] > 0.5
        assert row_["llc_se"] >= row_["llc_mcse"] > 0  # the chains' spread can only add to the MCSE
    assert result.base.mala is True


def test_sweep_forces_mala_on_since_the_rule_needs_it(linear):
    model, data = linear
    result = calibrate_sweep(model, data, SweepGrid([1e-3], [1.0]), base=TINY.model_copy(update={"mala": False}), loss="mse", device="cpu")
    assert result.rows[0]["mala_acceptance"] is not None


def test_empty_grid_is_a_settings_error(linear):
    model, data = linear
    with pytest.raises(SettingsError, match="calibrate.gammas"):
        calibrate_sweep(model, data, SweepGrid([1e-3], []), base=TINY, loss="mse", device="cpu")


def test_each_row_burns_in_until_its_chains_have_relaxed_and_the_pick_keeps_its_burn_in(linear):
    model, data = linear
    grid = SweepGrid([1e-3, 1e-2], [1.0, 1000.0], relax_burnin=True, target_acceptance=0.5, max_drift_z=100.0, max_r_hat=2.0)
    result = calibrate_sweep(model, data, grid, base=TINY, loss="mse", device="cpu")
    for row_ in result.rows:
        assert row_["num_burnin_steps"] == calibration.row_burnin_steps(row_["epsilon"], row_["gamma"], TINY.num_draws)
    # 2 / (epsilon * gamma) where that is at most 4 times the draws; none where it is more, since
    # such a row cannot qualify (2000 and 200 steps at gamma 1, against 4 x 24)
    assert [row_["num_burnin_steps"] for row_ in result.rows] == [0, 0, 2, 1]
    assert [row_["reason"] for row_ in result.rows[:2]] == ["burn-in < 2/(epsilon*gamma)"] * 2
    assert result.recommended.num_burnin_steps == result.rows[result.recommended_index]["num_burnin_steps"]
    assert result.recommended_dict()["num_burnin_steps"] == result.recommended.num_burnin_steps
    assert "where at most 96" in result.burnin_label
    fixed = calibrate_sweep(model, data, SweepGrid([1e-3], [1000.0]), base=TINY, loss="mse", device="cpu")
    assert fixed.rows[0]["num_burnin_steps"] == TINY.num_burnin_steps and fixed.burnin_label == "8 burn-in"


def test_a_base_with_the_automatic_burn_in_gives_each_row_the_number_it_resolves_to(linear):
    model, data = linear
    automatic = TINY.model_copy(update={"num_burnin_steps": "auto"})
    grid = SweepGrid([1e-3], [1.0, 1000.0], target_acceptance=0.5, max_drift_z=100.0, max_r_hat=2.0)
    result = calibrate_sweep(model, data, grid, base=automatic, loss="mse", device="cpu")
    # 2 / (epsilon * gamma): 2000 steps at gamma 1, cut to its cap of 4 x 24 draws; 2 at gamma 1000
    assert [row_["num_burnin_steps"] for row_ in result.rows] == [96, 2]
    assert result.rows[0]["reason"] == "burn-in < 2/(epsilon*gamma)"
    assert result.burnin_label == "burn-in 2/(epsilon*gamma) capped at 96"


def test_a_row_is_judged_after_its_chains_relax_not_on_the_transient_from_the_checkpoint():
    # 400 weights, each direction relaxing at epsilon * (nbeta * k + gamma) from the checkpoint,
    # where the chains start: without burn-in their rise is a coherent drift of the mean LLC
    # over the first draws. Localized at gamma, the posterior is Gaussian and its LLC exact:
    # 1/2 * sum of nbeta * k / (nbeta * k + gamma) over the loss Hessian's eigenvalues k.
    model, data = regression(dim=400, size=2000)
    nbeta, gamma = 20.0, 40.0
    inputs = data.tensors[0].double()
    curvatures = torch.linalg.eigvalsh(2 * inputs.T @ inputs / len(inputs))
    exact = float((0.5 * nbeta * curvatures / (nbeta * curvatures + gamma)).sum())
    base = SamplerSettings(num_chains=2, num_draws=100, num_burnin_steps=0, batch_size=2000, nbeta=nbeta, seed=0)
    sweeps = [
        calibrate_sweep(model, data, SweepGrid([0.05 / gamma], [gamma], relax_burnin=relax), base=base, loss="mse", device="cpu").rows[0]
        for relax in (False, True)
    ]
    transient, relaxed = sweeps
    assert transient["num_burnin_steps"] == 0 and relaxed["num_burnin_steps"] == relaxation_steps(0.05 / gamma, gamma) == 40
    # the rule rejects the row without burn-in for that, and its trace shows why: it drifts, low
    assert transient["reason"] == "burn-in < 2/(epsilon*gamma)"
    assert transient["drift_z"] > 3 and transient["llc_mean"] < 0.95 * exact
    assert abs(relaxed["drift_z"]) < 3 and abs(relaxed["llc_mean"] / exact - 1) < 0.05


class _Interrupt:
    """Wraps estimate_llc: counts calls and raises KeyboardInterrupt on call number ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.calls = stop_at, []

    def __call__(self, model, data, settings, **kwargs):
        if self.stop_at is not None and len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append((settings.epsilon, settings.gamma, settings.nbeta))
        return estimate_llc(model, data, settings, **kwargs)


def test_interrupted_sweep_resumes_with_only_the_remaining_combinations(linear, tmp_path, monkeypatch):
    model, data = linear
    sweep_file = tmp_path / "sweep.json"
    grid, run = SweepGrid([1e-4, 1e-3], [1.0, 10.0]), dict(base=TINY, loss="mse", device="cpu", sweep_file=sweep_file)
    first = _Interrupt(stop_at=3)
    monkeypatch.setattr(sampling, "estimate_llc", first)
    with pytest.raises(KeyboardInterrupt):
        calibrate_sweep(model, data, grid, **run)
    assert len(first.calls) == 2
    stored = json.loads(sweep_file.read_text())
    assert stored["complete"] is False and len(stored["rows"]) == 2 and stored["recommended"] is None

    second = _Interrupt()
    monkeypatch.setattr(sampling, "estimate_llc", second)
    resumed = calibrate_sweep(model, data, grid, **run)
    assert len(second.calls) == 2 and not set(second.calls) & set(first.calls)
    assert len(resumed.rows) == 4 and json.loads(sweep_file.read_text())["complete"] is True

    # Same seed, same numbers: the resumed sweep equals one that was never interrupted.
    monkeypatch.setattr(sampling, "estimate_llc", estimate_llc)
    fresh = calibrate_sweep(model, data, grid, **{**run, "sweep_file": None})
    assert resumed.rows == fresh.rows

    # A finished sweep is not redone, and new thresholds only re-judge the stored rows.
    third = _Interrupt()
    monkeypatch.setattr(sampling, "estimate_llc", third)
    rejudged = calibrate_sweep(model, data, replace(grid, target_acceptance=1.0), **run)
    assert third.calls == [] and rejudged.recommended is None


def test_resume_recomputes_rows_made_with_other_settings_or_weights(linear, tmp_path, monkeypatch):
    model, data = linear
    sweep_file = tmp_path / "sweep.json"
    grid, run = SweepGrid([1e-4, 1e-3], [1.0]), dict(loss="mse", device="cpu", sweep_file=sweep_file)
    calibrate_sweep(model, data, grid, base=TINY, **run)
    counter = _Interrupt()
    monkeypatch.setattr(sampling, "estimate_llc", counter)
    calibrate_sweep(model, data, grid, base=TINY.model_copy(update={"num_draws": 16}), **run)
    assert len(counter.calls) == 2
    counter.calls.clear()
    changed = regression(seed=1)[0]
    calibrate_sweep(changed, data, grid, base=TINY.model_copy(update={"num_draws": 16}), **run)
    assert len(counter.calls) == 2
    counter.calls.clear()
    calibrate_sweep(changed, data, replace(grid, epsilons=[1e-4, 1e-3, 1e-2]), base=TINY.model_copy(update={"num_draws": 16}), **run)
    assert counter.calls == [(1e-2, 1.0, pytest.approx(200 / math.log(200)))]


def test_resume_recomputes_a_row_whose_stored_burn_in_differs_from_what_it_would_run_now(linear, tmp_path, monkeypatch):
    model, data = linear
    sweep_file = tmp_path / "sweep.json"
    grid, run = SweepGrid([1e-3, 1e-2], [1000.0], relax_burnin=True), dict(loss="mse", device="cpu", sweep_file=sweep_file)
    calibrate_sweep(model, data, grid, base=TINY, **run)
    stored = json.loads(sweep_file.read_text())
    stored["rows"][0]["num_burnin_steps"] += 1  # as an llcv with another automatic burn-in would have written it
    sweep_file.write_text(json.dumps(stored))
    counter = _Interrupt()
    monkeypatch.setattr(sampling, "estimate_llc", counter)
    result = calibrate_sweep(model, data, grid, base=TINY, **run)
    assert [call[0] for call in counter.calls] == [1e-3]
    assert result.rows[0]["num_burnin_steps"] == calibration.row_burnin_steps(1e-3, 1000.0, TINY.num_draws)


def test_an_unreadable_sweep_file_starts_afresh(linear, tmp_path):
    model, data = linear
    sweep_file = tmp_path / "sweep.json"
    sweep_file.write_text("{not json")
    notes = []

    class Notes(Reporter):
        def note(self, message):
            notes.append(message)

    result = calibrate_sweep(model, data, SweepGrid([1e-3], [1.0]), base=TINY, loss="mse", device="cpu", sweep_file=sweep_file, reporter=Notes())
    assert len(result.rows) == 1 and any("not a readable sweep file" in note for note in notes)


def test_sweep_reports_grid_progress(linear):
    model, data = linear
    events = []

    class Recorder(Reporter):
        def start(self, key, description, total):
            events.append(("start", key, total))

        def advance(self, key, amount=1, **fields):
            if key == "sweep":
                events.append(("advance", key, amount))

    calibrate_sweep(model, data, SweepGrid([1e-4, 1e-3], [1.0]), base=TINY, loss="mse", device="cpu", reporter=Recorder())
    assert ("start", "sweep", 2) in events
    assert [e for e in events if e[0] == "advance"] == [("advance", "sweep", 0), ("advance", "sweep", 1), ("advance", "sweep", 1)]
    assert any(e[0] == "start" and e[1] != "sweep" for e in events)  # the chains report too


def test_saved_sweep_files(linear, tmp_path):
    model, data = linear
    grid = SweepGrid([1e-3, 1e-2, 10.0], [0.0, 1000.0], target_acceptance=0.5, max_drift_z=100.0, max_r_hat=2.0)
    result = calibrate_sweep(model, data, grid, base=TINY, loss="mse", device="cpu", checkpoint="ck/step_1.pt")
    written = save_sweep(result, tmp_path, "svg")
    names = sorted(path.name for path in written)
    assert names == ["recommended.json", "sweep.csv", "sweep.json", "sweep_heatmap.svg", "sweep_traces.svg"]
    recommended = json.loads((tmp_path / "recommended.json").read_text())
    assert set(recommended) == {"epsilon", "gamma", "nbeta", "sampler", "num_burnin_steps"}
    assert recommended["num_burnin_steps"] == TINY.num_burnin_steps  # the burn-in its row qualified with
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert stored["recommended"] == recommended and stored["reason"] == result.reason
    assert stored["checkpoint"] == "ck/step_1.pt" and len(stored["rows"]) == len(stored["traces"]) == 6
    lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert lines[0] == ",".join(calibration.ROW_FIELDS) and len(lines) == 7

    # When a later sweep finds nothing, the folder stops recommending.
    rejected = result.model_copy(update={"recommended": None, "reason": "no combination qualifies"})
    save_sweep(rejected, tmp_path, "png")
    assert not (tmp_path / "recommended.json").exists()
    assert json.loads((tmp_path / "sweep.json").read_text())["recommended"] is None


def test_relaxation_steps_cover_the_e_folds_of_the_localization_alone():
    assert relaxation_steps(1e-3, 10.0) == math.ceil(RELAXATION_EFOLDS / 1e-2)
    assert relaxation_steps(1e-4, 10.0) == 10 * relaxation_steps(1e-3, 10.0)
    assert relaxation_steps(1e-3, 0.0) == math.inf  # without localization no burn-in is enough


# recommend_settings (calibrate_auto's pick) on models with a known learning coefficient; its
# search's rules are tested in test_calibrate_auto.py.


@pytest.mark.slow
@pytest.mark.parametrize("name", ["regression-d10", "rrr-5-3-5-r1"])
def test_recommend_settings_recovers_known_learning_coefficients(name):
    from llcv.known_models import known_cases

    case = next(case for case in known_cases() if case.name == name)
    settings = recommend_settings(case.model, case.dataset, loss="mse", device="cpu")
    result = estimate_llc(case.model, case.dataset, settings, loss="mse", device="cpu")
    assert abs(result.llc_mean - case.true_llc) <= 3.5 * result.llc_std
    assert abs(result.llc_mean / case.true_llc - 1) <= 0.15


# One curve and several chains.


def test_curve_verdicts(template):
    rng = np.random.default_rng(0)
    settings = TINY.model_copy(update={"num_chains": 1, "num_draws": 200, "num_burnin_steps": 5})
    flat = 5 + 0.3 * rng.standard_normal(200)
    stable = curve_from_result(shaped(template, [flat], burnin=[0, 1, 2, 3, 4]), settings)
    assert stable.verdict == "stable" and "limit 6" in stable.verdict_reason
    assert stable.draw_steps[0] == 6 and stable.draw_steps[-1] == 205
    assert stable.burnin_llc == pytest.approx([0, 1, 2, 3, 4])
    assert stable.running_llc[-1] == pytest.approx(flat.mean())
    assert stable.llc_final == pytest.approx(flat[-20:].mean())

    spiked = flat.copy()
    spiked[120] = 40.0
    peaks = curve_from_result(shaped(template, [spiked]), settings)
    assert peaks.verdict == "peaks" and peaks.peak_draw == 120 and peaks.peak_score > 6

    rising = np.linspace(1, 10, 200) + 0.1 * rng.standard_normal(200)
    drift = curve_from_result(shaped(template, [rising]), settings)
    assert drift.verdict == "drift" and drift.trace_drift > 0.1

    diverged = curve_from_result(shaped(template, [flat], diverged_chains=1), settings)
    assert diverged.verdict == "diverged"
    assert json.dumps(diverged.to_dict(), allow_nan=False)


def test_calibrate_curve_runs_one_chain(linear):
    model, data = linear
    curve = calibration.calibrate_curve(model, data, TINY.model_copy(update={"num_chains": 7}), loss="mse", device="cpu")
    assert curve.settings.num_chains == 1 and len(curve.llc) == TINY.num_draws and len(curve.burnin_llc) == 8


def test_chains_running_means_and_band(template):
    trace = np.array([[1.0, 3.0, 5.0], [3.0, 5.0, 7.0], [100.0, 0.0, 0.0]])
    chains = chains_from_result(shaped(template, trace, diverged_chains=1))
    assert chains.running_llc[1] == pytest.approx([3.0, 4.0, 5.0])
    # Chain 0 diverged: the band is over chains 1 and 2.
    assert chains.running_mean == pytest.approx([(3 + 100) / 2, (4 + 50) / 2, (5 + 100 / 3) / 2])
    assert chains.running_std[0] == pytest.approx(np.std([3.0, 100.0], ddof=1))
    assert chains.diverged_chains == 1
    payload = chains.to_dict()
    assert payload["result"]["llc_trace"] == trace.tolist() and json.dumps(payload, allow_nan=False)


# Figures.


def _labels(figure: Figure) -> list[tuple[str, str, str, str]]:
    return [(axis.get_xlabel(), axis.get_ylabel(), axis.get_xscale(), axis.get_yscale()) for axis in figure.axes if axis.get_xlabel()]


def test_heatmap_axes_are_logarithmic_only_where_the_grid_is():
    rows = apply_rule([row(epsilon=e, gamma=g, nbeta=n) for n in (10.0, 20.0) for g in (1.0, 100.0) for e in (1e-5, 1e-4)])[0]
    figure = plot_sweep_heatmap(rows, "sweep of step_1.pt", RULE, recommended=3)
    axes = _labels(figure)
    assert len(axes) == 4  # MALA and LLC for each nbeta
    assert all(a[:2] == ("epsilon (step size)", "gamma (localization)") and a[2:] == ("log", "log") for a in axes)
    assert "step_1.pt" in figure.get_suptitle()
    with_zero = apply_rule([row(gamma=0.0), row(gamma=10.0)])[0]
    assert _labels(plot_sweep_heatmap(with_zero, "t", RULE))[0][3] == "linear"


def _cell_texts(figure: Figure) -> list[str]:
    return [text.get_text() for axis in figure.axes for text in axis.texts]


def test_heatmap_cells_name_the_first_rule_failed_abbreviated_in_new_and_old_rows():
    rows = apply_rule([row(epsilon=1e-5, r_hat=1.3), row(epsilon=1e-4, mala_acceptance=0.5)])[0]
    assert [text.split("\n")[1] for text in _cell_texts(plot_sweep_heatmap(rows, "t", RULE))] == ["✗ R-hat > 1.1", "✗ MALA < 0.9"] * 2
    # a sweep.json from before llcv 0.12: the rows have no failed_check
    old = [{key: value for key, value in judged.items() if key != "failed_check"} for judged in rows]
    assert _cell_texts(plot_sweep_heatmap(old, "t", RULE)) == _cell_texts(plot_sweep_heatmap(rows, "t", RULE))


def test_trace_figure_has_a_panel_per_gamma_and_nbeta():
    rows = [row(gamma=g, epsilon=e, diverged=e > 1e-3) for g in (1.0, 10.0, 100.0) for e in (1e-4, 1e-2)]
    traces = [list(np.linspace(0, 5, 20)) if not r["diverged"] else [1e9, None] + [None] * 18 for r in rows]
    figure = plot_sweep_traces(rows, traces, "sweep of step_1.pt")
    assert len(figure.axes) == 3
    assert figure.axes[0].get_ylim()[1] < 100  # the diverged trace does not set the scale


def test_curve_and_chains_figures(template):
    settings = TINY.model_copy(update={"num_chains": 1, "num_draws": 50, "num_burnin_steps": 10})
    curve = curve_from_result(shaped(template, [np.full(50, 2.0)], burnin=np.linspace(0, 2, 10)), settings)
    axes = _labels(plot_curve(curve, "curve"))
    assert axes == [("SGLD step", "LLC = nbeta (L(w) - L(w*))", "linear", "linear")]
    chains = chains_from_result(shaped(template, np.ones((3, 10))))
    assert _labels(plot_chains(chains, "chains")) == [("draw", "running LLC", "linear", "linear")]


def test_a_sweep_grid_from_the_calibrate_section_relaxes_rows_unless_it_sets_their_burn_in():
    options = CalibrateSettings(epsilons=[1e-4], gammas=[10.0], nbetas=[3.0], max_r_hat=1.2)
    grid = SweepGrid.from_settings(options)
    assert (grid.epsilons, grid.gammas, grid.nbetas, grid.relax_burnin) == ([1e-4], [10.0], [3.0], True)
    assert grid.rule == {**RULE, "max_r_hat": 1.2}  # the thresholds as a sweep records them
    assert SweepGrid.from_settings(options.model_copy(update={"num_burnin_steps": 5})).relax_burnin is False
