"""Type stubs of the private native module (kept by hand; checked with mypy.stubtest in CI)."""

from typing import Any, Iterator, Optional, Sequence, Union, final

import pyarrow as pa
from typing_extensions import disjoint_base

__all__ = [
    "MAX_SEQ_LEN",
    "BatchStream",
    "Curriculum",
    "PowerLaw",
    "Subset",
    "Uniform",
    "World",
    "__version__",
    "build_rows",
    "gen_main",
    "memory_limit",
]

__version__: str
# The longest row (tokens) kadyn builds: streams, probe sets and kadyn-gen datasets refuse more.
MAX_SEQ_LEN: int

@final
class Uniform:
    def __new__(cls) -> Uniform: ...

@final
class PowerLaw:
    def __new__(cls, alpha: float) -> PowerLaw: ...
    @property
    def alpha(self) -> float: ...

@final
class Subset:
    def __new__(cls, n: int) -> Subset: ...
    @property
    def n(self) -> int: ...

_Distribution = Union[Uniform, PowerLaw, Subset]

@final
class Curriculum:
    def __new__(cls, phases: Sequence[tuple[_Distribution, Optional[int]]]) -> Curriculum: ...
    def spec(self) -> list[tuple[str, float, Optional[int]]]: ...

_Sampling = Union[Uniform, PowerLaw, Subset, Curriculum]

@disjoint_base
class World:
    def __new__(
        cls,
        n_individuals: int = 1000,
        seed: int = 0,
        heldout: int = 0,
        new: int = 0,
        n_first_names: int = 900,
        n_last_names: int = 1000,
        n_cities: int = 800,
        n_universities: int = 200,
        n_majors: int = 100,
        n_companies: int = 500,
        year_min: int = 1900,
        year_max: int = 2100,
        n_days: int = 31,
        n_months: int = 12,
    ) -> World: ...
    @property
    def n_individuals(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def attribute_names(self) -> list[str]: ...
    @property
    def max_biography_tokens(self) -> int: ...
    def config_json(self) -> str: ...
    def population_size(self, population: str) -> int: ...
    def vocab(self) -> list[str]: ...
    def save_vocab(self, path: Any) -> None: ...
    def decode(self, ids: Any) -> str: ...
    def encode(self, text: str) -> list[int]: ...
    def templates(self, attribute: str) -> list[str]: ...
    def individual(self, index: int, population: str = "train") -> dict[str, Any]: ...
    def sentences(
        self, index: int, split: str = "train", population: str = "train"
    ) -> list[str]: ...
    def eval_set(
        self,
        split: str = "eval",
        population: str = "train",
        max_individuals: Optional[int] = None,
        seq_len: Optional[int] = None,
        seed: int = 0,
    ) -> pa.RecordBatch: ...
    def no_knowledge_loss(
        self,
        sampling: Optional[_Sampling] = None,
        population: str = "train",
        max_individuals: Optional[int] = None,
        at_sample: Optional[int] = None,
    ) -> dict[str, float]: ...
    def value_table_entropy(self, population: str = "train") -> dict[str, float]: ...
    def pool_entropy(self) -> dict[str, float]: ...
    def unique_name_tokens(self, population: str = "train") -> int: ...
    def table(self, population: str = "train") -> pa.RecordBatch: ...

@final
class BatchStream:
    def __new__(
        cls,
        world: World,
        sampling: _Sampling,
        batch_size: int,
        seq_len: int,
        split: str = "train",
        population: str = "train",
        packing: str = "pad",
        seed: int = 0,
        position: int = 0,
        rank: int = 0,
        world_size: int = 1,
        batch_start: int = 0,
        batch_step: int = 1,
        threads: int = 1,
        prefetch: int = 4,
        facts: str = "real",
    ) -> BatchStream: ...
    def __iter__(self) -> Iterator[pa.RecordBatch]: ...
    def __next__(self) -> pa.RecordBatch: ...

def build_rows(
    world: World,
    sampling: _Sampling,
    rows: Sequence[int],
    seq_len: int,
    split: str = "train",
    population: str = "train",
    packing: str = "pad",
    seed: int = 0,
    threads: int = 1,
    facts: str = "real",
) -> pa.RecordBatch: ...
def gen_main(argv: list[str]) -> int: ...
def memory_limit() -> int: ...
