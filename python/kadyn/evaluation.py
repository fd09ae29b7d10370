"""Knowledge evaluation of a training run: fixed probe sets, their scores, the metrics record.

Beside `kadyn.metrics` (the arithmetic of value scores), this holds what a run evaluates and
writes. The probe sets are fixed (`World.eval_set`, seeded by --world-seed, so every run of a world
sees the same probes) and sharded over ranks, their sums all-reduced:

- `train`: train templates of trained individuals;
- `eval`: eval templates of trained individuals (knowledge; the phases are detected on it);
- `heldout`: eval templates of held-out individuals (runs with --heldout > 0);
- `old`: eval templates of the old individuals while fine-tuning on new ones (--population new).

A metrics.jsonl record is one flat dict with regular `{probe}/{metric}` and
`{probe}/{attribute}/{metric}` keys (README, "Training: kadyn-train", lists them all) and a
`schema` version, bumped whenever a key changes meaning or name. Records are strict JSON: a
non-finite value (a run kept going with --allow-nonfinite) is written as null, and the record's
`nonfinite` list names those keys.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

import kadyn
from kadyn.config import TrainConfig
from kadyn.metrics import knowledge_sums, summarize, top1_probability, value_scores
from kadyn.model import GPT, next_token_targets
from kadyn.phases import Phases
from kadyn.runtime import Runtime, autocast

METRICS = "metrics.jsonl"
METRICS_SCHEMA = 2
# Maps a batch of input ids to {layer: (B, H, T, T) pattern} for GPT's attention_override.
AttentionSource = Callable[[torch.Tensor], dict]


@dataclass
class Probe:
    input_ids: torch.Tensor  # (n, T) int32, this rank's rows
    attr_type: torch.Tensor  # (n, T) int8


def build_probes(world: Any, config: TrainConfig, runtime: Runtime) -> dict[str, Probe]:
    """Fixed probe sets, sharded by rank (rows i = rank mod world_size); sums are all-reduced."""
    specs = {"train": ("train", config.population)} if config.train_probe else {}
    specs["eval"] = ("eval", config.population)
    if config.heldout > 0:
        specs["heldout"] = ("eval", "heldout")
    if config.population == "new":
        specs["old"] = ("eval", "train")
    probes = {}
    for name, (split, population) in specs.items():
        batch = world.eval_set(
            split=split,
            population=population,
            max_individuals=config.eval_individuals,
            seq_len=config.seq_len,
            seed=config.world_seed,
        )
        t = kadyn.to_torch(batch)
        sl = slice(runtime.rank, None, runtime.world_size)
        # clone: own the memory instead of keeping the Arrow buffers alive for the whole run
        probes[name] = Probe(t["input_ids"][sl].clone(), t["attr_type"][sl].clone())
    return probes


@torch.no_grad()
def probe_sums(
    model: GPT,
    probe: Probe,
    config: TrainConfig,
    pad_id: int,
    n_attributes: int,
    device: torch.device,
    attention_source: Optional[AttentionSource] = None,
) -> torch.Tensor:
    sums = torch.zeros(n_attributes, 4, dtype=torch.float64, device=device)
    for i in range(0, probe.input_ids.shape[0], config.eval_batch_size):
        ids = probe.input_ids[i : i + config.eval_batch_size].to(device).long()
        attr = probe.attr_type[i : i + config.eval_batch_size].to(device)
        override = attention_source(ids) if attention_source is not None else None
        with autocast(device):
            out = model(ids, next_token_targets(ids, pad_id), attention_override=override)
        # Confidence only where a value token is predicted (position t - 1 of a value token t):
        # a few rows of full logits instead of (rows x T x vocab).
        predicts_value = torch.zeros_like(attr, dtype=torch.bool)
        predicts_value[:, :-1] = attr[:, 1:] >= 0
        confidence = torch.zeros(attr.shape, device=device)
        confidence[predicts_value] = top1_probability(
            out.hidden[predicts_value].float(), model.head_weight.float()
        )
        scores = value_scores(out.token_ce, out.token_correct, attr, confidence)
        sums += knowledge_sums(scores, n_attributes)
    return sums


def evaluate(
    model: GPT,
    probes: dict[str, Probe],
    config: TrainConfig,
    world: Any,
    runtime: Runtime,
    attention_source: Optional[AttentionSource] = None,
) -> dict[str, dict]:
    """Knowledge summaries ({'loss', 'acc', 'confidence', 'by_attribute'}) per probe set."""
    names = list(world.attribute_names)
    was_training = model.training
    model.eval()
    results = {}
    for name, probe in probes.items():
        sums = probe_sums(
            model, probe, config, world.pad_id, len(names), runtime.device, attention_source
        )
        if runtime.world_size > 1:
            dist.all_reduce(sums)
        results[name] = summarize(sums, names)
    model.train(was_training)
    return results


def probe_metrics(probe: str, summary: dict[str, Any]) -> dict[str, float]:
    """`{probe}/{metric}` and `{probe}/{attribute}/{metric}` entries of one probe's summary."""
    out = {}
    for prefix, s in [(probe, summary)] + [
        (f"{probe}/{attr}", a) for attr, a in summary["by_attribute"].items()
    ]:
        out[f"{prefix}/attr_loss"] = s["loss"]
        out[f"{prefix}/attr_acc"] = s["acc"]
        out[f"{prefix}/confidence"] = s["confidence"]
    return out


def make_record(
    *,
    step: int,
    samples: int,
    lr: float,
    train_loss: Optional[float],
    results: dict[str, dict],
    levels: dict[str, Optional[float]],
    phases: Phases,
    tokens_per_s: Optional[float],
    mfu: Optional[float],
    elapsed_s: float,
) -> dict[str, Any]:
    """One metrics.jsonl line; a probe the run does not have is absent, not null. `levels` holds
    `no_knowledge/level` (F), `no_knowledge/value_table_entropy` and, with a twin,
    `twin/eval/attr_loss` and `twin/eval/spread`."""
    record: dict[str, Any] = {
        "schema": METRICS_SCHEMA,
        "step": step,
        "samples": samples,
        "lr": lr,
        "train/loss": train_loss,
    }
    for probe, summary in results.items():
        record.update(probe_metrics(probe, summary))
    record.update(levels)
    record["phase"] = phases.phase[-1]
    record["phase/plateau_start"] = phases.plateau_start
    record["phase/plateau_end"] = phases.plateau_end
    record["phase/knowledge_onset"] = phases.knowledge_onset
    record["perf/tokens_per_s"] = tokens_per_s
    record["perf/mfu"] = mfu
    record["time/elapsed_s"] = elapsed_s
    nonfinite = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if nonfinite:
        record.update(dict.fromkeys(nonfinite))
        record["nonfinite"] = nonfinite
    return record


def finite_or_null(value: Any) -> Any:
    """`value` with every non-finite float (at any depth) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def json_line(value: Any, indent: Optional[int] = None) -> str:
    """Strict JSON (no bare NaN/Infinity, which strict parsers reject) and a newline."""
    return json.dumps(finite_or_null(value), allow_nan=False, indent=indent) + "\n"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a last line cut short by a killed run is dropped."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records
