"""The estimator recovers known learning coefficients (CI size: truth within 3 standard errors).

The cases (a regular regression, reduced-rank regression in all four of Aoyagi & Watanabe's
regimes, normal-crossing polynomials, deep linear networks of three and four layers, and
classifiers under cross-entropy with soft labels) and their calibrated settings come from
llcv.known_models; `llcv selftest` runs the same suite at full size.
"""

from __future__ import annotations

import math

import pytest

from llcv.known_models import known_cases
from llcv.selftest import QUICK_STANDARD_ERRORS, case_settings
from llcv.sampling import estimate_llc

CASES = known_cases(quick=True)



def _runs() -> list:
    """Every case batched, and one at a time for the first case of each family; the other cases
    one at a time are in the slow tier (make test-all), since both paths run the same update."""
    runs, families = [], set()
    for case in CASES:
        runs.append(pytest.param(case, "batched", id=f"{case.name}-batched"))
        marks = () if case.family not in families else (pytest.mark.slow,)
        runs.append(pytest.param(case, "sequential", id=f"{case.name}-sequential", marks=marks))
        families.add(case.family)
    return runs


# Chains run batched (one vmapped computation, the default for these small models) and one at a
# time must both recover the truth (issue 6: the fast path may not change what is estimated).
@pytest.mark.parametrize("case, chain_mode", _runs())
def test_truth_lies_within_three_standard_errors(case, chain_mode):
    settings = case_settings(case).model_copy(update={"chain_mode": chain_mode})
    result = estimate_llc(case.model, case.dataset, settings, loss=case.loss, device="cpu")
    assert result.chain_execution == chain_mode
    assert result.diagnostics.diverged_chains == 0
    standard_error = result.llc_std / math.sqrt(case.num_chains)
    assert abs(result.llc_mean - case.true_llc) <= QUICK_STANDARD_ERRORS * standard_error, (
        f"{case.name}: {result.llc_mean:.4f} ± {standard_error:.4f} vs true {case.true_llc:.4f}"
    )


CLASSIFIERS = [case for case in known_cases() if case.family == "classifier"]


# `llcv selftest`'s goal for the cross-entropy cases at full size (minutes on a busy 2-core CPU).
@pytest.mark.slow
@pytest.mark.parametrize("case", CLASSIFIERS, ids=[case.name for case in CLASSIFIERS])
def test_classifiers_land_within_15_percent_at_full_size(case):
    result = estimate_llc(case.model, case.dataset, case_settings(case), loss=case.loss, device="cpu")
    assert result.diagnostics.diverged_chains == 0
    assert abs(result.llc_mean / case.true_llc - 1) <= 0.15, f"{case.name}: {result.llc_mean:.4f} vs true {case.true_llc:.4f}"
