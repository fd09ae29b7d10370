"""Phase detection (kadyn.phases) on synthetic attribute-loss curves."""

from __future__ import annotations

import math
import random

import pytest

from kadyn.phases import detect_phases

BASE = 5.0


def curve(steps, drop_end, plateau_end, final, noise=0.0, seed=0):
    """Exponential drop to the baseline, flat, then exponential descent to `final`."""
    rng = random.Random(seed)
    out = []
    for s in steps:
        if s < drop_end:
            loss = BASE + (14.0 - BASE) * math.exp(-5 * s / drop_end)
        elif s < plateau_end:
            loss = BASE
        else:
            loss = final + (BASE - final) * math.exp(-(s - plateau_end) / 100)
        out.append(loss * (1 + noise * rng.uniform(-1, 1)))
    return out


def test_three_phases() -> None:
    steps = list(range(0, 1001, 20))
    p = detect_phases(steps, curve(steps, 100, 400, 1.0), BASE)
    # Within 10% once 9 * exp(-5 s / 100) <= 0.5, i.e. s >= 57.8: the first eval is step 60.
    assert p.plateau_start == 60
    # Below 4.5 once 4 * exp(-(s - 400) / 100) < 3.5 + ..., i.e. first eval after 413: 420.
    assert p.plateau_end == 420
    assert p.plateau_length == 360
    assert p.phase[: steps.index(60)] == [1] * 3
    assert set(p.phase[steps.index(60) : steps.index(420)]) == {2}
    assert set(p.phase[steps.index(420) :]) == {3}


def test_no_plateau_yet_and_plateau_without_end() -> None:
    steps = list(range(0, 81, 20))
    early = detect_phases(steps, [14, 12, 10, 8, 6], BASE)
    assert early.plateau_start is None and early.plateau_end is None
    assert early.phase == [1] * 5
    within = detect_phases(steps, [14, 8, 5.2, 4.9, 5.1], BASE)
    assert within.plateau_start == 40 and within.plateau_end is None
    assert within.plateau_length is None
    assert within.phase == [1, 1, 2, 2, 2]


def test_noisy_plateau_is_not_split_by_a_blip() -> None:
    steps = list(range(0, 1001, 20))
    losses = curve(steps, 100, 600, 1.0, noise=0.03, seed=1)
    losses[steps.index(300)] = BASE * 1.2  # one eval leaves the band upwards
    p = detect_phases(steps, losses, BASE)
    assert p.plateau_start is not None and 40 <= p.plateau_start <= 80
    assert p.plateau_end is not None and 600 < p.plateau_end <= 640
    assert p.phase[steps.index(300)] == 2


@pytest.mark.parametrize("seed", range(3))
def test_noise_within_band_keeps_the_plateau(seed: int) -> None:
    steps = list(range(0, 401, 10))
    noise = [0.08 * random.Random(seed + s).uniform(-1, 1) for s in steps[1:]]
    losses = [14.0] + [BASE * (1 + e) for e in noise]
    p = detect_phases(steps, losses, BASE)
    assert p.plateau_start == 10 and p.plateau_end is None


def test_jump_across_the_band_gives_a_zero_length_plateau() -> None:
    p = detect_phases([0, 10, 20], [14.0, 2.0, 1.0], BASE)
    assert (p.plateau_start, p.plateau_end) == (10, 10)
    assert p.phase == [1, 3, 3]


def test_causal_prefixes_agree() -> None:
    steps = list(range(0, 1001, 20))
    losses = curve(steps, 100, 400, 1.0, noise=0.05)
    full = detect_phases(steps, losses, BASE).phase
    online = [
        detect_phases(steps[: i + 1], losses[: i + 1], BASE).phase[-1] for i in range(len(steps))
    ]
    assert online == full


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        detect_phases([0, 1], [1.0], BASE)
    with pytest.raises(ValueError, match="baseline must be > 0"):
        detect_phases([0], [1.0], 0.0)
    with pytest.raises(ValueError, match="tolerance"):
        detect_phases([0], [1.0], BASE, tolerance=1.5)
