"""Fit and verdict code of the experiment suite, on synthetic curves and constructed data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kadyn.experiments import fit
from kadyn.experiments.fit import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    FinetuneStats,
    HallucinationStats,
    PatchingStats,
    PowerLawFit,
    WarmupRow,
)

# ----------------------------------------------------------------------------------------------
# Student-t quantile


@pytest.mark.parametrize(
    "p, df, expected",
    [
        (0.975, 1, 12.706204736),
        (0.975, 2, 4.302652730),
        (0.975, 5, 2.570581836),
        (0.975, 30, 2.042272456),
        (0.95, 10, 1.812461123),
        (0.5, 7, 0.0),
        (0.025, 5, -2.570581836),
    ],
)
def test_t_quantile_matches_tables(p: float, df: int, expected: float) -> None:
    assert fit.t_quantile(p, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_tends_to_normal() -> None:
    assert fit.t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-4)


def test_t_quantile_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 3, 8, 23, 100):
        for p in (0.6, 0.9, 0.975, 0.995):
            assert fit.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-7)


def test_t_quantile_rejects_bad_p() -> None:
    with pytest.raises(ValueError, match="p must be in"):
        fit.t_quantile(1.0, 3)


# ----------------------------------------------------------------------------------------------
# Power-law fit


def synthetic(beta: float, c: float, sigma: float, seeds: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sizes = np.array([250, 500, 1000, 2000, 4000], dtype=float)
    n = np.tile(sizes, seeds)
    groups = np.repeat(np.arange(seeds), len(sizes))
    y = c * n**beta * np.exp(sigma * rng.standard_normal(len(n)))
    return n, y, groups


@pytest.mark.parametrize("beta", [0.5, 0.81, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_beta_within_002_with_noise(beta: float, seed: int) -> None:
    n, y, groups = synthetic(beta, 0.43, sigma=0.05, seeds=5, seed=seed)
    f = fit.fit_power_law(n, y, groups=groups)
    assert abs(f.beta - beta) < 0.02
    assert f.c == pytest.approx(0.43, rel=0.2)
    assert f.beta_ci[0] < beta < f.beta_ci[1]
    assert f.bootstrap_ci is not None and f.bootstrap_ci[0] < f.beta < f.bootstrap_ci[1]
    assert f.r2 > 0.99
    assert (f.n_points, f.n_sizes) == (25, 5)


def test_fit_is_exact_without_noise() -> None:
    n, y, _ = synthetic(0.81, 0.43, sigma=0.0, seeds=1)
    f = fit.fit_power_law(n, y)
    assert f.beta == pytest.approx(0.81, abs=1e-12)
    assert f.c == pytest.approx(0.43, rel=1e-10)
    assert f.predict(1000.0) == pytest.approx(0.43 * 1000**0.81)
    assert f.bootstrap_ci is None


def test_fit_interval_widens_with_noise() -> None:
    quiet = fit.fit_power_law(*synthetic(0.8, 1.0, sigma=0.02, seeds=3)[:2])
    noisy = fit.fit_power_law(*synthetic(0.8, 1.0, sigma=0.3, seeds=3)[:2])
    width = lambda f: f.beta_ci[1] - f.beta_ci[0]  # noqa: E731
    assert width(noisy) > 5 * width(quiet)


def test_t_interval_coverage_is_about_95_percent() -> None:
    hits = 0
    for seed in range(200):
        f = fit.fit_power_law(*synthetic(0.8, 1.0, sigma=0.2, seeds=2, seed=seed)[:2])
        hits += f.beta_ci[0] < 0.8 < f.beta_ci[1]
    assert 0.9 <= hits / 200 <= 0.99


def test_two_points_have_no_interval() -> None:
    f = fit.fit_power_law([10, 100], [1.0, 10.0])
    assert f.beta == pytest.approx(1.0)
    assert f.beta_ci == (-math.inf, math.inf)


@pytest.mark.parametrize(
    "n, y, message",
    [
        ([10, 20], [1.0, 0.0], "must be > 0"),
        ([10, 10, 10], [1.0, 2.0, 3.0], "2 distinct n"),
        ([10, 20], [1.0], "equal length"),
    ],
)
def test_fit_rejects_bad_input(n, y, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit.fit_power_law(n, y)


# ----------------------------------------------------------------------------------------------
# Verdict rules


def make_fit(beta: float, lo: float, hi: float, sizes: int = 5) -> PowerLawFit:
    return PowerLawFit(0.4, beta, 0.99, (lo, hi), None, 0.95, sizes * 3, sizes)


@pytest.mark.parametrize(
    "f, outcome",
    [
        (make_fit(0.80, 0.70, 0.90), REPRODUCED),
        (make_fit(1.05, 0.95, 1.15), REPRODUCED),
        (make_fit(0.20, 0.10, 0.30), NOT_REPRODUCED),
        (make_fit(1.60, 1.40, 1.80), NOT_REPRODUCED),
        (make_fit(0.80, 0.30, 1.30), INCONCLUSIVE),  # too wide
        (make_fit(0.55, 0.52, 0.58), INCONCLUSIVE),  # sub-linear but not clearly refuted
        (make_fit(0.80, 0.70, 0.90, sizes=2), INCONCLUSIVE),
        (None, INCONCLUSIVE),
    ],
)
def test_plateau_verdict(f, outcome: str) -> None:
    assert fit.plateau_verdict(f).outcome == outcome


def test_plateau_verdict_on_a_fitted_synthetic_curve() -> None:
    f = fit.fit_power_law(*synthetic(0.81, 0.43, sigma=0.05, seeds=3)[:2])
    verdict = fit.plateau_verdict(f)
    assert verdict.outcome == REPRODUCED
    assert verdict.reason.startswith(f"beta = {f.beta:.2f}")


def test_argmin_alpha_and_monotone_votes() -> None:
    assert fit.argmin_alpha({0.0: 5.0, 0.6: 2.0, 0.8: 2.0, 1.0: math.inf}) == 0.6
    assert fit.argmin_alpha({0.0: math.inf}) is None
    # every alpha ties: the measurement cannot tell them apart
    assert fit.argmin_alpha({0.0: 41.0, 0.4: 41.0, 0.7: 41.0}) is None
    assert fit.argmin_alpha({0.0: 41.0, 0.4: 41.0, 0.7: math.inf}) == 0.0
    assert fit.argmin_alpha({0.7: 12.0}) == 0.7
    assert fit.monotone_votes([0.2, 0.4, 0.4, 0.6], increasing=True) == (2, 0)
    assert fit.monotone_votes([0.6, 0.4, None, 0.8], increasing=True) == (1, 1)
    assert fit.monotone_votes([0.8, 0.6], increasing=False) == (1, 0)


def test_alpha_verdict() -> None:
    good_loss = {(1000, 100): 0.4, (1000, 200): 0.2, (4000, 100): 0.6, (4000, 200): 0.4}
    assert fit.alpha_verdict({1000: 0.6, 4000: 0.8}, good_loss).outcome == REPRODUCED
    # plateau argmin at uniform contradicts the paper
    assert fit.alpha_verdict({1000: 0.0, 4000: 0.8}, good_loss).outcome == NOT_REPRODUCED
    # alpha_opt moving against the prediction everywhere
    bad_loss = {(1000, 100): 0.6, (1000, 200): 0.8, (4000, 100): 0.2, (4000, 200): 0.4}
    assert fit.alpha_verdict({1000: 0.6, 4000: 0.6}, bad_loss).outcome == NOT_REPRODUCED
    # no movement at all: nothing to confirm
    flat = {k: 0.4 for k in good_loss}
    assert fit.alpha_verdict({1000: 0.6, 4000: 0.6}, flat).outcome == INCONCLUSIVE
    # one grid step outside the paper's range
    assert fit.alpha_verdict({1000: 0.4, 4000: 0.6}, good_loss).outcome == INCONCLUSIVE
    assert fit.alpha_verdict({1000: None}, good_loss).outcome == INCONCLUSIVE
    # only one N tells the alphas apart: "whatever N" is not shown
    assert fit.alpha_verdict({1000: None, 4000: 0.7}, good_loss).outcome == INCONCLUSIVE


def test_warmup_verdict() -> None:
    rows = [WarmupRow(256, 0.50, 0.55, 0.60), WarmupRow(1024, 0.20, 0.30, 0.45)]
    assert fit.warmup_verdict(rows).outcome == REPRODUCED
    # warm-up loses to uniform at the largest N
    rows_bad = [WarmupRow(256, 0.50, 0.55, 0.60), WarmupRow(1024, 0.30, 0.30, 0.25)]
    assert fit.warmup_verdict(rows_bad).outcome == NOT_REPRODUCED
    # wins, but less at large N than at small N
    rows_shrink = [WarmupRow(256, 0.20, 0.2, 0.60), WarmupRow(1024, 0.20, 0.2, 0.25)]
    assert fit.warmup_verdict(rows_shrink).outcome == INCONCLUSIVE
    # beats uniform but not the best alpha
    rows_alpha = [WarmupRow(256, 0.5, 0.5, 0.52), WarmupRow(1024, 0.2, 0.5, 0.45)]
    assert fit.warmup_verdict(rows_alpha).outcome == INCONCLUSIVE
    # nothing learned
    assert fit.warmup_verdict([WarmupRow(64, 0.0, 0.0, 0.0)]).outcome == INCONCLUSIVE
    assert fit.warmup_verdict([]).outcome == INCONCLUSIVE


def hall(**kw) -> HallucinationStats:
    values = dict(
        baseline=4.0,
        knowledge_step=100,
        heldout_final=5.0,
        heldout_plateau=4.3,
        confidence_heldout=0.5,
        confidence_known=0.9,
        confidence_heldout_plateau=0.2,
    )
    values.update(kw)
    return HallucinationStats(**values)


def test_hallucination_verdict() -> None:
    assert fit.hallucination_verdict(hall()).outcome == REPRODUCED
    assert hall().excess == pytest.approx(1.0) and hall().rise == pytest.approx(0.7)
    assert fit.hallucination_verdict(hall(heldout_final=3.9)).outcome == NOT_REPRODUCED
    # above the baseline only because it was already there at the plateau
    assert fit.hallucination_verdict(hall(heldout_plateau=5.2)).outcome == NOT_REPRODUCED
    # over-confident on unknowns beyond the known ones: not the paper's picture
    assert fit.hallucination_verdict(hall(confidence_heldout=0.95)).outcome == INCONCLUSIVE
    assert fit.hallucination_verdict(hall(knowledge_step=None)).outcome == INCONCLUSIVE
    assert (
        fit.hallucination_verdict(hall(heldout_final=4.05, heldout_plateau=4.0)).outcome
        == INCONCLUSIVE
    )


def ft(old_early0: float = 0.2, old_final0: float = 0.1, **kw) -> FinetuneStats:
    values = dict(
        old_start=0.9,
        old_early={0.0: old_early0, 1.0: 0.3},
        old_final={0.0: old_final0, 1.0: 0.6},
        new_early={0.0: 0.05, 1.0: 0.04},
        new_final={0.0: 0.7, 1.0: 0.6},
    )
    values.update(kw)
    return FinetuneStats(**values)


def test_finetune_verdict() -> None:
    assert fit.finetune_verdict(ft()).outcome == REPRODUCED
    # no forgetting at all
    assert fit.finetune_verdict(ft(old_early0=0.88, old_final0=0.85)).outcome == NOT_REPRODUCED
    # replay keeps nothing at the end
    same = ft(old_final={0.0: 0.1, 1.0: 0.1})
    assert fit.finetune_verdict(same).outcome == NOT_REPRODUCED
    # replay helps as much at the start as at the end
    early_help = ft(old_early={0.0: 0.2, 1.0: 0.8})
    assert fit.finetune_verdict(early_help).outcome == INCONCLUSIVE
    # helps more later, but already more than half as much at the start
    some_early_help = ft(old_early={0.0: 0.2, 1.0: 0.5})
    assert fit.finetune_verdict(some_early_help).outcome == INCONCLUSIVE
    # new individuals learned fast: not "slowly"
    fast = ft(new_early={0.0: 0.8, 1.0: 0.8})
    assert fit.finetune_verdict(fast).outcome == INCONCLUSIVE
    assert fit.finetune_verdict(ft(old_start=0.1)).outcome == INCONCLUSIVE
    only_zero = ft(old_early={0.0: 0.2}, old_final={0.0: 0.1})
    assert fit.finetune_verdict(only_zero).outcome == INCONCLUSIVE


def test_patching_verdict() -> None:
    inf = math.inf
    good = PatchingStats(
        knowledge_step={"none": 300, "init": 320, "early": 400, "post": 20},
        mean_loss={"none": 4.0, "init": 4.1, "early": 4.6, "post": 2.0},
    )
    assert fit.patching_verdict(good).outcome == REPRODUCED
    no_help = PatchingStats(
        knowledge_step={"none": 300, "init": 320, "early": 400, "post": inf},
        mean_loss={"none": 4.0, "init": 4.1, "early": 4.6, "post": 4.5},
    )
    assert fit.patching_verdict(no_help).outcome == NOT_REPRODUCED
    early_fine = PatchingStats(
        knowledge_step={"none": 300, "init": 320, "early": 250, "post": 20},
        mean_loss={"none": 4.0, "init": 4.1, "early": 3.9, "post": 2.0},
    )
    assert fit.patching_verdict(early_fine).outcome == INCONCLUSIVE
    # neither twin left the plateau: fall back on the mean loss
    censored = PatchingStats(
        knowledge_step={"none": inf, "init": inf, "early": inf, "post": inf},
        mean_loss={"none": 4.0, "init": 4.1, "early": 4.6, "post": 3.0},
    )
    assert fit.patching_verdict(censored).outcome == REPRODUCED
    missing = PatchingStats(knowledge_step={"none": 1.0}, mean_loss={"none": 1.0})
    assert fit.patching_verdict(missing).outcome == INCONCLUSIVE
