"""Arrow batches to torch tensors without copying the token buffers."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch


def _fixed_list_values(column: pa.Array, dtype: type) -> np.ndarray:
    """The (rows, width) view of a fixed_size_list column's child buffer, zero-copy."""
    if not pa.types.is_fixed_size_list(column.type):
        raise ValueError(f"expected a fixed_size_list column, got {column.type}")
    width = column.type.list_size
    # flatten() honours slicing (offset and length) and stays zero-copy; `.values` is the whole
    # child buffer, which is wrong for any slice, including one that starts at row 0.
    values = column.flatten().to_numpy(zero_copy_only=True)
    if values.dtype != dtype:
        raise ValueError(f"expected {np.dtype(dtype)} items, got {values.dtype}")
    return values.reshape(len(column), width)


def to_torch(batch: pa.RecordBatch) -> dict[str, torch.Tensor]:
    """Tensors of a stream batch.

    `input_ids` (rows, seq_len) int32 and `attr_type` (rows, seq_len) int8 share memory with the
    Arrow buffers (the batch keeps them alive; treat them as read-only). `individual` and
    `sample_index` become int64 (a small copy: torch has no full unsigned support); when the batch
    is packed, `individual` holds each row's first individual (the Arrow column has them all).
    """
    missing = {"input_ids", "attr_type", "individual", "sample_index"} - set(batch.schema.names)
    if missing:
        raise ValueError(f"batch lacks the columns {sorted(missing)}; got {batch.schema.names}")
    out: dict[str, torch.Tensor] = {}
    for name, dtype in (("input_ids", np.int32), ("attr_type", np.int8)):
        out[name] = _shared_tensor(_fixed_list_values(batch.column(name), dtype))
    individual = batch.column("individual")
    if pa.types.is_list(individual.type):
        out["individual"] = torch.from_numpy(
            np.asarray([row[0] if row else -1 for row in individual.to_pylist()], dtype=np.int64)
        )
    else:
        out["individual"] = torch.from_numpy(individual.to_numpy().astype(np.int64))
    out["sample_index"] = torch.from_numpy(batch.column("sample_index").to_numpy().astype(np.int64))
    return out


def _shared_tensor(array: np.ndarray) -> torch.Tensor:
    # Arrow memory is immutable, so numpy marks the view read-only and torch warns that writes
    # would be undefined; the tensors are inputs, never written to.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)
