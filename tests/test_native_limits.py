"""Oversized requests are refused with an error naming the limit, never an abort.

Before the size checks each of these ended the process with SIGABRT (a failed allocation of
gigabytes to petabytes; exit 134 from a shell, -6 from subprocess), so each runs in a child
process: the test outlives a regression and reports it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_gen import GEN

from kadyn import _native

ABORTED = (-6, 134)

# The Python calls, each in a child that prints the exception (or "accepted").
CALLS = {
    "eval_set(seq_len=10**9)": (
        "world.eval_set(seq_len=10**9)",
        r"seq_len must be <= 1048576 \(MAX_SEQ_LEN",
    ),
    "eval_set(seq_len=MAX_SEQ_LEN + 1)": (
        "world.eval_set(seq_len=_native.MAX_SEQ_LEN + 1, max_individuals=1)",
        r"seq_len must be <= 1048576 \(MAX_SEQ_LEN",
    ),
    "BiographyStream(batch_size=2**24, seq_len=100000)": (
        "kadyn.BiographyStream(world, batch_size=2**24, seq_len=100000)",
        r"batch_size must be <= \d+ at seq_len 100000, 6 batches in memory at once .*"
        r"memory limit of .* got 16777216",
    ),
    "BiographyStream(seq_len=MAX_SEQ_LEN + 1)": (
        "kadyn.BiographyStream(world, batch_size=1, seq_len=_native.MAX_SEQ_LEN + 1)",
        r"seq_len must be <= 1048576 \(MAX_SEQ_LEN",
    ),
    "build_rows(2**22 rows, seq_len=MAX_SEQ_LEN)": (
        "_native.build_rows(world, kadyn.Uniform(), [0] * 2**22, seq_len=_native.MAX_SEQ_LEN)",
        r"rows must be <= \d+ at seq_len 1048576 .*memory limit of",
    ),
}


def test_limits_are_exported() -> None:
    assert _native.MAX_SEQ_LEN == 1 << 20
    # A quarter of what this process may use: at least something, at most all of memory.
    assert 1 << 20 <= _native.memory_limit() <= 1 << 50


@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_oversized_python_calls_raise_value_error(call: str) -> None:
    code, message = CALLS[call]
    script = textwrap.dedent(
        f"""
        import kadyn
        from kadyn import _native
        world = kadyn.World(n_individuals=1000)
        try:
            {code}
        except ValueError as e:
            print("ValueError:", e)
        else:
            print("accepted")
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert child.returncode not in ABORTED, f"aborted: {child.stderr[-2000:]}"
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.startswith("ValueError: "), child.stdout
    assert child.stdout.count("\n") == 1
    assert re.search(message, child.stdout), child.stdout


GEN_CASES = {
    "--seq-len 1000000000": (
        ["--samples", "10", "--seq-len", "1000000000"],
        2,
        "kadyn-gen: error: --seq-len must be <= 1048576 (MAX_SEQ_LEN, the longest row kadyn "
        "builds), got 1000000000",
    ),
    "--samples 100000000000000": (
        ["--samples", "100000000000000"],
        1,
        "but its filesystem has ",
    ),
    "--batch-rows 4096 at --seq-len MAX_SEQ_LEN": (
        ["--samples", "5000", "--seq-len", str(1 << 20)],
        2,
        "kadyn-gen: error: --batch-rows must be <= ",
    ),
}


@pytest.mark.parametrize("case", list(GEN_CASES), ids=list(GEN_CASES))
def test_oversized_kadyn_gen_runs_are_one_line_errors(tmp_path: Path, case: str) -> None:
    extra, code, message = GEN_CASES[case]
    out = tmp_path / "d"
    child = subprocess.run(
        [*GEN, "--individuals", "100", *extra, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode not in ABORTED, f"aborted: {child.stderr[-2000:]}"
    assert child.returncode == code, child.stderr
    assert child.stderr.count("\n") == 1 and message in child.stderr, child.stderr
    assert child.stderr.startswith("kadyn-gen: error: ")
    # Refused before anything of the dataset was written.
    assert not (out / ".kadyn-gen-config.json").exists()


def test_kadyn_gen_prints_the_projected_size_before_it_starts(tmp_path: Path) -> None:
    out = tmp_path / "d"
    child = subprocess.run(
        [
            *GEN,
            "--individuals",
            "100",
            "--samples",
            "2000",
            "--shard-rows",
            "500",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    first = child.stderr.splitlines()[0]
    assert first.startswith("kadyn-gen: 2000 rows in 4 shards: about "), first
    assert "bytes a row as written" in first and " free" in first, first
    # The projection is the first row group's size per row: close to what was written.
    projected = first.split("about ")[1].split(" projected")[0]
    value, unit = projected.split()
    scale = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20}[unit]
    written = sum(p.stat().st_size for p in out.glob("data/shard-*.parquet"))
    assert 0.5 < float(value) * scale / written < 2, (projected, written)
