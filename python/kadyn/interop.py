"""Arrow batches to torch tensors without copying the token buffers.

`to_torch` checks what it is handed before it reads a buffer: a wrong type is a TypeError, a
missing, null-holding or wrongly typed column (or an id torch's int64 cannot hold) a ValueError
naming the column, rather than a pyarrow or numpy error about a buffer.
"""

from __future__ import annotations

import warnings
from typing import Union

import numpy as np
import pyarrow as pa
import torch

_INT64_MAX = np.iinfo(np.int64).max
_TOKEN_COLUMNS = (("input_ids", pa.int32()), ("attr_type", pa.int8()))


def _record_batch(data: object) -> pa.RecordBatch:
    """`data` as one record batch: a batch as it is, a table's chunks joined (no copy when each
    column has a single chunk, as a table built from one batch has)."""
    if isinstance(data, pa.RecordBatch):
        return data
    if isinstance(data, pa.Table):
        batches = data.combine_chunks().to_batches()
        if len(batches) == 1:
            return batches[0]
        if not batches:  # a table without rows may have no chunk at all
            empty = [pa.array([], type=field.type) for field in data.schema]
            return pa.RecordBatch.from_arrays(empty, schema=data.schema)
        raise AssertionError(f"combine_chunks left {len(batches)} batches")  # pragma: no cover
    raise TypeError(
        f"to_torch takes a pyarrow.RecordBatch or pyarrow.Table, got {type(data).__name__}"
    )


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    """Column `name`, which must appear exactly once and hold no null."""
    found = batch.schema.get_all_field_indices(name)
    if len(found) != 1:
        if not found:
            raise ValueError(f"batch lacks the column {name!r}; got {batch.schema.names}")
        raise ValueError(f"batch has {len(found)} columns named {name!r}; expected one")
    column = batch.column(found[0])
    if column.null_count:
        raise ValueError(f"column {name!r} holds {column.null_count} nulls; expected none")
    return column


def _fixed_list_values(name: str, column: pa.Array, item: pa.DataType) -> np.ndarray:
    """The (rows, width) view of a fixed_size_list column's child buffer, zero-copy."""
    if not (pa.types.is_fixed_size_list(column.type) and column.type.value_type == item):
        raise ValueError(f"column {name!r} must be fixed_size_list<{item}>, got {column.type}")
    width = column.type.list_size
    # `.values` is the whole child array, also for a slice (even one starting at row 0): cut this
    # slice's items out of it (zero-copy; flatten() does the same through a compute kernel, which
    # costs more than the rest of to_torch together).
    flat = column.values.slice(column.offset * width, len(column) * width)
    if flat.null_count:
        raise ValueError(f"column {name!r} holds {flat.null_count} null items; expected none")
    return flat.to_numpy(zero_copy_only=True).reshape(len(column), width)


def _int64_ids(name: str, values: pa.Array) -> np.ndarray:
    """An integer id column as int64 (a small copy), refusing ids that int64 cannot hold."""
    if not pa.types.is_integer(values.type):
        raise ValueError(f"column {name!r} must hold integers, got {values.type}")
    if values.null_count:
        raise ValueError(f"column {name!r} holds {values.null_count} null items; expected none")
    array = values.to_numpy(zero_copy_only=False)
    if array.dtype == np.uint64 and len(array) and array.max() > _INT64_MAX:
        raise ValueError(
            f"column {name!r} holds {int(array.max())}, above int64's {_INT64_MAX}; "
            "torch cannot hold it"
        )
    return array.astype(np.int64)


def _first_individuals(column: pa.Array) -> np.ndarray:
    """Each packed row's first individual (-1 for a row without one), vectorised over offsets."""
    if not pa.types.is_list(column.type):
        raise ValueError(
            f"column 'individual' must be an integer or list<integer>, got {column.type}"
        )
    # flatten() holds this slice's items; `offsets` (into the unsliced child) are shifted to them.
    values = _int64_ids("individual", column.flatten())
    offsets = column.offsets.to_numpy()
    starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
    first = np.full(len(column), -1, dtype=np.int64)
    first[lengths > 0] = values[starts[lengths > 0]]
    return first


def to_torch(batch: Union[pa.RecordBatch, pa.Table]) -> dict[str, torch.Tensor]:
    """Tensors of a stream batch (a `pyarrow.RecordBatch`, or a `pyarrow.Table`, whose chunks are
    joined first: a copy only when a column has more than one chunk).

    `input_ids` (rows, seq_len) int32 and `attr_type` (rows, seq_len) int8 share memory with the
    Arrow buffers (the batch keeps them alive; treat them as read-only). `individual` and
    `sample_index` become int64 (a small copy: torch has no full unsigned support); when the batch
    is packed, `individual` holds each row's first individual (the Arrow column has them all).

    Raises TypeError for anything but a batch or table, and ValueError naming the column for a
    missing or repeated column, a null, a wrong type (`input_ids` must be
    fixed_size_list<int32>, `attr_type` fixed_size_list<int8> of the same width, the ids
    integers) or an id above int64's range.
    """
    batch = _record_batch(batch)
    out: dict[str, torch.Tensor] = {}
    for name, item in _TOKEN_COLUMNS:
        out[name] = _shared_tensor(_fixed_list_values(name, _column(batch, name), item))
    if out["input_ids"].shape != out["attr_type"].shape:
        raise ValueError(
            f"columns 'input_ids' and 'attr_type' must have the same width, got "
            f"{out['input_ids'].shape[1]} and {out['attr_type'].shape[1]}"
        )
    individual = _column(batch, "individual")
    if pa.types.is_integer(individual.type):
        out["individual"] = torch.from_numpy(_int64_ids("individual", individual))
    else:
        out["individual"] = torch.from_numpy(_first_individuals(individual))
    out["sample_index"] = torch.from_numpy(
        _int64_ids("sample_index", _column(batch, "sample_index"))
    )
    return out


_read_only_warning_spent = False


def _shared_tensor(array: np.ndarray) -> torch.Tensor:
    """torch.from_numpy of a read-only view, without torch's warning about it.

    Arrow memory is immutable, so numpy marks the views read-only and torch warns that writes
    would be undefined; the tensors are inputs, never written to. torch emits that warning once
    per process (a C++ warn-once), so only the first conversion needs the catch_warnings()
    block, which costs more than the conversion itself.
    """
    global _read_only_warning_spent
    if _read_only_warning_spent:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(array)
    _read_only_warning_spent = not array.flags.writeable
    return tensor
