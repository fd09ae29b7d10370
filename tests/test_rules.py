"""The pre-registered rules (kadyn.experiments.rules): every rule reaches every verdict on
constructed data, the decision is symmetric, and the hash tracks the module's text."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kadyn.experiments import fit, rules
from kadyn.experiments.fit import Estimate
from kadyn.experiments.rules import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, Region

SEEDS = (0, 1, 2, 3, 4)


def noisy(rng: np.random.Generator, value: float, sd: float) -> float:
    return float(value + rng.normal(0.0, sd))


# ----------------------------------------------------------------------------------------------
# The decision itself


@pytest.mark.parametrize(
    "ci, region, outcome",
    [
        ((0.7, 0.9), Region(0.51, 1.11), REPRODUCED),
        ((1.2, 1.6), Region(0.51, 1.11), NOT_REPRODUCED),
        ((0.1, 0.4), Region(0.51, 1.11), NOT_REPRODUCED),
        ((0.9, 1.3), Region(0.51, 1.11), INCONCLUSIVE),
        ((0.03, 0.08), Region(0.02), REPRODUCED),
        ((-0.05, 0.01), Region(0.02), NOT_REPRODUCED),
        ((0.0, 0.05), Region(0.02), INCONCLUSIVE),
        ((-0.6, -0.4), Region(hi=math.log(0.75)), REPRODUCED),
        ((-0.1, 0.2), Region(hi=math.log(0.75)), NOT_REPRODUCED),
    ],
)
def test_decide_on_the_interval(ci, region, outcome) -> None:
    estimate = Estimate(sum(ci) / 2, ci, 5, "t")
    assert rules.decide(estimate, region, "x").outcome == outcome


def test_decision_is_symmetric() -> None:
    """An interval clearing the lower edge by d from inside, and one clearing it by d from
    outside, get opposite conclusive verdicts: neither is easier to reach."""
    region = Region(0.5, 1.1)
    for d in (0.01, 0.1, 0.3):
        inside = Estimate(0.8, (0.5 + d, 0.5 + d + 0.2), 3, "t")
        outside = Estimate(0.2, (0.5 - d - 0.2, 0.5 - d), 3, "t")
        assert rules.decide(inside, region, "x").outcome == REPRODUCED
        assert rules.decide(outside, region, "x").outcome == NOT_REPRODUCED


def test_unmeasured_statistic_is_inconclusive() -> None:
    assert rules.decide(None, Region(0.0, 1.0), "x").outcome == INCONCLUSIVE
    inf = Estimate(0.5, (-math.inf, math.inf), 2, "t")
    assert rules.decide(inf, Region(0.0, 1.0), "x").outcome == INCONCLUSIVE


# ----------------------------------------------------------------------------------------------
# Each finding's rule reaches each verdict


def plateau_runs(beta: float, sd: float, seeds=SEEDS, sizes=(256, 512, 1024, 2048)) -> list:
    rng = np.random.default_rng(1)
    return [
        rules.PlateauRun(
            n,
            s,
            length=0.4 * n**beta * math.exp(noisy(rng, 0, sd)),
            onset=2.0 * n**beta * math.exp(noisy(rng, 0, sd)),
        )
        for n in sizes
        for s in seeds
    ]


@pytest.mark.parametrize(
    "runs, outcome",
    [
        (plateau_runs(0.8, 0.05), REPRODUCED),
        (plateau_runs(1.6, 0.05), NOT_REPRODUCED),
        (plateau_runs(0.3, 0.05), NOT_REPRODUCED),
        (plateau_runs(0.8, 1.5, seeds=(0,)), INCONCLUSIVE),
        (plateau_runs(0.8, 0.05, sizes=(256, 512)), INCONCLUSIVE),  # fewer than 3 sizes
    ],
)
def test_plateau_rule(runs, outcome) -> None:
    assert rules.judge_plateau(runs).verdict.outcome == outcome


def test_plateau_rule_leaves_out_runs_without_a_plateau() -> None:
    runs = plateau_runs(0.8, 0.05) + [rules.PlateauRun(256, 9, None, 100.0)]
    judged = rules.judge_plateau(runs)
    assert judged.verdict.outcome == REPRODUCED
    assert judged.primary is not None and judged.primary.n == 20


def alpha_runs(best: float, curvature: float, sd: float, seeds=SEEDS) -> list:
    rng = np.random.default_rng(2)
    out = []
    for n in (256, 512):
        for s in seeds:
            for a in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
                log_length = math.log(n) + curvature * (a - best) ** 2 + noisy(rng, 0, sd)
                loss = {400: 2.0 + (a - 0.3 * n / 256) ** 2, 800: 1.0 + (a - 0.2) ** 2}
                out.append(rules.AlphaRun(n, s, a, math.exp(log_length), 4, loss))
    return out


@pytest.mark.parametrize(
    "runs, outcome",
    [
        (alpha_runs(0.7, 4.0, 0.02), REPRODUCED),
        (alpha_runs(0.0, 4.0, 0.02), NOT_REPRODUCED),
        (alpha_runs(0.7, 0.05, 0.5), INCONCLUSIVE),
    ],
)
def test_alpha_rule(runs, outcome) -> None:
    judged = rules.judge_alpha(runs)
    assert judged.verdict.outcome == outcome, judged.verdict.reason


def test_alpha_primary_needs_no_third_seed() -> None:
    judged = rules.judge_alpha(alpha_runs(0.7, 4.0, 0.02, seeds=(0, 1)))
    assert judged.verdict.outcome == REPRODUCED and judged.primary is not None
    assert judged.primary.ci[0] < 0.7 < judged.primary.ci[1]


def test_alpha_secondary_reads_the_loss_argmin_shift() -> None:
    judged = rules.judge_alpha(alpha_runs(0.7, 4.0, 0.02))
    assert judged.secondary_verdicts["loss_argmin_shift_n"].outcome == REPRODUCED


def warmup_scores(gain: float, sd: float) -> list:
    rng = np.random.default_rng(3)
    return [
        rules.WarmupScore(n, s, 0.5, 0.5 + gain / 2, 0.5 + noisy(rng, gain * n / 512, sd))
        for n in (256, 512)
        for s in SEEDS
    ]


@pytest.mark.parametrize(
    "scores, outcome",
    [
        (warmup_scores(0.10, 0.005), REPRODUCED),
        (warmup_scores(-0.05, 0.005), NOT_REPRODUCED),
        (warmup_scores(0.02, 0.05), INCONCLUSIVE),
    ],
)
def test_warmup_rule(scores, outcome) -> None:
    assert rules.judge_warmup(scores).verdict.outcome == outcome


def test_select_best_is_reproducible_on_ties() -> None:
    assert rules.select_best({"b": 0.5, "a": 0.5, "c": 0.4}) == "a"
    with pytest.raises(ValueError, match="no configuration"):
        rules.select_best({})


def hallucination_runs(excess: float, sd: float) -> list:
    rng = np.random.default_rng(4)
    return [
        rules.HallucinationRun(
            seed=s,
            level=4.0,
            heldout_loss=noisy(rng, 4.0 * (1 + excess), 4.0 * sd),
            twin_heldout_loss=4.0,
            confidence_known=0.9,
            confidence_heldout=0.4,
            confidence_heldout_plateau=0.1,
            name_match=0.3,
            name_match_chance=0.1,
        )
        for s in SEEDS
    ]


@pytest.mark.parametrize(
    "runs, outcome",
    [
        (hallucination_runs(0.5, 0.01), REPRODUCED),
        (hallucination_runs(0.0, 0.005), NOT_REPRODUCED),
        (hallucination_runs(0.05, 0.1), INCONCLUSIVE),
    ],
)
def test_hallucination_rule(runs, outcome) -> None:
    assert rules.judge_hallucination(runs).verdict.outcome == outcome


def finetune_runs(early_gain: float, final_gain: float, sd: float) -> list:
    rng = np.random.default_rng(5)
    out = []
    for s in SEEDS:
        none = [0.9, 0.6, 0.3, 0.2, 0.2]  # half lost at eval 2
        replay = [
            0.9,
            0.7,
            0.3 + noisy(rng, early_gain, sd),
            0.3,
            0.2 + noisy(rng, final_gain, sd),
        ]
        new = [0.0, 0.05, 0.1, 0.3, 0.5]
        out.append(rules.FinetuneRun(s, 64, 0.9, {0.0: none, 1.0: replay}, {0.0: new, 1.0: new}))
    return out


@pytest.mark.parametrize(
    "runs, outcome",
    [
        (finetune_runs(0.0, 0.3, 0.01), REPRODUCED),
        (finetune_runs(0.3, 0.3, 0.01), NOT_REPRODUCED),
        (finetune_runs(0.0, 0.05, 0.1), INCONCLUSIVE),
    ],
)
def test_finetune_rule(runs, outcome) -> None:
    assert rules.judge_finetune(runs).verdict.outcome == outcome


def test_early_point_comes_from_the_data() -> None:
    assert rules.early_index([0.8, 0.5, 0.4, 0.1], 0.8) == 2
    assert rules.early_index([0.8, 0.7, 0.6], 0.8) == 2  # never halved: the last eval


def patching_runs(ratio: float, sd: float) -> list:
    rng = np.random.default_rng(6)
    out = []
    for s in SEEDS:
        onset = {
            "none": 1000.0,
            "post": 1000.0 * ratio * math.exp(noisy(rng, 0, sd)),
            "plateau_start": 900.0,
            "plateau_mid": 800.0,
            "plateau_late": 700.0,
        }
        loss = {"init": 3.0, "statistics": 3.3, "none": 3.0, "post": 2.0}
        out.append(rules.PatchingRun(s, onset, loss))
    return out


@pytest.mark.parametrize(
    "runs, outcome",
    [
        (patching_runs(0.3, 0.05), REPRODUCED),
        (patching_runs(1.0, 0.05), NOT_REPRODUCED),
        (patching_runs(0.75, 0.5), INCONCLUSIVE),
    ],
)
def test_patching_rule(runs, outcome) -> None:
    judged = rules.judge_patching(runs)
    assert judged.verdict.outcome == outcome
    assert judged.secondary_verdicts["early_vs_init"].outcome == REPRODUCED
    if outcome == REPRODUCED:  # post-plateau patterns first: onset falls with the source's order
        assert judged.secondary_verdicts["order_rho"].outcome == REPRODUCED


# ----------------------------------------------------------------------------------------------
# Registrations and the hash


def test_every_finding_is_registered_with_its_primary_statistic() -> None:
    assert set(rules.REGISTRATIONS) == {
        "plateau",
        "alpha",
        "warmup",
        "hallucination",
        "finetune",
        "patching",
    }
    assert rules.PLATEAU.primary.key == "beta_length"  # the paper's claim is about length
    assert [s.key for s in rules.PLATEAU.secondary] == ["beta_onset"]
    for reg in rules.REGISTRATIONS.values():
        assert reg.seeds >= 2
        assert not set(rules.PILOT_SEEDS) & set(range(reg.seeds))  # pilot seeds never confirm
        assert rules.WARMUP_SELECTION_SEED not in range(reg.seeds)


def test_rules_hash_tracks_the_source(tmp_path, monkeypatch) -> None:
    h = rules.rules_hash()
    assert len(h) == 12 and h == rules.rules_hash()
    copy = tmp_path / "rules.py"
    copy.write_text(open(rules.__file__).read() + "\n# changed\n")
    monkeypatch.setattr(rules, "__file__", str(copy))
    assert rules.rules_hash() != h


# ----------------------------------------------------------------------------------------------
# Power analysis


def test_more_spread_needs_more_seeds() -> None:
    tight = Estimate(0.8, (0.7, 0.9), 3, "t")
    loose = Estimate(0.8, (0.4, 1.2), 3, "t")
    k_tight = fit.seeds_for(tight, 3, distance=0.3)
    k_loose = fit.seeds_for(loose, 3, distance=0.3)
    assert k_tight is not None and k_loose is not None and k_tight < k_loose
    assert fit.seeds_for(loose, 3, distance=0.0) is None  # truth on the edge: never conclusive


def test_power_matches_a_simulation() -> None:
    """The noncentral-t power equals the share of simulated t intervals that clear the edge."""
    rng = np.random.default_rng(7)
    k, sd, distance = 4, 1.0, 1.2
    power = fit.conclusive_power(distance, sd / math.sqrt(k), k - 1)
    hits = 0
    trials = 4000
    for _ in range(trials):
        est = fit.mean_estimate(list(rng.normal(distance, sd, size=k)))
        assert est is not None
        hits += est.ci[0] > 0
    assert abs(hits / trials - power) < 0.03
