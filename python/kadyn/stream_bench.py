"""The stream against the memory-copy bound, measured side by side in one process.

The bound is the least that handing out a batch can cost: numpy copying one batch's bytes
(`input_ids` int32 and `attr_type` int8, seq_len of each per row, `individual` uint32 and
`sample_index` uint64) into freshly allocated arrays. Fresh, because the stream too hands out new
buffers with every batch (the consumer may keep them); a copy into arrays allocated once would
be a bound no stream that hands its batches over can meet. The stream is `BiographyStream`
consumed as a trainer does it: `to_torch(next(it))`.

The two run in alternating slices and the ratio is the median of the slices' ratios: on a shared
machine either figure alone moves with the load, their ratio far less. Each stream slice first
takes the batches the prefetch queue filled while the bound ran, untimed, so that no slice starts
with work done for free.

    python -m kadyn.stream_bench [--threads 1] [--seconds 6] [--batch 1024] [--seq-len 128] [--arrow]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

import kadyn
from kadyn.experiments.options import int_range


@dataclass(frozen=True)
class StreamVsBound:
    """Tokens/s of the stream and of the bound (medians over the slices) and their ratio."""

    threads: int
    batch: int
    seq_len: int
    stream_tokens_per_s: float
    bound_tokens_per_s: float
    ratio: float
    ratios: list[float]

    def line(self) -> str:
        """The one line `kadyn-bench` prints for this measurement."""
        plural = "s" if self.threads > 1 else ""
        return (
            f"stream ({self.threads} thread{plural}) / memcopy bound = {self.ratio:.2f} "
            f"(stream {self.stream_tokens_per_s / 1e6:,.0f} M tokens/s, bound "
            f"{self.bound_tokens_per_s / 1e6:,.0f} M tokens/s; median of {len(self.ratios)} "
            f"interleaved slices, batch {self.batch} x seq_len {self.seq_len})"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def copy_bound(batch: int, seq_len: int) -> Callable[[], int]:
    """One step of the bound: a batch's four columns copied into fresh arrays; returns rows."""
    rng = np.random.default_rng(0)
    sources: list[np.ndarray] = [
        rng.integers(0, 4000, size=(batch, seq_len), dtype=np.int32),
        rng.integers(-1, 6, size=(batch, seq_len), dtype=np.int8),
        rng.integers(0, 10_000, size=batch, dtype=np.uint32),
        np.arange(batch, dtype=np.uint64),
    ]

    def step() -> int:
        for source in sources:
            np.copyto(np.empty_like(source), source)
        return batch

    return step


def rate(step: Callable[[], int], seconds: float) -> float:
    """Rows/s of `step` (returns the rows it made) over at least `seconds` (and at least one
    call): the one timing loop of kadyn's benchmarks."""
    rows, start = 0, time.perf_counter()
    while True:
        rows += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return rows / elapsed


def measure(
    world: kadyn.World,
    batch: int = 1024,
    seq_len: int = 128,
    threads: int = 1,
    seconds: float = 6.0,
    slices: int = 10,
    sampling: Optional[Any] = None,
    prefetch: int = 4,
    torch_tensors: bool = True,
) -> StreamVsBound:
    """The stream (`threads` build threads, the default prefetch) against the bound, in `slices`
    alternating pairs of slices taking `seconds` in all. With `torch_tensors=False` the batches
    are taken as they come (pyarrow), without `to_torch`: the stream's own threads alone."""
    if slices < 1 or seconds <= 0:
        raise ValueError(f"slices must be >= 1 and seconds > 0, got {slices} and {seconds}")
    stream = kadyn.BiographyStream(
        world,
        batch_size=batch,
        seq_len=seq_len,
        sampling=sampling,
        threads=threads,
        prefetch=prefetch,
    )
    it = iter(stream)

    def stream_step() -> int:
        if torch_tensors:
            return int(kadyn.to_torch(next(it))["input_ids"].shape[0])
        return next(it).num_rows

    bound_step = copy_bound(batch, seq_len)
    bound_step(), stream_step()  # warm-up: first allocations, the builder thread started
    per_slice = seconds / (2 * slices)
    bound_rates, stream_rates, ratios = [], [], []
    for _ in range(slices):
        bound = rate(bound_step, per_slice)
        for _ in range(prefetch + 1):  # what the queue filled while the bound ran: untimed
            next(it)
        stream_rate = rate(stream_step, per_slice)
        bound_rates.append(bound)
        stream_rates.append(stream_rate)
        ratios.append(stream_rate / bound)
    return StreamVsBound(
        threads=threads,
        batch=batch,
        seq_len=seq_len,
        stream_tokens_per_s=statistics.median(stream_rates) * seq_len,
        bound_tokens_per_s=statistics.median(bound_rates) * seq_len,
        ratio=statistics.median(ratios),
        ratios=ratios,
    )


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kadyn.stream_bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--threads", type=int_range(1, 1024), default=1)
    p.add_argument("--seconds", type=float, default=6.0, help="time for all slices together")
    p.add_argument("--slices", type=int_range(1, 10_000), default=10)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument(
        "--arrow", action="store_true", help="take the batches as pyarrow, without to_torch"
    )
    args = p.parse_args(argv)
    world = kadyn.World(n_individuals=args.individuals)
    result = measure(
        world,
        args.batch,
        args.seq_len,
        args.threads,
        args.seconds,
        args.slices,
        torch_tensors=not args.arrow,
    )
    print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
