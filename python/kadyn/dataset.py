"""`load_dataset`: a `kadyn-gen` directory as a map-style torch `Dataset`.

The manifest is the contract: a directory without one is a generation that did not finish, and
each shard must have the size, row count and (with `verify=True`) sha256 the manifest records.
Rows are read with pyarrow one row group at a time; the last decoded row group is cached, so
sequential access (or a sampler that walks row groups) decodes each group once.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from kadyn.interop import to_torch

MANIFEST = "manifest.json"
CONFIG = ".kadyn-gen-config.json"
FORMAT = "kadyn-dataset"
FORMAT_VERSION = 1

Row = dict[str, torch.Tensor]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file(directory: Path, record: dict[str, Any], verify: bool) -> Path:
    path = directory / record["file"]
    if not path.is_file():
        raise ValueError(f"{directory}: {record['file']} is listed in {MANIFEST} but missing")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise ValueError(
            f"{path}: {size} bytes, but {MANIFEST} records {record['bytes']}; the dataset was "
            "modified: regenerate it with the kadyn-gen command in its manifest"
        )
    if verify and _sha256(path) != record["sha256"]:
        raise ValueError(f"{path}: sha256 differs from {MANIFEST}; the file is corrupt")
    return path


def read_manifest(directory: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """The manifest of a complete dataset, with a clear error for a missing or partial one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no dataset directory {str(directory)!r}")
    path = directory / MANIFEST
    if not path.is_file():
        if (directory / CONFIG).is_file():
            raise ValueError(
                f"{directory} holds a partial kadyn-gen dataset (no {MANIFEST}: the run did not "
                "finish); rerun the same kadyn-gen command to complete it"
            )
        raise FileNotFoundError(f"{directory} holds no kadyn-gen dataset (no {MANIFEST})")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format must be {FORMAT!r} version {FORMAT_VERSION}, got "
            f"{manifest.get('format')!r} version {manifest.get('format_version')!r}"
        )
    rows = sum(s["rows"] for s in manifest["shards"])
    if rows != manifest["total_rows"]:
        raise ValueError(
            f"{path}: shards hold {rows} rows but total_rows is {manifest['total_rows']}"
        )
    return manifest


class KadynDataset(Dataset):
    """Rows of a `kadyn-gen` dataset; row `k` is row `k` of the stream it was generated from.

    `dataset[k]` is a dict of tensors: `input_ids` (seq_len,) int32, `attr_type` (seq_len,) int8,
    `individual` and `sample_index` int64 scalars (for packed datasets `individual` is the row's
    first individual, as in `kadyn.to_torch`). `iter_batches` reads whole row groups in order.
    """

    def __init__(self, directory: Union[str, os.PathLike[str]], verify: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        self.shard_paths = [_check_file(self.directory, s, verify) for s in self.manifest["shards"]]
        self.vocab_path = _check_file(self.directory, self.manifest["vocab"], verify)
        self.world_path = _check_file(self.directory, self.manifest["world_table"], verify)
        options = self.manifest["config"]["options"]
        self.seq_len: int = options["seq_len"]
        # First global row of each shard, for bisecting a row index into (shard, offset).
        self._shard_starts = [s["first_row"] for s in self.manifest["shards"]]
        self._files: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self._cached: Optional[tuple[tuple[int, int], Row]] = None

    def __len__(self) -> int:
        return int(self.manifest["total_rows"])

    @property
    def vocab(self) -> list[str]:
        tokens: list[str] = json.loads(self.vocab_path.read_text())["tokens"]
        return tokens

    def world_table(self) -> pa.Table:
        """One row per individual of the dataset's population: index, name, six values."""
        return pq.read_table(self.world_path)

    def __getstate__(self) -> dict[str, Any]:
        # Open files and the decoded cache stay behind (DataLoader workers reopen lazily).
        state = dict(self.__dict__)
        state["_files"] = {}
        state["_cached"] = None
        return state

    def _file(self, shard: int) -> tuple[pq.ParquetFile, list[int]]:
        if shard not in self._files:
            f = pq.ParquetFile(self.shard_paths[shard])
            starts, at = [], 0
            for g in range(f.metadata.num_row_groups):
                starts.append(at)
                at += f.metadata.row_group(g).num_rows
            if at != self.manifest["shards"][shard]["rows"]:
                raise ValueError(f"{self.shard_paths[shard]}: {at} rows, manifest says otherwise")
            self._files[shard] = (f, starts)
        return self._files[shard]

    def _locate(self, index: int) -> tuple[int, int, int]:
        """(shard, row group, row within the group) of a global row."""
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row index must be in 0..{n - 1}, got {index}")
        shard = bisect.bisect_right(self._shard_starts, index) - 1
        offset = index - self._shard_starts[shard]
        _, starts = self._file(shard)
        group = bisect.bisect_right(starts, offset) - 1
        return shard, group, offset - starts[group]

    def _group(self, shard: int, group: int) -> Row:
        if self._cached is None or self._cached[0] != (shard, group):
            f, _ = self._file(shard)
            batch = f.read_row_group(group).combine_chunks().to_batches()[0]
            self._cached = ((shard, group), to_torch(batch))
        return self._cached[1]

    def __getitem__(self, index: int) -> Row:
        shard, group, row = self._locate(index)
        return {k: v[row] for k, v in self._group(shard, group).items()}

    def __getitems__(self, indices: Sequence[int]) -> list[Row]:
        """Batched fetch for DataLoader: rows are grouped by row group, each decoded once."""
        located = [(self._locate(i), j) for j, i in enumerate(indices)]
        out: list[Optional[Row]] = [None] * len(indices)
        for (shard, group, row), j in sorted(located):
            out[j] = {k: v[row] for k, v in self._group(shard, group).items()}
        return [r for r in out if r is not None]

    def iter_batches(self) -> Iterator[Row]:
        """Every row group in order, as batch tensors (row-group sized: `--batch-rows`)."""
        for shard in range(len(self.shard_paths)):
            f, starts = self._file(shard)
            for group in range(len(starts)):
                yield self._group(shard, group)


def load_dataset(directory: Union[str, os.PathLike[str]], verify: bool = True) -> KadynDataset:
    """Open a `kadyn-gen` dataset directory; `verify=False` skips the sha256 of every file."""
    return KadynDataset(directory, verify=verify)
