"""`load_dataset`: a `kadyn-gen` directory as a map-style torch `Dataset`.

The directory is laid out for every reader (README, "Datasets on disk"): the rows in
`data/shard-XXXXX-of-YYYYY.parquet`, the answer key in `world/world.parquet`, `vocab.json`, a
`README.md` card declaring the Hugging Face configs, and `manifest.json`. This reader follows the
manifest, which names every file by its path relative to the directory.

The manifest is the contract: a directory without one is a generation that did not finish, and
each shard must have the size, row count and (with `verify=True`) sha256 the manifest records.
Rows are read with pyarrow one row group at a time; decoded row groups are cached (least recently
used dropped first, `row_cache_bytes`), so sequential access decodes each group once. Random
access over a dataset larger than that cache reads a memory-mapped uncompressed copy written once
(`kadyn.rowstore`; see `KadynDataset.row_cache_bytes`).

Integrity without hashing whole files: the Parquet writer keeps no page checksums, so a flipped
byte in a data page would decode to wrong token ids. Format version 2 manifests record a sha256 per
row group (over its column chunks as stored, the manifest's `row_group_hash`), and each row group
is checked against it the first time this process reads it, whatever `verify` says; the cost is
one hash of the group's compressed bytes, a fraction of decoding them. Version 1 manifests have no
such hashes, so their shards are always verified whole on opening.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from kadyn import rowstore
from kadyn.interop import to_torch

MANIFEST = "manifest.json"
CONFIG = ".kadyn-gen-config.json"
FORMAT = "kadyn-dataset"
# 3: the folder layout (data/, world/, README.md); 2: shards list their row groups with a sha256
# each (see the module docstring). Versions 1 and 2 are still read: files are named by the
# manifest, whatever the layout.
FORMAT_VERSION = 3

Row = dict[str, torch.Tensor]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file(directory: Path, record: dict[str, Any], verify: bool) -> Path:
    relative = Path(record["file"])
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(
            f"{directory / MANIFEST}: file {record['file']!r} must be a path inside the dataset "
            "directory"
        )
    path = directory / relative
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


# The manifest fields this reader relies on, as JSON types: a dict is an object with (at least)
# those keys, a one-item list a list of such items, `int` an integer >= 0. Checked before use so
# that a damaged manifest is a ValueError naming the field, not a KeyError deep inside.
_FILE_SHAPE: dict[str, Any] = {"file": str, "rows": int, "bytes": int, "sha256": str}
_ROW_GROUPS_SHAPE = [{"rows": int, "sha256": str}]
_SHARD_SHAPE: dict[str, Any] = {**_FILE_SHAPE, "first_row": int}
_MANIFEST_SHAPE: dict[str, Any] = {
    "format": str,
    "format_version": int,
    "config": {"options": {"seq_len": int}},
    "vocab": {"file": str, "bytes": int, "sha256": str},
    "world_table": _FILE_SHAPE,
    "shards": [_SHARD_SHAPE],
    "total_rows": int,
}


def _check_shape(path: Path, value: Any, shape: Any, field: str) -> None:
    def wrong(expected: str) -> ValueError:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        return ValueError(f"{path}: field {field} must be {expected}, got {shown}")

    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise wrong("an object")
        for key, sub in shape.items():
            name = f"{field}.{key}" if field else key
            if key not in value:
                raise ValueError(f"{path}: missing field {name}")
            _check_shape(path, value[key], sub, name)
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise wrong("a list")
        for i, item in enumerate(value):
            _check_shape(path, item, shape[0], f"{field}[{i}]")
    elif shape is int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise wrong("an integer >= 0")
    elif shape is str and not isinstance(value, str):
        raise wrong("a string")


def read_manifest(directory: Union[str, os.PathLike[str]]) -> dict[str, Any]:
    """The manifest of a complete dataset, with a clear error for a missing, partial or malformed
    one (a ValueError naming the field)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no dataset directory {str(directory)!r}")
    path = directory / MANIFEST
    if not path.is_file():
        if (directory / CONFIG).is_file():
            raise ValueError(
                f"{directory} holds a partial kadyn-gen dataset (no {MANIFEST}: the run did not "
                "finish); rerun the same kadyn-gen command to complete it (after --part runs: "
                "`kadyn-gen merge DIR`)"
            )
        raise FileNotFoundError(f"{directory} holds no kadyn-gen dataset (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the manifest is damaged") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: the top level must be an object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if (
        manifest.get("format") != FORMAT
        or type(version) is not int  # a bool is an int, but not a version
        or not 1 <= version <= FORMAT_VERSION
    ):
        raise ValueError(
            f"{path}: format must be {FORMAT!r} version 1..{FORMAT_VERSION}, got "
            f"{manifest.get('format')!r} version {version!r}"
        )
    _check_shape(path, manifest, _MANIFEST_SHAPE, "")
    for i, shard in enumerate(manifest["shards"]):
        if version >= 2 or "row_groups" in shard:
            if "row_groups" not in shard:
                raise ValueError(f"{path}: missing field shards[{i}].row_groups")
            _check_shape(path, shard["row_groups"], _ROW_GROUPS_SHAPE, f"shards[{i}].row_groups")
            grouped = sum(g["rows"] for g in shard["row_groups"])
            if grouped != shard["rows"]:
                raise ValueError(
                    f"{path}: field shards[{i}].row_groups holds {grouped} rows, but "
                    f"shards[{i}].rows is {shard['rows']}"
                )
    rows = sum(s["rows"] for s in manifest["shards"])
    if rows != manifest["total_rows"]:
        raise ValueError(
            f"{path}: shards hold {rows} rows but total_rows is {manifest['total_rows']}"
        )
    at = 0
    for i, shard in enumerate(manifest["shards"]):
        if shard["first_row"] != at:
            raise ValueError(
                f"{path}: field shards[{i}].first_row must be {at}, got {shard['first_row']}"
            )
        at += shard["rows"]
    return manifest


def _row_group_sha256(f: BinaryIO, group: pq.RowGroupMetaData) -> str:
    """sha256 over a row group's column chunks as stored (the manifest's `row_group_hash`)."""
    h = hashlib.sha256()
    for c in range(group.num_columns):
        column = group.column(c)
        start = (
            column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
        )
        f.seek(start)
        h.update(f.read(column.total_compressed_size))
    return h.hexdigest()


class KadynDataset(Dataset):
    """Rows of a `kadyn-gen` dataset; row `k` is row `k` of the stream it was generated from.

    `dataset[k]` is a dict of tensors: `input_ids` (seq_len,) int32, `attr_type` (seq_len,) int8,
    `individual` and `sample_index` int64 scalars (for packed datasets `individual` is the row's
    first individual, as in `kadyn.to_torch`). `iter_batches` reads whole row groups in order.
    """

    def __init__(self, directory: Union[str, os.PathLike[str]], verify: bool = True) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        # Without per-row-group hashes (format version 1) only the whole-file sha256 guards rows.
        self._group_hashes = all("row_groups" in s for s in self.manifest["shards"])
        self.shard_paths = [
            _check_file(self.directory, s, verify or not self._group_hashes)
            for s in self.manifest["shards"]
        ]
        self.vocab_path = _check_file(self.directory, self.manifest["vocab"], verify)
        self.world_path = _check_file(self.directory, self.manifest["world_table"], verify)
        options = self.manifest["config"]["options"]
        self.seq_len: int = options["seq_len"]
        # First global row of each shard, for bisecting a row index into (shard, offset).
        self._shard_starts = [s["first_row"] for s in self.manifest["shards"]]
        self._files: dict[int, tuple[pq.ParquetFile, list[int]]] = {}
        self.__dict__.update(self._fresh_row_cache())
        # Row groups whose sha256 this process has checked.
        self._checked: set[tuple[int, int]] = set()

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
        state.update(self._fresh_row_cache())
        return state

    def _file(self, shard: int) -> tuple[pq.ParquetFile, list[int]]:
        if shard not in self._files:
            path = self.shard_paths[shard]
            try:
                f = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as e:
                raise ValueError(
                    f"{path}: unreadable Parquet footer ({e}); the file is corrupt: rerun the "
                    "kadyn-gen command in its manifest to rewrite it"
                ) from None
            rows = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
            record = self.manifest["shards"][shard]
            if "row_groups" in record:
                expected: Any = [g["rows"] for g in record["row_groups"]]
                found: Any = rows
            else:
                expected, found = record["rows"], sum(rows)
            if found != expected:
                raise ValueError(
                    f"{path}: row groups of {found} rows, but {MANIFEST} records {expected}; the "
                    "file is corrupt: rerun the kadyn-gen command in its manifest to rewrite it"
                )
            starts = [sum(rows[:g]) for g in range(len(rows))]
            self._files[shard] = (f, starts)
        return self._files[shard]

    def _check_group(self, shard: int, group: int) -> None:
        """Compares row group `group` of `shard` with its sha256 in the manifest (once)."""
        if not self._group_hashes or (shard, group) in self._checked:
            return
        f, starts = self._file(shard)
        path = self.shard_paths[shard]
        with open(path, "rb") as raw:
            got = _row_group_sha256(raw, f.metadata.row_group(group))
        if got != self.manifest["shards"][shard]["row_groups"][group]["sha256"]:
            first = self._shard_starts[shard] + starts[group]
            rows = f.metadata.row_group(group).num_rows
            raise ValueError(
                f"{path}: row group {group} (rows {first}..{first + rows - 1}) differs from its "
                f"sha256 in {MANIFEST}; the file is corrupt: rerun the kadyn-gen command in its "
                "manifest to rewrite it"
            )
        self._checked.add((shard, group))

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

    # Random access (`ds[i]`, a shuffled DataLoader). Decoded row groups stay in memory, least
    # recently used dropped first, up to `row_cache_bytes` per process (at least the last one), so
    # a dataset that fits is decoded once. A larger one, the first time random access has to
    # decode a row group a second time out of order (or a third time: sequential epochs make a
    # copy only from the third on), gets an uncompressed copy written once under `cache_dir`
    # (None: $KADYN_CACHE or ~/.cache/kadyn) and memory-mapped (`kadyn.rowstore`), where any row
    # costs a slice; `random_access_copy = False` keeps to the row-group cache. Set these on the
    # dataset before reading rows.
    row_cache_bytes: int = 256 << 20
    cache_dir: Optional[Union[str, os.PathLike[str]]] = None
    random_access_copy: bool = True

    # This process's row cache (reset in each DataLoader worker): decoded row groups with their
    # bytes, least recently used first; every row group decoded so far, the last one and the
    # number of decodes; the copy, once opened.
    _lru: OrderedDict[tuple[int, int], tuple[Row, int]]
    _lru_bytes: int
    _decoded: set[tuple[int, int]]
    _decodes: int
    _last_decoded: tuple[int, int]
    _store: Optional[rowstore.RowStore]
    _store_looked: bool
    _store_wanted: bool

    @staticmethod
    def _fresh_row_cache() -> dict[str, Any]:
        return {
            "_lru": OrderedDict(),
            "_lru_bytes": 0,
            "_decoded": set(),
            "_decodes": 0,
            "_last_decoded": (-1, -1),
            "_store": None,
            "_store_looked": False,
            "_store_wanted": False,
        }

    def _decode(self, shard: int, group: int, f: Optional[pq.ParquetFile] = None) -> Row:
        """Row group `group` of `shard`, checked against its sha256 (once) and decoded; `f`: the
        shard opened apart (for a thread of its own)."""
        if f is None:
            f, _ = self._file(shard)
        self._check_group(shard, group)
        try:
            batch = f.read_row_group(group).combine_chunks().to_batches()[0]
        except (OSError, pa.ArrowException) as e:
            raise ValueError(
                f"{self.shard_paths[shard]}: row group {group} cannot be decoded ({e}); the "
                "file is corrupt: rerun the kadyn-gen command in its manifest to rewrite it"
            ) from None
        return to_torch(batch)

    def _group(self, shard: int, group: int) -> Row:
        key = (shard, group)
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
            return hit[0]
        s, g = self._last_decoded
        if key in self._decoded and (
            key not in ((0, 0), (s, g + 1), (s + 1, 0)) or self._decodes >= 2 * len(self._decoded)
        ):
            self._store_wanted = True  # decoded again out of order (random access), or often
        rows = self._decode(shard, group)
        self._decoded.add(key)
        self._decodes += 1
        self._last_decoded = key
        size = sum(t.numel() * t.element_size() for t in rows.values())
        self._lru[key] = (rows, size)
        self._lru_bytes += size
        while self._lru_bytes > self.row_cache_bytes and len(self._lru) > 1:
            self._lru_bytes -= self._lru.popitem(last=False)[1][1]
        return rows

    def _row_bytes(self) -> int:
        """Bytes of one decoded row: input_ids int32 and attr_type int8, two int64 ids."""
        return 5 * self.seq_len + 16

    def prepare_random_access(self) -> Path:
        """Open the memory-mapped copy for random access, writing it first if there is none yet
        (rows are then read from it whatever their number); returns its directory. Raises
        OSError if it cannot be written (no space in the cache directory, which is checked
        first). Reading rows does this by itself when it pays; calling it in the main process
        before a DataLoader starts its workers keeps them from waiting on the first one."""
        if self._store is None:
            local = threading.local()

            def decode(key: tuple[int, int]) -> Row:  # each thread opens the shards it reads
                files: dict[int, pq.ParquetFile] = local.__dict__.setdefault("files", {})
                if key[0] not in files:
                    files[key[0]] = pq.ParquetFile(self.shard_paths[key[0]])
                return self._decode(*key, f=files[key[0]])

            keys = [(s, g) for s in range(len(self.shard_paths)) for g in self._groups(s)]
            self._store = rowstore.open_or_build(
                rowstore.cache_root(self.cache_dir),
                rowstore.manifest_key(self.manifest),
                len(self),
                self._row_bytes(),
                str(self.directory),
                decode,
                keys,
                min(4, os.cpu_count() or 1),
            )
        return self._store.path

    def _groups(self, shard: int) -> range:
        return range(len(self._file(shard)[1]))  # opens the shard: row counts checked

    def _random_store(self) -> Optional[rowstore.RowStore]:
        """The copy, when random access over a dataset larger than the row cache calls for it."""
        if (
            not self.random_access_copy
            or len(self) * self._row_bytes() <= self.row_cache_bytes
            or (self._store_looked and not self._store_wanted)
        ):
            return None
        root, key = rowstore.cache_root(self.cache_dir), rowstore.manifest_key(self.manifest)
        if not self._store_looked:  # a copy an earlier process wrote
            self._store_looked = True
            self._store = rowstore.open_store(root / "rows" / key, key, len(self))
        if self._store is None and self._store_wanted:
            try:
                self.prepare_random_access()
            except OSError as e:
                print(f"kadyn: no random-access copy ({e}); reading row groups", file=sys.stderr)
                self.random_access_copy = False
        return self._store

    def __getitem__(self, index: int) -> Row:
        store = self._store if self._store is not None else self._random_store()
        if store is not None:
            return store.row(index)
        shard, group, row = self._locate(index)
        return {k: v[row] for k, v in self._group(shard, group).items()}

    def __getitems__(self, indices: Sequence[int]) -> list[Row]:
        """Batched fetch for DataLoader: from the copy one gather per column, else rows grouped
        by row group, each decoded once."""
        store = self._store if self._store is not None else self._random_store()
        if store is not None:
            return store.rows(indices)
        located = [(self._locate(i), j) for j, i in enumerate(indices)]
        out: list[Optional[Row]] = [None] * len(indices)
        for (shard, group, row), j in sorted(located):
            out[j] = {k: v[row] for k, v in self._group(shard, group).items()}
        return [r for r in out if r is not None]

    def rows(self, start: int, stop: int) -> Row:
        """Rows start..stop-1 (0 <= start < stop <= len) as one batch, each column stacked; read
        row group by row group through the row cache (sequential reading decodes each once)."""
        if not 0 <= start < stop <= len(self):
            raise IndexError(f"rows {start}..{stop} out of range for {len(self)} rows")
        parts: list[Row] = []
        while start < stop:
            shard, group, row = self._locate(start)
            columns = self._group(shard, group)
            n = min(stop - start, len(columns["sample_index"]) - row)
            parts.append({k: v[row : row + n] for k, v in columns.items()})
            start += n
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def iter_batches(self) -> Iterator[Row]:
        """Every row group in order, as batch tensors (row-group sized: `--batch-rows`)."""
        for shard in range(len(self.shard_paths)):
            f, starts = self._file(shard)
            for group in range(len(starts)):
                yield self._group(shard, group)


def load_dataset(directory: Union[str, os.PathLike[str]], verify: bool = True) -> KadynDataset:
    """Open a `kadyn-gen` dataset directory; `verify=False` skips the sha256 of every whole file
    (each row group is still checked against its own sha256 when first read)."""
    return KadynDataset(directory, verify=verify)
