"""The trainer (kadyn.train, kadyn.evaluation, kadyn.batches, kadyn.config, kadyn.checkpoint,
kadyn.plots) on tiny worlds.

End-to-end runs use a 24-individual world and a one-layer model so that each takes seconds; the
resume test kills a real `kadyn-train` process with SIGKILL and compares its metrics, after
resuming, with an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kadyn.batches import replay_rows
from kadyn.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from kadyn.config import (
    RESUMABLE_FIELDS,
    TrainConfig,
    load_config_file,
    load_preset,
    make_config,
    parse_args,
    read_toml,
    to_toml,
)
from kadyn.evaluation import METRICS_SCHEMA, make_record
from kadyn.model import GPT, ModelConfig
from kadyn.phases import Phases
from kadyn.plots import plot_curves
from kadyn.runlock import LOCK_NAME
from kadyn.train import (
    EXIT_DIVERGED,
    TrainState,
    check_resumable,
    lr_factor,
    main,
    param_groups,
    summary_line,
    train,
)
from kadyn.twin import Twin

from small_run import SMALL_RUN

SMALL = {**SMALL_RUN, "lr": 3e-3}
SMALL_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items() if k != "progress"]
SMALL_FLAGS.append("--no-progress")
# Fields that measure time, not what was computed.
TIMING = {"perf/tokens_per_s", "perf/mfu", "time/elapsed_s"}
ATTRIBUTES = ("birth_date", "birth_place", "university", "major", "company", "current_location")


def small_config(out: Path, **overrides) -> TrainConfig:
    return make_config("tiny", out=str(out), **{**SMALL, **overrides})


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_numbers(a, b, path: str = "") -> None:
    """Equal structure and values; floats to 1e-9 relative (the engine's no-knowledge baseline
    is a parallel float sum, so two processes may differ in its last bit)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            assert_same_numbers(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


# ---------------------------------------------------------------------------------------------
# config


def test_presets_load_and_round_trip() -> None:
    for name in ("tiny", "paper"):
        config = make_config(name)
        config.validate()
        assert read_toml(to_toml(config), "x") == config.to_dict()
    paper = make_config("paper")
    assert (paper.n_layers, paper.d_model, paper.n_heads, paper.d_mlp) == (8, 512, 8, 2048)
    assert (paper.batch_size, paper.seq_len, paper.steps, paper.individuals) == (
        128,
        512,
        16000,
        64000,
    )
    assert (paper.lr, paper.beta1, paper.beta2, paper.weight_decay) == (4e-4, 0.9, 0.95, 0.1)
    assert load_preset("tiny")["individuals"] == make_config("tiny").individuals


def test_flags_override_the_preset() -> None:
    config, given = parse_args(["--preset", "paper", "--lr", "1e-3", "--no-tie-embeddings"])
    assert config.lr == 1e-3 and config.d_model == 512 and config.tie_embeddings is False
    assert given == {"preset": "paper", "lr": 1e-3, "tie_embeddings": False}
    config, _ = parse_args(["--sampling", "power", "--alpha", "0.7", "--d-model", "64"])
    assert (config.preset, config.sampling, config.alpha, config.d_model) == (
        "tiny",
        "power",
        0.7,
        64,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "-1"], "--lr must be > 0, got -1.0"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--alpha", "-0.5"], "--alpha must be >= 0, got -0.5"),
        (["--min-lr-ratio", "2"], "--min-lr-ratio must be <= 1, got 2.0"),
        (["--sampling", "zipf"], "argument --sampling: invalid choice: 'zipf'"),
        (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
        (["--preset", "huge"], "--preset must be one of paper, tiny, got 'huge'"),
        (["--d-model", "100", "--n-heads", "4"], "--d-model must be a multiple of 2 * --n-heads"),
        (["--d-model", "64", "--n-heads", "8"], "--d-model / --n-heads must be in 16..128"),
        (["--sampling", "curriculum"], "--warmup-individuals must be in [1, 1024]"),
        (["--replay-weight", "1"], "--replay-weight needs --population new"),
        (["--resume"], "--resume needs --out DIR"),
        (["--seq-len", "40"], "--seq-len must be >= 97"),
    ],
)
def test_bad_flags_exit_with_one_line(argv, message, capsys, tmp_path) -> None:
    if "--resume" not in argv:
        argv = [*argv, "--out", str(tmp_path / "x")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (type, choice)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_toml_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        read_toml("[optim]\nlearning_rate = 1.0\n", "f")
    with pytest.raises(ValueError, match="steps must be int, got str"):
        read_toml('steps = "many"\n', "f")
    assert read_toml("[optim]\nlr = 1\n", "f") == {"lr": 1.0}


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 0.1, False) == 1.0
    assert lr_factor(50, 100, 0.1, False) == pytest.approx(0.55)
    assert lr_factor(100, 100, 0.1, False) == pytest.approx(0.1)
    assert lr_factor(80, 100, 0.1, True) == 1.0


def test_weight_decay_only_on_block_matrices() -> None:
    model = GPT(
        ModelConfig(
            vocab_size=20, n_layers=1, d_model=32, n_heads=2, d_mlp=64, tie_embeddings=False
        )
    )
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        [
            "blocks.0.attn.qkv.weight",
            "blocks.0.attn.proj.weight",
            "blocks.0.mlp.up.weight",
            "blocks.0.mlp.down.weight",
            "head.weight",
        ]
    )
    assert "embed.weight" in {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0


def test_replay_rows() -> None:
    assert replay_rows(32, 0) == 0
    assert replay_rows(32, 1) == 16
    assert replay_rows(30, 2) == 20
    assert replay_rows(32, 1 / 32) == 1  # at least one row when replaying
    assert replay_rows(4, 100) == 3  # at least one new row


# ---------------------------------------------------------------------------------------------
# checkpoints and plots


def test_checkpoint_save_is_atomic_and_load_is_safe(tmp_path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "model_config": {}, "step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(path)
    torch.save({"model": {}, "model_config": {}, "evil": TrainConfig()}, path)  # a pickled object
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


def test_plot_curves(tmp_path) -> None:
    records = [
        {
            "step": s,
            "no_knowledge/level": 4.0,
            "no_knowledge/value_table_entropy": 3.8,
            "train/attr_loss": loss,
            "eval/attr_loss": loss,
            "heldout/attr_loss": loss,
            "train/attr_acc": 0.0,
            "eval/attr_acc": 0.0,
            "heldout/attr_acc": None,
            "phase/plateau_start": 10.0,
            "phase/plateau_end": 25.0,
            "phase/knowledge_onset": 25.0,
        }
        for s, loss in [(0, 9.0), (10, 4.1), (20, 4.0), (30, 2.0)]
    ]
    twin = Twin(runs=["a", "b"], steps=np.array([0.0, 30.0]), curves=np.array([[9, 4.0], [9, 4.2]]))
    plot_curves(records, tmp_path / "c.png", twin=twin)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_curves(records[:1], tmp_path / "e.png", control=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="at least one"):
        plot_curves([], tmp_path / "d.png")


# ---------------------------------------------------------------------------------------------
# end to end


def test_run_writes_outputs_and_finetune_starts_from_it(tmp_path) -> None:
    seen: list[int] = []
    summary = train(
        small_config(tmp_path / "run", steps=6, eval_every=3),
        on_eval=lambda step, record, model: seen.append(step),
    )
    out = tmp_path / "run"
    assert seen == [0, 3, 6]
    assert load_config_file(out / "config.toml") == small_config(out, steps=6, eval_every=3)
    assert (out / "curves.png").exists()
    records = read_records(out)
    assert [r["step"] for r in records] == [0, 3, 6]
    metrics = ("attr_loss", "attr_acc", "confidence")
    expected = [
        "schema",
        "step",
        "samples",
        "lr",
        "train/loss",
        *[
            f"{probe}{attr}/{m}"
            for probe in ("train", "eval", "heldout")  # no 'old': not fine-tuning
            for attr in ("", *(f"/{a}" for a in ATTRIBUTES))
            for m in metrics
        ],
        "no_knowledge/level",
        "no_knowledge/value_table_entropy",
        "phase",
        "phase/plateau_start",
        "phase/plateau_end",
        "phase/knowledge_onset",
        *sorted(TIMING),
    ]
    assert all(sorted(r) == sorted(expected) for r in records)
    assert records[0]["schema"] == METRICS_SCHEMA == 2
    assert records[0]["train/loss"] is None and records[-1]["train/loss"] > 0
    # untrained: worse than the no-knowledge level
    assert records[0]["eval/attr_loss"] > records[0]["no_knowledge/level"]
    assert records[-1]["eval/attr_loss"] < records[0]["eval/attr_loss"]
    assert 0 < records[-1]["heldout/confidence"] < 1
    assert summary["final"] == records[-1]
    assert summary["level"] == records[-1]["no_knowledge/level"]
    assert json.loads((out / "summary.json").read_text())["final"] == records[-1]
    model, ckpt = load_model(out)
    assert isinstance(model, GPT)
    assert set(ckpt) == {
        "model",
        "optimizer",
        "scheduler",
        "data",
        "train_state",
        "rng",
        "config",
        "model_config",
    }
    state = ckpt["train_state"]
    assert state["step"] == 6 and state["eval_steps"] == [0, 3, 6]
    assert state["eval_losses"] == [r["eval/attr_loss"] for r in records]
    assert state["eval_accs"] == [r["eval/attr_acc"] for r in records]
    assert state["level"] == records[-1]["no_knowledge/level"]

    # Fine-tuning from that checkpoint: a fresh run whose step-0 evaluation is the old final one.
    start: list[dict] = []
    train(
        small_config(
            tmp_path / "ft",
            steps=1,
            eval_every=1,
            constant_lr=True,
            init_checkpoint=str(out / "checkpoint.pt"),
        ),
        on_eval=lambda step, record, model: start.append(record),
    )
    assert start[0]["eval/attr_loss"] == pytest.approx(records[-1]["eval/attr_loss"], rel=1e-6)

    with pytest.raises(ValueError, match="--init-checkpoint: model d_model is 32 there, 64 now"):
        train(
            small_config(tmp_path / "ft2", d_model=64, init_checkpoint=str(out / "checkpoint.pt"))
        )

    # The same directory again without --resume is refused (not silently overwritten).
    with pytest.raises(ValueError, match="already holds a run"):
        train(small_config(out, steps=6, eval_every=3))


def test_replay_run_reports_old_individuals(tmp_path) -> None:
    records: list[dict] = []
    train(
        small_config(
            tmp_path / "r",
            steps=2,
            eval_every=2,
            new_individuals=8,
            population="new",
            replay_weight=1.0,
        ),
        on_eval=lambda step, record, model: records.append(record),
        on_step=lambda step, batch, model: records.append({"replay": batch["replay"].tolist()}),
    )
    # Replay weight 1: half of each 8-row batch comes from the old ('train') population.
    assert [r["replay"] for r in records if "replay" in r] == [[False] * 4 + [True] * 4] * 2
    assert records[-1]["old/attr_loss"] > 0 and records[-1]["eval/attr_loss"] > 0
    assert "old/major/attr_acc" in records[-1]


def run_cli(out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kadyn.train", *SMALL_FLAGS, "--out", str(out), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path) -> None:
    flags = ["--steps", "40", "--eval-every", "4", "--checkpoint-every", "4"]
    full = run_cli(tmp_path / "full", *flags)
    killed_dir = tmp_path / "killed"
    killed = run_cli(killed_dir, *flags)
    ckpt = killed_dir / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.005)
    # Let it write a checkpoint or two more, then kill it without warning.
    time.sleep(0.3)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    steps_done = [r["step"] for r in read_records(killed_dir)]
    assert steps_done[-1] < 40, "the run finished before it was killed; make it longer"
    resumed = run_cli(killed_dir, *flags, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    assert "resumed" in resumed.stderr.read()
    assert full.wait() == 0, full.stderr.read()
    a, b = read_records(tmp_path / "full"), read_records(killed_dir)
    assert [r["step"] for r in b] == list(range(0, 41, 4))
    assert_same_numbers(without_timing(a), without_timing(b))


def test_resume_refuses_an_incompatible_config(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main([*SMALL_FLAGS, "--steps", "2", "--eval-every", "2", "--out", str(out)]) == 0
    for flag, value in (("--d-model", "64"), ("--individuals", "30"), ("--seed", "1")):
        capsys.readouterr()
        assert main(["--out", str(out), "--resume", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{flag} differs from the checkpoint" in err, err
    # Resuming a finished run with no flags takes its saved config and has nothing left to do.
    assert main(["--out", str(out), "--resume"]) == 0


def test_resume_with_a_corrupt_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x00" * 10)
    assert main([*SMALL_FLAGS, "--out", str(out), "--resume"]) == 2
    assert "--resume: corrupt checkpoint" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == [LOCK_NAME, "checkpoint.pt"]


def test_summary_line_names_the_plateau() -> None:
    final = {
        "eval/attr_loss": 1.0,
        "no_knowledge/level": 4.0,
        "eval/attr_acc": 0.5,
        "heldout/attr_loss": 8.0,
    }
    base = {"final": final, "wall_s": 12.0}
    line = summary_line({**base, "plateau_start": 300.4, "plateau_end": 550.0, "plateau_evals": 5})
    assert "plateau steps 300-550 (5 evals)" in line and "(0.25x)" in line and "(2.00x)" in line
    assert "not left" in summary_line({**base, "plateau_start": 300, "plateau_end": None})
    assert "no plateau" in summary_line({**base, "plateau_start": None, "plateau_end": None})
    line = summary_line(
        {**base, "plateau_start": None, "plateau_end": None, "knowledge_onset": 412.0}
    )
    assert "no plateau, knowledge from step 412" in line
    assert "held-out" not in summary_line(
        {
            **base,
            "final": {**final, "heldout/attr_loss": None},
            "plateau_start": None,
            "plateau_end": None,
        }
    )


def test_train_state_round_trips_through_a_safe_checkpoint(tmp_path) -> None:
    state = TrainState.start(level=4.5, device=torch.device("cpu"))
    state.step = 8
    state.record_eval(0, 9.0, 0.0)
    state.record_eval(8, 4.4, 0.25)
    state.add_train_loss(torch.tensor(2.0))
    state.add_train_loss(torch.tensor(3.0))
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {}, "model_config": {}, "train_state": state.state_dict()}, path)
    loaded = TrainState.start(level=0.0, device=torch.device("cpu"))
    loaded.load_state_dict(load_checkpoint(path)["train_state"])  # weights_only=True inside
    assert loaded.state_dict() == state.state_dict()
    assert loaded.level == 4.5 and loaded.eval_accs == [0.0, 0.25]
    assert loaded.take_train_loss(world_size=1) == 2.5
    assert loaded.take_train_loss(world_size=1) is None  # the window was reset


def test_make_record_keys() -> None:
    summary = {
        "loss": 1.0,
        "acc": 0.5,
        "confidence": 0.25,
        "by_attribute": {"major": {"loss": 2.0, "acc": 0.0, "confidence": 0.1, "values": 3}},
    }
    record = make_record(
        step=4,
        samples=32,
        lr=1e-3,
        train_loss=None,
        results={"eval": summary},
        levels={"no_knowledge/level": 4.0, "no_knowledge/value_table_entropy": 3.9},
        phases=Phases(
            phase=[1, 2], plateau_start=4.0, plateau_end=None, knowledge_onset=None, band=0.05
        ),
        tokens_per_s=None,
        mfu=None,
        elapsed_s=1.5,
    )
    assert record == {
        "schema": 2,
        "step": 4,
        "samples": 32,
        "lr": 1e-3,
        "train/loss": None,
        "eval/attr_loss": 1.0,
        "eval/attr_acc": 0.5,
        "eval/confidence": 0.25,
        "eval/major/attr_loss": 2.0,
        "eval/major/attr_acc": 0.0,
        "eval/major/confidence": 0.1,
        "no_knowledge/level": 4.0,
        "no_knowledge/value_table_entropy": 3.9,
        "phase": 2,
        "phase/plateau_start": 4.0,
        "phase/plateau_end": None,
        "phase/knowledge_onset": None,
        "perf/tokens_per_s": None,
        "perf/mfu": None,
        "time/elapsed_s": 1.5,
    }


def test_resumable_fields_may_change_on_resume() -> None:
    config = small_config(Path("x"), checkpoint_every=4)
    saved = config.to_dict()
    check_resumable(saved, dataclasses.replace(config, checkpoint_every=8, keep_checkpoints=True))
    assert {"checkpoint_every", "keep_checkpoints", "threads"} <= RESUMABLE_FIELDS
    with pytest.raises(ValueError, match="--eval-every differs"):
        check_resumable(saved, dataclasses.replace(config, eval_every=5))


def test_control_run_and_twin(tmp_path) -> None:
    control = small_config(tmp_path / "control", steps=6, eval_every=3, control=True)
    twin_summary = train(control)
    assert twin_summary["control"] is True
    # The control's curve is the measured no-knowledge level beside a real run.
    records: list[dict] = []
    summary = train(
        small_config(tmp_path / "real", steps=6, eval_every=3, twin=str(tmp_path / "control")),
        on_eval=lambda step, record, model: records.append(record),
    )
    twin_curve = [r["eval/attr_loss"] for r in read_records(tmp_path / "control")]
    assert [r["twin/eval/attr_loss"] for r in records] == pytest.approx(twin_curve)
    assert all(r["twin/eval/spread"] is None for r in records)  # one seed: no spread
    assert summary["twin"] == [str(tmp_path / "control")]
    assert set(summary["plateau_length_by_band"]) == {"0.05", "0.1", "0.2"}
    # A twin must share the world and probes, and be a control run.
    with pytest.raises(ValueError, match="--individuals is 24 there, 30 here"):
        train(small_config(tmp_path / "x", individuals=30, twin=str(tmp_path / "control")))
    with pytest.raises(ValueError, match="not a control run"):
        train(small_config(tmp_path / "y", twin=str(tmp_path / "real")))
    with pytest.raises(ValueError, match="--twin draws a control"):
        small_config(tmp_path / "z", control=True, twin="a").validate()


def test_a_diverging_run_stops_with_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "nan"
    flags = [*SMALL_FLAGS, "--steps", "6", "--eval-every", "3", "--lr", "1e10", "--grad-clip", "0"]
    assert main([*flags, "--out", str(out)]) == EXIT_DIVERGED
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite loss at the evaluation of step 3" in err, err
    assert "last finite eval loss" in err and "--allow-nonfinite" in err, err
    # Everything written before the divergence is valid JSON (no bare NaN).
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))


def test_without_the_train_probe_records_only_knowledge_probes(tmp_path) -> None:
    """--no-train-probe drops the train-template probe's keys and nothing else: training, the
    eval probes and the phases are the same (an evaluation costs about half)."""
    from kadyn.config import make_config
    from kadyn.train import read_metrics, train

    common = dict(SMALL_RUN, steps=4, eval_every=2, device="cpu")
    train(make_config("tiny", **common, out=str(tmp_path / "a")))
    train(make_config("tiny", **common, train_probe=False, out=str(tmp_path / "b")))
    with_probe = read_metrics(tmp_path / "a" / "metrics.jsonl")
    without = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert len(with_probe) == len(without) == 3

    def probe_key(k: str) -> bool:  # the train-template probe's keys; train/loss is the stream's
        return k.startswith("train/") and k != "train/loss"

    for a, b in zip(with_probe, without):
        assert any(probe_key(k) for k in a) and not any(probe_key(k) for k in b)
        timing = ("time/", "perf/")
        assert {k: v for k, v in a.items() if not probe_key(k) and not k.startswith(timing)} == {
            k: v for k, v in b.items() if not k.startswith(timing)
        }
