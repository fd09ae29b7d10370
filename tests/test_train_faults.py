"""Fault injection: `kadyn-train` killed with SIGKILL at random points, then resumed.

Each trial starts a real training process, kills it after a random delay drawn from a seeded RNG
(during start-up, the step-0 evaluation, training steps, evaluations or a checkpoint write: a
checkpoint is written at every step), and reruns the same command with --resume. Every trial must
end with the metrics and weights of an uninterrupted run of the same seed. The whole file is
bounded: KADYN_FAULT_TRIALS trials (default 20) of a 1-layer model on a 24-individual world.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import SMALL_FLAGS, assert_same_numbers, read_records, without_timing

from kadyn.checkpoint import load_checkpoint
from kadyn.train import main

TRIALS = int(os.environ.get("KADYN_FAULT_TRIALS", "20"))
SEEDS = (0, 1, 2, 3)  # training seeds; trial i uses SEEDS[i % 4]
STEPS = 12


def flags(seed: int) -> list[str]:
    return [
        *SMALL_FLAGS,
        "--steps", str(STEPS),
        "--eval-every", "3",
        "--checkpoint-every", "1",
        "--seed", str(seed),
    ]  # fmt: skip


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


def where_killed(out, returncode: int) -> str:
    if returncode == 0:
        return "finished first"
    if not (out / "checkpoint.pt").exists():
        return "before the first checkpoint"
    step = load_checkpoint(out / "checkpoint.pt")["train_state"]["step"]
    return "mid-run" if step < STEPS else "after the last checkpoint"


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[int, tuple[list, dict, float]]:
    """Per seed: the uninterrupted run's metrics, weights and wall time."""
    refs = {}
    for seed in SEEDS:
        out = tmp_path_factory.mktemp(f"reference-{seed}")
        t0 = time.monotonic()
        assert main([*flags(seed), "--out", str(out)]) == 0
        refs[seed] = (read_records(out), final_weights(out), time.monotonic() - t0)
    return refs


def test_sigkill_at_random_points_then_resume_matches_uninterrupted_runs(
    tmp_path, references
) -> None:
    rng = random.Random(20261129)
    t_start = time.monotonic()
    kills: dict[str, int] = {}
    for trial in range(TRIALS):
        seed = SEEDS[trial % len(SEEDS)]
        records, weights, train_s = references[seed]
        out = tmp_path / f"trial-{trial}"
        command = [sys.executable, "-m", "kadyn.train", *flags(seed), "--out", str(out)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait for start-up half of the time, so that most kills land in the run itself.
        if trial % 2:
            deadline = time.monotonic() + 60
            while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.2 * train_s))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        where = where_killed(out, proc.returncode)
        kills[where] = kills.get(where, 0) + 1
        assert main([*flags(seed), "--out", str(out), "--resume"]) == 0, f"trial {trial}"
        assert_same_numbers(without_timing(records), without_timing(read_records(out)))
        resumed = final_weights(out)
        assert resumed.keys() == weights.keys()
        for name, tensor in weights.items():
            assert torch.equal(resumed[name], tensor), f"trial {trial}: {name} differs"
    elapsed = time.monotonic() - t_start
    print(f"\n{TRIALS} SIGKILL trials in {elapsed:.0f}s; killed: {kills}")
