"""Training batches: the per-rank sample streams of a run, with replay of old individuals.

Beside `kadyn.stream` (one stream's Python face), this holds what a training run builds from
them: the sampling law chosen by the config, and for fine-tuning with replay (--population new
--replay-weight w) a second stream of 'train' (old) individuals whose rows are concatenated to
each batch: round(B * w / (1 + w)) old rows (at least one of each), so w is the ratio of old to new
biographies, as the paper's replay weight. `TrainBatches.state_dict()` holds the streams'
positions, so a resumed run sees the very same batches.

With --count-exposures a batch also carries `exposed`: the population indices of every biography
of the main stream in it (all of a packed row's, not only its first; replayed rows left out, they
are not the trained population).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

import kadyn
from kadyn.config import TrainConfig
from kadyn.runtime import Runtime


def make_sampling(config: TrainConfig) -> Any:
    if config.sampling == "power":
        return kadyn.PowerLaw(config.alpha)
    if config.sampling == "curriculum":
        warmup = kadyn.Subset(config.warmup_individuals)
        return kadyn.Curriculum([(warmup, config.warmup_samples), (kadyn.Uniform(), None)])
    return kadyn.Uniform()


def replay_rows(rows: int, weight: float) -> int:
    """Old-population rows in a batch of `rows` for replay weight `weight` (old : new)."""
    if weight <= 0:
        return 0
    return min(max(round(rows * weight / (1 + weight)), 1), rows - 1)


class TrainBatches:
    """Per-rank training batches: one stream, or new + replayed old rows concatenated per step."""

    def __init__(self, world: Any, config: TrainConfig, runtime: Runtime) -> None:
        if config.batch_size % runtime.world_size != 0:
            raise ValueError(
                f"--batch-size must be a multiple of the number of processes "
                f"({runtime.world_size}), got {config.batch_size}"
            )
        rows = config.batch_size // runtime.world_size
        old_rows = replay_rows(rows, config.replay_weight)
        if config.replay_weight > 0 and rows < 2:
            raise ValueError(f"--batch-size must be >= {2 * runtime.world_size} with replay")
        common = dict(
            seq_len=config.seq_len,
            split="train",
            packing=config.packing,
            rank=runtime.rank,
            world_size=runtime.world_size,
            threads=config.data_threads,
        )
        self.streams = {
            "main": kadyn.BiographyStream(
                world,
                batch_size=rows - old_rows,
                sampling=make_sampling(config),
                population=config.population,
                seed=config.seed,
                # The no-knowledge control: values independent of the names (kadyn-train --control).
                facts="shuffled" if config.control else "real",
                **common,
            )
        }
        if old_rows:
            self.streams["replay"] = kadyn.BiographyStream(
                world,
                batch_size=old_rows,
                sampling=kadyn.Uniform(),
                population="train",
                seed=config.seed + 1,
                **common,
            )
        self.count_exposures = config.count_exposures
        self._iters: Optional[dict[str, Iterator]] = None

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iters is None:
            self._iters = {k: iter(s) for k, s in self.streams.items()}
        raw = {k: next(it) for k, it in self._iters.items()}
        parts = [kadyn.to_torch(b) for b in raw.values()]
        if len(parts) == 1:
            batch = parts[0]
        else:
            batch = {k: torch.cat([p[k] for p in parts]) for k in ("input_ids", "sample_index")}
            # Which rows are replayed 'train' biographies (sample_index alone cannot tell).
            batch["replay"] = (
                torch.arange(batch["input_ids"].shape[0]) >= parts[0]["input_ids"].shape[0]
            )
        if self.count_exposures:
            batch["exposed"] = exposed_individuals(raw["main"])
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self.streams.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, s in self.streams.items():
            s.load_state_dict(state[k])
        self._iters = None  # restart the iterators from the restored positions


def exposed_individuals(batch: pa.RecordBatch) -> torch.Tensor:
    """int64 population indices of every biography in a stream batch, packed rows included
    (`to_torch` keeps only a packed row's first individual)."""
    column = batch.column("individual")
    if pa.types.is_list(column.type):
        column = column.flatten()
    return torch.from_numpy(column.to_numpy().astype(np.int64))
