"""Estimates and intervals of the experiment suite (kadyn.experiments.fit), against scipy and
constructed data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from kadyn.experiments import fit


def test_power_law_fit_recovers_the_exponent() -> None:
    n = np.array([256, 512, 1024, 2048] * 3, dtype=float)
    rng = np.random.default_rng(0)
    y = 0.43 * n**0.81 * np.exp(rng.normal(0, 0.05, size=n.shape))
    f = fit.fit_power_law(n, y)
    assert f.beta == pytest.approx(0.81, abs=0.05)
    assert f.beta_ci[0] < 0.81 < f.beta_ci[1]
    assert f.n_sizes == 4 and f.n_points == 12 and f.r2 > 0.99
    assert f.residual_sd == pytest.approx(0.05, rel=0.5)
    assert f.estimate().value == f.beta


def test_power_law_fit_is_exact_on_a_line() -> None:
    f = fit.fit_power_law([10, 100, 1000], [2.0, 20.0, 200.0])
    assert f.beta == pytest.approx(1.0) and f.c == pytest.approx(0.2)


@pytest.mark.parametrize(
    "n, y, match",
    [
        ([1, 2], [1.0], "equal length"),
        ([1, 2], [1.0, -1.0], "> 0"),
        ([5, 5, 5], [1.0, 2.0, 3.0], "2 distinct"),
    ],
)
def test_power_law_fit_rejects_bad_input(n, y, match) -> None:
    with pytest.raises(ValueError, match=match):
        fit.fit_power_law(n, y)


def test_mean_estimate_is_scipys_t_interval() -> None:
    x = [0.1, 0.3, 0.2, 0.5]
    est = fit.mean_estimate(x, level=0.9)
    assert est is not None
    lo, hi = stats.t.interval(0.9, 3, loc=np.mean(x), scale=stats.sem(x))
    assert est.ci == pytest.approx((lo, hi))
    assert fit.mean_estimate([1.0]) is None
    assert fit.mean_estimate([1.0, math.nan]) is None


def test_bootstrap_needs_three_groups_and_covers_the_mean() -> None:
    rng = np.random.default_rng(1)
    groups = [list(rng.normal(1.0, 0.2, size=5)) for _ in range(8)]
    est = fit.bootstrap_estimate(groups, lambda g: float(np.mean([np.mean(x) for x in g])))
    assert est is not None and est.ci[0] < 1.0 < est.ci[1]
    assert fit.bootstrap_estimate(groups[:2], lambda g: 0.0) is None


def test_standard_error_round_trips_a_t_interval() -> None:
    est = fit.mean_estimate([1.0, 2.0, 4.0, 3.0])
    assert est is not None
    se, dof = fit.standard_error(est)
    assert dof == 3 and se == pytest.approx(stats.sem([1.0, 2.0, 4.0, 3.0]))
