"""Fault injection: kadyn-gen killed with SIGKILL at random points, then rerun, ends byte-identical.

Each trial kills a kadyn-gen child one to three times, at delays drawn from a seeded RNG over the
length of an uninterrupted run (a quarter of them in its last quarter, where the last shards, the
progress records and the manifest are written), then reruns the same command to completion and
compares every file with the uninterrupted run's. Tiny shards (40 of 150 rows, 3 row groups each)
make a progress-file write and a rename every few milliseconds, so kills land in shard writes,
in record writes and between them. Whatever the timing, the outcome must be the same bytes: the
delays only choose which states get tested. Bounded to well under a minute on two cores.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from test_gen import GEN, files

TRIALS = 24
SEED = 20260601
SHARDS = 40
ARGV = (
    f"--individuals 200 --samples {SHARDS * 150} --seq-len 110 --shard-rows 150 --batch-rows 50 "
    "--threads 1 --quiet"
).split()


def _state(out: Path) -> str:
    """Where a kill left the directory, in words (for the summary line)."""
    if not (out / ".kadyn-gen-config.json").exists():
        return "before the config"
    names = set(os.listdir(out))
    data = set(os.listdir(out / "data")) if (out / "data").is_dir() else set()
    if "manifest.json" in names:
        return "complete"
    if "manifest.json.tmp" in names:
        return "during the manifest write"
    if ".kadyn-gen-progress.json.tmp" in names:
        return "during a progress write"
    shards = sum(1 for n in data if n.endswith(".parquet"))
    if any(n.endswith(".tmp") for n in data):
        return "during a shard write"
    return "all shards, no manifest" if shards == SHARDS else "between files"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], float]:
    out = tmp_path_factory.mktemp("reference") / "d"
    started = time.monotonic()
    subprocess.run(
        [*GEN, *ARGV, "--out", str(out)], check=True, timeout=120, stdout=subprocess.DEVNULL
    )
    return files(out), time.monotonic() - started


def test_sigkill_at_random_points_then_rerun_gives_the_uninterrupted_bytes(
    tmp_path: Path, uninterrupted: tuple[dict[str, bytes], float]
) -> None:
    want, duration = uninterrupted
    # On a loaded machine the reference run is slow: kills then land earlier in the run (still
    # anywhere in it), and the file stays within its time budget.
    duration = min(duration, 1.2)
    assert sum(n.startswith("data/shard-") for n in want) == SHARDS
    rng = random.Random(SEED)
    states: Counter[str] = Counter()
    for trial in range(TRIALS):
        out = tmp_path / f"trial-{trial}"
        command = [*GEN, *ARGV, "--out", str(out)]
        for _ in range(rng.randint(1, 3)):
            # A rerun skips the shards already complete: its kills are drawn over what is left.
            done = len(list(out.glob("data/shard-*.parquet"))) if out.exists() else 0
            span = duration * max(0.2, 1 - done / SHARDS)
            late = rng.random() < 0.25
            delay = span * (rng.uniform(0.75, 1.0) if late else rng.uniform(0.0, 0.9))
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(delay)
            child.kill()  # SIGKILL: no handler runs, nothing is flushed or cleaned up
            child.wait()
            states[_state(out)] += 1
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, (trial, rerun.stderr)
        got = files(out)
        assert sorted(got) == sorted(want), trial
        for name in want:
            assert got[name] == want[name], (trial, name)
    print(f"\n{TRIALS} trials, {sum(states.values())} kills: {dict(states)}")
