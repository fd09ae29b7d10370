"""The command line as the field's tools expect it: the `kadyn` front door and `python -m kadyn`,
`--version` on every command, `kadyn-train --config FILE` and `--print-config`, the provenance
config.toml records, and summary.json.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kadyn
from kadyn import cli
from kadyn.checkpoint import load_model
from kadyn.config import make_config, parse_args, read_provenance, read_toml, to_toml
from kadyn.train import main as train_main
from kadyn.train import speed_summary

from small_run import SMALL_RUN

VERSION_LINE = re.compile(r"^kadyn(-\w+)? \d+\.\d+\.\d+\S*$")
SMALL_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in SMALL_RUN.items() if k != "progress"]
SMALL_FLAGS += ["--no-progress", "--steps=4", "--eval-every=2"]


@pytest.mark.parametrize("command", ["train", "exp", "bench", "export"])
def test_every_command_answers_version(command, capsys) -> None:
    assert cli.main([command, "--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kadyn-{command} {kadyn.__version__}"


def test_the_front_door(capfd) -> None:
    assert cli.main(["--version"]) == 0
    assert capfd.readouterr().out == f"kadyn {kadyn.__version__}\n"
    assert cli.main(["--help"]) == 0
    out = capfd.readouterr().out
    assert all(f"  {name} " in out for name in ("train", "gen", "exp", "bench", "export"))
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capfd.readouterr().err
    assert cli.main([]) == 2
    capfd.readouterr()
    assert cli.main(["gen", "--version"]) == 0  # the Rust generator writes to fd 1 itself
    assert VERSION_LINE.match(capfd.readouterr().out.strip())


def test_python_dash_m_kadyn() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kadyn", "train", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout == f"kadyn-train {kadyn.__version__}\n"


def test_every_console_script_is_declared() -> None:
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for script, target in (
        ("kadyn", "kadyn.cli:main"),
        ("kadyn-train", "kadyn.train:main"),
        ("kadyn-gen", "kadyn.gen:main"),
        ("kadyn-exp", "kadyn.experiments.cli:main"),
        ("kadyn-bench", "kadyn.bench:main"),
        ("kadyn-export", "kadyn.export:main"),
    ):
        assert f'\n{script} = "{target}"' in text, script


def test_print_config_prints_the_resolved_settings(capsys) -> None:
    assert train_main(["--preset", "tiny", "--steps", "7", "--print-config"]) == 0
    settings = read_toml(capsys.readouterr().out, "stdout")
    assert settings == make_config("tiny", steps=7).to_dict()
    assert train_main(["--steps", "0", "--print-config"]) == 2  # validated like a run


def test_config_file_under_flags(tmp_path) -> None:
    path = tmp_path / "config.toml"
    saved = make_config("tiny", steps=123, lr=1e-3, out="runs/a")
    path.write_text(to_toml(saved, {"kadyn": "0.0.1", "command": "kadyn-train --steps 123"}))
    config, given = parse_args(["--config", str(path), "--lr", "2e-3", "--out", "runs/b"])
    assert (config.steps, config.lr, config.out) == (123, 2e-3, "runs/b")
    assert given["config"] == str(path)
    # A few keys are enough: the rest comes from the preset the file (or --preset) names.
    path.write_text('preset = "paper"\n[optim]\nsteps = 9\n')
    config, _ = parse_args(["--config", str(path)])
    assert (config.preset, config.steps, config.d_model) == ("paper", 9, 512)
    path.write_text("[optim]\nstepz = 9\n")
    with pytest.raises(ValueError, match="unknown option 'stepz'"):
        parse_args(["--config", str(path)])


def test_a_run_records_its_provenance_and_summary(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert train_main([*SMALL_FLAGS, "--out", str(out)]) == 0
    ran = read_provenance(out / "config.toml")
    assert ran["kadyn"] == kadyn.__version__ and ran["device"] == "cpu"
    assert ran["torch"] and re.match(r"\d+\.\d+", ran["python"])
    assert ran["command"].startswith("kadyn-train --individuals=24")
    if "git_commit" in ran:  # run from a checkout (the tests are)
        assert re.fullmatch(r"[0-9a-f]{40}", ran["git_commit"]) and "git_dirty" in ran
    # --resume and --config read the settings and leave the provenance out.
    assert parse_args(["--config", str(out / "config.toml")])[0].steps == 4
    assert train_main(["--out", str(out), "--resume"]) == 0

    summary = json.loads((out / "summary.json").read_text())
    for key in ("plateau_start", "plateau_end", "knowledge_onset", "plateau_length", "final"):
        assert key in summary, key
    assert summary["final"]["step"] == 4 and summary["wall_s"] > 0
    assert summary["tokens"] == 4 * SMALL_RUN["batch_size"] * SMALL_RUN["seq_len"]
    assert summary["tokens_per_s"] > 0 and summary["train_s"] > 0 and summary["mfu"] is None


def test_load_model_is_public(tmp_path) -> None:
    out = tmp_path / "run"
    assert train_main([*SMALL_FLAGS, "--out", str(out)]) == 0
    assert kadyn.load_model is load_model
    model, ckpt = kadyn.load_model(out)
    assert not model.training and ckpt["train_state"]["step"] == 4


def test_speed_summary_weights_each_evaluation_window() -> None:
    records: list[dict[str, Any]] = [
        {"step": 0, "perf/tokens_per_s": None, "perf/mfu": None},
        {"step": 10, "perf/tokens_per_s": 100.0, "perf/mfu": 0.2},  # 10 steps x 10 tokens: 1 s
        {"step": 40, "perf/tokens_per_s": 300.0, "perf/mfu": 0.4},  # 300 tokens: 1 s
    ]
    speed = speed_summary(records, tokens_per_step=10)
    assert speed == pytest.approx(
        {"tokens": 400, "train_s": 2.0, "tokens_per_s": 200.0, "mfu": 0.3}
    )
    records[1]["perf/mfu"] = None  # on CPU
    assert speed_summary(records, tokens_per_step=10)["mfu"] is None
    assert speed_summary([], tokens_per_step=10)["tokens_per_s"] is None
