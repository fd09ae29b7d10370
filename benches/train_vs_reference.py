"""The default `kadyn-train` run against a plain training loop of the nanoGPT-equivalent
reference step, one after the other in one process: tokens/s and their ratio.

    python benches/train_vs_reference.py                    # the default run (2,200 steps)
    python benches/train_vs_reference.py --steps 300 --reference-steps 100   # a quicker look

kadyn's figure is what the run itself reports: `summary.json`'s `tokens_per_s`, its training steps'
tokens over their time (the stream's batches included, evaluations and checkpoints not). The
reference's is the same quantity for a loop of `benches/nanogpt_reference.py`'s step (eager, as
nanoGPT runs on CPU) over the same stream: the tiny preset's batches, `to_torch` included. The
reference loop runs before and after the kadyn run and the two rates are averaged, so that a load
that drifts during the run falls on both sides alike. Same threads (the preset's), same
deterministic-kernel setting as the trainer.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import kadyn
from kadyn.bench import load_bench_module, reference_step
from kadyn.config import TrainConfig, make_config
from kadyn.experiments.options import int_range
from kadyn.train import build_world, train


def reference_tokens_per_s(config: TrainConfig, steps: int) -> float:
    """Tokens/s of `steps` reference steps over the run's stream (after 5 untimed ones)."""
    path = Path(__file__).with_name("nanogpt_reference.py")
    reference = load_bench_module("nanogpt_reference", str(path))
    assert reference is not None  # it sits beside this file
    world = build_world(config)
    stream = kadyn.BiographyStream(
        world, batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed
    )
    it = iter(stream)
    step = reference_step(
        reference, config, world.vocab_size, world.pad_id, torch.device("cpu"), compiled=False
    )
    for _ in range(5):
        step(kadyn.to_torch(next(it))["input_ids"])
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(kadyn.to_torch(next(it))["input_ids"])
    float(loss)  # the last step done
    return steps * config.batch_size * config.seq_len / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int_range(1, 1_000_000), help="kadyn run steps (preset's)")
    p.add_argument(
        "--reference-steps",
        type=int_range(1, 1_000_000),
        default=400,
        help="reference steps, before and after the run (default 400 each)",
    )
    args = p.parse_args()
    steps = {} if args.steps is None else {"steps": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config("tiny", **steps, progress=False, out=str(Path(tmp) / "run"))
        torch.set_num_threads(config.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)  # as the trainer on CPU
        before = reference_tokens_per_s(config, args.reference_steps)
        summary = train(config)
        after = reference_tokens_per_s(config, args.reference_steps)
        written = json.loads((Path(tmp) / "run" / "summary.json").read_text())
        kadyn_rate = float(written["tokens_per_s"])
    reference_rate = (before + after) / 2
    print(
        f"kadyn-train ({summary['steps']} steps, {torch.get_num_threads()} threads): "
        f"{kadyn_rate:,.0f} tokens/s; reference loop {reference_rate:,.0f} tokens/s (before "
        f"{before:,.0f}, after {after:,.0f}); kadyn / reference = {kadyn_rate / reference_rate:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
