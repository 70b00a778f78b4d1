"""R-hat, ESS and MCSE: ArviZ's rank-normalised estimators, with None where undefined."""

import numpy as np
import pytest
from arviz_stats.base import array_stats

from llcv.diagnostics import effective_sample_size, geweke_z, mcse_of_mean, split_r_hat


def ar1(chains: int, draws: int, rho: float, seed: int = 0) -> np.ndarray:
    """Autoregressive chains with unit stationary variance: ESS per draw is (1 - rho) / (1 + rho)."""
    generator = np.random.default_rng(seed)
    values = np.empty((chains, draws))
    values[:, 0] = generator.normal(size=chains)
    for step in range(1, draws):
        values[:, step] = rho * values[:, step - 1] + np.sqrt(1 - rho**2) * generator.normal(size=chains)
    return values


def test_they_are_arviz_values_on_ordinary_traces():
    traces = ar1(4, 300, 0.5)
    assert split_r_hat(traces) == pytest.approx(array_stats.rhat(traces, chain_axis=0, draw_axis=1, method="rank"))
    assert effective_sample_size(traces) == pytest.approx(array_stats.ess(traces, chain_axis=0, draw_axis=1, method="bulk"))
    assert mcse_of_mean(traces) == pytest.approx(array_stats.mcse(traces, chain_axis=0, draw_axis=1, method="mean"))


def test_ess_and_mcse_match_the_autocorrelation_they_measure():
    independent, sticky = ar1(4, 2000, 0.0), ar1(4, 2000, 0.9)
    assert effective_sample_size(independent) == pytest.approx(8000, rel=0.15)
    assert effective_sample_size(sticky) == pytest.approx(8000 * 0.1 / 1.9, rel=0.35)
    assert mcse_of_mean(independent) == pytest.approx(1 / np.sqrt(8000), rel=0.15)
    assert mcse_of_mean(sticky) == pytest.approx(1 / np.sqrt(8000 * 0.1 / 1.9), rel=0.35)


def test_r_hat_separates_mixed_from_unmixed_chains_and_sees_a_different_spread():
    mixed = ar1(4, 400, 0.3)
    shifted = mixed + np.array([[0.0], [0.0], [1.5], [1.5]])
    wider_tails = mixed * np.array([[1.0], [1.0], [4.0], [4.0]])  # same centre: only the folded (tail) R-hat sees it
    assert split_r_hat(mixed) < 1.02
    assert split_r_hat(shifted) > 1.1
    assert split_r_hat(wider_tails) > 1.1


def test_undefined_cases_say_none_and_constant_chains_are_exact():
    traces = ar1(2, 100, 0.5)
    assert split_r_hat(traces[:1]) is None  # one chain
    assert split_r_hat(traces[:, :3]) is None and effective_sample_size(traces[:, :3]) is None  # too short
    with_nan = traces.copy()
    with_nan[0, 5] = np.nan
    assert split_r_hat(with_nan) is None and effective_sample_size(with_nan) is None and mcse_of_mean(with_nan) is None
    assert split_r_hat(np.ones((2, 10))) == 1.0 and effective_sample_size(np.ones((2, 10))) == 20 and mcse_of_mean(np.ones((2, 10))) == 0
    assert split_r_hat(np.stack([np.ones(10), 2 * np.ones(10)])) == float("inf")


def test_geweke_z_flags_a_rising_trace_and_not_a_stationary_one():
    stationary = ar1(2, 400, 0.5)
    rising = stationary + np.linspace(0, 3, 400)
    assert abs(geweke_z(stationary)) < 3
    assert geweke_z(rising) > 3
