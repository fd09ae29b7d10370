"""Hypothesis fuzzing of the public API's constructors and state loaders: whatever the arguments,
a call returns or raises one of the documented refusals (`REFUSALS`), never another exception, a
Rust panic (pyo3's PanicException, a BaseException) or an abort of the interpreter.

The examples run in-process, so the sizes a correct implementation accepts stay small (a few MB):
worlds of at most a few thousand individuals, batches of at most 32 rows of at most 400 tokens.
Oversized requests are drawn only where the native module refuses them before allocating: counts
beyond their documented ranges and sequence lengths above `MAX_SEQ_LEN`. Requests too large to
build (a 10^9-token probe row, a 2^24-row batch), which aborted the interpreter before the size
checks, run in child processes in tests/test_native_limits.py.

KADYN_FUZZ_EXAMPLES scales every test's example count (default 1.0; e.g. 20 for a long local
run); `EXAMPLES` holds the counts and `test_example_budget` prints their total.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import kadyn
from kadyn import _native
from kadyn.stream import STATE_VERSION

# The exceptions a malformed argument may raise: TypeError for a wrong type, ValueError for a
# value out of range, OverflowError for an integer beyond the native i64/u64 arguments.
REFUSALS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError)
# `World.individual` of a missing index raises KeyError (the native NotFound error, as for a
# missing key in a mapping from index to person).
INDIVIDUAL_REFUSALS = (*REFUSALS, KeyError)

SCALE = float(os.environ.get("KADYN_FUZZ_EXAMPLES", "1"))
EXAMPLES = {
    name: max(1, round(n * SCALE))
    for name, n in {
        "world": 100,
        "stream": 150,
        "sampling": 100,
        "eval_set": 100,
        "individual": 100,
        "state_any": 150,
        "state_mutated": 200,
        "to_torch": 300,
    }.items()
}

# The native module's largest sequence length, once it exports one; None before.
MAX_SEQ_LEN: int = _native.MAX_SEQ_LEN


def fuzz(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def attempt(call: Callable[..., Any], *args: Any, refusals: tuple = REFUSALS, **kw: Any) -> Any:
    """`call(*args, **kw)`, or None if it raised one of `refusals`; anything else propagates.
    The outcome is a Hypothesis event (pytest --hypothesis-show-statistics lists them)."""
    name = getattr(call, "__name__", type(call).__name__)
    try:
        result = call(*args, **kw)
    except refusals as e:
        event(f"{name}: {type(e).__name__}")
        return None
    event(f"{name}: accepted")
    return result


# Values of the wrong type for any argument.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-3, 3), max_size=2),
    st.builds(object),
)
# Integers past the ranges of the count arguments they are drawn for: negative, or at and beyond
# the edges of i32, u32, i64 and u64.
HUGE = st.one_of(
    st.integers(max_value=-1),
    st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.integers(min_value=2**63),
)


@st.composite
def arguments(
    draw: st.DrawFn,
    valid: dict[str, st.SearchStrategy[Any]],
    broken: dict[str, st.SearchStrategy[Any]],
    most: int = 2,
) -> dict[str, Any]:
    """Keyword arguments: all drawn from `valid`, then up to `most` of them from `broken` (so
    both the accepting paths and each refusal are reached, not only the first refusal)."""
    args = {name: draw(strategy) for name, strategy in valid.items()}
    for name in draw(st.lists(st.sampled_from(sorted(broken)), max_size=most, unique=True)):
        args[name] = draw(broken[name])
    return args


def out_of(low: int, high: int) -> st.SearchStrategy[Any]:
    """Integers below `low` or above `high` (unbounded), huge ones, or junk."""
    return st.one_of(st.integers(max_value=low - 1), st.integers(min_value=high + 1), HUGE, JUNK)


def word(*valid: str) -> st.SearchStrategy[Any]:
    """Not one of `valid`: another string, or junk."""
    return st.one_of(st.sampled_from(["", "TRAIN", "bogus", f"{valid[0]} "]), JUNK)


# Sequence lengths a correct native module must refuse: <= 0, past i32, and past MAX_SEQ_LEN.
BAD_SEQ_LEN = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=2**31),
    JUNK,
    st.integers(MAX_SEQ_LEN + 1, 2**31 - 1),
)
SEEDS = st.integers(0, 2**63 - 1)
BAD_SEEDS = st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), JUNK)


@pytest.fixture(scope="module")
def world() -> kadyn.World:
    return kadyn.World(n_individuals=200, seed=1, heldout=10, new=5)


# The pools' shipped sizes: the names, cities, ... a world draws from.
POOLS = {"n_first_names": 900, "n_last_names": 1000, "n_cities": 800, "n_universities": 200}
POOLS |= {"n_majors": 100, "n_companies": 500, "n_days": 31, "n_months": 12}
WORLDS = {
    "n_individuals": st.integers(1, 2000),
    "heldout": st.integers(0, 300),
    "new": st.integers(0, 300),
    "seed": SEEDS,
    "year_min": st.integers(1, 2000),
    "year_max": st.integers(2000, 9999),
    **{name: st.integers(1, size) for name, size in POOLS.items()},
}
# Population counts are refused beyond what the name pools hold (at most 405e6, half of
# 900 * 900 * 1000 names); counts between 2000 and that are valid but cost seconds, not drawn.
BROKEN_WORLDS = {
    **{name: out_of(0, 405_000_000) for name in ("n_individuals", "heldout", "new")},
    "n_individuals": st.one_of(st.just(0), out_of(0, 405_000_000)),
    "seed": BAD_SEEDS,
    "year_min": out_of(1, 9999),
    "year_max": st.one_of(st.integers(1, 1999), out_of(1, 9999)),
    **{name: out_of(1, size) for name, size in POOLS.items()},
}


@fuzz("world")
@given(args=arguments(WORLDS, BROKEN_WORLDS, most=3))
def test_world(args: dict[str, Any]) -> None:
    made = attempt(kadyn.World, **args)
    if made is not None:
        assert made.population_size("train") == args["n_individuals"]
        assert made.population_size("heldout") == args["heldout"]


def distributions() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(kadyn.Uniform),
        st.builds(kadyn.PowerLaw, st.floats(0, 4)),
        st.builds(kadyn.Subset, st.integers(1, 400)),
    )


def samplings() -> st.SearchStrategy[Any]:
    """A valid sampling object, a curriculum included (a Subset may exceed the population)."""
    phase = st.tuples(distributions(), st.integers(1, 100))
    curricula = st.builds(
        lambda phases, last: kadyn.Curriculum([*phases, (last, None)]),
        st.lists(phase, max_size=2),
        distributions(),
    )
    return st.one_of(st.none(), distributions(), curricula)


def check_batch(batch: pa.RecordBatch, rows: int) -> None:
    tensors = kadyn.to_torch(batch)
    assert tensors["input_ids"].shape[0] == rows == len(tensors["sample_index"])


STREAMS = {
    "batch_size": st.integers(1, 32),
    # seq_len must hold the longest biography (in pad mode), so short ones are refused too.
    "seq_len": st.one_of(st.none(), st.integers(1, 400)),
    "sampling": samplings(),
    "split": st.sampled_from(["train", "eval"]),
    "population": st.sampled_from(["train", "heldout", "new"]),
    "packing": st.sampled_from(["pad", "pack"]),
    "seed": SEEDS,
    "rank": st.one_of(st.none(), st.integers(0, 3)),
    "world_size": st.one_of(st.none(), st.integers(1, 4), st.just(2**20)),
    "threads": st.integers(1, 3),
    "prefetch": st.integers(1, 4),
    "facts": st.sampled_from(["real", "shuffled"]),
}
BROKEN_STREAMS = {
    # Batches of 33 to 2^24 rows are valid (large ones cost gigabytes): not drawn.
    "batch_size": out_of(1, 2**24),
    "seq_len": BAD_SEQ_LEN,
    "sampling": JUNK.filter(lambda x: x is not None),
    "split": word("train", "eval"),
    "population": word("train", "heldout", "new"),
    "packing": word("pad", "pack"),
    "seed": BAD_SEEDS,
    "rank": st.one_of(st.integers(max_value=-1), HUGE, JUNK),
    "world_size": out_of(1, 2**20),
    "threads": out_of(1, 1024),
    "prefetch": out_of(1, 1024),
    "facts": word("real", "shuffled"),
}


@fuzz("stream")
@given(args=arguments(STREAMS, BROKEN_STREAMS))
def test_biography_stream(world: kadyn.World, args: dict[str, Any]) -> None:
    stream = attempt(kadyn.BiographyStream, world, **args)
    if stream is None:
        return
    # In range: the stream yields batches of batch_size rows, or refuses at the first batch
    # (e.g. a Subset larger than the population is found out when the sampler is built).
    batch = attempt(next, iter(stream))
    if batch is not None:
        check_batch(batch, args["batch_size"])
        assert stream.state_dict()["position"] == args["batch_size"] * stream.world_size


PHASE_DISTRIBUTIONS = st.one_of(distributions(), distributions(), JUNK)
PHASE_LENGTHS = st.one_of(st.integers(1, 100), st.integers(1, 100), st.integers(-2, 0), HUGE, JUNK)


@fuzz("sampling")
@given(
    alpha=st.one_of(st.floats(0, 5), st.floats(0, 5), st.floats(), st.integers(), JUNK),
    n=st.one_of(st.integers(1, 400), st.integers(1, 400), st.integers(), JUNK),
    phases=st.one_of(
        # Mostly a curriculum's shape, (distribution, n_samples) phases and an open last one.
        st.builds(
            lambda head, last: [*head, last],
            st.lists(st.tuples(PHASE_DISTRIBUTIONS, PHASE_LENGTHS), max_size=2),
            st.tuples(PHASE_DISTRIBUTIONS, st.none()),
        ),
        st.lists(st.tuples(PHASE_DISTRIBUTIONS, st.one_of(st.none(), PHASE_LENGTHS)), max_size=3),
        JUNK,
    ),
    junk=JUNK,
)
def test_samplings(world: kadyn.World, alpha: Any, n: Any, phases: Any, junk: Any) -> None:
    attempt(kadyn.Uniform, junk)  # Uniform takes no argument
    made = [
        attempt(kadyn.PowerLaw, alpha),
        attempt(kadyn.Subset, n),
        attempt(kadyn.Curriculum, phases),
    ]
    for sampling in made:
        if sampling is None:
            continue
        repr(sampling)
        stream = attempt(kadyn.BiographyStream, world, batch_size=8, sampling=sampling, threads=1)
        batch = None if stream is None else attempt(next, iter(stream))
        if batch is not None:
            check_batch(batch, 8)


EVAL_SETS = {
    "split": st.sampled_from(["eval", "train"]),
    "population": st.sampled_from(["train", "heldout", "new"]),
    "max_individuals": st.one_of(st.none(), st.integers(1, 300), st.integers(min_value=300)),
    "seq_len": st.one_of(st.none(), st.integers(1, 400)),
    "seed": SEEDS,
}
BROKEN_EVAL_SETS = {
    "split": word("eval", "train"),
    "population": word("train", "heldout", "new"),
    "max_individuals": st.one_of(st.integers(max_value=0), HUGE, JUNK),
    "seq_len": BAD_SEQ_LEN,
    "seed": BAD_SEEDS,
}


@fuzz("eval_set")
@given(args=arguments(EVAL_SETS, BROKEN_EVAL_SETS))
def test_eval_set(world: kadyn.World, args: dict[str, Any]) -> None:
    probe = attempt(world.eval_set, **args)
    if probe is not None:
        check_batch(probe, probe.num_rows)
        assert 0 < probe.num_rows <= world.population_size(args["population"])


@fuzz("individual")
@given(
    args=arguments(
        {"index": st.integers(0, 210), "population": st.sampled_from(["train", "heldout", "new"])},
        {"index": st.one_of(st.integers(), JUNK), "population": word("train", "heldout", "new")},
    )
)
def test_individual(world: kadyn.World, args: dict[str, Any]) -> None:
    person = attempt(world.individual, **args, refusals=INDIVIDUAL_REFUSALS)
    if person is not None:
        assert 0 <= args["index"] < world.population_size(args["population"])
        assert person["index"] == args["index"]


# Arbitrary JSON-like values and dicts of them, keyed by the state's field names or anything.
STATE_FIELDS = ["version", "position", "world", "seed", "seq_len", "sampling", "split"]
STATE_FIELDS += ["population", "packing", "facts"]
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.just(STATE_VERSION),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(STATE_FIELDS), st.text(max_size=6), st.integers(), st.none())


@fuzz("state_any")
@given(
    state=st.one_of(
        st.dictionaries(keys, values, max_size=12),
        # With the current version, to get past the version check.
        st.builds(
            lambda d: {**d, "version": STATE_VERSION}, st.dictionaries(keys, values, max_size=12)
        ),
        values,
        JUNK,
    )
)
def test_load_state_dict_any(world: kadyn.World, state: Any) -> None:
    stream = kadyn.BiographyStream(world, batch_size=2, threads=1)
    try:
        stream.load_state_dict(state)
    except REFUSALS as e:
        event(f"load_state_dict: {type(e).__name__}")
        assert stream.position == 0
        return
    pytest.fail(f"accepted a state that no stream saved: {state!r}")


KEEP = object()  # a change that puts back the saved value


@fuzz("state_mutated")
@given(
    changes=st.dictionaries(
        st.sampled_from(STATE_FIELDS),
        st.one_of(values, st.integers(0, 2**63 - 1), st.just(KEEP), st.just(KEEP)),
        min_size=1,
        max_size=3,
    ),
    dropped=st.lists(st.sampled_from(STATE_FIELDS), max_size=2),
    extra=st.dictionaries(st.text(max_size=6), values, max_size=1),
)
def test_load_state_dict_mutated(
    world: kadyn.World, changes: dict, dropped: list, extra: dict
) -> None:
    """A real state with a few fields replaced, dropped or added: accepted only if it is still a
    state of this stream (every field but `position` unchanged, `position` a row count)."""
    stream = kadyn.BiographyStream(world, batch_size=2, threads=1, seed=3)
    saved = stream.state_dict()
    changes = {k: saved[k] if v is KEEP else v for k, v in changes.items()}
    state = {k: v for k, v in {**saved, **changes, **extra}.items() if k not in dropped}
    try:
        stream.load_state_dict(state)
    except REFUSALS as e:
        event(f"load_state_dict: {type(e).__name__}")
        assert stream.position == 0
        return
    event("load_state_dict: accepted")
    assert set(state) == set(saved)
    for key in saved:
        if key != "position":
            assert type(state[key]) is type(saved[key]) and state[key] == saved[key], key
    position = state["position"]
    assert type(position) is int and 0 <= position < 2**63 and stream.position == position


# Arrow types a batch column may have, with a strategy for one non-null value of each.
def _int_values(bits: int, signed: bool) -> st.SearchStrategy[int]:
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


SCALARS: list[tuple[pa.DataType, st.SearchStrategy[Any]]] = [
    (pa.int8(), _int_values(8, True)),
    (pa.int32(), _int_values(32, True)),
    (pa.int64(), _int_values(64, True)),
    (pa.uint32(), _int_values(32, False)),
    (pa.uint64(), st.one_of(st.integers(0, 1000), _int_values(64, False))),
    (pa.float32(), st.floats(width=32)),
    (pa.string(), st.text(max_size=3)),
    (pa.bool_(), st.booleans()),
]


@st.composite
def columns(draw: st.DrawFn, rows: int, width: int) -> pa.Array:
    """One column of `rows` rows: a scalar, a fixed_size_list (of `width` or another width), a
    list or a large_list of a scalar type, some entries null."""
    item_type, item = draw(st.sampled_from(SCALARS))
    nullable = draw(st.booleans())

    def maybe_null(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(st.none(), strategy) if nullable else strategy

    kind = draw(st.sampled_from(["scalar", "fixed", "fixed", "list", "large_list"]))
    if kind == "scalar":
        return pa.array(draw(st.lists(maybe_null(item), min_size=rows, max_size=rows)), item_type)
    if kind == "fixed":
        w = draw(st.one_of(st.just(width), st.integers(0, 3)))
        row = st.lists(maybe_null(item), min_size=w, max_size=w)
        data = draw(st.lists(maybe_null(row), min_size=rows, max_size=rows))
        return pa.array(data, pa.list_(item_type, w))
    row = st.lists(maybe_null(item), max_size=3)
    data = draw(st.lists(maybe_null(row), min_size=rows, max_size=rows))
    return pa.array(data, pa.list_(item_type) if kind == "list" else pa.large_list(item_type))


def _well_typed(rows: int, width: int, packed: bool) -> dict[str, st.SearchStrategy[pa.Array]]:
    """The stream's column types with arbitrary values (ids up to 2^64 - 1)."""
    tokens = {
        name: st.lists(
            st.lists(_int_values(bits, True), min_size=width, max_size=width),
            min_size=rows,
            max_size=rows,
        ).map(lambda data, t=t: pa.array(data, pa.list_(t, width)))
        for name, bits, t in (("input_ids", 32, pa.int32()), ("attr_type", 8, pa.int8()))
    }
    id_values = st.one_of(st.integers(0, 1000), _int_values(64, False))
    ids = st.lists(id_values, min_size=rows, max_size=rows)
    individual = (
        st.lists(st.lists(st.integers(0, 2**32 - 1), max_size=3), min_size=rows, max_size=rows).map(
            lambda data: pa.array(data, pa.list_(pa.uint32()))
        )
        if packed
        else ids.map(lambda data: pa.array(data, pa.uint64()))
    )
    return {
        **tokens,
        "individual": individual,
        "sample_index": ids.map(lambda data: pa.array(data, pa.uint64())),
    }


@st.composite
def arrow_inputs(draw: st.DrawFn) -> Any:
    """A small record batch (or table, or slice of one) near the stream's schema: each column
    well typed, of another type, or missing, plus a stray or repeated column at times."""
    rows, width = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    good = _well_typed(rows, width, packed=draw(st.booleans()))
    names, arrays = [], []
    for name in ("input_ids", "attr_type", "individual", "sample_index"):
        choice = draw(st.sampled_from(["good"] * 6 + ["other", "missing"]))
        if choice != "missing":
            names.append(name)
            arrays.append(draw(good[name] if choice == "good" else columns(rows, width)))
    if draw(st.integers(0, 3)) == 0:
        names.append(draw(st.sampled_from(["extra", "sample_index", "input_ids"])))
        arrays.append(draw(columns(rows, width)))
    batch = pa.RecordBatch.from_arrays(arrays, names=names) if arrays else draw(JUNK)
    if not isinstance(batch, pa.RecordBatch):
        return batch
    shape = draw(st.sampled_from(["batch", "slice", "table", "chunked table"]))
    if shape == "slice":
        start = draw(st.integers(0, rows))
        return batch.slice(start, draw(st.integers(0, rows - start)))
    if shape == "table":
        return pa.Table.from_batches([batch])
    if shape == "chunked table":
        cut = draw(st.integers(0, rows))
        return pa.Table.from_batches([batch.slice(0, cut), batch.slice(cut)])
    return batch


@fuzz("to_torch")
@given(data=arrow_inputs())
def test_to_torch(data: Any) -> None:
    tensors = attempt(kadyn.to_torch, data)
    if tensors is None:
        return
    # Accepted: the tensors are the columns' values, with the documented types and shapes.
    table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
    rows = table.num_rows
    ids, types = tensors["input_ids"], tensors["attr_type"]
    assert ids.dtype == torch.int32 and types.dtype == torch.int8 and ids.shape == types.shape
    assert ids.shape[0] == rows
    assert ids.tolist() == table.column("input_ids").to_pylist()
    assert types.tolist() == table.column("attr_type").to_pylist()
    assert tensors["sample_index"].tolist() == table.column("sample_index").to_pylist()
    individual = table.column("individual").to_pylist()
    if pa.types.is_list(table.schema.field("individual").type):
        individual = [row[0] if row else -1 for row in individual]
    assert tensors["individual"].tolist() == individual
    assert all(t.dtype == torch.int64 for t in (tensors["individual"], tensors["sample_index"]))


def test_example_budget() -> None:
    """The total number of examples the fuzz tests above draw (shown with pytest -s)."""
    total = sum(EXAMPLES.values())
    print(f"\nkadyn fuzz: {total} examples over {len(EXAMPLES)} tests (scale {SCALE:g})")
    assert total >= len(EXAMPLES)
