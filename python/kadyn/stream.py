"""`BiographyStream`: the training data as a torch `IterableDataset` of Arrow record batches.

Rows are built in Rust threads (GIL released) and prefetched through a bounded queue. Row `k` of
the global stream is a pure function of (seed, k), so the stream's state is one integer: the
number of global rows consumed. Rank `r` of `world_size` takes rows `k ≡ r (mod world_size)`;
DataLoader workers split a rank's batches round-robin, so the batch order is the same with or
without workers. A state saved on W ranks resumes on W' ranks the same global sequence.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Union

import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kadyn._native import BatchStream, Curriculum, PowerLaw, Subset, Uniform, World

Sampling = Union[Uniform, PowerLaw, Subset, Curriculum]

STATE_VERSION = 1


def _distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BiographyStream(IterableDataset):
    """An infinite stream of biography batches (`pyarrow.RecordBatch`, schema in DESIGN.md).

    `rank`/`world_size` default to torch.distributed's when it is initialised, else 0/1.
    `facts="shuffled"` gives the no-knowledge control: each sentence's value comes from a random
    individual drawn under the same sampling, independently of the name (row k otherwise equals
    the real stream's row k), so a model trained on it can learn the value statistics only.
    """

    def __init__(
        self,
        world: World,
        batch_size: int = 64,
        seq_len: Optional[int] = None,
        sampling: Optional[Sampling] = None,
        split: str = "train",
        population: str = "train",
        packing: str = "pad",
        seed: int = 0,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        threads: int = 2,
        prefetch: int = 4,
        facts: str = "real",
    ) -> None:
        super().__init__()
        default_rank, default_size = _distributed_rank_and_size()
        self.world = world
        self.batch_size = batch_size
        self.seq_len = world.max_biography_tokens if seq_len is None else seq_len
        self.sampling: Sampling = Uniform() if sampling is None else sampling
        self.split = split
        self.population = population
        self.packing = packing
        self.seed = seed
        self.rank = default_rank if rank is None else rank
        self.world_size = default_size if world_size is None else world_size
        self.threads = threads
        self.prefetch = prefetch
        self.facts = facts
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {self.rank}")
        # Global rows consumed (by all ranks) before this iterator's first batch.
        self._position = 0
        self._batches_yielded = 0
        # Build one native stream now so that bad arguments fail at construction time.
        self._native(0, 1).__class__  # noqa: B018

    def _native(self, batch_start: int, batch_step: int) -> BatchStream:
        return BatchStream(
            self.world,
            self.sampling,
            self.batch_size,
            self.seq_len,
            split=self.split,
            population=self.population,
            packing=self.packing,
            seed=self.seed,
            position=self._position,
            rank=self.rank,
            world_size=self.world_size,
            batch_start=batch_start,
            batch_step=batch_step,
            threads=self.threads,
            prefetch=self.prefetch,
            facts=self.facts,
        )

    @property
    def position(self) -> int:
        """Global rows consumed so far (all ranks together, assuming they step in lockstep)."""
        return self._position + self._batches_yielded * self.batch_size * self.world_size

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        info = get_worker_info()
        if info is None:
            # A fresh iterator continues where the previous one stopped.
            self._position = self.position
            self._batches_yielded = 0
            for batch in self._native(0, 1):
                self._batches_yielded += 1
                yield batch
        else:
            # Inside a DataLoader worker: take every num_workers-th batch. Progress is tracked
            # by the main process copy via `advance`/`state_after`, not here.
            yield from self._native(info.id, info.num_workers)

    def state_after(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """The state that resumes right after `batch` (use with DataLoader workers, where the
        main process never iterates this object itself)."""
        last = int(batch.column("sample_index")[-1].as_py())
        # This rank's rows are position + j * world_size + rank; the batch ends at row j = last.
        per_rank = (last - self._position - self.rank) // self.world_size + 1
        consumed = self._position + per_rank * self.world_size
        return self._state(consumed)

    def _state(self, position: int) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "position": position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "sampling": repr(self.sampling),
            "split": self.split,
            "population": self.population,
            "packing": self.packing,
            "facts": self.facts,
        }

    def state_dict(self) -> dict[str, Any]:
        """A few fields; `position` is the only one that moves. Safe with `weights_only=True`."""
        return self._state(self.position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; the world size may differ (elastic resume)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"state version must be {STATE_VERSION}, got {state.get('version')!r}")
        mine = self._state(0)
        for key in ("seed", "seq_len", "sampling", "split", "population", "packing", "facts"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"state {key} is {state.get(key)!r} but this stream has {mine[key]!r}; "
                    "build the stream with the same arguments to resume"
                )
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise ValueError(f"state position must be an int >= 0, got {position!r}")
        self._position = position
        self._batches_yielded = 0
