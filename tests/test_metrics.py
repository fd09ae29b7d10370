"""Knowledge metrics (kadyn.metrics) against a brute-force loop over tokens."""

from __future__ import annotations

import math

import pytest
import torch

from kadyn.metrics import (
    knowledge_sums,
    summarize,
    to_token_positions,
    top1_probability,
    value_runs,
    value_scores,
)

NAMES = ["a", "b", "c"]


def brute_force(token_ce, token_correct, token_conf, attr_type):
    """Walk every row token by token; a value is a maximal run of one attr_type >= 0."""
    values = []  # (row, attr, loss, correct, confidence)
    B, T = attr_type.shape
    for b in range(B):
        t = 0
        while t < T:
            a = int(attr_type[b, t])
            if a < 0:
                t += 1
                continue
            loss, correct, conf, n = 0.0, True, 0.0, 0
            while t < T and int(attr_type[b, t]) == a:
                # The token at t is predicted at position t - 1.
                loss += float(token_ce[b, t - 1])
                correct = correct and bool(token_correct[b, t - 1])
                conf += float(token_conf[b, t - 1])
                n += 1
                t += 1
            values.append((b, a, loss, correct, conf / n))
    return values


def random_batch(seed: int, B: int = 5, T: int = 40, n_attr: int = 3):
    g = torch.Generator().manual_seed(seed)
    attr = torch.full((B, T), -1, dtype=torch.int8)
    for b in range(B):
        t = 1 + int(torch.randint(0, 3, (1,), generator=g))
        while t < T:
            length = int(torch.randint(1, 4, (1,), generator=g))
            a = int(torch.randint(0, n_attr, (1,), generator=g))
            attr[b, t : t + length] = a
            t += length + int(torch.randint(0, 3, (1,), generator=g))  # adjacent runs possible
    ce = torch.rand(B, T, generator=g) * 3
    correct = torch.rand(B, T, generator=g) < 0.8
    conf = torch.rand(B, T, generator=g)
    return ce, correct, conf, attr


@pytest.mark.parametrize("seed", range(5))
def test_value_scores_match_brute_force(seed: int) -> None:
    ce, correct, conf, attr = random_batch(seed)
    scores = value_scores(ce, correct, attr, conf)
    expected = brute_force(ce, correct, conf, attr)
    assert len(expected) == scores.loss.numel() > 0
    for i, (row, a, loss, ok, c) in enumerate(expected):
        assert int(scores.row[i]) == row
        assert int(scores.attr[i]) == a
        assert float(scores.loss[i]) == pytest.approx(loss, abs=1e-5)
        assert bool(scores.correct[i]) == ok
        assert float(scores.confidence[i]) == pytest.approx(c, abs=1e-6)


def test_adjacent_values_of_different_types_are_separate() -> None:
    attr = torch.tensor([[-1, 0, 0, 1, 1, 1, -1, 0]])
    ce = torch.arange(8, dtype=torch.float32).unsqueeze(0)
    correct = torch.ones(1, 8, dtype=torch.bool)
    correct[0, 3] = False  # predicts token 4 (inside the attr-1 value)
    scores = value_scores(ce, correct, attr)
    assert scores.attr.tolist() == [0, 1, 0]
    assert scores.loss.tolist() == [0 + 1, 2 + 3 + 4, 6]
    assert scores.correct.tolist() == [True, False, True]
    assert scores.n_tokens.tolist() == [2, 3, 1]


def test_runs_do_not_cross_rows() -> None:
    attr = torch.tensor([[-1, -1, 2], [-1, 2, 2]])
    seg, starts = value_runs(attr)
    assert starts.sum() == 2
    assert seg.tolist() == [-1, -1, 0, -1, 1, 1]


def test_value_at_position_zero_is_rejected() -> None:
    attr = torch.tensor([[0, -1]])
    with pytest.raises(ValueError, match="position 0"):
        value_scores(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), attr)


def test_summarize_weighs_values_and_splits_by_attribute() -> None:
    attr = torch.tensor([[-1, 0, 0, -1, 1, -1, 2], [-1, 0, -1, -1, 1, 1, -1]])
    ce = torch.tensor([[1.0, 2.0, 9.0, 3.0, 4.0, 5.0, 0.0], [6.0, 7.0, 0.0, 8.0, 9.0, 1.0, 0.0]])
    correct = torch.ones(2, 7, dtype=torch.bool)
    correct[1, 4] = False
    scores = value_scores(ce, correct, attr)
    sums = knowledge_sums(scores, 3)
    s = summarize(sums, NAMES)
    # values: row0 a0 (1+2), a1 (3), a2 (5); row1 a0 (6), a1 (8+9, one wrong)
    assert s["values"] == 5
    assert s["loss"] == pytest.approx((3 + 3 + 5 + 6 + 17) / 5)
    assert s["acc"] == pytest.approx(4 / 5)
    assert s["by_attribute"]["a"]["loss"] == pytest.approx(4.5)
    assert s["by_attribute"]["b"]["acc"] == pytest.approx(0.5)
    assert s["by_attribute"]["c"]["values"] == 1
    # Sums of shards add up to the sums of the whole (what the DDP all-reduce relies on).
    halves = [value_scores(ce[i : i + 1], correct[i : i + 1], attr[i : i + 1]) for i in (0, 1)]
    assert torch.equal(knowledge_sums(halves[0], 3) + knowledge_sums(halves[1], 3), sums)


def test_to_token_positions_shifts_right() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert to_token_positions(x).tolist() == [[0.0, 1.0, 2.0]]


def test_top1_probability() -> None:
    hidden = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    weight = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    p = top1_probability(hidden, weight)
    assert p.tolist() == pytest.approx([0.75, 0.5])
