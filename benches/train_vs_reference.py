"""The default `kadyn-train` run against a plain training loop of the nanoGPT-equivalent
reference step, interleaved in one process: tokens/s and their ratio.

    python benches/train_vs_reference.py                          # the default run (2,200 steps)
    python benches/train_vs_reference.py --compile-cache default  # inductor's cache kept (warm)
    python benches/train_vs_reference.py --steps 300 --reference-steps 4   # a quicker look

kadyn's figure is what the run itself reports: `summary.json`'s `tokens_per_s`, its training steps'
tokens over their time (the stream's batches and the compile included, evaluations and
checkpoints not). The reference's is the same quantity for a loop of
`benches/nanogpt_reference.py`'s step (eager, as nanoGPT runs on CPU) over the same stream: the
tiny preset's batches, `to_torch` included. The reference runs `--reference-steps` steps at every
evaluation of the run (from the run's `on_eval`, outside its timed windows), so a load that
drifts during the run falls on both sides alike: on this shared machine the reference loop's rate
moved by 20% between runs a few minutes apart (29-35k tokens/s). Same threads (the preset's), same
deterministic-kernel setting as the trainer.

The default run compiles its step (`kadyn.train.COMPILE_MIN_STEPS`), and its first step pays for
that: 20-30 s with a cold inductor cache, ~2 s with a warm one. `--compile-cache fresh` (the
default) compiles into an empty temporary cache, as the first run on a fresh machine does
(torch keeps its precompiled headers under the default cache dir whatever the setting, but the
trainer no longer builds them; to time an older commit's first run, run with TMPDIR=$(mktemp -d));
`--compile-cache default` uses torch's own cache ($TORCHINDUCTOR_CACHE_DIR, else under /tmp),
warm after any earlier run of the same shape. `--no-compile` runs kadyn eager.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import kadyn
from kadyn.bench import load_bench_module, reference_step
from kadyn.config import TrainConfig, make_config
from kadyn.experiments.options import int_range
from kadyn.train import build_world, eager_reason, train


class ReferenceLoop:
    """The reference step over the run's stream, timed in slices; `tokens_per_s` over all of
    them."""

    def __init__(self, config: TrainConfig) -> None:
        path = Path(__file__).with_name("nanogpt_reference.py")
        reference = load_bench_module("nanogpt_reference", str(path))
        assert reference is not None  # it sits beside this file
        world = build_world(config)
        stream = kadyn.BiographyStream(
            world, batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed
        )
        self.batches = iter(stream)
        self.step = reference_step(
            reference, config, world.vocab_size, world.pad_id, torch.device("cpu"), compiled=False
        )
        self.tokens_per_step = config.batch_size * config.seq_len
        self.steps, self.seconds = 0, 0.0
        self.run(5)  # untimed warm-up
        self.steps, self.seconds = 0, 0.0

    def run(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.step(kadyn.to_torch(next(self.batches))["input_ids"])
        float(loss)  # the last step done
        self.seconds += time.perf_counter() - start
        self.steps += steps

    @property
    def tokens_per_s(self) -> float:
        return self.steps * self.tokens_per_step / self.seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int_range(1, 1_000_000), help="kadyn run steps (preset's)")
    p.add_argument(
        "--reference-steps",
        type=int_range(1, 1_000_000),
        default=8,
        help="reference steps at each of the run's evaluations (default 8)",
    )
    p.add_argument(
        "--compile-cache",
        choices=["fresh", "default"],
        default="fresh",
        help="inductor's cache: an empty one (the default: a fresh machine's first run) or torch's "
        "own, warm after an earlier run",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="kadyn-train --no-compile: its step eager"
    )
    args = p.parse_args()
    overrides: dict[str, Any] = {} if args.steps is None else {"steps": args.steps}
    if args.no_compile:
        overrides["compile"] = False
    with tempfile.TemporaryDirectory() as tmp:
        if args.compile_cache == "fresh":
            # Read by inductor when it first compiles, which is after this line.
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor")
        config = make_config("tiny", **overrides, progress=False, out=str(Path(tmp) / "run"))
        torch.set_num_threads(config.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer on CPU
        reference = ReferenceLoop(config)
        summary = train(
            config, on_eval=lambda step, record, model: reference.run(args.reference_steps)
        )
        written = json.loads((Path(tmp) / "run" / "summary.json").read_text())
        kadyn_rate = float(written["tokens_per_s"])
    eager = eager_reason(config, torch.device("cpu"), patching=False)
    step = f"eager: {eager}" if eager else f"compiled, {args.compile_cache} compile cache"
    print(
        f"kadyn-train ({summary['steps']} steps, {torch.get_num_threads()} threads, {step}): "
        f"{kadyn_rate:,.0f} tokens/s; reference loop {reference.tokens_per_s:,.0f} tokens/s "
        f"({reference.steps} steps at the run's evaluations); "
        f"kadyn / reference = {kadyn_rate / reference.tokens_per_s:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
