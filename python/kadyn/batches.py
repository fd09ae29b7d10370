"""Training batches: the per-rank sample streams of a run, with replay of old individuals.

Beside `kadyn.stream` (one stream's Python face), this holds what a training run builds from
them: the sampling law chosen by the config, and for fine-tuning with replay (--population new
--replay-weight w) a second stream of 'train' (old) individuals whose rows are concatenated to
each batch: round(B * w / (1 + w)) old rows (at least one of each), so w is the ratio of old to new
biographies, as the paper's replay weight. `TrainBatches.state_dict()` holds the streams'
positions, so a resumed run sees the very same batches.

With --data DIR the batches are a `kadyn-gen` dataset's rows instead, read in order
(`DatasetBatches`): the dataset fixes the world, the sampling and the row length
(`dataset_settings` reads them from its manifest), and its state is the next row, so a resumed run
reads the very same rows. Past the last row it starts again at the first (another epoch).

With --count-exposures a batch also carries `exposed`: the population indices of every biography
of the main stream in it (all of a packed row's, not only its first; replayed rows left out, they
are not the trained population).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator, Optional

import numpy as np
import pyarrow as pa
import torch

import kadyn
from kadyn.config import TrainConfig
from kadyn.dataset import KadynDataset, load_dataset
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


# ----------------------------------------------------------------------------------------------
# --data DIR: a kadyn-gen dataset's rows

# The manifest's world fields (kadyn.World's config_json) and the trainer's flags they set.
_WORLD_FIELDS = {"n_individuals": "individuals", "heldout": "heldout", "new": "new_individuals"}
_POOL_FIELDS = {
    "first_names": "n_first_names",
    "last_names": "n_last_names",
    "cities": "n_cities",
    "universities": "n_universities",
    "majors": "n_majors",
    "companies": "n_companies",
    "year_min": "year_min",
    "year_max": "year_max",
    "days": "n_days",
    "months": "n_months",
}


def dataset_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields a dataset fixes (its world, sampling, population, facts and row
    layout), from its manifest; ValueError for a dataset kadyn-train cannot train on."""
    config = manifest["config"]
    world, options, stream = config["world"], config["options"], config["stream"]
    settings: dict[str, Any] = {new: world[old] for old, new in _WORLD_FIELDS.items()}
    settings.update({new: world["pools"][old] for old, new in _POOL_FIELDS.items()})
    settings["world_seed"] = world["seed"]
    if stream["split"] != "train":
        raise ValueError(
            f"--data: the dataset holds {stream['split']!r}-template rows; train needs 'train'"
        )
    settings.update(
        seq_len=stream["seq_len"],
        packing=stream["packing"],
        population=stream["population"],
        control=stream["facts"] == "shuffled",
    )
    sampling = str(options["sampling"])
    parts = sampling.split(",")
    if sampling == "uniform":
        settings.update(sampling="uniform", alpha=0.0)
    elif sampling.startswith("power:") and len(parts) == 1:
        settings.update(sampling="power", alpha=float(sampling.split(":", 1)[1]))
    elif (
        len(parts) == 2
        and parts[0].startswith("subset:")
        and "@" in parts[0]
        and parts[1] == "uniform"
    ):
        n, samples = parts[0].split(":", 1)[1].split("@")
        settings.update(
            sampling="curriculum", alpha=0.0, warmup_individuals=int(n), warmup_samples=int(samples)
        )
    else:
        raise ValueError(
            f"--data: the dataset's sampling {sampling!r} has no kadyn-train equivalent (uniform, "
            "power:A, subset:N@S,uniform)"
        )
    return settings


class DatasetBatches:
    """Per-rank training batches read in order from a kadyn-gen dataset (--data DIR).

    Global batch b is rows [b * B, (b + 1) * B) modulo the dataset's length; rank r of w takes its
    B / w consecutive rows of it. The state is the next global row, with the manifest's identity,
    so a checkpoint resumes only on the dataset it was trained on."""

    def __init__(
        self, dataset: KadynDataset, world: Any, config: TrainConfig, runtime: Runtime
    ) -> None:
        if config.batch_size % runtime.world_size != 0:
            raise ValueError(
                f"--batch-size must be a multiple of the number of processes "
                f"({runtime.world_size}), got {config.batch_size}"
            )
        if config.replay_weight > 0:
            raise ValueError("--data: replay (--replay-weight) needs the live stream")
        if config.count_exposures and config.packing != "pad":
            # A packed row's `individual` column holds its first biography's only.
            raise ValueError("--data: --count-exposures needs a dataset of padded rows")
        ours, theirs = json.loads(world.config_json()), dataset.manifest["config"]["world"]
        if ours != theirs:
            raise ValueError(f"--data: the dataset's world is {theirs}, this run's {ours}")
        self.dataset = dataset
        # Read in order: the row cache serves it, no random-access copy is wanted.
        dataset.random_access_copy = False
        self.batch_size = config.batch_size
        self.rows = config.batch_size // runtime.world_size
        self.offset = runtime.rank * self.rows
        self.count_exposures = config.count_exposures
        self.identity = hashlib.sha256(
            json.dumps(dataset.manifest["shards"], sort_keys=True).encode()
        ).hexdigest()
        self.position = 0  # the next batch's first global row

    def __next__(self) -> dict[str, torch.Tensor]:
        n = len(self.dataset)
        pieces, row, need = [], (self.position + self.offset) % n, self.rows
        while need:  # past the last row: on from the first (several times for a tiny dataset)
            take = min(need, n - row)
            pieces.append(self.dataset.rows(row, row + take))
            need -= take
            row = (row + take) % n
        self.position = (self.position + self.batch_size) % n
        rows = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
        batch = {"input_ids": rows["input_ids"], "sample_index": rows["sample_index"]}
        if self.count_exposures:
            batch["exposed"] = rows["individual"].to(torch.int64)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"dataset": self.identity, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("dataset") != self.identity:
            raise ValueError(
                "data: the checkpoint was trained on another dataset (or the live stream), not "
                f"--data {self.dataset.directory}"
            )
        self.position = int(state["position"])


def open_dataset(config: TrainConfig) -> KadynDataset:
    """--data's dataset; each row group is checked against its sha256 on first read."""
    return load_dataset(config.data, verify=False)
