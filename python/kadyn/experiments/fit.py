"""Estimates with confidence intervals, and the power analysis that sizes the plans.

Pure numpy and `scipy.stats` on plain numbers, so the rules in `rules.py` can be tested on
constructed data and the report never states a number that a function below did not compute.
Every interval is two-sided at `level` (the rules use 90%: a 90% interval inside the equivalence
region is the two one-sided tests at 5%, TOST).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A statistic with its interval, as the rules consume it."""

    value: float
    ci: tuple[float, float]
    n: int  # independent units behind it (seeds, or runs for a regression)
    method: str  # how the interval was made, for the report

    def text(self, digits: int = 2) -> str:
        lo, hi = self.ci
        return f"{self.value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] ({self.method}, n={self.n})"


def mean_estimate(values: Sequence[float], level: float = 0.90) -> Optional[Estimate]:
    """Mean with its t interval (scipy's t quantile); None for fewer than 2 finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(x) < 2:
        return None
    mean = float(x.mean())
    sem = float(stats.sem(x))
    if sem == 0.0:
        return Estimate(mean, (mean, mean), len(x), "t")
    lo, hi = stats.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return Estimate(mean, (float(lo), float(hi)), len(x), "t")


def bootstrap_estimate(
    groups: Sequence[object],
    statistic: Callable[[Sequence[object]], float],
    level: float = 0.90,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Optional[Estimate]:
    """`statistic` of a list of groups (e.g. one group per seed), with a percentile interval from
    resampling whole groups with replacement. None for fewer than 3 groups: with 2 the
    resamples take only three values, which is no interval."""
    if len(groups) < 3:
        return None
    value = statistic(groups)
    rng = np.random.default_rng(seed)
    draws = [statistic([groups[i] for i in rng.integers(len(groups), size=len(groups))])]
    for _ in range(n_resamples - 1):
        draws.append(statistic([groups[i] for i in rng.integers(len(groups), size=len(groups))]))
    finite = np.asarray([d for d in draws if math.isfinite(d)], dtype=float)
    if len(finite) < n_resamples // 2:
        return None
    lo, hi = np.quantile(finite, [0.5 - level / 2, 0.5 + level / 2])
    return Estimate(float(value), (float(lo), float(hi)), len(groups), "seed bootstrap")


@dataclass(frozen=True)
class PowerLawFit:
    """y = c * n^beta fitted by least squares on (log n, log y)."""

    c: float
    beta: float
    r2: float
    beta_se: float
    beta_ci: tuple[float, float]  # t interval on the slope, at `level`
    residual_sd: float  # of log y around the line: the seed-to-seed spread the power analysis uses
    level: float
    n_points: int
    n_sizes: int  # distinct n

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return self.c * np.asarray(n, dtype=float) ** self.beta

    def estimate(self) -> Estimate:
        return Estimate(self.beta, self.beta_ci, self.n_points, "t, log-log OLS")


def fit_power_law(n: Sequence[float], y: Sequence[float], level: float = 0.90) -> PowerLawFit:
    """Fit y = c * n^beta (`scipy.stats.linregress` on log-log axes) with a t interval on beta."""
    x_n, y_v = np.asarray(n, dtype=float), np.asarray(y, dtype=float)
    if x_n.shape != y_v.shape or x_n.ndim != 1:
        raise ValueError(f"n and y must be 1-d of equal length, got {x_n.shape}, {y_v.shape}")
    if not (np.all(x_n > 0) and np.all(y_v > 0)):
        raise ValueError("n and y must be > 0 for a log-log fit")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_sizes = len(np.unique(x_n))
    if n_sizes < 2:
        raise ValueError(f"need at least 2 distinct n to fit a power law, got {n_sizes}")
    x, z = np.log(x_n), np.log(y_v)
    fit = stats.linregress(x, z)
    dof = len(x) - 2
    residuals = z - (fit.slope * x + fit.intercept)
    if dof > 0:
        half = float(stats.t.ppf(0.5 + level / 2, dof)) * float(fit.stderr)
        beta_ci = (float(fit.slope) - half, float(fit.slope) + half)
        residual_sd = math.sqrt(float(residuals @ residuals) / dof)
    else:  # two points define the line exactly: no interval
        beta_ci, residual_sd = (-math.inf, math.inf), math.nan
    return PowerLawFit(
        c=math.exp(float(fit.intercept)),
        beta=float(fit.slope),
        r2=float(fit.rvalue) ** 2,
        beta_se=float(fit.stderr) if dof > 0 else math.inf,
        beta_ci=beta_ci,
        residual_sd=residual_sd,
        level=level,
        n_points=len(x),
        n_sizes=n_sizes,
    )


# ----------------------------------------------------------------------------------------------
# Power analysis: how many seeds make a verdict conclusive


def conclusive_power(distance: float, se: float, dof: float, level: float = 0.90) -> float:
    """P(the `level` interval lies wholly on one side of a region's edge) when the true value is
    `distance` from that edge and the estimate has standard error `se` with `dof` degrees of
    freedom: the power of one of the two one-sided tests (noncentral t)."""
    if dof < 1 or se <= 0 or not math.isfinite(se):
        return 0.0
    critical = float(stats.t.ppf(0.5 + level / 2, dof))
    return float(stats.nct.sf(critical, dof, abs(distance) / se))


def seeds_needed(
    distance: float,
    se_of: Callable[[int], float],
    dof_of: Callable[[int], float],
    power: float = 0.8,
    level: float = 0.90,
    max_seeds: int = 64,
) -> Optional[int]:
    """The smallest number of seeds k (2..max_seeds) whose plan reaches `power`; None if none
    does. `se_of(k)` and `dof_of(k)` give the estimate's standard error and degrees of freedom
    for k seeds (e.g. sd / sqrt(k), k - 1 for a mean over seeds)."""
    for k in range(2, max_seeds + 1):
        if conclusive_power(distance, se_of(k), dof_of(k), level) >= power:
            return k
    return None


def standard_error(estimate: Estimate, level: float = 0.90) -> tuple[float, float]:
    """(standard error, degrees of freedom) behind an `Estimate`'s interval, recovered from its
    width: t intervals use n - 1 (n - 2 for a regression slope), a bootstrap the normal."""
    half = (estimate.ci[1] - estimate.ci[0]) / 2
    if estimate.method.startswith("t, log-log"):
        dof = float(estimate.n - 2)
    elif estimate.method == "t":
        dof = float(estimate.n - 1)
    else:
        dof = math.inf
    q = float(
        stats.norm.ppf(0.5 + level / 2) if math.isinf(dof) else stats.t.ppf(0.5 + level / 2, dof)
    )
    return half / q, dof


def seeds_for(
    estimate: Estimate,
    pilot_seeds: int,
    distance: float,
    power: float = 0.8,
    level: float = 0.90,
    max_seeds: int = 64,
) -> Optional[int]:
    """Seeds a confirmatory plan needs for a conclusive interval with probability `power`, when
    the truth lies `distance` from the region's edge and the pilot (`pilot_seeds` seeds) gave
    `estimate`: the standard error shrinks as 1/sqrt(seeds), the degrees of freedom grow with
    the runs per seed."""
    se, dof = standard_error(estimate, level)
    points_per_seed = estimate.n / pilot_seeds
    offset = 2 if estimate.method.startswith("t, log-log") else 1

    def dof_of(k: int) -> float:
        return k * points_per_seed - offset

    return seeds_needed(
        distance,
        lambda k: se * math.sqrt(pilot_seeds / k),
        dof_of,
        power=power,
        level=level,
        max_seeds=max_seeds,
    )
