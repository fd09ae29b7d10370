"""`kadyn-bench access`: map-style random access to a `kadyn-gen` dataset, kadyn against Hugging
Face `datasets` on the same Parquet files, measured side by side in one run.

Contestants, each reading rows in one shuffled order (the same permutation for all):

- `kadyn ds[i]`: `kadyn.load_dataset(DIR)[i]`, one row at a time (tensors);
- `HF ds[i] (torch)`: `datasets.load_dataset("parquet", ...).with_format("torch")[i]`;
- `HF ds[i] (python)`: the same without a format (lists of ints: HF's fastest single-row path);
- `kadyn DataLoader` / `HF DataLoader`: `DataLoader(ds, batch_size=B, shuffle=True)` over each
  (both datasets have `__getitems__`, so a batch is one batched fetch plus collation);
- `kadyn, row groups only`: kadyn with `random_access_copy = False` (decoded row groups cached in
  memory but no copy): what a shuffled read costs when each missed row decodes its row group.

One-time costs are timed apart: kadyn writing its memory-mapped copy (`prepare_random_access`,
which any random access over a dataset larger than the row cache does by itself) and HF's Arrow
conversion (`load_dataset` into an empty cache directory). Both land in a work directory that is
deleted at the end. The contestants then run in rounds of one slice each, in rotating order, so
that whatever else the machine does falls on all alike; a figure is the median over the rounds,
a ratio the median of the rounds' ratios. The generated dataset is larger than kadyn's default
row cache (`KadynDataset.row_cache_bytes`), so rows come from the copy, not from memory.

    kadyn-bench access [--rows 500000] [--seq-len 128] [--data DIR] [--seconds 1] [--rounds 5]
                       [--batch 64] [--work DIR] [--quick] [--json access.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from torch.utils.data import DataLoader

import kadyn
from kadyn import gen as kadyn_gen
from kadyn.dataset import KadynDataset
from kadyn.stream_bench import rate

Step = Callable[[], int]  # reads some rows, returns how many
# (name, the HF contestant it is compared with): kadyn/HF ratios reported.
PAIRS = (
    ("kadyn ds[i]", "HF ds[i] (torch)"),
    ("kadyn ds[i]", "HF ds[i] (python)"),
    ("kadyn DataLoader", "HF DataLoader"),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kadyn-bench access", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("--rows", type=int, default=500_000, help="rows of the generated dataset")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--data", help="an existing kadyn-gen dataset instead of generating one")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per slice")
    p.add_argument("--rounds", type=int, default=5, help="slices per contestant")
    p.add_argument("--batch", type=int, default=64, help="DataLoader batch size")
    p.add_argument("--work", help="where the dataset and both caches go (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="tiny settings, for tests")
    p.add_argument("--json", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.seq_len, args.individuals = 6000, 110, 200
        args.seconds, args.rounds = 0.05, 2
    if args.rows < 1 or args.seconds <= 0 or args.rounds < 1 or args.batch < 1:
        p.error("--rows, --rounds and --batch must be >= 1 and --seconds > 0")
    return args


def generate(out: Path, rows: int, seq_len: int, individuals: int) -> None:
    argv = [
        "--individuals",
        str(individuals),
        "--samples",
        str(rows),
        "--seq-len",
        str(seq_len),
        "--alpha",
        "0.7",
        "--threads",
        str(min(8, os.cpu_count() or 1)),
        "--quiet",
        "--out",
        str(out),
    ]
    code = kadyn_gen.main(argv)
    if code != 0:
        raise RuntimeError(f"kadyn-gen {' '.join(argv)} exited with {code}")


def _shuffled(order: np.ndarray) -> Iterator[int]:
    while True:
        yield from order.tolist()


def single_rows(ds: Any, order: np.ndarray, chunk: int = 256) -> Step:
    """`ds[i]` for the next `chunk` indices of `order` (round and round)."""
    it = _shuffled(order)

    def step() -> int:
        for _ in range(chunk):
            ds[next(it)]
        return chunk

    return step


def loader_batches(ds: Any, batch: int, seed: int) -> Step:
    """One batch of `DataLoader(ds, batch_size=batch, shuffle=True)`, epochs restarting."""
    import torch

    loader = DataLoader(
        ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    it = iter(loader)

    def step() -> int:
        nonlocal it
        try:
            got = next(it)
        except StopIteration:
            it = iter(loader)
            got = next(it)
        return len(got["input_ids"])

    return step


def interleave(steps: dict[str, Step], seconds: float, rounds: int) -> dict[str, list[float]]:
    """rows/s of each step per round; the order within a round rotates."""
    names = list(steps)
    for name in names:
        steps[name]()  # warm-up: first calls (imports, iterator start) untimed
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(rate(steps[name], seconds))
    return rates


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.data:
        directory = Path(args.data)
    else:
        directory = work / "data"
        start = time.perf_counter()
        generate(directory, args.rows, args.seq_len, args.individuals)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - start:.1f} s")
    ds = kadyn.load_dataset(directory, verify=False)
    ds.cache_dir = work / "kadyn-cache"
    decoded = len(ds) * (5 * ds.seq_len + 16)
    shards = [str(p) for p in ds.shard_paths]
    result: dict[str, Any] = {
        "config": {
            "rows": len(ds),
            "seq_len": ds.seq_len,
            "batch": args.batch,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "data": str(directory),
            "parquet_mb": sum(os.path.getsize(p) for p in shards) / 1e6,
            "decoded_mb": decoded / 1e6,
            "row_cache_mb": ds.row_cache_bytes / 1e6,
            "cpu_count": os.cpu_count(),
            "kadyn_version": kadyn.__version__,
        }
    }
    if decoded <= ds.row_cache_bytes:
        print(
            f"note: the dataset ({decoded / 1e6:,.0f} MB decoded) fits kadyn's row cache "
            f"({ds.row_cache_bytes / 1e6:,.0f} MB): pass more --rows to measure the large case"
        )

    start = time.perf_counter()
    ds.prepare_random_access()
    result["kadyn_copy_s"] = time.perf_counter() - start

    order = np.random.default_rng(0).permutation(len(ds))
    steps: dict[str, Step] = {
        "kadyn ds[i]": single_rows(ds, order),
        "kadyn DataLoader": loader_batches(ds, args.batch, 0),
    }
    if importlib.util.find_spec("datasets") is None:
        print("HF datasets: not installed (pip install datasets); kadyn alone")
        result["hf_conversion_s"] = None
    else:
        import datasets  # type: ignore[import-untyped]  # optional: only when installed

        datasets.disable_progress_bars()
        start = time.perf_counter()
        hf = datasets.load_dataset(
            "parquet", data_files=shards, split="train", cache_dir=str(work / "hf-cache")
        )
        result["hf_conversion_s"] = time.perf_counter() - start
        hf_torch = hf.with_format("torch")
        steps["HF ds[i] (torch)"] = single_rows(hf_torch, order)
        steps["HF ds[i] (python)"] = single_rows(hf, order)
        steps["HF DataLoader"] = loader_batches(hf_torch, args.batch, 0)
    groups_only = KadynDataset(directory, verify=False)
    groups_only.random_access_copy = False
    steps["kadyn, row groups only"] = single_rows(groups_only, order, chunk=8)

    rates = interleave(steps, args.seconds, args.rounds)
    result["rows_per_s"] = {name: statistics.median(r) for name, r in rates.items()}
    result["slices"] = rates
    result["ratios"] = {
        f"{a} / {b}": statistics.median(x / y for x, y in zip(rates[a], rates[b]))
        for a, b in PAIRS
        if b in rates
    }
    return result


def report(result: dict[str, Any]) -> None:
    c = result["config"]
    hf_s = result["hf_conversion_s"]
    hf = f"HF Arrow conversion {hf_s:.2f} s" if hf_s is not None else "HF not installed"
    print(
        f"\nkadyn-bench access: {c['rows']:,} rows x seq_len {c['seq_len']} "
        f"({c['parquet_mb']:,.1f} MB Parquet, {c['decoded_mb']:,.0f} MB decoded; kadyn row cache "
        f"{c['row_cache_mb']:,.0f} MB), shuffled order, median of {c['rounds']} interleaved "
        f"{c['seconds']:g} s slices, {c['cpu_count']} CPUs"
    )
    print(f"one-time: kadyn copy {result['kadyn_copy_s']:.2f} s, {hf}")
    print(f"{'access':<28} {'rows/s':>12}")
    for name, rows_per_s in result["rows_per_s"].items():
        print(f"{name:<28} {rows_per_s:12,.0f}")
    for name, ratio in result["ratios"].items():
        print(f"{name}: {ratio:,.2f}x")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(list(argv or []))
    if args.work:
        work = Path(args.work)
        for cache in ("kadyn-cache", "hf-cache"):  # the one-time costs are measured afresh
            shutil.rmtree(work / cache, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        result = measure(args, work)
    else:
        work = Path(tempfile.mkdtemp(prefix="kadyn-bench-access-"))
        try:
            result = measure(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
