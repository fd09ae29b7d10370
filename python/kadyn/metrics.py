"""Knowledge metrics in the paper's unit (Zucchet et al. 2025, B.3), as pure tensor functions.

A biography row carries `attr_type` per token: -1 for ordinary tokens, 0..5 for the tokens of an
attribute value, one value being one maximal run of equal `attr_type`. From the model's per-token
outputs (position t scores the prediction of token t + 1) these functions compute, per value:

- its loss: the cross-entropy *summed* over the value's tokens (not divided by its length);
- its correctness: all of its tokens predicted right (argmax);
- its confidence: the mean over its tokens of the probability of the model's top prediction.

Aggregates are kept as sums and counts per attribute type (`KnowledgeSums`) so that shards of a
probe set evaluated on different ranks can be added (all-reduce) before dividing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

# Columns of the (n_attributes, 4) sums tensor.
COUNT, LOSS, CORRECT, CONFIDENCE = range(4)


@dataclass
class ValueScores:
    """One entry per attribute value found in a batch."""

    loss: torch.Tensor  # (M,) float: summed cross-entropy of the value's tokens
    correct: torch.Tensor  # (M,) bool: every token of the value predicted right
    confidence: torch.Tensor  # (M,) float: mean top-1 probability over its tokens (0 if unknown)
    attr: torch.Tensor  # (M,) int64: attribute type 0..5
    row: torch.Tensor  # (M,) int64: row of the batch
    n_tokens: torch.Tensor  # (M,) int64


def to_token_positions(per_prediction: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
    """Re-index outputs from 'predicted at t' to 'scores token t': out[:, t] = x[:, t - 1]."""
    out = torch.full_like(per_prediction, fill)
    out[:, 1:] = per_prediction[:, :-1]
    return out


def value_runs(attr_type: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment ids of value tokens: (seg (B*T,) int64, -1 outside values; starts (B, T) bool)."""
    attr = attr_type.long()
    previous = torch.full_like(attr, -1)
    previous[:, 1:] = attr[:, :-1]
    is_value = attr >= 0
    # A run starts where the type changes; column 0 always compares with -1, so runs never cross
    # a row boundary in the flattened order.
    starts = is_value & (attr != previous)
    seg = torch.cumsum(starts.reshape(-1).long(), 0) - 1
    seg = torch.where(is_value.reshape(-1), seg, torch.full_like(seg, -1))
    return seg, starts


def value_scores(
    token_ce: torch.Tensor,
    token_correct: torch.Tensor,
    attr_type: torch.Tensor,
    token_confidence: Optional[torch.Tensor] = None,
) -> ValueScores:
    """Per-value loss / correctness / confidence from per-position model outputs.

    token_ce, token_correct, token_confidence: (B, T), aligned with the model's targets (position
    t predicts token t + 1). attr_type: (B, T) int, aligned with the input tokens.
    """
    if attr_type.shape != token_ce.shape or token_correct.shape != token_ce.shape:
        raise ValueError(
            f"token_ce, token_correct and attr_type must share a (B, T) shape, got "
            f"{tuple(token_ce.shape)}, {tuple(token_correct.shape)}, {tuple(attr_type.shape)}"
        )
    if bool((attr_type[:, 0] >= 0).any()):
        raise ValueError("attr_type must be -1 at position 0 (nothing predicts the first token)")
    seg, starts = value_runs(attr_type)
    inside = seg >= 0
    idx = seg[inside]
    m = int(starts.sum())
    device = token_ce.device
    ce = to_token_positions(token_ce.float()).reshape(-1)[inside]
    wrong = (~to_token_positions(token_correct.bool(), True)).reshape(-1)[inside]
    ones = torch.ones_like(ce)
    n_tokens = torch.zeros(m, device=device).index_add_(0, idx, ones)
    loss = torch.zeros(m, device=device).index_add_(0, idx, ce)
    n_wrong = torch.zeros(m, device=device).index_add_(0, idx, wrong.float())
    if token_confidence is None:
        confidence = torch.zeros(m, device=device)
    else:
        conf = to_token_positions(token_confidence.float()).reshape(-1)[inside]
        confidence = torch.zeros(m, device=device).index_add_(0, idx, conf) / n_tokens
    rows = torch.arange(attr_type.shape[0], device=device).unsqueeze(1).expand_as(attr_type)
    return ValueScores(
        loss=loss,
        correct=n_wrong == 0,
        confidence=confidence,
        attr=attr_type.long()[starts],
        row=rows[starts],
        n_tokens=n_tokens.long(),
    )


def knowledge_sums(scores: ValueScores, n_attributes: int) -> torch.Tensor:
    """(n_attributes, 4) float64: value count, summed loss, correct count, summed confidence."""
    sums = torch.zeros(n_attributes, 4, dtype=torch.float64, device=scores.loss.device)
    for column, values in (
        (COUNT, torch.ones_like(scores.loss)),
        (LOSS, scores.loss),
        (CORRECT, scores.correct.float()),
        (CONFIDENCE, scores.confidence),
    ):
        sums[:, column].index_add_(0, scores.attr, values.double())
    return sums


def summarize(sums: torch.Tensor, attribute_names: Sequence[str]) -> dict:
    """Means over all values and per attribute type: {'loss', 'acc', 'confidence', 'by_attribute'}.

    The overall means weigh every value equally (each probed individual has all six values, so this
    is also the mean of the per-type means).
    """
    sums = sums.detach().double().cpu()
    total = sums.sum(0)
    count = max(total[COUNT].item(), 1.0)
    by_attribute = {}
    for i, name in enumerate(attribute_names):
        c = max(sums[i, COUNT].item(), 1.0)
        by_attribute[name] = {
            "loss": sums[i, LOSS].item() / c,
            "acc": sums[i, CORRECT].item() / c,
            "confidence": sums[i, CONFIDENCE].item() / c,
            "values": int(sums[i, COUNT].item()),
        }
    return {
        "loss": total[LOSS].item() / count,
        "acc": total[CORRECT].item() / count,
        "confidence": total[CONFIDENCE].item() / count,
        "values": int(total[COUNT].item()),
        "by_attribute": by_attribute,
    }


def top1_probability(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """max softmax probability of hidden @ weight.T, row by row: (N, d), (V, d) -> (N,)."""
    logits = (hidden @ weight.t()).float()
    return (logits.max(-1).values - logits.logsumexp(-1)).exp()
