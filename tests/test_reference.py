"""devinterp as the reference implementation: `llcv selftest --against devinterp` puts both side by side."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from typer.testing import CliRunner

from llcv.cli import app
from llcv.errors import SettingsError
from llcv.known_models import rrr_case
from llcv.selftest import check_case

runner = CliRunner()


def quick_rrr():
    """A reduced-rank regression (true LLC 4.5) at CI size: 4 chains, since devinterp's loop runs
    them one after another."""
    return dataclasses.replace(rrr_case(M=5, H=3, N=5, r=1), num_chains=4, num_draws=500)


# 35 s of devinterp's own loop: the slow tier (make test-all). tests/test_langevin.py checks the
# update against devinterp's step for step in the default one.
@pytest.mark.slow
def test_a_known_case_through_devinterp_lands_near_the_truth_beside_llcv():
    case = quick_rrr()
    row = check_case(case, quick=True, device="cpu", against="devinterp")
    reference = row.reference
    assert reference.name == "devinterp" and reference.seconds > 0
    assert reference.relative_error == pytest.approx((reference.llc_mean - case.true_llc) / case.true_llc)
    # the same sampler at the same settings: both near the truth and near each other
    assert abs(reference.llc_mean - case.true_llc) <= 3 * reference.standard_error + 0.15 * case.true_llc
    assert abs(reference.llc_mean - row.llc_mean) <= 3 * (reference.standard_error + row.standard_error) + 0.1 * case.true_llc


def test_an_unknown_reference_is_a_usage_error():
    result = runner.invoke(app, ["selftest", "--quick", "--against", "pymc", "--device", "cpu"])
    assert result.exit_code == 2
    assert "the reference implementations are devinterp" in result.output


def test_without_devinterp_installed_the_message_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "devinterp.slt.sampler", None)  # import fails as if not installed
    with pytest.raises(SettingsError, match=r"pip install 'llcv\[reference\]'"):
        check_case(quick_rrr(), quick=True, device="cpu", against="devinterp")


def test_selftest_json_carries_both_estimates(monkeypatch):
    from llcv import selftest

    # The plumbing, not the accuracy (the test above): 2 short chains keep devinterp's loop brief.
    short = dataclasses.replace(quick_rrr(), num_chains=2, num_draws=100, num_burnin_steps=100)
    monkeypatch.setattr(selftest, "known_cases", lambda quick: [short])
    result = runner.invoke(app, ["selftest", "--quick", "--against", "devinterp", "--device", "cpu", "--json"])
    rows = json.loads(result.stdout)["cases"]
    assert len(rows) == 1 and rows[0]["reference"]["name"] == "devinterp"
    assert rows[0]["reference"]["llc_mean"] > 0 and rows[0]["llc_mean"] > 0


def test_the_reference_evaluates_the_cases_own_loss(monkeypatch):
    # devinterp gets the loss the truth holds for: cross-entropy against soft labels for a classifier.
    import torch.nn.functional as F

    from llcv import selftest
    from llcv.known_models import softmax_regression_case
    from llcv.reference import ReferenceEstimate

    seen = {}

    def fake_estimate(model, dataset, settings, evaluate, device="cpu"):
        seen["loss"] = evaluate(model, dataset.tensors).item()
        return ReferenceEstimate(llc_mean=18.0, standard_error=0.1, seconds=0.1)

    monkeypatch.setattr(selftest, "devinterp_estimate", fake_estimate)
    case = softmax_regression_case(d=8, k=5, num_samples=200)
    row = selftest.check_reference(case, device="cpu")
    inputs, labels = case.dataset.tensors
    assert seen["loss"] == pytest.approx(F.cross_entropy(case.model(inputs), labels).item())
    assert seen["loss"] != pytest.approx(F.mse_loss(case.model(inputs), labels).item())
    assert row.relative_error == 0.0
