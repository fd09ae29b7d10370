"""kadyn-gen from Python: determinism, kill -9 and resume, refusals, one-line option errors, rows
equal to the stream's, and `kadyn.load_dataset`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import kadyn
from kadyn.gen import main as gen


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


SMALL = (
    "--individuals 200 --samples 3000 --seq-len 110 --shard-rows 1000 --batch-rows 256 "
    "--sampling subset:20@500,power:0.7 --seed 3 --quiet"
).split()


def test_same_command_twice_gives_identical_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert gen([*SMALL, "--out", str(a)]) == 0
    assert gen([*SMALL, "--out", str(b), "--threads", "1"]) == 0
    fa = files(a)
    assert fa == files(b)
    assert {"manifest.json", "vocab.json", "world.parquet", "shard-00002.parquet"} <= set(fa)
    # Running it again over a complete dataset verifies and changes nothing.
    assert gen([*SMALL, "--out", str(a)]) == 0
    assert files(a) == fa


# Rows of the runs the tests interrupt: 40 shards on one thread, so the signal lands mid-way.
INTERRUPTED_SAMPLES = 20_000


def test_kill_9_then_rerun_is_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    # Many small shards on one thread, so the kill lands mid-way; --threads never changes bytes.
    argv = (
        f"--individuals 200 --samples {INTERRUPTED_SAMPLES} --seq-len 110 --shard-rows 500 "
        "--batch-rows 125 --quiet"
    ).split()
    full, cut = tmp_path / "full", tmp_path / "cut"
    slow = [*argv, "--threads", "1", "--out", str(cut)]
    proc = subprocess.Popen([sys.executable, "-m", "kadyn.gen", *slow])
    deadline = time.monotonic() + 60
    while not (cut / "shard-00000.parquet").exists():
        assert proc.poll() is None, "kadyn-gen ended before writing its first shard"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "manifest.json").exists(), "killed too late to test a resume"
    assert not (cut / f"shard-{INTERRUPTED_SAMPLES // 500 - 1:05d}.parquet").exists()
    assert gen([*argv, "--out", str(cut)]) == 0
    assert gen([*argv, "--out", str(full)]) == 0
    assert files(cut) == files(full)


def test_ctrl_c_stops_between_row_groups_and_says_how_to_resume(tmp_path: Path) -> None:
    out = tmp_path / "d"
    argv = (
        f"--individuals 200 --samples {INTERRUPTED_SAMPLES} --seq-len 110 --shard-rows 500 "
        f"--batch-rows 125 --threads 1 --quiet --out {out}"
    ).split()
    # A shell starts background jobs with SIGINT ignored, and Python then leaves it ignored: give
    # the child the default disposition, as a terminal's foreground job has.
    proc = subprocess.Popen(
        [sys.executable, "-m", "kadyn.gen", *argv],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not (out / "shard-00000.parquet").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; rerun the same command to resume" in err
    assert not (out / "manifest.json").exists()


def test_a_directory_with_another_config_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "d")
    assert gen([*SMALL, "--out", out]) == 0
    before = files(Path(out))
    capfd.readouterr()
    assert gen([*SMALL, "--out", out, "--seed", "4"]) != 0
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --out ")
    assert "different config" in err and "options.seed" in err
    assert files(Path(out)) == before


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--alpha", "-1"], "--alpha"),
        (["--samples", "0"], "--samples"),
        (["--sampling", "zipf:2"], "--sampling"),
        (["--sampling", "power:-0.5"], "--sampling"),
        (["--seq-len", "20"], "--seq-len"),
        (["--split", "test"], "--split"),
        (["--population", "heldout"], "--population"),
    ],
)
def test_bad_options_exit_nonzero_with_one_line_naming_the_option(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], extra: list[str], option: str
) -> None:
    argv = ["--samples", "10", "--out", str(tmp_path / "x"), *extra]
    assert gen(argv) != 0
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("error:") and option in err, err
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_unwritable_out_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert gen(["--samples", "10", "--out", str(blocker / "sub")]) != 0
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --out "), err


@pytest.mark.parametrize("pack", [False, True])
def test_dataset_rows_are_the_stream_rows(tmp_path: Path, pack: bool) -> None:
    out = tmp_path / "d"
    argv = [
        "--individuals",
        "150",
        "--world-seed",
        "2",
        "--samples",
        "1500",
        "--seq-len",
        "240",
        "--shard-rows",
        "700",
        "--batch-rows",
        "128",
        "--alpha",
        "0.7",
        "--seed",
        "9",
        "--quiet",
        "--out",
        str(out),
    ]
    assert gen(argv + (["--pack"] if pack else [])) == 0
    world = kadyn.World(n_individuals=150, seed=2)
    stream = kadyn.BiographyStream(
        world,
        batch_size=500,
        seq_len=240,
        sampling=kadyn.PowerLaw(0.7),
        seed=9,
        packing="pack" if pack else "pad",
        threads=2,
    )
    it = iter(stream)
    streamed = [next(it) for _ in range(3)]
    table = pq.read_table(sorted(str(p) for p in out.glob("shard-*.parquet")))
    assert table.num_rows == 1500
    for name in ("input_ids", "attr_type", "individual", "sample_index"):
        got = table.column(name).combine_chunks()
        want = pa.concat_arrays([b.column(name) for b in streamed])
        assert got.equals(want), name
    ids = np.concatenate([kadyn.to_torch(b)["input_ids"].numpy() for b in streamed])
    ds = kadyn.load_dataset(out)
    assert torch.cat([b["input_ids"] for b in ds.iter_batches()]).numpy().tobytes() == ids.tobytes()


def test_load_dataset(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    ds = kadyn.load_dataset(out)
    assert len(ds) == 3000 and ds.seq_len == 110
    row = ds[1234]
    assert row["input_ids"].shape == (110,) and row["input_ids"].dtype == torch.int32
    assert row["attr_type"].dtype == torch.int8 and int(row["sample_index"]) == 1234
    assert int(ds[-1]["sample_index"]) == 2999
    with pytest.raises(IndexError):
        ds[3000]
    world = kadyn.World(n_individuals=200)
    assert world.decode(row["input_ids"]).startswith("<bos> ")
    assert ds.vocab == world.vocab()
    table = ds.world_table()
    assert table.num_rows == 200 and table.column("name")[0].as_py() == world.individual(0)["name"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_rows"] == 3000 and len(manifest["shards"]) == 3
    assert manifest["config"]["options"]["sampling"] == "subset:20@500,power:0.7"

    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (64, 110)
    for k, i in enumerate(batch["sample_index"].tolist()):
        assert torch.equal(batch["input_ids"][k], ds[i]["input_ids"])


def test_load_dataset_refuses_missing_partial_or_corrupt(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no dataset directory"):
        kadyn.load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no kadyn-gen dataset"):
        kadyn.load_dataset(tmp_path / "empty")
    out = tmp_path / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    manifest = (out / "manifest.json").read_bytes()
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="partial kadyn-gen dataset.*rerun the same"):
        kadyn.load_dataset(out)
    (out / "manifest.json").write_bytes(manifest)
    shard = out / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        kadyn.load_dataset(out)
    kadyn.load_dataset(out, verify=False)  # sizes still match
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="bytes"):
        kadyn.load_dataset(out, verify=False)
