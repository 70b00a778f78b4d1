"""Tests for llcv.known_families (suites generated from seeds) and the selftest's errors per family.

Nothing here samples for long: the generated cases are checked by their shapes and truths,
the summary on hand-made rows, and the command line with sampling patched out.
"""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from llcv.cli import app
from llcv.errors import SettingsError
from llcv.known_families import FAMILIES, family_cases, parse_families, quick_case, scale_cases
from llcv.known_models import (
    NormalCrossingPolynomial,
    aoyagi_watanabe_case,
    deep_linear_classifier_learning_coefficient,
    dln_learning_coefficient,
    softmax_regression_learning_coefficient,
)
from llcv.cli_render import family_table
from llcv.selftest import SelftestRow, family_summary, selftest_cases

runner = CliRunner()


def _widths(case) -> tuple[int, ...]:
    layers = list(case.model)
    return (layers[0].in_features, *(layer.out_features for layer in layers))


def _product(case) -> torch.Tensor:
    product = torch.eye(_widths(case)[0], dtype=torch.float64)
    for layer in case.model:
        product = layer.weight.detach().double() @ product
    return product


def _rank(matrix: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(matrix, atol=1e-5))  # the weights are float32


def _weights(case) -> int:
    return sum(parameter.numel() for parameter in case.model.parameters())


def _same(first, second) -> bool:
    return (
        [case.name for case in first] == [case.name for case in second]
        and all(torch.equal(a, b) for x, y in zip(first, second) for a, b in zip(x.dataset.tensors, y.dataset.tensors))
        and all(torch.equal(a, b) for x, y in zip(first, second) for a, b in zip(x.model.parameters(), y.model.parameters()))
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_is_deterministic_per_seed_and_differs_across_seeds(family):
    first, again, other = family_cases(family, 4, seed=0), family_cases(family, 4, seed=0), family_cases(family, 4, seed=1)
    assert _same(first, again)
    assert [case.name for case in first] != [case.name for case in other]
    assert not _same(first, other)
    # the first cases of a longer suite are the shorter suite's
    assert _same(first, family_cases(family, 6, seed=0)[:4])


@pytest.mark.parametrize("family", FAMILIES)
def test_cases_carry_their_family_and_unique_names(family):
    cases = family_cases(family, 8, seed=3)
    assert len(cases) == 8 and {case.family for case in cases} == {family}
    assert len({case.name for case in cases}) == 8
    assert all(case.name.endswith(f"-s3.{index}") for index, case in enumerate(cases))
    assert {case.loss for case in cases} == ({"cross_entropy"} if family == "classifier" else {"mse"})
    for case in cases:  # the builders' rules of thumb: full batches at nbeta = n / ln n
        assert case.batch_size == len(case.dataset) and case.nbeta == pytest.approx(len(case.dataset) / torch.tensor(float(len(case.dataset))).log().item())


def test_dln_ranks_are_feasible_and_truths_are_aoyagis():
    cases = family_cases("dln", 16, seed=0)
    depths, ranks = set(), set()
    for case in cases:
        widths = _widths(case)
        rank = _rank(_product(case))
        assert 2 <= len(widths) - 1 <= 5 and 2 <= min(widths) and max(widths) <= 12, case.name
        assert 1 <= rank <= min(widths), case.name
        assert case.name.startswith("dln-" + "-".join(map(str, widths)) + f"-r{rank}-"), case.name
        assert case.true_llc == dln_learning_coefficient(widths, rank)
        assert _weights(case) <= 400 and len(case.dataset) >= 30 * widths[0]
        depths.add(len(widths) - 1)
        ranks.add(rank)
    assert len(depths) >= 3 and len(ranks) >= 2


def test_rrr_family_covers_every_regime_in_eight_cases():
    regimes = []
    for case in family_cases("rrr", 8, seed=0):
        M, H, N = _widths(case)
        rank = _rank(_product(case))
        regimes.append(aoyagi_watanabe_case(M, H, N, rank))
    assert set(regimes) == {"1-even", "1-odd", "2", "3", "4"}
    assert regimes[:5] == ["1-even", "1-odd", "2", "3", "4"]


def test_polynomial_family_has_a_unique_largest_power():
    for case in family_cases("polynomial", 12, seed=0):
        assert isinstance(case.model, NormalCrossingPolynomial)
        powers = case.model.powers
        assert 2 <= len(powers) <= 3 and all(0 <= p <= 4 for p in powers)
        assert powers.count(max(powers)) == 1 and max(powers) >= 1
        assert case.true_llc == pytest.approx(1 / (2 * max(powers)))


def test_classifier_truths_match_the_formulas():
    kinds = set()
    for case in family_cases("classifier", 10, seed=0):
        assert 45 <= _weights(case) <= 2_700, case.name
        if isinstance(case.model, torch.nn.Linear):
            kinds.add("softmax")
            d, k = case.model.in_features, case.model.out_features
            assert case.model.bias is not None and 2 <= d <= 12 and 3 <= k <= 8
            assert case.true_llc == softmax_regression_learning_coefficient(d, k) == (d + 1) * (k - 1) / 2
        else:
            kinds.add("deep")
            widths = _widths(case)
            k = widths[-1]
            assert 2 <= len(widths) - 1 <= 4 and 3 <= k <= 8
            projected = (torch.eye(k, dtype=torch.float64) - 1 / k) @ _product(case)
            rank = _rank(projected)
            assert 1 <= rank <= min(*widths[:-1], k - 1)
            assert case.true_llc == deep_linear_classifier_learning_coefficient(widths, rank)
            assert case.true_llc == dln_learning_coefficient((*widths[:-1], k - 1), rank)
    assert kinds == {"softmax", "deep"}


def test_scale_cases_have_about_ten_to_the_four_and_five_weights():
    small, large = scale_cases()
    assert {small.family, large.family} == {"scale"}
    assert _weights(small) == pytest.approx(1e4, rel=0.05) and _weights(large) == pytest.approx(1e5, rel=0.05)
    for case in (small, large):
        widths = _widths(case)
        assert 4 <= len(widths) - 1 <= 5 and 2 <= _rank(_product(case)) <= 5
        assert 1000 <= len(case.dataset) <= 2000 and len(case.dataset) >= 10 * widths[0]
        with torch.no_grad():  # noise-free targets
            assert torch.equal(case.model(case.dataset.tensors[0]), case.dataset.tensors[1])
    assert [case.name for case in scale_cases(seed=0)] == [small.name, large.name]


def test_family_names_parse_and_unknown_ones_are_refused():
    assert parse_families("dln, rrr") == ("dln", "rrr")
    assert parse_families("all") == FAMILIES
    assert parse_families(["classifier", "classifier"]) == ("classifier",)
    for bad in ("dln,nope", "", "all,dln"):
        with pytest.raises(ValueError, match="choose from dln, rrr, polynomial, classifier"):
            parse_families(bad)
    with pytest.raises(ValueError):
        family_cases("cnn", 2, seed=0)


def test_selftest_cases_choose_the_suite():
    hand_listed = selftest_cases(quick=True)
    assert any(case.name == "softmax-regression-d8-k5" for case in hand_listed)
    generated = selftest_cases(quick=False, families="rrr,polynomial", per_family=3, seed=2)
    assert [case.family for case in generated] == ["rrr"] * 3 + ["polynomial"] * 3
    quick = selftest_cases(quick=True, families="rrr,polynomial", per_family=3, seed=2)
    assert [case.name for case in quick] == [case.name for case in generated]
    assert all(small.num_draws == max(500, full.num_draws // 6) < full.num_draws for small, full in zip(quick, generated))
    assert quick_case(generated[0]).num_draws == 666
    with pytest.raises(SettingsError, match="--families"):
        selftest_cases(families="dln,bogus")
    with pytest.raises(SettingsError, match="--per-family"):
        selftest_cases(families="dln", per_family=0)


def _row(family: str, relative_error: float | None, auto_error: float | None = None, healthy: bool | None = None) -> SelftestRow:
    from llcv.selftest import AutoRow

    auto = None if auto_error is None else AutoRow("sgld", 0.1, 1.0, 1.0 + auto_error, 0.1, auto_error, True, 1.0, healthy=healthy)
    mean = None if relative_error is None else 1.0 + relative_error
    return SelftestRow("case", "", 1.0, mean, 0.1, 0.1, relative_error, True, 1.0, auto=auto, family=family)


def test_an_unhealthy_calibrated_estimate_is_never_counted_within_tolerance():
    rows = [_row("dln", 0.5, auto_error=-0.05, healthy=True), _row("dln", 0.5, auto_error=-0.09, healthy=False), _row("dln", 0.5, auto_error=0.3)]
    (dln,) = family_summary(rows)
    # the unhealthy -9% is shown (it enters the statistics) but not vouched for
    assert (dln.count, dln.within_tolerance, dln.unhealthy, dln.no_estimate) == (3, 1, 1, 0)
    assert dln.median == pytest.approx(0.09)
    table = family_table([dln], auto=True)
    console = Console(record=True, width=160)
    console.print(table)
    assert "1 (1 unhealthy)" in console.export_text()


def test_a_calibrated_estimate_that_lands_close_but_is_unhealthy_does_not_pass(monkeypatch):
    from types import SimpleNamespace

    from llcv import selftest
    from llcv.known_models import known_cases
    from llcv.settings import SamplerSettings

    case = known_cases(quick=True)[0]
    settings = SamplerSettings(epsilon=1e-4, gamma=1.0, nbeta=case.nbeta, num_chains=4, num_draws=10)
    calibration = SimpleNamespace(recommended=settings, spent=SimpleNamespace(chain_steps=1), settings_dependent=[], unresolved=[],
                                  not_measured=[], nbeta=case.nbeta)  # fmt: skip
    monkeypatch.setattr(selftest, "calibrate_auto", lambda *args, **kwargs: calibration)
    for healthy in (True, False):
        # within 2% of the truth, its health aside
        result = SimpleNamespace(llc_mean=1.02 * case.true_llc, llc_std=0.01, llc_per_chain=[1.0] * 4, burnin_steps=0, healthy=healthy)
        monkeypatch.setattr(selftest, "estimate_llc", lambda *args, result=result, **kwargs: result)
        row = selftest.check_auto(case, device="cpu")
        assert row.relative_error == pytest.approx(0.02) and row.passed is healthy and row.unhealthy is not healthy


def test_family_summary_on_hand_made_rows():
    errors = [0.01, -0.02, 0.03, -0.04, 0.05, 0.06, -0.07, 0.08, 0.09, -0.20]
    rows = [_row("dln", error) for error in errors] + [_row("rrr", -0.3), _row("rrr", 0.1), _row("rrr", None)]
    dln, rrr = family_summary(rows)
    assert (dln.family, dln.count, dln.within_tolerance, dln.no_estimate) == ("dln", 10, 9, 0)
    assert dln.median == pytest.approx(0.055)  # between 0.05 and 0.06
    assert dln.p90 == pytest.approx(0.09 + 0.1 * (0.20 - 0.09))  # position 8.1 of 0..9
    assert dln.worst == pytest.approx(0.20) and dln.worst_signed == pytest.approx(-0.20)
    assert (rrr.count, rrr.within_tolerance, rrr.no_estimate) == (3, 1, 1)
    assert rrr.median == pytest.approx(0.2) and rrr.worst_signed == pytest.approx(-0.3)
    assert rrr.p90 == pytest.approx(0.1 + 0.9 * 0.2)
    # with --auto the verdict, and so the summary, is the calibrated estimate's
    (calibrated,) = family_summary([_row("polynomial", 0.5, auto_error=-0.05)])
    assert calibrated.worst_signed == pytest.approx(-0.05) and calibrated.within_tolerance == 1
    (nothing,) = family_summary([_row("", None)])
    assert nothing.family == "other" and nothing.median is None and nothing.p90 is None and nothing.worst is None


def test_the_cli_refuses_an_unknown_family_before_any_work():
    outcome = runner.invoke(app, ["selftest", "--families", "dln,resnet", "--device", "cpu"])
    assert outcome.exit_code == 2
    message = " ".join(outcome.output.split())  # Rich wraps long lines
    assert "unknown families 'resnet'" in message and "choose from dln, rrr, polynomial, classifier or all" in message


def test_the_cli_runs_generated_families_and_reports_them_per_family(monkeypatch):
    from llcv import selftest

    seen = []

    def fake_check(case, quick, *args, **kwargs):
        seen.append((case.name, case.num_draws, quick))
        error = 0.05 if case.family == "rrr" else -0.25
        return SelftestRow(case.name, case.description, case.true_llc, case.true_llc * (1 + error), 0.1, 0.1, error, abs(error) < 0.15, 0.1, family=case.family)

    monkeypatch.setattr(selftest, "check_case", fake_check)
    outcome = runner.invoke(app, ["selftest", "--families", "rrr,polynomial", "--per-family", "2", "--seed", "5", "--quick", "--device", "cpu", "--json"])
    assert outcome.exit_code == 1  # the polynomials "missed"
    payload = json.loads(outcome.stdout)
    assert [row["name"] for row in payload["cases"]] == [name for name, _, _ in seen] and len(seen) == 4
    assert all(quick for _, _, quick in seen)
    assert [(f["family"], f["count"], f["within_tolerance"]) for f in payload["families"]] == [("rrr", 2, 2), ("polynomial", 2, 0)]
    assert payload["families"][1]["worst_signed"] == pytest.approx(-0.25)
    table = runner.invoke(app, ["selftest", "--families", "rrr", "--per-family", "2", "--device", "cpu"])
    assert "errors per family" in table.output and "90th pct" in table.output and "+5.0%" in table.output
