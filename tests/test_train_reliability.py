"""kadyn-train under misuse and failure: one writer per run directory, inputs out of range,
conflicting flags, damaged checkpoints, divergence, a run killed before its first checkpoint, the
filesystem refusing writes, Ctrl-C. Each failure ends in one line on stderr and its own exit code.

No test depends on a timing race: the lock is taken by the test itself, a full disk is a file-size
limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG), and SIGINT is sent once
the run has written its first metrics.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from test_train import SMALL_FLAGS, read_records, small_config, without_timing

from kadyn.checkpoint import load_checkpoint, save_checkpoint
from kadyn.config import MAX_SEQ_LEN, parse_args
from kadyn.runlock import LOCK_NAME, DirectoryInUse, DirectoryLock
from kadyn.train import (
    EXIT_DIVERGED,
    EXIT_ENVIRONMENT,
    EXIT_IN_USE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    claim_out_dir,
    main,
    train,
)

SHORT = [*SMALL_FLAGS, "--steps", "4", "--eval-every", "2"]


def one_error_line(err: str) -> str:
    """The single line a failure prints (progress and log lines before it aside)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kadyn.train", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# one writer per run directory


def test_a_run_directory_held_by_another_process_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with DirectoryLock(out, "holder-of-test"):
        assert main([*SHORT, "--out", str(out)]) == EXIT_IN_USE
        line = one_error_line(capsys.readouterr().err)
        assert f"pid {os.getpid()}" in line and "holder-of-test" in line, line
        assert not (out / "metrics.jsonl").exists()
    assert main([*SHORT, "--out", str(out)]) == 0


def test_a_running_train_holds_its_lock(tmp_path) -> None:
    out = tmp_path / "run"
    refused = []

    def try_to_take_it(step, batch, model) -> None:
        try:
            DirectoryLock(out, "intruder").acquire()
        except DirectoryInUse as e:
            refused.append(str(e))

    train(small_config(out, steps=2, eval_every=2), on_step=try_to_take_it)
    assert len(refused) == 2 and "kadyn-train" in refused[0], refused
    with DirectoryLock(out, "after"):  # released at the end of the run
        pass


def test_only_rank_zero_locks(tmp_path) -> None:
    """Under torchrun the other ranks write nothing to --out and take no lock."""
    out = tmp_path / "run"
    out.mkdir()
    with claim_out_dir(out, SimpleNamespace(is_main=False)):
        assert not (out / LOCK_NAME).exists()
    with claim_out_dir(out, SimpleNamespace(is_main=True)):
        with pytest.raises(DirectoryInUse):
            DirectoryLock(out, "rank 1").acquire()


# ---------------------------------------------------------------------------------------------
# inputs and flags


def test_an_oversized_seq_len_is_one_line_not_an_abort(tmp_path) -> None:
    result = cli("--seq-len", "1000000000", "--out", str(tmp_path / "run"))
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    line = one_error_line(result.stderr)
    assert f"--seq-len must be <= {MAX_SEQ_LEN}" in line, line
    assert not (tmp_path / "run").exists()


def test_alpha_means_power_sampling_and_conflicts_are_refused(tmp_path, capsys) -> None:
    assert parse_args(["--alpha", "0.7"])[0].sampling == "power"
    config = parse_args(["--sampling", "power", "--alpha", "0.7"])[0]
    assert (config.sampling, config.alpha) == ("power", 0.7)
    for argv, message in (
        (["--sampling", "uniform", "--alpha", "0.7"], "--alpha 0.7 means --sampling power"),
        (["--sampling", "curriculum", "--alpha", "0.7"], "conflicts with --sampling curriculum"),
        (["--warmup-individuals", "4"], "--warmup-individuals needs --sampling curriculum"),
        (["--sampling", "power", "--warmup-samples", "9"], "--warmup-samples needs --sampling"),
    ):
        out = tmp_path / "x"
        assert main([*SHORT, *argv, "--out", str(out)]) == EXIT_USAGE
        assert message in one_error_line(capsys.readouterr().err)
        assert not out.exists()


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_a_checkpoint_changed_after_it_was_written_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*SHORT, "--out", str(out)]) == 0
    path = out / "checkpoint.pt"
    # A tensor's bytes changed inside a well-formed file: torch loads it without complaint.
    raw = torch.load(path, weights_only=True)
    raw["model"]["embed.weight"][3, 5] += 1.0
    torch.save(raw, path)
    assert main(["--out", str(out), "--resume"]) == EXIT_USAGE
    assert "does not match its checksum" in one_error_line(capsys.readouterr().err)
    # 400 bytes flipped mid-file, as a bad disk would: refused too (by the checksum or the zip).
    assert main([*SHORT, "--out", str(tmp_path / "flip")]) == 0
    path = tmp_path / "flip" / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(b ^ 0xFF for b in data[middle : middle + 400])
    path.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["--out", str(tmp_path / "flip"), "--resume"]) == EXIT_USAGE
    assert "corrupt checkpoint" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c.pop("optimizer"), "no 'optimizer' entry"),
        (lambda c: c["model"].update(w=torch.zeros(3)), "entry 'model' does not load"),
        (
            lambda c: c["model"].update({"embed.weight": torch.zeros(2, 2)}),
            "entry 'model' does not load",
        ),
        (lambda c: c["train_state"].pop("step"), "entry 'train_state' does not load"),
        (lambda c: c["data"]["main"].update(position="x"), "entry 'data' does not load"),
        (lambda c: c["data"].pop("main"), "entry 'data' does not load"),
        (lambda c: c.update(rng={}), "entry 'rng' does not load"),
    ],
)
def test_a_checkpoint_with_missing_or_misshapen_entries_is_one_line(
    tmp_path, capsys, damage, message
) -> None:
    out = tmp_path / "run"
    assert main([*SHORT, "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    damage(ckpt)
    save_checkpoint(ckpt, out / "checkpoint.pt")  # a valid checksum over the wrong content
    capsys.readouterr()
    assert main(["--out", str(out), "--resume"]) == EXIT_USAGE
    assert message in one_error_line(capsys.readouterr().err)


def test_resume_after_config_toml_was_deleted_takes_the_checkpoints_config(tmp_path) -> None:
    out = tmp_path / "run"
    assert main([*SHORT, "--individuals", "20", "--out", str(out)]) == 0
    (out / "config.toml").unlink()
    assert parse_args(["--out", str(out), "--resume"])[0].individuals == 20
    assert main(["--out", str(out), "--resume"]) == 0  # nothing left to do, and no complaint
    assert (out / "config.toml").exists()


# ---------------------------------------------------------------------------------------------
# divergence


def test_allow_nonfinite_keeps_training_and_writes_strict_json(tmp_path, capsys) -> None:
    out = tmp_path / "nan"
    flags = [*SMALL_FLAGS, "--steps", "6", "--eval-every", "3", "--lr", "1e10", "--grad-clip", "0"]
    assert main([*flags, "--log-every", "1", "--out", str(out)]) == EXIT_DIVERGED
    line = one_error_line(capsys.readouterr().err)
    assert "non-finite training loss by step" in line and "--allow-nonfinite" in line, line
    out = tmp_path / "kept"
    assert main([*flags, "--allow-nonfinite", "--out", str(out)]) == 0

    def strict(text: str) -> dict:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    records = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 3, 6]
    assert "nonfinite" not in records[0]
    assert "eval/attr_loss" in records[-1]["nonfinite"] and records[-1]["eval/attr_loss"] is None
    assert strict((out / "summary.json").read_text())["final"]["nonfinite"]


# ---------------------------------------------------------------------------------------------
# killed before the first checkpoint, full disk, bad --out, Ctrl-C


def test_resume_before_the_first_checkpoint_starts_from_step_zero(tmp_path, capsys) -> None:
    reference = tmp_path / "reference"
    assert main([*SHORT, "--out", str(reference)]) == 0
    out = tmp_path / "run"
    # What a run killed between its step-0 evaluation and its first checkpoint leaves behind.
    out.mkdir()
    (out / "config.toml").write_text((reference / "config.toml").read_text())
    (out / "metrics.jsonl").write_text((reference / "metrics.jsonl").read_text().splitlines()[0])
    assert main([*SHORT, "--out", str(out)]) == EXIT_USAGE
    assert "pass --resume" in one_error_line(capsys.readouterr().err)
    assert main(["--out", str(out), "--resume"]) == 0
    assert "holds no checkpoint yet; starting from step 0" in capsys.readouterr().err
    assert without_timing(read_records(out)) == without_timing(read_records(reference))


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_at_the_first_save_is_one_line_and_resume_recovers(tmp_path) -> None:
    out = tmp_path / "run"
    # 48 KiB: config and metrics fit, the first checkpoint (about 300 KiB) does not.
    result = cli(*SHORT, "--out", str(out), preexec_fn=_file_size_limit(48 << 10))
    assert result.returncode == EXIT_ENVIRONMENT, (result.returncode, result.stderr)
    line = one_error_line(result.stderr)
    assert "cannot write" in line and "checkpoint.pt" in line and "File too large" in line, line
    assert not list(out.glob(".checkpoint.pt.*")), "the partial temporary file is removed"
    result = cli(*SHORT, "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    assert "starting from step 0" in result.stderr
    assert [r["step"] for r in read_records(out)] == [0, 2, 4]


def test_out_that_is_a_file_is_one_line_before_any_setup(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "run"):
        assert main([*SHORT, "--out", str(out)]) == EXIT_ENVIRONMENT
        line = one_error_line(capsys.readouterr().err)
        assert "cannot write" in line and str(blocker) in line, line


def test_ctrl_c_is_one_line_and_resume_continues(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    flags = [*SMALL_FLAGS, "--steps", "300", "--eval-every", "5", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kadyn.train", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, err)
    assert "interrupted; rerun the same command with --resume" in one_error_line(err)
    steps = [r["step"] for r in read_records(out)]
    assert steps[-1] < 300, "the run finished before the signal; make it longer"
    assert main([*flags, "--resume"]) == 0
    assert "resumed" in capsys.readouterr().err
    assert [r["step"] for r in read_records(out)] == list(range(0, 301, 5))
