"""kadyn.reporting: --report-to writers (TensorBoard, CSV, W&B) and the console's progress lines.

The end-to-end tests train the tiny world of tests/small_run.py for a few steps with
`--report-to tensorboard,csv`, read the event files back with TensorBoard's own
`EventAccumulator`, and resume a run from an earlier checkpoint to check that no step is logged
twice.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kadyn import reporting
from kadyn.checkpoint import checkpoint_path
from kadyn.config import make_config
from kadyn.reporting import (
    CsvReporter,
    LineProgress,
    Reporters,
    open_reporters,
    parse_report_to,
    record_scalars,
    wandb_mode,
)
from kadyn.train import lr_factor, main, train

from small_run import SMALL_RUN

STEPS, LOG_EVERY, EVAL_EVERY = 8, 2, 4
TIMING = {"perf/tokens_per_s", "perf/mfu", "time/elapsed_s"}  # seconds, not what was computed


def small_config(out: Path, **overrides):
    values = dict(steps=STEPS, log_every=LOG_EVERY, eval_every=EVAL_EVERY)
    return make_config("tiny", out=str(out), **{**SMALL_RUN, **values, **overrides})


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def csv_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        out.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return out


def test_tensorboard_and_csv_hold_the_training_and_eval_scalars(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    config = small_config(out, report_to="tensorboard,csv")
    train(config)
    log_steps = list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    eval_steps = list(range(0, STEPS + 1, EVAL_EVERY))
    for scalars in (tensorboard_scalars(out / "tensorboard"), csv_scalars(out / "scalars.csv")):
        for tag in ("train/loss", "train/lr", "train/grad_norm"):
            assert [s for s, _ in scalars[tag]] == log_steps, tag
        for tag in ("eval/attr_loss", "eval/attr_acc", "heldout/attr_loss", "phase"):
            assert [s for s, _ in scalars[tag]] == eval_steps, tag
        assert all(v > 0 for _, v in scalars["train/loss"] + scalars["train/grad_norm"])
        # The lr of the next step, as metrics.jsonl's `lr` (the scheduler has stepped).
        lrs = [config.lr * lr_factor(s, STEPS, config.min_lr_ratio, False) for s in log_steps]
        assert [v for _, v in scalars["train/lr"]] == pytest.approx(lrs, rel=1e-6)
    # The eval scalars are metrics.jsonl's numbers.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tb = tensorboard_scalars(out / "tensorboard")
    assert [v for _, v in tb["eval/attr_loss"]] == pytest.approx(
        [r["eval/attr_loss"] for r in records], rel=1e-6
    )


def test_resume_replaces_what_a_killed_run_logged_after_its_checkpoint(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    config = small_config(out, report_to="tensorboard,csv", keep_checkpoints=True)
    train(config)
    first_tb = tensorboard_scalars(out / "tensorboard")
    first_csv = csv_scalars(out / "scalars.csv")
    # As if killed after step 8's logs but before its checkpoint: the last one is step 4's.
    shutil.copy(checkpoint_path(out, EVAL_EVERY), checkpoint_path(out))
    train(small_config(out, report_to="tensorboard,csv", keep_checkpoints=True, resume=True))
    again_tb = tensorboard_scalars(out / "tensorboard")
    again_csv = csv_scalars(out / "scalars.csv")
    for first, again in ((first_tb, again_tb), (first_csv, again_csv)):
        assert set(again) == set(first)
        for tag, points in again.items():
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), f"{tag}: a step logged twice: {steps}"
            # CPU runs resume exactly, so the redone steps log the same numbers.
            assert steps == [s for s, _ in first[tag]], tag
            if tag not in TIMING:
                values = [v for _, v in first[tag]]
                assert [v for _, v in points] == pytest.approx(values, rel=1e-6), tag


def test_a_fresh_start_drops_a_killed_attempts_files(tmp_path) -> None:
    path = tmp_path / "scalars.csv"
    path.write_text("step,name,value\n0,a,1.0\n5,a,2.0\n")
    CsvReporter(path, first_step=0).close()
    assert path.read_text() == "step,name,value\n"
    path.write_text("step,name,value\n0,a,1.0\n5,a,2.0\nbroken\n")
    reporter = CsvReporter(path, first_step=5)
    reporter.log(5, {"a": 3.0})
    reporter.close()
    assert csv_scalars(path) == {"a": [(0, 1.0), (5, 3.0)]}


def test_report_to_names_are_checked() -> None:
    assert parse_report_to("") == []
    assert parse_report_to("csv, tensorboard") == ["csv", "tensorboard"]
    with pytest.raises(ValueError, match="subset of tensorboard, wandb, csv, got 'mlflow'"):
        parse_report_to("csv,mlflow")
    with pytest.raises(ValueError, match="twice"):
        parse_report_to("csv,csv")
    with pytest.raises(ValueError, match="--report-to"):
        make_config("tiny", report_to="tb").validate()


def test_a_missing_extra_is_one_line_naming_the_package(tmp_path, monkeypatch, capsys) -> None:
    real = reporting.importlib.util.find_spec
    monkeypatch.setattr(
        reporting.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    out = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL_RUN.items() if k != "progress"]
    assert main([*flags, "--no-progress", "--out", str(out), "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "needs the tensorboard package: pip install 'kadyn[tensorboard]'" in err
    assert not out.exists()  # refused before anything was written


def test_record_scalars_keep_the_numbers() -> None:
    record = {
        "schema": 2,
        "step": 4,
        "samples": 32,
        "lr": 1e-3,
        "train/loss": 2.0,
        "eval/attr_loss": 1.5,
        "phase": 2,
        "phase/plateau_end": None,
        "control": True,
        "nonfinite": ["x"],
    }
    assert record_scalars(record) == {"eval/attr_loss": 1.5, "phase": 2.0}


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.init = kwargs
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    def log(self, values: dict, step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def test_wandb_runs_offline_without_a_key_and_resumes_its_run(tmp_path, monkeypatch) -> None:
    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")

    def init(**kwargs: Any) -> FakeRun:
        runs.append(FakeRun(**kwargs))
        return runs[-1]

    fake.init = init  # type: ignore[attr-defined]
    fake.util = types.SimpleNamespace(generate_id=lambda: "abc123")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(reporting.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    out = tmp_path / "run"
    out.mkdir()
    reporters = open_reporters(["wandb"], out, {"lr": 1e-3}, first_step=0)
    reporters.log(2, {"train/loss": 3.0, "train/grad_norm": None})
    reporters.close()
    assert runs[0].init["mode"] == "offline" and runs[0].init["id"] == "abc123"
    assert runs[0].init["config"] == {"lr": 1e-3} and runs[0].init["name"] == "run"
    assert runs[0].logged == [(2, {"train/loss": 3.0})] and runs[0].finished
    fake.util.generate_id = lambda: "other"  # type: ignore[attr-defined]
    open_reporters(["wandb"], out, {}, first_step=3).close()
    assert runs[1].init["id"] == "abc123" and runs[1].init["resume"] == "allow"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # wandb reads WANDB_MODE itself


def test_reporters_without_writers_do_nothing() -> None:
    reporters = Reporters()
    reporters.log(1, {"a": 1.0})
    reporters.log_record({"step": 0, "eval/attr_loss": 1.0})
    reporters.close()


def test_line_progress_prints_plain_lines_every_n_units() -> None:
    lines: list[str] = []
    bar = LineProgress(total=7, desc="train", every=3, write=lines.append)
    for step in range(1, 8):
        if step % 3 == 0:
            bar.set_postfix(loss=f"{1 / step:.3f}")
        bar.update(1)
    bar.close()
    assert len(lines) == 3  # steps 3, 6 and the last
    assert lines[0].startswith("train 3/7 (43%) | 0:00") and lines[0].endswith("loss 0.333")
    assert "left" in lines[0] and "left" not in lines[2]
    assert all("\r" not in line for line in lines)


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(reporting.progress(5, stream=io.StringIO()), LineProgress)
    assert not isinstance(reporting.progress(5, stream=Terminal()), LineProgress)
    assert not isinstance(reporting.progress(5, enabled=False, stream=io.StringIO()), LineProgress)


def test_training_in_a_log_writes_no_carriage_returns(tmp_path, capfd) -> None:
    out = tmp_path / "run"
    train(small_config(out, progress=True))
    err = capfd.readouterr().err  # stderr is a pipe here, as in a scheduler's log
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("train ")]
    assert [line.split()[1] for line in lines] == [f"{s}/{STEPS}" for s in (2, 4, 6, 8)]
    assert "loss " in lines[-1] and "grad_norm " in lines[-1]
