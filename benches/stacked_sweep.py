"""A stacked sweep against the suite's scheduling: K tiny-preset runs, model-steps per second.

    python benches/stacked_sweep.py                     # K = 4, 200 steps, 2 rounds
    python benches/stacked_sweep.py --k 2,4,8 --steps 100 --rounds 1
    python benches/stacked_sweep.py --json out.json     # also the rows as JSON

Every arrangement trains the same K runs (seeds 0..K-1 of the tiny preset: 2 layers, d_model 128,
4 heads, MLP 512, batch 32 x 100 tokens, N = 1024) from an empty directory through
`kadyn.experiments.runner.run_all`, as `kadyn-exp` does, timed wall-clock from the call to the
last result.json (worker start-up, worlds, evaluations and checkpoints included):

- `solo 2x1`: the suite's current scheduling, two one-thread runs at a time (spawned workers);
- `stack Kx1, 2 thr`: the K runs as one stack in one two-thread process;
- `stack (K/2)x2, 1 thr`: two stacks of K/2 runs, two one-thread processes at a time.

Within a round the arrangements run one after another, in reverse order every other round, so
that what else the machine does falls on all of them alike; the table gives each arrangement's
median model-steps/s (K x steps / wall) over the rounds and its ratio to `solo 2x1` in the same
rounds. Absolute rates depend on the machine's load; the ratios are the result. Evaluations only
at step 0 and at the end by default (`--eval-every`), the same for every arrangement.

`--step` measures the training step alone, in this process: K solo steps (kadyn.train's
`StepLoss` + `optimizer_step`, one model each) against one stacked step of the same K models
(the same `StepLoss` on a `StackedGPT`, `stacked_optimizer_step`), on the same stream batches,
interleaved (solo, stacked, stacked, solo, ...), median of each; and the GFLOP/s of the model's
matmul shapes, solo (`mm`) and stacked (`bmm`), beside square 128- and 512-wide ones, and bf16.

`measure()` and `measure_steps()` are the entry points for other tools (kadyn-bench): they return
the rows as dicts.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from kadyn.experiments.runner import RunSpec, run_all


@dataclass(frozen=True)
class Arrangement:
    name: str
    jobs: int  # processes at a time
    threads: int  # torch threads per process
    stack: int  # runs per stack (1: solo)


def arrangements(k: int) -> list[Arrangement]:
    rows = [Arrangement("solo 2x1", jobs=2, threads=1, stack=1)]
    rows.append(Arrangement(f"stack {k}x1, 2 thr", jobs=1, threads=2, stack=k))
    if k >= 4 and k % 2 == 0:
        rows.append(Arrangement(f"stack {k // 2}x2, 1 thr", jobs=2, threads=1, stack=k // 2))
    return rows


def sweep_specs(k: int, steps: int, eval_every: int, overrides: dict[str, Any]) -> list[RunSpec]:
    """K runs of the tiny preset that differ in their seed (and world seed, as kadyn-exp's)."""
    return [
        RunSpec(
            study="sweep",
            name=f"s{seed}",
            overrides={
                "seed": seed,
                "world_seed": seed,
                "steps": steps,
                "eval_every": eval_every,
                "device": "cpu",
                "data_threads": 1,
                **overrides,
            },
        )
        for seed in range(k)
    ]


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_sweep(specs: list[RunSpec], arrangement: Arrangement) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to train `specs` from an empty directory under `arrangement`.
    CPU time includes the pool's workers (they have exited when run_all returns) and threads
    spinning at OpenMP barriers: a measure of efficiency that the machine's other load moves
    less than the wall time."""
    with tempfile.TemporaryDirectory(prefix="kadyn-stacked-sweep-") as out:
        c0, t0 = cpu_seconds(), time.perf_counter()
        run_all(
            specs,
            Path(out),
            jobs=arrangement.jobs,
            threads=arrangement.threads,
            progress=False,
            stack=arrangement.stack,
        )
        return time.perf_counter() - t0, cpu_seconds() - c0


def measure(
    k: int = 4,
    steps: int = 200,
    rounds: int = 2,
    eval_every: Optional[int] = None,
    overrides: Optional[dict[str, Any]] = None,
    log: bool = True,
) -> list[dict[str, Any]]:
    """One row per arrangement: median wall seconds and model-steps/s over `rounds`, and the
    median over rounds of its speed-up over `solo 2x1` measured in the same round."""
    specs = sweep_specs(k, steps, eval_every or steps, overrides or {})
    plan = arrangements(k)
    walls: dict[str, list[float]] = {a.name: [] for a in plan}
    cpus: dict[str, list[float]] = {a.name: [] for a in plan}
    for r in range(rounds):
        for a in plan if r % 2 == 0 else plan[::-1]:
            wall, cpu = time_sweep(specs, a)
            walls[a.name].append(wall)
            cpus[a.name].append(cpu)
            if log:
                print(f"  round {r + 1}: {a.name:<22} {wall:7.1f} s, {cpu:7.1f} CPU s", flush=True)
    base = walls[plan[0].name]
    rows = []
    for a in plan:
        w = walls[a.name]
        rows.append(
            {
                "k": k,
                "arrangement": a.name,
                "jobs": a.jobs,
                "threads": a.threads,
                "stack": a.stack,
                "steps": steps,
                "wall_s": statistics.median(w),
                "model_steps_per_s": k * steps / statistics.median(w),
                "speedup_vs_solo": statistics.median(b / x for b, x in zip(base, w)),
                # Model-steps per CPU-second, over solo's: the same ratio on an idle machine
                # (both use both cores throughout), and steadier on a loaded one.
                "cpu_s": statistics.median(cpus[a.name]),
                "cpu_speedup_vs_solo": statistics.median(
                    b / x for b, x in zip(cpus[plan[0].name], cpus[a.name])
                ),
                "walls_s": w,
            }
        )
    return rows


def measure_steps(
    k: int = 4, steps: int = 20, threads: int = 1, warmup: int = 3, compiled: bool = False
) -> dict[str, Any]:
    """Median ms of K solo steps and of one stacked step of the same K tiny models (see the
    module docstring), both eager or both compiled; `speedup` = solo / stacked."""
    import torch

    from kadyn.batches import TrainBatches
    from kadyn.config import make_config
    from kadyn.model import GPT
    from kadyn.runtime import setup_runtime
    from kadyn.stacked import StackedGPT, stacked_optimizer, stacked_optimizer_step
    from kadyn.train import (
        StepLoss,
        build_optimizer,
        build_scheduler,
        build_world,
        make_model_config,
        optimizer_step,
    )

    configs = [make_config("tiny", seed=s, world_seed=s, threads=threads) for s in range(k)]
    runtime = setup_runtime(configs[0])
    device = runtime.device
    worlds = [build_world(c) for c in configs]
    streams = [TrainBatches(w, c, runtime) for w, c in zip(worlds, configs)]
    batches = [[next(s)["input_ids"] for s in streams] for _ in range(steps + warmup)]
    models = []
    for c, w in zip(configs, worlds):
        torch.manual_seed(c.seed)
        models.append(GPT(make_model_config(c, w.vocab_size)))
    pad = worlds[0].pad_id
    solo = []
    for c, m in zip(configs, models):
        optimizer = build_optimizer(m, c, device)
        step_loss = StepLoss(m, pad, device, c.seq_len, compiled)
        solo.append((m, step_loss, optimizer, build_scheduler(optimizer, c)))
    stacked = StackedGPT(models)
    stacked_loss = StepLoss(stacked, pad, device, configs[0].seq_len, compiled)
    stack_opt, stack_sched = stacked_optimizer(stacked, configs[0])
    grad_clip = configs[0].grad_clip

    def solo_step(rows: list[Any]) -> None:
        for (model, step_loss, optimizer, scheduler), ids in zip(solo, rows):
            step_loss(ids).backward()
            optimizer_step(model, optimizer, scheduler, grad_clip)

    def stacked_step(rows: list[Any]) -> None:
        stacked_loss(torch.cat(rows)).sum().backward()
        stacked_optimizer_step(stacked, stack_opt, stack_sched, grad_clip)

    times: dict[str, list[float]] = {"solo": [], "stacked": []}
    if compiled:  # compile every trimmed length first (up to 100 / 8 of them)
        for length in range(8, configs[0].seq_len + 8, 8):
            rows = [b[:, : min(length, b.shape[1])].clone() for b in batches[0]]
            for r in rows:
                r[:, -1] = 1  # not <pad>: the trim keeps this length
            solo_step(rows)
            stacked_step(rows)
    for i, rows in enumerate(batches):
        order = [("solo", solo_step), ("stacked", stacked_step)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn(rows)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    solo_ms = statistics.median(times["solo"]) * 1e3
    stacked_ms = statistics.median(times["stacked"]) * 1e3
    return {
        "k": k,
        "threads": threads,
        "compiled": compiled,
        "solo_ms_per_k_steps": solo_ms,
        "stacked_ms_per_step": stacked_ms,
        "speedup": solo_ms / stacked_ms,
    }


def matmul_rates(threads: int = 1, k: int = 4) -> list[dict[str, Any]]:
    """GFLOP/s of x @ W.T: the tiny model's training shapes (3200 tokens) solo and stacked, the
    square 128/512 ones, fp32 and bf16."""
    import torch

    torch.set_num_threads(threads)
    rows = []
    for m, d_in, d_out in [(3200, 128, 384), (3200, 128, 512), (3200, 512, 128)] + [
        (128, 128, 128),
        (512, 512, 512),
    ]:
        for dtype in (torch.float32, torch.bfloat16):
            x, w = torch.randn(k, m, d_in, dtype=dtype), torch.randn(k, d_out, d_in, dtype=dtype)
            flops = 2 * m * d_in * d_out
            rates = {}
            for name, n in [("mm", 1), ("bmm", k)]:
                reps = max(3, int(2e9 / flops / n))
                for i in range(3 + reps):
                    if i == 3:
                        t0 = time.perf_counter()
                    _ = x[0] @ w[0].T if name == "mm" else torch.bmm(x, w.mT)
                rates[name] = n * flops * reps / (time.perf_counter() - t0) / 1e9
            rows.append(
                {
                    "shape": f"({m}x{d_in}) @ ({d_in}x{d_out})",
                    "dtype": str(dtype).replace("torch.", ""),
                    "mm_gflops": rates["mm"],
                    f"bmm_k{k}_gflops": rates["bmm"],
                }
            )
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--k", default="4", help="runs per sweep, comma-separated (default 4)")
    p.add_argument("--steps", type=int, default=200, help="steps per run (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (default 2)")
    p.add_argument("--eval-every", type=int, help="steps between evaluations (default: --steps)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="--compile for every run, solo and stacked (with --step: compiled steps)",
    )
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument(
        "--step", action="store_true", help="the training step alone and matmul rates (fast)"
    )
    p.add_argument("--threads", type=int, default=1, help="--step: torch threads (default 1)")
    args = p.parse_args(argv)
    if args.step:
        rows = []
        print(f"matmul GFLOP/s, {args.threads} thread(s):")
        for r in matmul_rates(args.threads):
            mm, bmm = r["mm_gflops"], r["bmm_k4_gflops"]
            print(f"  {r['shape']:<26} {r['dtype']:<9} mm {mm:6.0f}  bmm (K = 4) {bmm:6.0f}")
        how = "compiled" if args.compile else "eager"
        print(
            f"training step ({how}), {args.threads} thread(s), median of {args.steps} interleaved:"
        )
        for k in [int(x) for x in args.k.split(",")]:
            r = measure_steps(k, args.steps, args.threads, compiled=args.compile)
            rows.append(r)
            print(
                f"  K = {k}: {k} solo steps {r['solo_ms_per_k_steps']:7.1f} ms, one stacked step "
                f"{r['stacked_ms_per_step']:7.1f} ms: stacked {r['speedup']:.2f}x"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
    overrides = {"compile": True} if args.compile else {}
    rows = []
    for k in [int(x) for x in args.k.split(",")]:
        print(f"K = {k}: {args.steps} steps per run, {args.rounds} round(s)", flush=True)
        rows += measure(k, args.steps, args.rounds, args.eval_every, overrides)
    print(
        f"\n{'K':>3}  {'arrangement':<22} {'wall s':>7} {'model-steps/s':>14} {'vs solo':>8}"
        f" {'CPU s':>7} {'vs solo, CPU':>13}"
    )
    for row in rows:
        print(
            f"{row['k']:>3}  {row['arrangement']:<22} {row['wall_s']:7.1f} "
            f"{row['model_steps_per_s']:14.2f} {row['speedup_vs_solo']:7.2f}x"
            f" {row['cpu_s']:7.1f} {row['cpu_speedup_vs_solo']:12.2f}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
