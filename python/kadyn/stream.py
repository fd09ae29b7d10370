"""`BiographyStream`: the training data as a torch `IterableDataset` of Arrow record batches.

Rows are built in Rust threads (GIL released) and prefetched through a bounded queue. Row `k` of
the global stream is a pure function of (seed, k), so the stream's state is one integer: the
number of global rows consumed. Rank `r` of `world_size` takes rows `k ≡ r (mod world_size)`;
DataLoader workers split a rank's batches round-robin, so the batch order is the same with or
without workers. A state saved on W ranks resumes on W' ranks the same global sequence.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any, Iterator, Mapping, Optional, Union

import pyarrow as pa
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kadyn._native import BatchStream, Curriculum, PowerLaw, Subset, Uniform, World

Sampling = Union[Uniform, PowerLaw, Subset, Curriculum]

# 2: the state names its world (`world_identity`) and checks every field's type; a version-1 state
# (no world, so it could resume a stream over another world) is refused.
STATE_VERSION = 2

# The fields a resumed stream must share with the stream that saved the state, beside `position`.
_IDENTITY_FIELDS = (
    "world",
    "seed",
    "seq_len",
    "sampling",
    "split",
    "population",
    "packing",
    "facts",
)
_STATE_FIELDS = ("version", "position", *_IDENTITY_FIELDS)
_MAX_POSITION = 2**63 - 1  # the native stream counts rows in an i64


def world_identity(world: World) -> str:
    """The first 16 hex digits of the sha256 of `world.config_json()`: a world is a pure function
    of its config, so two worlds with the same identity yield the same biographies."""
    return hashlib.sha256(world.config_json().encode()).hexdigest()[:16]


def _int_argument(name: str, value: Any) -> int:
    """`value` as an int; bools (an int subclass) and floats are refused, numpy ints taken."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")


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
        if not isinstance(world, World):
            raise TypeError(f"world must be a kadyn.World, got {type(world).__name__}")
        default_rank, default_size = _distributed_rank_and_size()
        self.world = world
        self.batch_size = _int_argument("batch_size", batch_size)
        self.seq_len = _int_argument(
            "seq_len", world.max_biography_tokens if seq_len is None else seq_len
        )
        self.sampling: Sampling = Uniform() if sampling is None else sampling
        self.split = split
        self.population = population
        self.packing = packing
        self.seed = _int_argument("seed", seed)
        self.rank = _int_argument("rank", default_rank if rank is None else rank)
        self.world_size = _int_argument(
            "world_size", default_size if world_size is None else world_size
        )
        self.threads = _int_argument("threads", threads)
        self.prefetch = _int_argument("prefetch", prefetch)
        self.facts = facts
        self._world_identity = world_identity(world)
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
            "world": self._world_identity,
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

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`; the world size may differ (elastic resume).

        Every field but `position` must equal this stream's (same world, sampling, seed, ...):
        a state of another stream is refused with a ValueError naming the field, a field of the
        wrong type with a TypeError. `sampling` is the sampler's repr, which spells all its
        parameters (`PowerLaw(alpha=0.5)`, a curriculum's phases and lengths).
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                f"state must be a dict from BiographyStream.state_dict(), got {type(state).__name__}"
            )
        version = state.get("version")
        if type(version) is not int or version != STATE_VERSION:
            raise ValueError(
                f"state version must be {STATE_VERSION}, got {version!r}; states of other versions "
                "(version 1 did not record the world) cannot be resumed"
            )
        unknown = [key for key in state if key not in _STATE_FIELDS]
        if unknown:
            raise ValueError(
                f"state has unknown fields {sorted(map(repr, unknown))}; expected {list(_STATE_FIELDS)}"
            )
        missing = [key for key in _STATE_FIELDS if key not in state]
        if missing:
            raise ValueError(f"state lacks the fields {missing}")
        mine = self._state(0)
        for key in _IDENTITY_FIELDS:
            theirs = state[key]
            # Compared by type first: True == 1 and 1.0 == 1, but neither is a seed of 1.
            if type(theirs) is not type(mine[key]):
                raise TypeError(
                    f"state {key} must be a {type(mine[key]).__name__}, "
                    f"got {type(theirs).__name__} {theirs!r}"
                )
            if theirs != mine[key]:
                raise ValueError(
                    f"state {key} is {theirs!r} but this stream has {mine[key]!r}; "
                    "build the stream with the same world and arguments to resume"
                )
        position = state["position"]
        if not isinstance(position, int) or isinstance(position, bool):
            raise TypeError(f"state position must be an int, got {type(position).__name__}")
        if not 0 <= position <= _MAX_POSITION:
            raise ValueError(f"state position must be in 0..={_MAX_POSITION}, got {position}")
        self._position = position
        self._batches_yielded = 0
