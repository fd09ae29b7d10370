"""Phase detection (kadyn.phases) on synthetic attribute-loss curves with known crossings."""

from __future__ import annotations

import math
import random

import pytest

from kadyn.phases import (
    KNOWLEDGE,
    PLATEAU,
    STATISTICS,
    band_sensitivity,
    detect_phases,
)

F = 5.0  # no-knowledge level
STEPS = list(range(0, 1001, 20))


def curve(steps, plateau_end, final=1.0, noise=0.0, seed=0):
    """F + 9 exp(-s / 20) until step 100, F until `plateau_end`, then exponential descent."""
    rng = random.Random(seed)
    out = []
    for s in steps:
        if s < 100:
            loss = F + 9.0 * math.exp(-s / 20)
        elif s < plateau_end:
            loss = F
        else:
            loss = final + (F - final) * math.exp(-(s - plateau_end) / 100)
        out.append(loss * (1 + noise * rng.uniform(-1, 1)))
    return out


def lerp_root(s0, s1, d0, d1):
    """Step where d, linear from d0 at s0 to d1 at s1, is 0 (the hand computation)."""
    return s0 + (s1 - s0) * d0 / (d0 - d1)


def test_three_clean_phases_at_hand_computed_steps() -> None:
    p = detect_phases(STEPS, curve(STEPS, 400), F)  # band 5%: upper 5.25, lower 4.75
    # Entry: 9 exp(-s/20) = 0.25 at s = 20 ln 36 = 71.7. Evals: step 60 at 5 + 9e^-3 = 5.448
    # (above), step 80 at 5 + 9e^-4 = 5.165 (in band). Interpolated at 5.25:
    # 60 + 20 * (5.448 - 5.25) / (5.448 - 5.165) = 73.98.
    start = 60 + 20 * (9 * math.exp(-3) - 0.25) / (9 * math.exp(-3) - 9 * math.exp(-4))
    assert start == pytest.approx(73.98, abs=0.01)
    assert p.plateau_start == pytest.approx(start)
    # Exit: step 400 at 5.0 (in band), step 420 at 1 + 4e^-0.2 = 4.275 (below 4.75).
    # Interpolated at 4.75: 400 + 20 * 0.25 / (5.0 - 4.275) = 406.90 (the true crossing is
    # 400 + 100 ln(4 / 3.75) = 406.45: interpolation removes most of the eval spacing).
    onset = 400 + 20 * 0.25 / (F - (1 + 4 * math.exp(-0.2)))
    assert onset == pytest.approx(406.90, abs=0.01)
    assert p.knowledge_onset == pytest.approx(onset)
    assert p.plateau_end == p.knowledge_onset
    assert p.plateau_length == pytest.approx(onset - start)
    # Steps 0..60 statistics, 80..400 plateau (17 evals), 420.. knowledge.
    i80, i420 = STEPS.index(80), STEPS.index(420)
    assert p.phase == [STATISTICS] * i80 + [PLATEAU] * (i420 - i80) + [KNOWLEDGE] * (51 - i420)
    assert p.plateau_evals == 17
    assert p.max_deviation == pytest.approx(0.165 / 5, abs=1e-3)  # step 80 is the furthest
    assert p.max_accuracy is None


def test_curve_without_a_flat_stretch_has_no_plateau_but_an_onset() -> None:
    # 14 exp(-k s), k = ln(70) / 1000: from 14 at step 0 to 0.2 at step 1000, through F.
    # In band [4.75, 5.25] for a log-range of ln(5.25 / 4.75) = 0.1, i.e. 23.5 steps: at most
    # two evals 20 steps apart, fewer than min_evals = 3.
    k = math.log(70) / 1000
    losses = [14 * math.exp(-k * s) for s in STEPS]
    in_band = [s for s, x in zip(STEPS, losses) if abs(x - F) <= 0.25]
    assert 1 <= len(in_band) <= 2
    p = detect_phases(STEPS, losses, F)
    assert p.plateau_start is None and p.plateau_end is None and p.plateau_length is None
    assert p.plateau_evals == 0 and p.max_deviation is None
    # Onset at the first eval below 4.75, interpolated with its predecessor.
    i = next(j for j, x in enumerate(losses) if x < 4.75)
    expected = lerp_root(STEPS[i - 1], STEPS[i], losses[i - 1] - 4.75, losses[i] - 4.75)
    assert p.knowledge_onset == pytest.approx(expected)
    true_crossing = math.log(14 / 4.75) / k  # 254.4
    assert p.knowledge_onset == pytest.approx(true_crossing, abs=1.0)
    assert p.phase == [STATISTICS] * i + [KNOWLEDGE] * (len(STEPS) - i)


@pytest.mark.parametrize("min_evals", [1, 2, 3, 5])
def test_flat_stretch_must_hold_min_evals(min_evals: int) -> None:
    def run(m):
        losses = [14.0, 10.0] + [F] * m + [3.0, 2.0]
        steps = [10 * i for i in range(len(losses))]
        return steps, detect_phases(steps, losses, F, min_evals=min_evals)

    steps, short = run(min_evals - 1)
    assert short.plateau_start is None and short.plateau_end is None
    assert short.phase == [STATISTICS] * (min_evals + 1) + [KNOWLEDGE] * 2
    # Onset between the last eval at or above 4.75 and 3.0, at 4.75.
    last = 10.0 if min_evals == 1 else F
    assert short.knowledge_onset == pytest.approx(
        lerp_root(steps[-3], steps[-2], last - 4.75, 3.0 - 4.75)
    )

    steps, exact = run(min_evals)
    # Entry between 10.0 at step 10 and 5.0 at step 20, at 5.25: 10 + 10 * 4.75 / 5 = 19.5.
    assert exact.plateau_start == pytest.approx(19.5)
    # Exit between 5.0 and 3.0, at 4.75: 0.25 / 2 of the way.
    assert exact.plateau_end == pytest.approx(steps[-3] + 10 * 0.125)
    assert exact.knowledge_onset == exact.plateau_end
    assert exact.phase == [STATISTICS] * 2 + [PLATEAU] * min_evals + [KNOWLEDGE] * 2
    assert exact.plateau_evals == min_evals


def test_accuracy_trigger_ends_a_flat_plateau() -> None:
    steps = [0, 10, 20, 30, 40, 50, 60]
    losses = [14.0, F, F, F, F, F, F]  # never leaves the band
    accs = [0.0, 0.0, 0.0, 0.01, 0.02, 0.08, 0.3]
    p = detect_phases(steps, losses, F, accs, max_acc=0.05)
    # Entry at 5.25 between 14 and 5: 10 * 8.75 / 9 = 9.72.
    assert p.plateau_start == pytest.approx(10 * 8.75 / 9)
    # Accuracy crosses 0.05 halfway between 0.02 (step 40) and 0.08 (step 50): 45.
    assert p.knowledge_onset == pytest.approx(45.0)
    assert p.plateau_end == pytest.approx(45.0)
    assert p.phase == [STATISTICS] + [PLATEAU] * 4 + [KNOWLEDGE] * 2
    assert p.max_accuracy == pytest.approx(0.02)
    assert p.max_accuracy < 0.05
    # Without accuracies the loss alone never shows knowledge.
    q = detect_phases(steps, losses, F)
    assert q.knowledge_onset is None and q.plateau_end is None
    assert q.plateau_start == pytest.approx(p.plateau_start)
    assert q.phase == [STATISTICS] + [PLATEAU] * 6


def test_accuracy_above_the_band_does_not_trigger_before_entry() -> None:
    # High accuracy while the loss is still above the band triggers nothing; once the loss is in
    # band, onset is not placed before the loss crossed the upper edge (9.72 here).
    p = detect_phases([0, 10, 20], [14.0, 9.0, F], F, [0.5, 0.5, 0.5])
    assert p.phase == [STATISTICS, STATISTICS, KNOWLEDGE]
    assert p.knowledge_onset == pytest.approx(10 + 10 * 3.75 / 4)
    assert p.plateau_start is None


def test_blip_above_the_band_restarts_the_plateau() -> None:
    losses = curve(STEPS, 600, noise=0.01, seed=1)  # 1% noise stays inside the 5% band
    i300 = STEPS.index(300)
    losses[i300] = 6.0  # one eval above the band (> 5.25)
    p = detect_phases(STEPS, losses, F)
    # The plateau restarts at the re-entry between step 300 (6.0) and step 320.
    restart = lerp_root(300, 320, 6.0 - 5.25, losses[i300 + 1] - 5.25)
    assert 300 < restart < 320
    assert p.plateau_start == pytest.approx(restart)
    assert p.phase[: i300 + 1] == [STATISTICS] * (i300 + 1)
    assert p.phase[i300 + 1] == PLATEAU
    assert p.plateau_end is not None and 600 < p.plateau_end < 620
    assert p.plateau_evals == STEPS.index(600) - i300  # steps 320..600
    # Before the blip, the first plateau (entered near step 74) was reported ...
    before = detect_phases(STEPS[:i300], losses[:i300], F)
    assert before.plateau_start is not None and 70 < before.plateau_start < 80
    # ... the blip withdraws it, and the re-entered run is reported once it holds 3 evals.
    for i, expected in [(i300, None), (i300 + 1, None), (i300 + 2, None), (i300 + 3, restart)]:
        prefix = detect_phases(STEPS[: i + 1], losses[: i + 1], F)
        assert prefix.plateau_start == (None if expected is None else pytest.approx(expected))


def test_twin_level_with_half_width() -> None:
    # The control run ("twin") drifts down slowly: 5.3 -> 4.8 over 1000 steps. The real run drops
    # onto it, follows it, then separates linearly from step 500: real - twin = -0.004 (s - 500).
    twin = [5.3 - 0.0005 * s for s in STEPS]
    real = [
        t + (9 * math.exp(-s / 20) if s < 500 else -0.004 * (s - 500)) for s, t in zip(STEPS, twin)
    ]
    hw = 0.1
    p = detect_phases(STEPS, real, twin, half_width=[hw] * len(STEPS))
    # Onset where real - twin = -0.1: s = 525; evals at 520 (-0.08) and 540 (-0.16), and the
    # difference is linear there, so interpolation is exact.
    assert p.knowledge_onset == pytest.approx(525.0)
    # Entry where 9 exp(-s/20) = 0.1: between step 80 (0.165) and 100 (0.0606).
    d80, d100 = 9 * math.exp(-4) - hw, 9 * math.exp(-5) - hw
    assert p.plateau_start == pytest.approx(lerp_root(80, 100, d80, d100))
    assert p.plateau_end == pytest.approx(525.0)
    # Scalar half_width gives the same; the twin against itself never shows knowledge.
    assert detect_phases(STEPS, real, twin, half_width=hw) == p
    assert detect_phases(STEPS, twin, twin, half_width=hw).knowledge_onset is None
    # A fixed level at the twin's early value mistakes the twin's own drift for knowledge:
    # the twin itself falls below 5.25 - 0.1 at step 300.
    fixed = detect_phases(STEPS, real, 5.25, half_width=hw)
    assert fixed.knowledge_onset is not None and fixed.knowledge_onset < 320


def test_reported_values_never_change_over_prefixes() -> None:
    losses = curve(STEPS, 500, noise=0.02, seed=3)  # noisy, never above the band after entry
    accs = [0.0 if s < 500 else min(1.0, (s - 500) / 200) for s in STEPS]
    full = detect_phases(STEPS, losses, F, accs, band=0.1)
    assert full.plateau_start is not None and full.knowledge_onset is not None
    seen: dict[str, float] = {}
    for i in range(1, len(STEPS) + 1):
        prefix = detect_phases(STEPS[:i], losses[:i], F, accs[:i], band=0.1)
        for name in ("plateau_start", "plateau_end", "knowledge_onset"):
            value = getattr(prefix, name)
            if name in seen:
                assert value == seen[name]  # once reported, kept
            if value is not None:
                seen[name] = value
                assert value == getattr(full, name)  # and equal to the final value
        # Labels differ from the final ones only on the unconfirmed run (statistics -> plateau).
        for j, (a, b) in enumerate(zip(prefix.phase, full.phase)):
            if a != b:
                assert (a, b) == (STATISTICS, PLATEAU) and j >= i - 2  # at most 2 unconfirmed
    assert set(seen) == {"plateau_start", "plateau_end", "knowledge_onset"}


def test_onset_is_final_even_if_the_loss_returns_to_the_band() -> None:
    p = detect_phases([0, 10, 20, 30, 40, 50], [14.0, F, F, F, 4.0, F], F)
    assert p.phase == [STATISTICS] + [PLATEAU] * 3 + [KNOWLEDGE] * 2
    assert p.knowledge_onset == pytest.approx(30 + 10 * 0.25 / 1.0)


def test_wider_band_gives_a_longer_plateau_on_a_slow_descent() -> None:
    # Drop onto F, then a slow linear descent from 5.06 at step 100 (0.0025 per step).
    losses = [
        F + 9 * math.exp(-s / 20) if s < 100 else F + 9 * math.exp(-5) - 0.0025 * (s - 100)
        for s in STEPS
    ]
    res = band_sensitivity(STEPS, losses, F)
    assert list(res) == [0.05, 0.10, 0.20]
    # Upper edges are crossed near 71.7, 57.8, 43.9; lower edges near 224, 324, 524.
    for b, (start, end) in {0.05: (71.7, 224), 0.10: (57.8, 324), 0.20: (43.9, 524)}.items():
        p = res[b]
        assert p.band == b
        assert p.plateau_start == pytest.approx(start, abs=3)
        assert p.plateau_end == pytest.approx(end, abs=1)
        assert p.max_deviation is not None and p.max_deviation <= b
    lengths = [res[b].plateau_length for b in (0.05, 0.10, 0.20)]
    assert lengths[0] < lengths[1] < lengths[2]
    evals = [res[b].plateau_evals for b in (0.05, 0.10, 0.20)]
    assert evals[0] < evals[1] < evals[2]


def test_defaults_and_empty_curve() -> None:
    # train.py calls detect_phases(steps, losses, baseline) after the first eval, too.
    assert detect_phases([], [], F).phase == []
    p = detect_phases([0], [14.0], F)
    assert p.phase == [STATISTICS] and p.plateau_start is None and p.knowledge_onset is None
    assert p.band == 0.05 and p.plateau_evals == 0
    # A curve already in band at its first eval starts its plateau at that step.
    assert detect_phases([5, 10, 15], [F, F, F], F).plateau_start == 5.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(steps=[0, 1], losses=[1.0]), "losses"),
        (dict(level=0.0), "level"),
        (dict(level=[F, -1.0]), "level"),
        (dict(level=[F]), "level"),
        (dict(accuracies=[0.0]), "accuracies"),
        (dict(accuracies=[0.0, 2.0]), "accuracies"),
        (dict(band=1.5), "band"),
        (dict(band=0.0), "band"),
        (dict(half_width=0.0), "half_width"),
        (dict(half_width=[0.1, -0.1]), "half_width"),
        (dict(min_evals=0), "min_evals"),
        (dict(max_acc=0.0), "max_acc"),
        (dict(max_acc=1.5), "max_acc"),
        (dict(steps=[0, 0]), "steps"),
        (dict(steps=[10, 0]), "steps"),
        (dict(losses=[1.0, float("nan")]), "losses"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name) -> None:
    args = dict(steps=[0, 10], losses=[14.0, F], level=F) | kwargs
    with pytest.raises(ValueError, match=name):
        detect_phases(**args)


def test_band_sensitivity_rejects_half_width() -> None:
    with pytest.raises(ValueError, match="half_width"):
        band_sensitivity([0, 10], [14.0, F], F, half_width=0.1)


def test_twin_moves_the_onset_but_not_the_plateau_start() -> None:
    # The twin (a no-knowledge control) drifts slowly down through F's band; the real curve tracks
    # it, then separates at step 500. Against F alone the separation is seen only once the loss is
    # 5% below F; against the twin, as soon as it leaves the twin's noise band (confirmed twice).
    steps = list(range(0, 1001, 50))
    twin = [14.0, 7.0] + [5.3 - 0.0005 * s for s in steps[2:]]  # 5.2 at 200 ... 4.8 at 1000
    real = [t if s < 500 else t - 0.004 * (s - 450) for s, t in zip(steps, twin)]
    f = detect_phases(steps, real, F)
    t = detect_phases(steps, real, F, onset_level=twin, onset_half_width=0.05, confirm=2)
    assert f.plateau_start == t.plateau_start  # entered at F's band either way
    # real - (twin - 0.05) = 0.05 - 0.004 * (s - 450): crosses 0 at s = 462.5 (between 450, 500).
    assert t.knowledge_onset == pytest.approx(462.5)
    assert f.knowledge_onset is not None and f.knowledge_onset > t.knowledge_onset + 50
    # One eval below the twin's band that comes back is noise, not knowledge.
    blip = list(twin)
    blip[steps.index(300)] -= 0.2
    b = detect_phases(steps, blip, F, onset_level=twin, onset_half_width=0.05, confirm=2)
    assert b.knowledge_onset is None and b.plateau_start is not None
    assert detect_phases(steps, blip, F, onset_level=twin, onset_half_width=0.05).knowledge_onset
    with pytest.raises(ValueError, match="confirm must be"):
        detect_phases(steps, real, F, confirm=0)
    with pytest.raises(ValueError, match="onset_half_width needs onset_level"):
        detect_phases(steps, real, F, onset_half_width=0.1)
