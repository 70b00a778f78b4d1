"""Every estimate's health (llcv.health): the statistics it rests on, the verdict on real chains,
and that the verdict reaches every place an LLC is shown (records, summary.csv, progress lines,
the estimate table, transitions), and that the demo never estimates with rejected settings."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from _helpers import copy_checkpoints, fake_record, fast_settings
from test_sampling import regression  # a linear model at its least-squares fit: LLC = 2
from llcv import SamplerSettings, estimate_llc
from llcv.diagnostics import geweke_z, mcse_of_mean
from llcv.estimation.run import estimate_all
from llcv.sampling import LLCResult
from llcv.health import CHECKS_BY_NAME, Evidence, HealthFailure, HealthThresholds, failed_checks, rule_texts, trace_evidence
from llcv.progress import Reporter
from llcv.results.store import SUMMARY_FILE, find_transitions, settings_hash
from llcv.settings import EstimateSettings


def autoregressive(chains: int, draws: int, phi: float, rng: np.random.Generator, stationary: bool = False) -> np.ndarray:
    """AR(1) chains with unit innovations, started at 0 or (``stationary``) from their stationary distribution."""
    trace = np.zeros((chains, draws))
    if stationary:
        trace[:, 0] = rng.standard_normal(chains) / np.sqrt(1 - phi**2)
    for draw in range(1, draws):
        trace[:, draw] = phi * trace[:, draw - 1] + rng.standard_normal(chains)
    return trace


def test_mcse_matches_the_spread_of_means_of_autocorrelated_chains():
    rng = np.random.default_rng(0)
    traces = [autoregressive(4, 400, 0.8, rng) for _ in range(200)]
    observed = np.std([trace.mean() for trace in traces])
    predicted = np.mean([mcse_of_mean(trace) for trace in traces])
    assert predicted == pytest.approx(observed, rel=0.15)


def test_geweke_z_flags_a_trend_but_rarely_stationary_noise():
    rng = np.random.default_rng(1)
    stationary = [abs(geweke_z(autoregressive(2, 200, 0.5, rng))) for _ in range(200)]
    assert np.mean(np.array(stationary) > 3) < 0.05
    rising = autoregressive(2, 100, 0.5, rng) + np.linspace(0, 3, 100)
    assert geweke_z(rising) > 3
    assert geweke_z(np.ones((2, 8))) == 0.0  # a constant trace has not drifted


def test_geweke_z_keeps_its_scale_on_a_sweeps_short_strongly_autocorrelated_chains():
    """2 x 100 stationary draws with an autocorrelation time of 39: the early segment's 20 draws a
    chain cannot measure their own autocorrelation. Measuring it from each segment alone, z
    spread 1.57 standard deviations (6% beyond 3); a trend is still caught."""
    rng = np.random.default_rng(2)
    stationary = np.array([geweke_z(autoregressive(2, 100, 0.95, rng, stationary=True)) for _ in range(400)])
    assert np.std(stationary) < 1.47
    rising = [geweke_z(autoregressive(2, 100, 0.5, rng, stationary=True) + np.linspace(0, 3, 100)) for _ in range(50)]
    assert np.median(rising) > 4


def test_the_initial_losss_error_widens_the_sign_checks_but_not_the_drift():
    """Chains 0.3 below 0 with small noise sit significantly below the checkpoint's loss, unless the
    initial loss they are measured from is itself uncertain by more; unknown error: the MCSE alone."""
    trace = -0.3 + 0.05 * np.random.default_rng(0).standard_normal((4, 400))
    healthy = np.ones(4, dtype=bool)
    exact, uncertain, unknown = (trace_evidence(trace, healthy, error) for error in (0.0, 0.5, None))
    assert exact["negative_chains"] == 1.0 and uncertain["negative_chains"] == 0.0 and unknown["negative_chains"] == 1.0
    assert unknown["llc_se"] == exact["llc_se"] >= exact["llc_mcse"]  # the chains' part alone
    assert uncertain["llc_se"] == pytest.approx(math.hypot(exact["llc_se"], 0.5))
    assert uncertain["drift_z"] == exact["drift_z"]
    evidence = dict(num_chains=4, diverged_chains=0, llc_mean=-0.3, llc_mcse=exact["llc_mcse"], negative_chains=0.0, drift_z=0.0, r_hat=1.0, ess=500.0, mala_acceptance=None)
    names = lambda **changes: [failure.check for failure in failed_checks(Evidence(**{**evidence, **changes}), HealthThresholds())]  # noqa: E731
    assert names() == ["negative_llc"] == names(llc_se=exact["llc_se"])
    assert names(llc_se=uncertain["llc_se"]) == []


def test_the_standard_error_sees_slow_wander_under_minibatch_noise():
    """White noise (a minibatch's) over a slow component (weights wandering along weak directions,
    autocorrelation time 100 draws): the MCSE misses much of the slow part's error, the chains'
    spread does not, so the standard error is the size of the means' actual spread over 150
    repetitions; on quickly mixing chains it stays close to the MCSE."""
    rng = np.random.default_rng(0)
    healthy = np.ones(4, dtype=bool)

    def errors(make_trace):
        means, mcse, se = [], [], []
        for _ in range(150):
            trace = make_trace()
            evidence = trace_evidence(trace, healthy)
            means.append(trace.mean())
            mcse.append(evidence["llc_mcse"])
            se.append(evidence["llc_se"])
        return np.std(means), np.mean(mcse), np.mean(se)

    slow_sd = 0.3
    actual, mcse, se = errors(lambda: rng.standard_normal((4, 200)) + slow_sd * np.sqrt(1 - 0.99**2) * autoregressive(4, 200, 0.99, rng, stationary=True))
    assert mcse < 0.75 * actual and se == pytest.approx(actual, rel=0.2)
    actual, mcse, se = errors(lambda: autoregressive(4, 200, 0.5, rng, stationary=True))
    assert mcse == pytest.approx(actual, rel=0.15) and actual * 0.9 < se < actual * 1.3


def test_mixed_chains_are_healthy_and_chains_that_never_left_are_not():
    model, data = regression()
    mixed = SamplerSettings(epsilon=1e-3, gamma=1.0, nbeta=200.0, num_draws=400, num_burnin_steps=200, batch_size=400)
    result = estimate_llc(model, data, mixed, loss="mse", device="cpu")
    assert result.healthy, result.health_reasons
    assert result.health_reasons == [] and result.diagnostics.warnings == []
    # a step far too small: the chains are still walking out of the checkpoint when the draws end
    stuck = mixed.model_copy(update={"epsilon": 1e-7, "num_burnin_steps": 0, "num_draws": 100})
    result = estimate_llc(model, data, stuck, loss="mse", device="cpu")
    assert result.healthy is False
    assert any("drifts" in reason or "ESS" in reason for reason in result.health_reasons)
    assert len(result.diagnostics.warnings) == len(result.health_reasons)
    # each failure in every form, in the result's JSON too
    assert [failure.sentence for failure in result.health_failures] == result.health_reasons
    assert {failure.check for failure in result.health_failures} <= set(CHECKS_BY_NAME)
    assert LLCResult.from_dict(json.loads(json.dumps(result.to_dict()))).health_failures == result.health_failures


def test_an_automatic_burn_in_cut_short_by_its_cap_is_unhealthy_but_a_short_one_set_outright_is_not():
    model, data = regression()
    # relaxing takes 2 / (1e-3 * 1) = 2,000 steps; 100 draws cap the automatic burn-in at 400
    capped = SamplerSettings(epsilon=1e-3, gamma=1.0, nbeta=200.0, num_draws=100, batch_size=400)
    result = estimate_llc(model, data, capped, loss="mse", device="cpu")
    assert (result.burnin_steps, result.burnin_rule, result.healthy) == (400, "auto-capped", False)
    reason = "the burn-in was cut short by its cap: 400 steps (4 x the draws' steps), the chains' relaxation 2 / (epsilon * gamma) needs 2,000"
    assert reason in result.health_reasons
    assert any(warning.startswith(reason) and "more draws, or set num_burnin_steps" in warning for warning in result.diagnostics.warnings)
    assert "burn-in 400 < 2/(epsilon*gamma) = 2,000 (capped)" in [failure.brief for failure in result.health_failures]
    from llcv.cli_render import burnin_text

    assert burnin_text(result) == "400 (auto, cut short by its cap; needs 2,000)"
    short = estimate_llc(model, data, capped.model_copy(update={"num_burnin_steps": 10}), loss="mse", device="cpu")
    assert short.burnin_rule == "set" and not any("burn-in" in reason for reason in short.health_reasons)


def test_a_sweep_rows_burn_in_reason_is_unchanged_by_the_cap_wording():
    row = dict(num_chains=2, diverged_chains=0, llc_mean=1.0, llc_mcse=0.1, negative_chains=0.0, drift_z=0.0, r_hat=1.0, ess=None,
               mala_acceptance=0.95, burnin_steps=0, relaxation_steps=2000)  # fmt: skip
    (failure,) = failed_checks(Evidence(**row), HealthThresholds(min_ess=None))
    assert failure.check == "relaxed"
    assert failure.sentence == "the chains had not relaxed from the checkpoint: 0 burn-in steps, 2 / (epsilon * gamma) needs 2,000"
    assert failure.brief == "burn-in 0 < 2/(epsilon*gamma) = 2,000"


def test_each_failed_check_carries_its_sentence_and_its_numbers_in_brief():
    evidence = Evidence(num_chains=4, diverged_chains=0, llc_mean=-3.2, llc_mcse=0.5, negative_chains=0.5, drift_z=-4.04, r_hat=1.4221,
                        ess=67.2, mala_acceptance=0.62, burnin_steps=400, relaxation_steps=2000.0, burnin_capped=True)  # fmt: skip
    failed = failed_checks(evidence, HealthThresholds())
    assert [(failure.check, failure.brief) for failure in failed] == [
        ("relaxed", "burn-in 400 < 2/(epsilon*gamma) = 2,000 (capped)"),
        ("negative_llc", "LLC -3.2 < -1 (-2 standard errors)"),
        ("negative_chains", "chains below 0 50% > 0%"),
        ("drift", "|drift z| 4.0 > 3"),
        ("r_hat", "R-hat 1.422 > 1.1"),
        ("ess", "ESS 67 < 100"),
        ("mala_acceptance", "MALA acceptance 0.620 < 0.9"),
    ]
    assert [failure.sentence for failure in failed][3:] == [
        "the LLC drifts: late draws differ from early ones by -4.0 standard errors (limit 3)",
        "the chains disagree: R-hat 1.422 > 1.1",
        "too few effective samples: ESS 67 < 100",
        "MALA acceptance 0.620 < 0.9: epsilon is too large for the curvature",
    ]
    # a diverged estimate fails only that, its brief form the count itself
    (diverged,) = failed_checks(dataclasses.replace(evidence, diverged_chains=2), HealthThresholds())
    assert (diverged.check, diverged.sentence, diverged.brief) == ("diverged", "2 of 4 chains diverged", "2 of 4 chains diverged")
    (unmeasured,) = [failure for failure in failed_checks(dataclasses.replace(evidence, mala_acceptance=None), HealthThresholds(), require_acceptance=True)
                     if failure.check == "mala_acceptance"]  # fmt: skip
    assert (unmeasured.sentence, unmeasured.brief) == ("MALA acceptance was not measured", "MALA acceptance not measured")


def test_every_check_has_its_rule_text():
    limits = HealthThresholds(max_r_hat=1.05, min_ess=50)
    texts = rule_texts(limits)
    assert list(texts) == list(CHECKS_BY_NAME)  # in the checks' order, none left out
    assert (texts["r_hat"].reason, texts["r_hat"].short) == ("r_hat > 1.05", "R-hat > 1.05")
    assert (texts["ess"].reason, texts["ess"].short) == ("ess < 50", "ESS < 50")


def test_a_result_written_before_typed_failures_reads_its_reasons_from_their_sentences():
    """Results before llcv 0.12 record only each reason's sentence: the brief form is cut from it."""
    assert [HealthFailure.from_sentence(sentence).brief for sentence in (
        "the chains disagree: R-hat 1.422 > 1.1",
        "too few effective samples: ESS 82 < 100",
        "MALA acceptance 0.620 < 0.9: epsilon is too large for the curvature",
        "2 of 4 chains diverged",
    )] == ["R-hat 1.422 > 1.1", "ESS 82 < 100", "MALA acceptance 0.620 < 0.9", "2 of 4 chains diverged"]  # fmt: skip
    assert HealthFailure.from_sentence("2 of 4 chains diverged").check is None


def test_records_summary_and_progress_lines_carry_the_verdict(trained_run, tmp_path):
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 16])
    notes = []

    class Notes(Reporter):
        def note(self, message):
            notes.append(message)

    settings = fast_settings()  # a handful of draws: too few effective samples to be healthy
    summary = estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "results", device="cpu"), reporter=Notes())
    records = [record for record in summary.folder.glob("step_*.json")]
    assert len(records) == 2
    for path in records:
        record = json.loads(path.read_text())
        assert record["healthy"] is False and record["health_reasons"] == record["result"]["health_reasons"] != []
    with open(summary.folder / SUMMARY_FILE) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["healthy"] for row in rows] == ["False", "False"]
    assert all("ESS" in row["health_reasons"] for row in rows)
    by_name = {Path(row["checkpoint"]).stem: row for row in rows}
    for path in records:  # the record's standard error reaches summary.csv
        record = json.loads(path.read_text())
        assert float(by_name[path.stem]["llc_se"]) == pytest.approx(record["result"]["diagnostics"]["llc_se"])
    assert sum("unhealthy: " in note for note in notes) == 2
    for path in records:  # each progress line lists the failed checks in brief, as the record has them
        briefs = "; ".join(failure["brief"] for failure in json.loads(path.read_text())["result"]["health_failures"])
        assert "ESS " in briefs and sum(f"unhealthy: {briefs})" in note for note in notes) == 1
    for path in records:  # each line: the LLC ± the chains' spread, then its standard error
        result = json.loads(path.read_text())["result"]
        line = f"LLC {result['llc_mean']:.4g} ± {result['llc_std']:.2g} (standard error {result['diagnostics']['llc_se']:.2g}; "
        assert sum(line in note for note in notes) == 1


def test_transitions_rest_on_healthy_estimates_only(tmp_path):
    digest = settings_hash(SamplerSettings())
    curve = {1: 1.0, 2: 2.0, 4: 9.0, 8: 3.0, 16: 3.5, 32: 4.0}  # a spike at step 4
    records = [fake_record(tmp_path / f"step_{step:08d}.pt", step, llc, settings_hash=digest, healthy=True)
               for step, llc in curve.items()]  # fmt: skip
    assert 4 in [transition.step for transition in find_transitions(records)]
    records[2] = fake_record(tmp_path / "step_00000004.pt", 4, 9.0, settings_hash=digest, healthy=False,
                             health_reasons=["the chains disagree: R-hat 1.5 > 1.1"])  # fmt: skip
    assert 4 not in [transition.step for transition in find_transitions(records)]


def test_the_demo_stops_instead_of_estimating_with_settings_it_did_not_find(tmp_path, monkeypatch):
    from _helpers import use_steady_trials
    from llcv import demo
    from llcv.errors import EstimationError

    # every trial's chains settle below the checkpoint's loss, at every gamma the search may try
    use_steady_trials(monkeypatch, level=lambda settings: -5.0)
    with pytest.raises(EstimationError, match="found no usable settings"):
        demo.run_demo(tmp_path / "demo", device="cpu", tiny=True)
    calibrations = list((tmp_path / "demo").rglob("calibration.json"))
    assert len(calibrations) == 1 and not (calibrations[0].parent / "recommended.json").exists()
    assert not list((tmp_path / "demo").rglob("step_*.json"))  # no estimate was made
