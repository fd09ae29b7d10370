"""kadyn-gen from Python: determinism, kill -9 and resume, refusals, one-line option errors, rows
equal to the stream's, and `kadyn.load_dataset`."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

import kadyn
from kadyn.gen import main as gen


def files(directory: Path) -> dict[str, bytes]:
    """Every file of a dataset directory, by path relative to it (the run's lock file is not part
    of the dataset)."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


def shard(index: int, count: int) -> str:
    """A shard's path relative to the dataset directory."""
    return f"data/shard-{index:05d}-of-{count:05d}.parquet"


LOCK = ".kadyn.lock"

# kadyn-gen in a child process without `import kadyn` (whose torch import costs seconds a start):
# the native module is loaded by file from the package's folder and only its gen_main is called.
_LAUNCH = textwrap.dedent(
    """
    import glob, importlib.machinery, importlib.util, os, sys
    folder = importlib.util.find_spec("kadyn").submodule_search_locations[0]
    path = sorted(glob.glob(os.path.join(folder, "_native*.so")))[0]
    loader = importlib.machinery.ExtensionFileLoader("kadyn._native", path)
    native = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(native)
    sys.exit(native.gen_main(sys.argv[1:]))
    """
)
GEN = [sys.executable, "-c", _LAUNCH]
EXIT_BUSY = 75  # kadyn-gen's exit status when --out is locked by another process


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
    assert {
        "manifest.json",
        "vocab.json",
        "README.md",
        "world/world.parquet",
        shard(2, 3),
    } <= set(fa)
    # Running it again over a complete dataset verifies and changes nothing.
    assert gen([*SMALL, "--out", str(a)]) == 0
    assert files(a) == fa


def test_parts_side_by_side_then_merge_equal_one_run(tmp_path: Path) -> None:
    one, split = tmp_path / "one", tmp_path / "split"
    assert gen([*SMALL, "--out", str(one)]) == 0
    # Two processes at once, as a Slurm array or a shell loop starts them.
    parts = [
        subprocess.Popen(
            [*GEN, *SMALL, "--part", f"{i}/2", "--out", str(split)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in parts:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip().endswith(f"once every part is done: kadyn-gen merge {split}"), out
    assert not (split / "manifest.json").exists()
    assert gen(["merge", str(split), "--quiet"]) == 0
    assert files(split) == files(one)
    assert kadyn.load_dataset(split).manifest == kadyn.load_dataset(one).manifest


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
    while not (cut / shard(0, INTERRUPTED_SAMPLES // 500)).exists():
        assert proc.poll() is None, "kadyn-gen ended before writing its first shard"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "manifest.json").exists(), "killed too late to test a resume"
    last = INTERRUPTED_SAMPLES // 500
    assert not (cut / shard(last - 1, last)).exists()
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
    while not (out / shard(0, INTERRUPTED_SAMPLES // 500)).exists():
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
    assert err.count("\n") == 0 and err.startswith("kadyn-gen: error: --out ")
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
    assert err.startswith("kadyn-gen: error:") and option in err, err
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_unwritable_out_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert gen(["--samples", "10", "--out", str(blocker / "sub")]) != 0
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("kadyn-gen: error: --out "), err


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
    table = pq.read_table(out / "data")
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
    one = out / shard(1, 3)
    data = bytearray(one.read_bytes())
    data[200] ^= 0xFF
    one.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        kadyn.load_dataset(out)
    kadyn.load_dataset(out, verify=False)  # sizes still match
    one.write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="bytes"):
        kadyn.load_dataset(out, verify=False)


def test_a_locked_out_directory_is_refused_until_released(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    argv = [*GEN, *SMALL, "--out", str(out)]
    # Held as the trainer holds its own (kadyn.runlock): flock, then one line naming the holder.
    with open(out / LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate(0)
        held.write(f"pid={os.getpid()} host=box since=0 command=kadyn-train\n")
        held.flush()
        child = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert child.returncode == EXIT_BUSY, child.stderr
        assert child.stderr == (
            f"kadyn-gen: error: --out {out} is in use by another process (pid {os.getpid()} "
            "on box, kadyn-train); wait for it to finish or choose another --out\n"
        )
        assert files(out) == {}
    child = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert (out / "manifest.json").is_file()
    holder = (out / LOCK).read_text()
    assert holder.startswith("pid=") and holder.endswith(" command=kadyn-gen\n"), holder


def test_alpha_is_power_law_sampling_and_conflicts_with_sampling(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    base = ["--individuals", "200", "--samples", "300", "--quiet"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert gen([*base, "--alpha", "0.7", "--out", str(a)]) == 0
    assert gen([*base, "--sampling", "power:0.7", "--out", str(b)]) == 0
    assert files(a) == files(b)
    # Both, saying the same thing, are one meaning.
    assert gen([*base, "--alpha", "0.7", "--sampling", "power:0.7", "--out", str(b)]) == 0
    capfd.readouterr()
    for sampling in ("uniform", "power:0.5", "subset:20@100,power:0.7"):
        assert gen([*base, "--sampling", sampling, "--alpha", "0.7", "--out", str(c)]) == 2
        err = capfd.readouterr().err
        assert err == (
            "kadyn-gen: error: --alpha 0.7 means --sampling power:0.7, which conflicts with "
            f"--sampling {sampling}; give one of them\n"
        )
    assert gen([*base, "--alpha", "-0.5", "--out", str(c)]) == 2
    err = capfd.readouterr().err
    assert err == "kadyn-gen: error: --alpha must be >= 0 and finite, got -0.5\n"
    assert not c.exists()


def flip_inside_pages(shard: Path, group: int) -> None:
    """Changes one byte in the middle of row group `group`'s input_ids pages (not the footer)."""
    column = pq.ParquetFile(shard).metadata.row_group(group).column(0)
    assert column.path_in_schema.startswith("input_ids")
    data = bytearray(shard.read_bytes())
    data[column.data_page_offset + column.total_compressed_size // 2] ^= 0x01
    shard.write_bytes(bytes(data))


def test_a_corrupt_row_group_raises_even_without_verify(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 3 and "row_group_hash" in manifest
    # Shard 1 holds rows 1000..1999 in groups of 256: group 2 is rows 1512..1767.
    assert [g["rows"] for g in manifest["shards"][1]["row_groups"]] == [256, 256, 256, 232]
    flip_inside_pages(out / shard(1, 3), 2)
    ds = kadyn.load_dataset(out, verify=False)
    assert int(ds[1511]["sample_index"]) == 1511  # the group before is intact
    with pytest.raises(
        ValueError, match=r"shard-00001-of-00003\.parquet: row group 2 \(rows 1512\.\.1767\)"
    ):
        ds[1600]
    with pytest.raises(ValueError, match="row group 2 .* differs from its sha256"):
        list(ds.iter_batches())
    with pytest.raises(ValueError, match="sha256 differs"):
        kadyn.load_dataset(out)  # verify=True still hashes whole files up front
    # kadyn-gen finds it, rewrites it, and the rows read back.
    assert gen([*SMALL, "--out", str(out)]) == 0
    assert int(kadyn.load_dataset(out, verify=False)[1600]["sample_index"]) == 1600


def _drop(key: str) -> Callable[[Any], Any]:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _setting(path: list[Any], value: Any) -> Callable[[Any], Any]:
    def damage(m: Any) -> Any:
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return m

    return damage


# (damage, what load_dataset's ValueError says, whether kadyn-gen refuses to resume over it: it
# checks the manifest's form; sums across fields are the reader's business).
MANIFEST_DAMAGE: dict[str, tuple[Callable[[Any], Any], str, bool]] = {
    "not json": (lambda m: "{not json", "not valid JSON", True),
    "not an object": (lambda m: [m], "top level must be an object", True),
    "no total_rows": (_drop("total_rows"), "missing field total_rows", True),
    "no shards": (_drop("shards"), "missing field shards", True),
    "rows a string": (
        _setting(["shards", 1, "rows"], "many"),
        r"field shards\[1\]\.rows must be an integer >= 0, got 'many'",
        True,
    ),
    "shards an object": (_setting(["shards"], {}), "field shards must be a list", True),
    "seq_len null": (
        _setting(["config", "options", "seq_len"], None),
        "field config.options.seq_len must be an integer",
        True,
    ),
    "hash a number": (
        _setting(["shards", 0, "row_groups", 1, "sha256"], 5),
        r"field shards\[0\]\.row_groups\[1\]\.sha256 must be a string",
        True,
    ),
    "negative bytes": (
        _setting(["vocab", "bytes"], -1),
        "field vocab.bytes must be an integer >= 0",
        True,
    ),
    "row groups empty": (
        _setting(["shards", 2, "row_groups"], []),
        r"field shards\[2\]\.row_groups holds 0 rows",
        False,
    ),
    "file outside": (
        _setting(["world_table", "file"], "../world.parquet"),
        "file '../world.parquet' must be a path inside the dataset directory",
        False,
    ),
}


@pytest.mark.parametrize("case", list(MANIFEST_DAMAGE))
def test_a_malformed_manifest_names_the_field(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    damage, match, gen_refuses = MANIFEST_DAMAGE[case]
    out = tmp_path / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    path = out / "manifest.json"
    damaged = damage(json.loads(path.read_text()))
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(ValueError, match=match) as raised:
        kadyn.load_dataset(out, verify=False)
    assert str(raised.value).startswith(f"{path}: ")
    if not gen_refuses:
        return
    # kadyn-gen, resuming into it, refuses in one line and leaves it for a human to look at.
    before = path.read_bytes()
    capfd.readouterr()
    assert gen([*SMALL, "--out", str(out)]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"kadyn-gen: error: --out {out}: manifest.json is malformed ("), err
    assert path.read_bytes() == before


def test_rewritten_files_are_named_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    ref, out = tmp_path / "ref", tmp_path / "d"
    assert gen([*SMALL, "--out", str(ref)]) == 0
    assert gen([*SMALL, "--out", str(out)]) == 0
    flip_inside_pages(out / shard(1, 3), 0)
    (out / shard(2, 3)).write_bytes((out / shard(2, 3)).read_bytes()[:-7])
    loud = [a for a in SMALL if a != "--quiet"]
    capfd.readouterr()
    assert gen([*loud, "--out", str(out)]) == 0
    lines = capfd.readouterr().err.splitlines()
    assert (
        f"kadyn-gen: {shard(1, 3)}: corrupt (sha256 differs from its record); rewriting it" in lines
    ), lines
    assert any(
        line.startswith(f"kadyn-gen: {shard(2, 3)}: corrupt (") and line.endswith("; rewriting it")
        for line in lines
    ), lines
    assert not any(f"{shard(0, 3)}: " in line for line in lines), lines
    assert files(out) == files(ref)
    # --quiet stays quiet.
    flip_inside_pages(out / shard(0, 3), 1)
    assert gen([*SMALL, "--out", str(out)]) == 0
    assert capfd.readouterr().err == ""
    assert files(out) == files(ref)


def test_a_version_1_manifest_is_read_with_whole_file_checks(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    del manifest["row_group_hash"]
    for record in manifest["shards"]:
        del record["row_groups"]
    path.write_text(json.dumps(manifest))
    assert int(kadyn.load_dataset(out, verify=False)[1600]["sample_index"]) == 1600
    # No row-group hashes to check reads against: the shards are hashed whole, even so.
    flip_inside_pages(out / shard(1, 3), 2)
    with pytest.raises(ValueError, match=r"shard-00001-of-00003\.parquet: sha256 differs"):
        kadyn.load_dataset(out, verify=False)
    # kadyn-gen upgrades the directory: the damaged shard rewritten, the manifest at version 3.
    assert gen([*SMALL, "--out", str(out)]) == 0
    assert json.loads(path.read_text())["format_version"] == 3
