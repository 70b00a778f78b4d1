"""`llcv estimate` and `llcv selftest` through the command line."""

from __future__ import annotations

import json
import math
import re

import pytest
from typer.testing import CliRunner

from llcv import LLCResult
from llcv.cli import app

runner = CliRunner()
QUICK = ["--num-chains", "2", "--num-draws", "8", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def final_checkpoint(trained_run):
    _, result = trained_run
    return result.checkpoints[-1]


def test_estimate_prints_the_table(final_checkpoint):
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK])
    assert outcome.exit_code == 0, outcome.output
    for label in ("LLC", "standard error", "per chain", "MALA acceptance", "R-hat", "ESS"):
        assert label in outcome.stdout
    assert re.search(r"precision\W+(fp32|bf16)", outcome.stdout)  # what ran, when the settings say auto


def test_the_table_says_how_nbeta_and_the_burn_in_were_chosen(final_checkpoint):
    # 8 draws cap the automatic burn-in at 32 steps; the default epsilon and gamma need 2 / (1e-4 * 100) = 200
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK, "--num-samples", "100"])
    assert outcome.exit_code == 0, outcome.output
    shown = " ".join(outcome.stdout.replace("│", " ").split())  # the table's rows, without its borders
    assert f"nbeta {100 / math.log(100):.4g} (n/ln n of 100 samples)" in shown
    assert "burn-in 32 (auto, cut short by its cap; needs 200)" in shown
    assert "the burn-in was cut short by its cap: 32 steps" in shown  # and the estimate is unhealthy for it
    flagged = runner.invoke(
        app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK, "--nbeta", "batch", "--num-burnin-steps", "5", "--json"]
    )
    result = LLCResult.from_dict(json.loads(flagged.stdout))
    assert (result.nbeta, result.nbeta_rule, result.burnin_steps, result.burnin_rule) == (pytest.approx(32 / math.log(32)), "batch", 5, "set")
    assert not any("burn-in" in reason for reason in result.health_reasons)


def test_bad_nbeta_or_burn_in_flags_exit_2_saying_what_they_take(final_checkpoint):
    for flag, value, message in (("--nbeta", "wbic", "must be data, batch or a positive number"),
                                 ("--num-burnin-steps", "soon", "must be auto or a whole number of steps")):  # fmt: skip
        outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), flag, value, "--device", "cpu"])
        assert outcome.exit_code == 2 and message in outcome.output and "Traceback" not in outcome.output


def test_estimate_json_is_the_result_and_nothing_else(final_checkpoint):
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK, "--json"])
    assert outcome.exit_code == 0, outcome.output
    result = LLCResult.from_dict(json.loads(outcome.stdout))
    assert len(result.llc_trace) == 2 and len(result.llc_trace[0]) == 8
    assert result.settings["batch_size"] == 32


def test_from_calibration_sits_between_config_and_flags(final_checkpoint, tmp_path):
    config = tmp_path / "experiment.toml"
    config.write_text("[sampler]\nepsilon = 1e-2\ngamma = 5.0\nnum_draws = 8\n")
    calibration = tmp_path / "recommended.json"
    calibration.write_text(json.dumps({"epsilon": 1e-5, "gamma": 50.0, "nbeta": 3.0, "sampler": "sgld"}))
    outcome = runner.invoke(
        app,
        ["estimate", "--checkpoint", str(final_checkpoint), "--config", str(config), "--from-calibration", str(calibration),
         "--gamma", "70", "--num-chains", "1", "--device", "cpu", "--json"],
    )
    assert outcome.exit_code == 0, outcome.output
    settings = json.loads(outcome.stdout)["settings"]
    assert (settings["epsilon"], settings["gamma"], settings["nbeta"], settings["num_draws"]) == (1e-5, 70.0, 3.0, 8)


def test_no_healthy_chain_exits_1(final_checkpoint):
    outcome = runner.invoke(
        app, ["estimate", "--checkpoint", str(final_checkpoint), *QUICK, "--epsilon", "1e4", "--gamma", "0"]
    )
    assert outcome.exit_code == 1, outcome.output
    assert "no healthy chain" in outcome.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epsilon", "0"], "sampler.epsilon"),
        (["--num-chains", "0"], "sampler.num_chains"),
        (["--sampler", "hmc"], "sampler.sampler"),
        (["--device", "tpu"], "estimate.device"),
    ],
)
def test_bad_settings_exit_2_naming_the_field(final_checkpoint, flags, message):
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(final_checkpoint), *flags])
    assert outcome.exit_code == 2
    assert message in outcome.output and "Traceback" not in outcome.output


def test_missing_checkpoint_exits_2(tmp_path):
    outcome = runner.invoke(app, ["estimate", "--checkpoint", str(tmp_path / "nope.pt"), "--device", "cpu"])
    assert outcome.exit_code == 2
    assert "nope.pt" in outcome.output


def test_selftest_json_reports_each_case(monkeypatch):
    from llcv import selftest
    from llcv.known_models import known_cases

    case = known_cases(quick=True)[0]  # regression with d = 10, at its calibrated settings
    monkeypatch.setattr(selftest, "known_cases", lambda quick: [case])
    outcome = runner.invoke(app, ["selftest", "--quick", "--device", "cpu", "--json"])
    payload = json.loads(outcome.stdout)
    rows = payload["cases"]
    assert [row["name"] for row in rows] == ["regression-d10"]
    assert rows[0]["true_llc"] == 5.0 and rows[0]["passed"] and rows[0]["family"] == "regression"
    assert abs(rows[0]["relative_error"]) < 0.15
    (family,) = payload["families"]
    assert (family["family"], family["count"], family["within_tolerance"]) == ("regression", 1, 1)
    assert family["worst"] == abs(rows[0]["relative_error"])
    assert outcome.exit_code == 0


def test_selftest_exits_1_when_a_case_misses_its_goal(monkeypatch):
    import dataclasses

    from llcv import selftest
    from llcv.known_models import known_cases

    # A step far too small to move the chains from the checkpoint: the estimate stays near 0, not 5.
    frozen = dataclasses.replace(known_cases(quick=True)[0], epsilon=1e-9, num_draws=50, num_burnin_steps=0)
    monkeypatch.setattr(selftest, "known_cases", lambda quick: [frozen])
    outcome = runner.invoke(app, ["selftest", "--device", "cpu", "--json"])
    rows = json.loads(outcome.stdout)["cases"]
    assert not rows[0]["passed"]
    assert outcome.exit_code == 1


def test_selftest_auto_calibrates_each_case_and_reports_both(monkeypatch):
    import dataclasses

    from llcv import selftest
    from llcv.known_models import known_cases

    # The stored settings are frozen (epsilon far too small), so only the calibrated estimate can pass.
    # localized_llc: a stand-in for what an exact sampler reads, to see it evaluated at the pick
    frozen = dataclasses.replace(
        known_cases(quick=True)[0], epsilon=1e-9, num_draws=50, num_burnin_steps=0, localized_llc=lambda nbeta, gamma: nbeta / gamma
    )
    monkeypatch.setattr(selftest, "known_cases", lambda quick: [frozen])
    # a smaller budget than the default 400,000 chain-steps: the same pick (epsilon 1.47e-4, gamma 8.5), -2.8% from the truth, in a third of the time
    outcome = runner.invoke(app, ["selftest", "--quick", "--auto", "--device", "cpu", "--json", "--budget-steps", "100000"])
    (row,) = json.loads(outcome.stdout)["cases"]
    assert abs(row["relative_error"]) > 0.5  # the stored settings' estimate, reported beside
    calibrated = row["auto"]
    assert calibrated["epsilon"] > 1e-9 and calibrated["passed"] and row["passed"]
    assert abs(calibrated["relative_error"]) < 0.15
    assert calibrated["localized_llc"] == pytest.approx(frozen.nbeta / calibrated["gamma"])
    assert "batch_size" in calibrated["not_measured"]  # full batches: there is no larger batch to compare with
    assert outcome.exit_code == 0


def test_selftest_splits_a_calibrated_error_into_the_samplers_and_the_localizations(capsys, monkeypatch):
    import dataclasses

    from llcv import cli_render
    from llcv.selftest import AutoCheck, AutoRow, SelftestRow

    calibrated = AutoRow("sgld", 1e-3, 3.62, 0.039, 0.004, 0.039 / 0.125 - 1, False, 80.0, localized_llc=0.0418)
    row = SelftestRow("polynomial-2-4", "", 0.125, 0.12, 0.01, 0.003, -0.04, False, 5.0, auto=calibrated, family="polynomial")
    cli_render.render_selftest([row], False, AutoCheck(), None, False, families=[])
    printed = " ".join(capsys.readouterr().out.split())
    assert "polynomial-2-4: an exact sampler reads 0.0418 at the calibrated gamma 3.62 (-66.6% from the truth)" in printed
    assert "the estimate is -6.7% from that, the rest of its error is the localization's" in printed
    assert "unhealthy" not in printed

    unhealthy = dataclasses.replace(row, auto=dataclasses.replace(calibrated, healthy=False))
    cli_render.render_selftest([unhealthy], False, AutoCheck(), None, False, families=[])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(-66.6% from the truth); the estimate is unhealthy, so its error cannot be split" in printed
    assert "the rest of its error is the localization's" not in printed
    assert "calibrated estimates that are unhealthy (their errors are not the estimator's to quote): polynomial-2-4" in printed

    # a knob whose move the calibration could not measure is named beside its settings
    from llcv import console

    unmeasured = dataclasses.replace(row, auto=dataclasses.replace(calibrated, not_measured=("gamma",)))
    monkeypatch.setattr(console.stdout, "width", 200)  # the table's cells unwrapped
    cli_render.render_selftest([unmeasured], False, AutoCheck(), None, False, families=[])
    assert "0.001, 3.62 (not measured: gamma)" in capsys.readouterr().out
