"""Fast random access to a `kadyn-gen` dataset: a memory-mapped, uncompressed copy of its rows.

A Parquet row group is compressed as a whole, so reading one row of it means decoding all 4096.
A shuffled `DataLoader` over a dataset larger than `KadynDataset.row_cache_bytes` would do that
for nearly every row (a few hundred rows/s). So the first time random access has to decode a row
group a second time out of order, `KadynDataset` writes the rows once, as the tensors `ds[i]`
returns, into flat column files (`input_ids.bin` (rows, seq_len) int32, ...), and from then on
a row is a slice of a memory map: the operating system's page cache holds what fits in memory,
and any row costs the same. The same idea as Hugging Face `datasets`' one-time Arrow conversion.

Where: `KadynDataset.cache_dir`, else `$KADYN_CACHE`, else `$XDG_CACHE_HOME/kadyn` (default
`~/.cache/kadyn`), in `rows/<key>/`, where `<key>` is the sha256 of the dataset's manifest: the
manifest records every shard's sha256, so the key names the rows exactly, a regenerated dataset
gets a new copy, and identical datasets share one. The directory appears complete or not at all
(written under a temporary name, renamed last), and one process writes it while others wait on
a lock (a DataLoader's workers may all ask at once).

Integrity: each row group is checked against the manifest's sha256 as it is decoded for the copy
(as on any first read), and the copy records a sha256 per row group of its own bytes, which a
process checks the first time it reads that group, so a damaged copy is an error naming the file
and rows, never wrong token ids.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as np
import torch

Row = dict[str, torch.Tensor]
T = TypeVar("T")
R = TypeVar("R")

STORE_FORMAT = "kadyn-rowstore"
STORE_VERSION = 1
STORE_FILE = "store.json"


def cache_root(cache_dir: Optional[Union[str, os.PathLike[str]]] = None) -> Path:
    """`cache_dir`, else `$KADYN_CACHE`, else `$XDG_CACHE_HOME/kadyn` or `~/.cache/kadyn`."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("KADYN_CACHE"):
        return Path(os.environ["KADYN_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kadyn"


def manifest_key(manifest: dict[str, Any]) -> str:
    """The copy's name: sha256 of the manifest (which holds every shard's sha256)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{STORE_FORMAT}/{STORE_VERSION}\n{canonical}".encode()).hexdigest()


def _group_sha256(arrays: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


class RowStore:
    """An opened copy: `row(i)` and `rows(indices)` return what `KadynDataset` does, as fresh
    (writable, unshared) tensors."""

    def __init__(self, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.path = path
        self.meta = meta
        self._arrays = arrays
        self._names = list(arrays)
        sizes = [int(g["rows"]) for g in meta["groups"]]
        self._starts = [0, *np.cumsum(sizes).tolist()]
        self._np_starts = np.asarray(self._starts[1:-1], dtype=np.int64)
        self._rows = int(meta["rows"])
        self._checked = [False] * len(sizes)

    def __len__(self) -> int:
        return self._rows

    def _check(self, group: int) -> None:
        a, b = self._starts[group], self._starts[group + 1]
        got = _group_sha256(array[a:b] for array in self._arrays.values())
        if got != self.meta["groups"][group]["sha256"]:
            raise ValueError(
                f"{self.path}: rows {a}..{b - 1} of the random-access copy of "
                f"{self.meta['source']} differ from their sha256 in {STORE_FILE}; the copy is "
                f"corrupt: delete {self.path} (the next random access rewrites it)"
            )
        self._checked[group] = True

    def _index(self, index: int) -> int:
        n = self._rows
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"row index must be in 0..{n - 1}, got {index}")
        return index

    def row(self, index: int) -> Row:
        index = self._index(index)
        group = bisect.bisect_right(self._starts, index) - 1
        if not self._checked[group]:
            self._check(group)
        return {k: torch.from_numpy(np.array(a[index])) for k, a in self._arrays.items()}

    def rows(self, indices: Sequence[int]) -> list[Row]:
        """Rows `indices` gathered with one copy per column (a batch for a DataLoader)."""
        at = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self._rows
        bad = (at < -n) | (at >= n)
        if bad.any():
            raise IndexError(f"row index must be in 0..{n - 1}, got {int(at[bad][0])}")
        at = np.where(at < 0, at + n, at)
        for group in np.unique(np.searchsorted(self._np_starts, at, side="right")).tolist():
            if not self._checked[group]:
                self._check(group)
        columns = [torch.from_numpy(a[at]).unbind(0) for a in self._arrays.values()]
        return [dict(zip(self._names, values)) for values in zip(*columns)]


def _open_arrays(path: Path, meta: dict[str, Any]) -> Optional[dict[str, np.ndarray]]:
    rows = int(meta["rows"])
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, shape) in meta["columns"].items():
        file = path / f"{name}.bin"
        itemsize = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        if not file.is_file() or file.stat().st_size != rows * itemsize:
            return None
        if rows == 0:
            arrays[name] = np.empty((0, *shape), dtype=dtype)
            continue
        with open(file, "rb") as f:
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        arrays[name] = np.frombuffer(buffer, dtype=dtype).reshape(rows, *shape)
    return arrays


def open_store(path: Path, key: str, rows: int) -> Optional[RowStore]:
    """The copy at `path` if it is complete and is the copy of the dataset with manifest `key`
    and `rows` rows, else None."""
    try:
        meta = json.loads((path / STORE_FILE).read_text())
        if (
            meta.get("format") != STORE_FORMAT
            or meta.get("version") != STORE_VERSION
            or meta.get("key") != key
            or meta.get("rows") != rows
            or sum(int(g["rows"]) for g in meta["groups"]) != rows
        ):
            return None
        arrays = _open_arrays(path, meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if arrays is None else RowStore(path, meta, arrays)


def prefetched(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """`fn(item)` for each item, in order, computed on `workers` threads up to `2 * workers` ahead
    (pyarrow's decoding and hashlib release the GIL)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


Prepared = tuple[dict[str, np.ndarray], str]  # a row group's column arrays and their sha256


def _prepare(group: Row) -> Prepared:
    arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in group.items()}
    return arrays, _group_sha256(arrays.values())


def _write(tmp: Path, key: str, rows: int, source: str, groups: Iterator[Prepared]) -> None:
    tmp.mkdir(parents=True)
    files: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "key": key,
        "source": source,
        "rows": rows,
        "columns": {},
        "groups": [],
    }
    try:
        for arrays, sha256 in groups:
            if not files:
                for name, array in arrays.items():
                    meta["columns"][name] = [array.dtype.str, list(array.shape[1:])]
                    files[name] = open(tmp / f"{name}.bin", "wb")  # noqa: SIM115
            for name, array in arrays.items():
                files[name].write(array.data)
            n = len(next(iter(arrays.values())))
            meta["groups"].append({"rows": n, "sha256": sha256})
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in files.values():
            f.close()
    (tmp / STORE_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def open_or_build(
    root: Path,
    key: str,
    rows: int,
    row_bytes: int,
    source: str,
    decode: Callable[[T], Row],
    groups: Sequence[T],
    workers: int,
) -> RowStore:
    """The copy under `root/rows/key`, unless a complete one is there written from
    `decode(group)` for each of `groups` (every row group, in order), `workers` threads decoding
    and hashing ahead. Raises OSError when it cannot be written (no space: checked first)."""
    base = root / "rows"
    base.mkdir(parents=True, exist_ok=True)
    path = base / key
    fd = os.open(base / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process may be writing it: wait for it
        store = open_store(path, key, rows)
        if store is not None:
            return store
        for stale in [path, *base.glob(f"{key}.tmp-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        need = rows * row_bytes
        free = shutil.disk_usage(base).free
        if need + (64 << 20) > free:
            raise OSError(
                f"{base}: {need / 1e9:.2f} GB needed for the random-access copy of {source}, "
                f"{free / 1e9:.2f} GB free"
            )
        print(
            f"kadyn: writing an uncompressed copy of {source} for random access "
            f"({need / 1e9:.2f} GB, once) to {path}",
            file=sys.stderr,
            flush=True,
        )
        tmp = base / f"{key}.tmp-{os.getpid()}"
        try:
            _write(
                tmp, key, rows, source, prefetched(lambda g: _prepare(decode(g)), groups, workers)
            )
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        store = open_store(path, key, rows)
        if store is None:  # pragma: no cover - written just above
            raise OSError(f"{path}: the copy just written does not open")
        return store
    finally:
        os.close(fd)  # drops the lock
