"""Malformed inputs to the public API are refused with a TypeError or ValueError naming the field:
never an AttributeError, a pyarrow/numpy error about a buffer, or silent acceptance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

import kadyn

UINT64_ABOVE_INT64 = 2**63


def fixed(values: list[Any], width: int, item: pa.DataType) -> pa.Array:
    return pa.array(values, type=pa.list_(item, width))


def batch_of(**columns: pa.Array) -> pa.RecordBatch:
    """A hand-built stream batch of 3 rows of width 2; `columns` replace (or, as None, drop) some."""
    base: dict[str, Any] = {
        "input_ids": fixed([[1, 2], [3, 4], [5, 6]], 2, pa.int32()),
        "attr_type": fixed([[-1, 0], [1, -1], [2, 2]], 2, pa.int8()),
        "individual": pa.array([7, 8, 9], type=pa.uint32()),
        "sample_index": pa.array([0, 1, 2], type=pa.uint64()),
    }
    base.update(columns)
    return pa.RecordBatch.from_pydict({k: v for k, v in base.items() if v is not None})


@pytest.fixture(scope="module")
def stream_batch() -> pa.RecordBatch:
    world = kadyn.World(n_individuals=40, seed=3)
    return next(iter(kadyn.BiographyStream(world, batch_size=6, threads=1)))


def test_hand_built_batch_converts() -> None:
    t = kadyn.to_torch(batch_of())
    assert t["input_ids"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert t["attr_type"].dtype == torch.int8
    assert t["individual"].tolist() == [7, 8, 9] and t["individual"].dtype == torch.int64
    assert t["sample_index"].tolist() == [0, 1, 2]


def test_a_table_is_taken_zero_copy_when_it_has_one_chunk(stream_batch: pa.RecordBatch) -> None:
    tensors = kadyn.to_torch(pa.Table.from_batches([stream_batch]))
    assert (
        tensors["input_ids"].data_ptr()
        == stream_batch.column("input_ids").values.buffers()[1].address
    )
    direct = kadyn.to_torch(stream_batch)
    assert all(torch.equal(tensors[k], direct[k]) for k in direct)


def test_a_table_of_several_chunks_is_joined(stream_batch: pa.RecordBatch) -> None:
    table = pa.Table.from_batches([stream_batch.slice(0, 2), stream_batch.slice(2)])
    assert table.column("input_ids").num_chunks == 2
    joined = kadyn.to_torch(table)
    direct = kadyn.to_torch(stream_batch)
    assert all(torch.equal(joined[k], direct[k]) for k in direct)
    empty = kadyn.to_torch(stream_batch.schema.empty_table())
    assert empty["input_ids"].shape == (0, stream_batch.schema.field("input_ids").type.list_size)


@pytest.mark.parametrize(
    "value",
    [None, {"input_ids": [[1]]}, pa.array([1, 2]), torch.zeros(2, 2), "batch"],
    ids=["None", "dict", "array", "tensor", "str"],
)
def test_to_torch_refuses_what_is_not_a_batch(value: object) -> None:
    with pytest.raises(TypeError, match="pyarrow.RecordBatch or pyarrow.Table"):
        kadyn.to_torch(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name, column",
    [
        ("sample_index", pa.array([0, None, 2], type=pa.uint64())),
        ("individual", pa.array([7, None, 9], type=pa.uint32())),
        ("individual", pa.array([[7], None, [9]], type=pa.list_(pa.uint32()))),
        ("individual", pa.array([[7], [None], [9]], type=pa.list_(pa.uint32()))),
        ("input_ids", fixed([[1, 2], None, [5, 6]], 2, pa.int32())),
        ("input_ids", fixed([[1, 2], [3, None], [5, 6]], 2, pa.int32())),
        ("attr_type", fixed([[1, 2], [3, 4], [None, 6]], 2, pa.int8())),
    ],
)
def test_to_torch_refuses_nulls_naming_the_column(name: str, column: pa.Array) -> None:
    with pytest.raises(ValueError, match=f"column '{name}' holds 1 null"):
        kadyn.to_torch(batch_of(**{name: column}))


@pytest.mark.parametrize("name", ["individual", "sample_index"])
def test_to_torch_refuses_ids_above_int64(name: str) -> None:
    big = pa.array([0, UINT64_ABOVE_INT64, 2], type=pa.uint64())
    with pytest.raises(ValueError, match=f"column '{name}' holds {UINT64_ABOVE_INT64}"):
        kadyn.to_torch(batch_of(**{name: big}))
    packed = pa.array([[1], [UINT64_ABOVE_INT64], [3]], type=pa.list_(pa.uint64()))
    with pytest.raises(ValueError, match="column 'individual' holds"):
        kadyn.to_torch(batch_of(individual=packed))
    largest = pa.array([0, 2**63 - 1, 2], type=pa.uint64())
    assert kadyn.to_torch(batch_of(**{name: largest}))[name].tolist() == [0, 2**63 - 1, 2]


@pytest.mark.parametrize(
    "name, column",
    [
        ("input_ids", fixed([[1, 2], [3, 4], [5, 6]], 2, pa.int64())),
        ("input_ids", pa.array([[1, 2], [3, 4], [5, 6]], type=pa.list_(pa.int32()))),
        ("input_ids", pa.array([1, 2, 3], type=pa.int32())),
        ("attr_type", fixed([[1, 2], [3, 4], [5, 6]], 2, pa.int32())),
        ("individual", pa.array(["a", "b", "c"])),
        ("individual", pa.array([1.0, 2.0, 3.0])),
        ("individual", pa.array([["a"], ["b"], ["c"]])),
        ("sample_index", pa.array([0.0, 1.0, 2.0])),
        ("sample_index", pa.array([[0], [1], [2]], type=pa.list_(pa.uint64()))),
    ],
)
def test_to_torch_refuses_wrong_types_naming_the_column(name: str, column: pa.Array) -> None:
    with pytest.raises(ValueError, match=f"column '{name}' must"):
        kadyn.to_torch(batch_of(**{name: column}))


def test_to_torch_refuses_missing_repeated_or_mismatched_columns() -> None:
    with pytest.raises(ValueError, match="lacks the column 'attr_type'"):
        kadyn.to_torch(batch_of(attr_type=None))
    good = batch_of()
    twice = pa.RecordBatch.from_arrays(
        [*good.columns, good.column("sample_index")], names=[*good.schema.names, "sample_index"]
    )
    with pytest.raises(ValueError, match="2 columns named 'sample_index'"):
        kadyn.to_torch(twice)
    wide = fixed([[1, 2, 3]] * 3, 3, pa.int8())
    with pytest.raises(ValueError, match="same width, got 2 and 3"):
        kadyn.to_torch(batch_of(attr_type=wide))


def test_to_torch_takes_other_integer_ids() -> None:
    t = kadyn.to_torch(
        batch_of(individual=pa.array([1, 2, 3], pa.int16()), sample_index=pa.array([4, 5, 6]))
    )
    assert t["individual"].tolist() == [1, 2, 3] and t["sample_index"].tolist() == [4, 5, 6]
    packed = pa.array([[1, 2], [], [3]], type=pa.list_(pa.uint32()))
    assert kadyn.to_torch(batch_of(individual=packed))["individual"].tolist() == [1, -1, 3]


@pytest.fixture(scope="module")
def world() -> kadyn.World:
    return kadyn.World(n_individuals=40, seed=3)


@pytest.mark.parametrize(
    "kwargs, error, field",
    [
        (dict(batch_size=True), TypeError, "batch_size"),
        (dict(batch_size=4.0), TypeError, "batch_size"),
        (dict(seq_len=False), TypeError, "seq_len"),
        (dict(seed=True), TypeError, "seed"),
        (dict(rank=0.5), TypeError, "rank"),
        (dict(world_size="2"), TypeError, "world_size"),
        (dict(threads=True), TypeError, "threads"),
        (dict(prefetch=None), TypeError, "prefetch"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(rank=2, world_size=2), ValueError, "rank"),
    ],
)
def test_stream_constructor_names_the_bad_argument(
    world: kadyn.World, kwargs: dict[str, Any], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        kadyn.BiographyStream(world, **kwargs)


@pytest.mark.parametrize("world_arg", [None, "world", 3])
def test_stream_needs_a_world(world_arg: object) -> None:
    with pytest.raises(TypeError, match="world must be a kadyn.World"):
        kadyn.BiographyStream(world_arg)  # type: ignore[arg-type]


def test_stream_takes_numpy_integers(world: kadyn.World) -> None:
    stream = kadyn.BiographyStream(world, batch_size=np.int64(3), seed=np.uint8(2))
    assert type(stream.batch_size) is int and stream.state_dict()["seed"] == 2
