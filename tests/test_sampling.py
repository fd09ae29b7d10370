"""Sampling distributions measured on the stream: chi-square goodness of fit and curricula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import kadyn


@pytest.fixture(scope="module")
def world() -> kadyn.World:
    return kadyn.World(n_individuals=40, seed=0)


def individuals(world: kadyn.World, sampling, n_batches: int, batch_size: int = 2000) -> np.ndarray:
    stream = kadyn.BiographyStream(world, batch_size=batch_size, sampling=sampling, seed=123)
    it = iter(stream)
    return np.concatenate([next(it).column("individual").to_numpy() for _ in range(n_batches)])


@pytest.mark.parametrize("alpha", [0.0, 0.7, 1.2])
def test_power_law_matches_i_to_the_minus_alpha(world: kadyn.World, alpha: float) -> None:
    drawn = individuals(world, kadyn.PowerLaw(alpha), n_batches=40)
    observed = np.bincount(drawn, minlength=40)
    weights = np.arange(1, 41, dtype=float) ** -alpha
    expected = weights / weights.sum() * len(drawn)
    _, p = stats.chisquare(observed, expected)
    assert p > 1e-3, f"alpha={alpha}: p={p}"
    # And the test has power: a neighbouring exponent is rejected.
    wrong = np.arange(1, 41, dtype=float) ** -(alpha + 0.15)
    _, p_wrong = stats.chisquare(observed, wrong / wrong.sum() * len(drawn))
    assert p_wrong < 1e-6


def test_curriculum_stays_in_its_subset_during_warmup(world: kadyn.World) -> None:
    warm = 3000
    sampling = kadyn.Curriculum([(kadyn.Subset(5), warm), (kadyn.Uniform(), None)])
    drawn = individuals(world, sampling, n_batches=4, batch_size=1500)  # 6000 samples
    assert drawn[:warm].max() < 5
    assert set(drawn[:warm].tolist()) == set(range(5))
    after = drawn[warm:]
    assert after.max() >= 5
    _, p = stats.chisquare(np.bincount(after, minlength=40))
    assert p > 1e-3


def test_subset_and_three_phase_curriculum(world: kadyn.World) -> None:
    drawn = individuals(world, kadyn.Subset(7), n_batches=1)
    assert set(drawn.tolist()) == set(range(7))
    sampling = kadyn.Curriculum(
        [(kadyn.Subset(2), 100), (kadyn.PowerLaw(2.0), 100), (kadyn.Subset(10), None)]
    )
    drawn = individuals(world, sampling, n_batches=1, batch_size=400)
    assert drawn[:100].max() < 2
    assert drawn[200:].max() < 10
    assert (
        repr(sampling)
        == "Curriculum([(Subset(n=2), 100), (PowerLaw(alpha=2), 100), (Subset(n=10), None)])"
    )
