"""`kadyn-bench`: throughput of the data engine, every figure beside a bound measured in the same
run on the same machine.

- stream: samples/s and tokens/s of `BiographyStream` (batches consumed in Python and handed to
  torch with `to_torch`), for threads 1..n and each sampler (uniform, power law 0.7, curriculum);
- memcopy: numpy copying one batch's columns into freshly allocated arrays (the stream, too, hands
  out fresh buffers), the cost of merely writing the bytes once: the bound every figure is also
  given as a ratio to; the one-thread stream is also measured against it in interleaved slices
  (`kadyn.stream_bench`), the figure to read on a shared machine;
- python: the plain-Python generator of `benches/python_baseline.py` (same data, dict tokenizer);
- parquet read: the same rows read back from a `kadyn-gen` dataset with pyarrow, and with HF
  `datasets` when it is installed;
- gen write: `kadyn-gen` writing that dataset (MB/s);
- `--memory`: RSS before and after streaming 10^8 tokens (memory must stay flat).

Tokens are token positions (rows × seq_len, `<pad>` included), as a trainer consumes them.

    kadyn-bench [--seconds 3] [--quick] [--memory] [--json results.json]

`kadyn-bench train` measures the trainer instead: one training step of `kadyn-train` (the
`kadyn.train` step: padding trimmed, loss only, backward, clip, fused AdamW, lr schedule) against
the nanoGPT-equivalent plain PyTorch step of `benches/nanogpt_reference.py` at the same shape
(eager with `F.scaled_dot_product_attention`, as nanoGPT runs), each also under `torch.compile`,
on the same tiny-preset batches. The four steps run interleaved (one step of each per round, the
order rotating), so whatever else the machine does falls on all alike; each gets the median step
time, tokens/s and its ratio to the eager reference. Shapes: `tiny` (the default run's: 2 layers,
d_model 128, 4 heads, MLP 512) and `d64` (the cpu experiment scale's: d_model 64, 2 heads, MLP
256), batch 32 × 100 tokens. CPU always, CUDA too when present.

    kadyn-bench train [--threads 2] [--steps 40] [--shapes tiny d64] [--json train.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional

import pyarrow.parquet as pq
import torch

import kadyn
from kadyn import _native
from kadyn.cli import add_version_flag
from kadyn.config import TrainConfig, make_config
from kadyn.experiments.options import int_range
from kadyn.model import GPT
from kadyn.stream_bench import copy_bound, measure, rate
from kadyn.train import (
    StepLoss,
    build_optimizer,
    build_scheduler,
    build_world,
    make_model_config,
    optimizer_step,
)

ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The processor, as the figures depend on it: /proc/cpuinfo's model name with its vendor's
    family and model numbers (a VM may show only "AMD EPYC"; family 25 model 17 is Zen 4), else
    what `platform` knows."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def rss_mb() -> float:
    """Resident set size now (Linux /proc), else the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def timed(step: Callable[[], int], seconds: float) -> float:
    """Rows/s of `step` (returns rows made) over `seconds`, after one warm-up call."""
    step()
    return rate(step, seconds)


def load_bench_module(name: str, path: Optional[str]) -> Optional[types.ModuleType]:
    """`benches/<name>.py`, or the file at `path`; None if not found."""
    # benches/ is part of the repository, not of the wheel: look beside the source tree
    # (editable installs) and in the working directory (a checkout, as in CI).
    places = [Path(path)] if path else [ROOT, Path.cwd()]
    found = [p if p.suffix == ".py" else p / "benches" / f"{name}.py" for p in places]
    candidate = next((c for c in found if c.is_file()), None)
    if candidate is None:
        return None
    spec = importlib.util.spec_from_file_location(name, candidate)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_baseline(path: Optional[str]) -> Optional[types.ModuleType]:
    return load_bench_module("python_baseline", path)


def samplers(n_individuals: int, warmup_samples: int) -> dict[str, kadyn._native._Sampling]:
    return {
        "uniform": kadyn.Uniform(),
        "power0.7": kadyn.PowerLaw(0.7),
        # The paper's warm-up shape: a tenth of the individuals first, then everyone.
        "curriculum": kadyn.Curriculum(
            [(kadyn.Subset(max(1, n_individuals // 10)), warmup_samples), (kadyn.Uniform(), None)]
        ),
    }


def bench_stream(
    world: kadyn.World, sampling: Any, threads: int, batch: int, seq_len: int, seconds: float
) -> float:
    stream = kadyn.BiographyStream(
        world, batch_size=batch, seq_len=seq_len, sampling=sampling, threads=threads
    )
    it = iter(stream)

    def step() -> int:
        tensors = kadyn.to_torch(next(it))
        return int(tensors["input_ids"].shape[0])

    return timed(step, seconds)


def bench_memcopy(batch: int, seq_len: int, seconds: float) -> float:
    """Rows/s of the bound: one batch's columns copied into freshly allocated arrays, as the
    stream hands out fresh buffers (`kadyn.stream_bench.copy_bound`)."""
    return timed(copy_bound(batch, seq_len), seconds)


def bench_python(
    baseline: types.ModuleType, world: kadyn.World, batch: int, seq_len: int, seconds: float
) -> float:
    gen = baseline.PythonBaseline(world, seq_len=seq_len)
    return timed(lambda: len(gen.batch(batch)["sample_index"]), seconds)


def bench_gen_write(directory: str, args: argparse.Namespace, threads: int) -> dict[str, float]:
    argv = [
        "--individuals",
        str(args.individuals),
        "--samples",
        str(args.gen_rows),
        "--seq-len",
        str(args.seq_len),
        "--shard-rows",
        str(max(1, args.gen_rows // 4)),
        "--threads",
        str(threads),
        "--out",
        directory,
        "--quiet",
    ]
    sys.stdout.flush()
    start = time.perf_counter()
    # The summary line goes to stdout; keep the table clean by sending it to /dev/null.
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            code = _native.gen_main(argv)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    elapsed = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"kadyn-gen {' '.join(argv)} exited with {code}")
    files = glob.glob(os.path.join(directory, "**", "*"), recursive=True)
    total = sum(os.path.getsize(p) for p in files if os.path.isfile(p))
    return {
        "rows_per_s": args.gen_rows / elapsed,
        "mb_per_s": total / 1e6 / elapsed,
        "mb": total / 1e6,
        "seconds": elapsed,
    }


def bench_pyarrow_read(directory: str, batch: int, seconds: float) -> float:
    shards = sorted(glob.glob(os.path.join(directory, "data", "*.parquet")))

    def batches() -> Any:
        while True:
            for path in shards:
                yield from pq.ParquetFile(path).iter_batches(batch_size=batch)

    it = batches()

    def step() -> int:
        tensors = kadyn.to_torch(next(it))
        return int(tensors["input_ids"].shape[0])

    return timed(step, seconds)


def bench_hf_read(directory: str, batch: int, seconds: float) -> Optional[float]:
    if importlib.util.find_spec("datasets") is None:
        return None
    import datasets  # optional: imported only when installed

    # The folder's README.md card declares the rows (data/*.parquet) as the default config.
    ds = datasets.load_dataset(directory, split="train").with_format("numpy")

    def batches() -> Any:
        while True:
            yield from ds.iter(batch_size=batch)

    it = batches()
    return timed(lambda: len(next(it)["sample_index"]), seconds)


def bench_memory(world: kadyn.World, batch: int, seq_len: int, threads: int, tokens: int) -> dict:
    stream = kadyn.BiographyStream(world, batch_size=batch, seq_len=seq_len, threads=threads)
    it = iter(stream)
    kadyn.to_torch(next(it))
    before = rss_mb()
    seen, start = 0, time.perf_counter()
    while seen < tokens:
        seen += kadyn.to_torch(next(it))["input_ids"].numel()
    return {
        "tokens": seen,
        "seconds": time.perf_counter() - start,
        "rss_before_mb": before,
        "rss_after_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
    }


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kadyn-bench", description=__doc__.split("\n\n")[0])
    add_version_flag(p)
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--individuals", type=int, default=10_000)
    p.add_argument("--max-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--gen-rows", type=int, default=500_000, help="rows kadyn-gen writes")
    p.add_argument("--baseline", help="path of python_baseline.py (default: benches/ of the repo)")
    p.add_argument("--memory", action="store_true", help="also stream 10^8 tokens, report RSS")
    p.add_argument("--memory-tokens", type=int, default=10**8)
    p.add_argument("--quick", action="store_true", help="tiny settings, for tests")
    p.add_argument("--json", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.individuals, args.gen_rows = 0.1, 1000, 8192
        args.memory_tokens = min(args.memory_tokens, 10**6)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    if argv[:1] == ["access"]:
        from kadyn.access_bench import main as access_main

        return access_main(argv[1:])
    args = parse_args(argv)
    world = kadyn.World(n_individuals=args.individuals)
    b, t, s = args.batch, args.seq_len, args.seconds
    threads = list(range(1, max(1, args.max_threads) + 1))
    result: dict[str, Any] = {
        "config": {
            "batch": b,
            "seq_len": t,
            "seconds": s,
            "individuals": args.individuals,
            "threads": threads,
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
            "kadyn_version": kadyn.__version__,
        },
    }
    rows: list[tuple[str, str, float, Optional[float]]] = []  # name, threads, rows/s, MB/s

    memcopy = bench_memcopy(b, t, s)
    result["memcopy"] = {"samples_per_s": memcopy, "tokens_per_s": memcopy * t}
    rows.append(("memcopy bound (numpy)", "1", memcopy, None))

    result["stream"] = []
    for name, sampling in samplers(args.individuals, 10 * b).items():
        for n in threads:
            rate = bench_stream(world, sampling, n, b, t, s)
            result["stream"].append(
                {
                    "sampler": name,
                    "threads": n,
                    "samples_per_s": rate,
                    "tokens_per_s": rate * t,
                    "ratio_to_memcopy": rate / memcopy,
                }
            )
            rows.append((f"stream {name}", str(n), rate, None))

    # Interleaved with the bound: the ratio that holds on a loaded machine.
    paired = measure(world, b, t, threads=1, seconds=2 * s, slices=10)
    result["stream_vs_memcopy"] = paired.as_dict()

    baseline = load_baseline(args.baseline)
    if baseline is None:
        result["python_baseline"] = None
        print("python baseline: benches/python_baseline.py not found (pass --baseline)")
    else:
        rate = bench_python(baseline, world, b, t, s)
        result["python_baseline"] = {
            "samples_per_s": rate,
            "tokens_per_s": rate * t,
            "ratio_to_memcopy": rate / memcopy,
        }
        rows.append(("plain Python baseline", "1", rate, None))

    with tempfile.TemporaryDirectory(prefix="kadyn-bench-") as tmp:
        gen = bench_gen_write(tmp, args, threads[-1])
        gen["ratio_to_memcopy"] = gen["rows_per_s"] / memcopy
        result["gen_write"] = gen
        rows.append(
            ("kadyn-gen write (Parquet)", str(threads[-1]), gen["rows_per_s"], gen["mb_per_s"])
        )
        rate = bench_pyarrow_read(tmp, b, s)
        read: dict[str, Any] = {
            "pyarrow": {
                "samples_per_s": rate,
                "tokens_per_s": rate * t,
                "ratio_to_memcopy": rate / memcopy,
            },
        }
        rows.append(("Parquet read (pyarrow)", "1", rate, None))
        hf = bench_hf_read(tmp, b, s)
        if hf is None:
            read["hf_datasets"] = None
            print("HF datasets: not installed, skipped")
        else:
            read["hf_datasets"] = {
                "samples_per_s": hf,
                "tokens_per_s": hf * t,
                "ratio_to_memcopy": hf / memcopy,
            }
            rows.append(("Parquet read (HF datasets)", "1", hf, None))
        result["parquet_read"] = read

    python_rate = (result["python_baseline"] or {}).get("samples_per_s")
    result["stream_vs_python"] = {
        str(e["threads"]): e["samples_per_s"] / python_rate
        for e in result["stream"]
        if e["sampler"] == "uniform" and python_rate
    }
    if args.memory:
        result["memory"] = bench_memory(world, b, t, threads[-1], args.memory_tokens)

    print(
        f"\nkadyn-bench: batch {b}, seq_len {t}, {s:g} s per figure, {os.cpu_count()} CPUs "
        f"({result['config']['cpu']})"
    )
    header = ("what", "threads", "samples/s", "tokens/s", "MB/s", "÷ memcopy")
    print("{:<30} {:>7} {:>13} {:>15} {:>8} {:>10}".format(*header))
    for name, n_threads, rate, mbps in rows:
        mb = f"{mbps:8.1f}" if mbps is not None else f"{'':>8}"
        print(
            f"{name:<30} {n_threads:>7} {rate:13,.0f} {rate * t:15,.0f} {mb} {rate / memcopy:10.3f}"
        )
    print(paired.line())
    for n_threads, ratio in result["stream_vs_python"].items():
        print(f"stream (uniform, {n_threads} threads) / plain Python: {ratio:,.1f}x")
    if "memory" in result:
        m = result["memory"]
        print(
            f"memory: {m['tokens']:,} tokens streamed in {m['seconds']:.1f} s; RSS "
            f"{m['rss_before_mb']:.0f} MB before, {m['rss_after_mb']:.0f} MB after "
            f"(peak {m['peak_rss_mb']:.0f} MB)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------
# kadyn-bench train: the trainer's step against the plain PyTorch reference

TRAIN_SHAPES: dict[str, dict[str, int]] = {
    # The default run (the tiny preset).
    "tiny": {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512},
    # The cpu experiment scale's model (kadyn.experiments.scales.CPU).
    "d64": {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_mlp": 256},
}
# The eager reference first: every ratio is to it.
TRAIN_VARIANTS = ("reference", "reference compiled", "kadyn", "kadyn compiled")


class KadynStep:
    """`kadyn-train`'s step, built from the trainer's own functions."""

    def __init__(
        self, config: TrainConfig, vocab: int, pad_id: int, device: torch.device, compiled: bool
    ) -> None:
        torch.manual_seed(config.seed)
        self.model = GPT(make_model_config(config, vocab)).to(device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, config, device)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.loss = StepLoss(self.model, pad_id, device, config.seq_len, compiled=compiled)
        self.grad_clip = config.grad_clip

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        loss = self.loss(input_ids)
        loss.backward()
        optimizer_step(self.model, self.optimizer, self.scheduler, self.grad_clip)
        return loss.detach()


def reference_step(
    reference: types.ModuleType,
    config: TrainConfig,
    vocab: int,
    pad_id: int,
    device: torch.device,
    compiled: bool,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The nanoGPT-equivalent step (`benches/nanogpt_reference.py`, loaded as `reference`) at
    `config`'s shape and optimizer settings, initialised from its seed."""
    torch.manual_seed(config.seed)
    shape = reference.ReferenceConfig(
        vocab_size=vocab,
        block_size=config.seq_len,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_embd=config.d_model,
        d_mlp=config.d_mlp,
    )
    step: Callable[[torch.Tensor], torch.Tensor] = reference.ReferenceStep(
        shape,
        device,
        pad_id,
        compile=compiled,
        lr=config.lr,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
    )
    return step


def train_steps(
    reference: types.ModuleType,
    config: TrainConfig,
    vocab: int,
    pad_id: int,
    device: torch.device,
    variants: tuple[str, ...],
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name in variants:
        compiled = name.endswith("compiled")
        if name.startswith("kadyn"):
            steps[name] = KadynStep(config, vocab, pad_id, device, compiled)
        else:
            steps[name] = reference_step(reference, config, vocab, pad_id, device, compiled)
    return steps


def time_interleaved(
    steps: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batches: list[torch.Tensor],
    n_steps: int,
    warmup: int,
    sync: Callable[[], None],
) -> dict[str, dict[str, float]]:
    """Warm-up (compilation included) for each step alone, then `n_steps` rounds of one step of
    each, the order rotating by one every round: median seconds per step, and the median over
    rounds of the first step's time over each one's (a paired ratio: load that changes from one
    second to the next falls on both sides of each ratio)."""
    names = list(steps)
    out: dict[str, dict[str, float]] = {}
    for name, step in steps.items():
        start = time.perf_counter()
        for i in range(warmup):
            loss = step(batches[i % len(batches)])
        sync()
        out[name] = {"warmup_s": time.perf_counter() - start, "warmup_loss": float(loss)}
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n_steps):
        batch = batches[(warmup + i) % len(batches)]
        k = i % len(names)
        for name in names[k:] + names[:k]:
            start = time.perf_counter()
            steps[name](batch)
            sync()
            times[name].append(time.perf_counter() - start)
    first = times[names[0]]
    for name in names:
        out[name]["step_s"] = statistics.median(times[name])
        out[name]["paired_ratio"] = statistics.median(a / b for a, b in zip(first, times[name]))
    return out


def train_parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kadyn-bench train",
        description="kadyn-train's step against a nanoGPT-equivalent plain PyTorch step, "
        "interleaved in one process.",
    )
    p.add_argument("--threads", type=int_range(1, 1024), default=2, help="torch threads on CPU")
    p.add_argument(
        "--steps", type=int_range(1, 1_000_000), default=40, help="timed steps of each variant"
    )
    p.add_argument(
        "--warmup", type=int_range(0, 10_000), default=3, help="untimed first steps (compilation)"
    )
    p.add_argument("--shapes", nargs="+", choices=sorted(TRAIN_SHAPES), default=list(TRAIN_SHAPES))
    p.add_argument(
        "--device",
        choices=("all", "cpu", "cuda"),
        default="all",
        help="all: CPU, and CUDA when present",
    )
    p.add_argument("--no-compile", action="store_true", help="only the eager variants")
    p.add_argument("--reference", help="path of nanogpt_reference.py (default: benches/)")
    p.add_argument("--quick", action="store_true", help="a few steps (tests)")
    p.add_argument("--json", help="write every figure to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 2, 1
    return args


def train_main(argv: list[str]) -> int:
    args = train_parse_args(argv)
    reference = load_bench_module("nanogpt_reference", args.reference)
    if reference is None:
        print(
            "kadyn-bench train: benches/nanogpt_reference.py not found (pass --reference)",
            file=sys.stderr,
        )
        return 2
    devices = ["cpu"] if args.device in ("all", "cpu") else []
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        devices.append("cuda")
    variants = tuple(v for v in TRAIN_VARIANTS if not (args.no_compile and "compiled" in v))
    torch.set_num_threads(args.threads)
    # As the trainer runs on CPU (kadyn.runtime): deterministic kernels.
    torch.use_deterministic_algorithms(True, warn_only=True)
    base = make_config("tiny")
    world = build_world(base)
    stream = kadyn.BiographyStream(
        world, batch_size=base.batch_size, seq_len=base.seq_len, seed=base.seed
    )
    it = iter(stream)
    batches = [kadyn.to_torch(next(it))["input_ids"] for _ in range(16)]
    tokens = base.batch_size * base.seq_len
    result: dict[str, Any] = {
        "config": {
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "batch": base.batch_size,
            "seq_len": base.seq_len,
            "vocab": world.vocab_size,
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "cpu": cpu_model(),
        },
        "runs": [],
    }
    print(
        f"kadyn-bench train: batch {base.batch_size} x {base.seq_len} tokens, vocab "
        f"{world.vocab_size}, torch {torch.__version__}, {args.threads} threads on CPU "
        f"({result['config']['cpu']}); median of "
        f"{args.steps} interleaved steps each, after {args.warmup} warm-up steps"
    )
    header = ("device", "shape", "step", "ms/step", "tokens/s", "÷ reference", "warm-up s")
    print("{:<6} {:<6} {:<20} {:>9} {:>10} {:>12} {:>10}".format(*header))
    for device_name in devices:
        device = torch.device(device_name)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for shape in args.shapes:
            config = dataclasses.replace(base, **TRAIN_SHAPES[shape])
            steps = train_steps(reference, config, world.vocab_size, world.pad_id, device, variants)
            timed_steps = time_interleaved(steps, batches, args.steps, args.warmup, sync)
            for name, t in timed_steps.items():
                entry = {
                    "device": device_name,
                    "shape": shape,
                    **TRAIN_SHAPES[shape],
                    "step": name,
                    "step_ms": t["step_s"] * 1e3,
                    "tokens_per_s": tokens / t["step_s"],
                    # Median over rounds of reference time / this step's time (1 for the
                    # reference itself): the figure to read, robust to a load that varies.
                    "ratio_to_reference": t["paired_ratio"],
                    "warmup_s": t["warmup_s"],
                }
                result["runs"].append(entry)
                print(
                    f"{device_name:<6} {shape:<6} {name:<20} {entry['step_ms']:9.1f} "
                    f"{entry['tokens_per_s']:10,.0f} {entry['ratio_to_reference']:11.2f}x "
                    f"{entry['warmup_s']:10.1f}",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
