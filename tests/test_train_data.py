"""`kadyn-train --data DIR`: training on a kadyn-gen dataset's rows instead of the live stream.

The dataset fixes the world, sampling and row length; rows are read in order, wrapping around;
a killed run resumes to the uninterrupted run's numbers; a checkpoint resumes only on its dataset.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from test_train import assert_same_numbers, read_records, small_config, without_timing

import kadyn
from kadyn.batches import dataset_settings
from kadyn.checkpoint import CheckpointError
from kadyn.dataset import read_manifest
from kadyn.gen import main as gen
from kadyn.stacked import train_stacked
from kadyn.train import build_world, main, train

ROWS = 100  # fewer than the run reads: the second epoch starts at row 0


def make_dataset(out: Path, *flags: str) -> Path:
    argv = "--individuals 24 --heldout 8 --samples 100 --shard-rows 40 --batch-rows 16 --quiet"
    assert gen([*argv.split(), *flags, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "bios", "--alpha", "0.5", "--seed", "3")


def data_config(out: Path, dataset: Path, **overrides):
    return small_config(out, **{"data": str(dataset), "steps": 16, "eval_every": 4, **overrides})


def test_the_dataset_sets_the_world_and_sampling(dataset: Path) -> None:
    settings = dataset_settings(read_manifest(dataset))
    assert settings["individuals"] == 24 and settings["heldout"] == 8
    assert settings["sampling"] == "power" and settings["alpha"] == 0.5
    assert settings["n_cities"] == 800  # kadyn-gen writes the paper's pools
    config = dataclasses.replace(small_config(Path("unused")), **settings)
    world = build_world(config)
    assert world.vocab_size == len(kadyn.load_dataset(dataset).vocab)


def test_rows_are_read_in_order_and_wrap(tmp_path: Path, dataset: Path) -> None:
    seen: list[list[int]] = []
    ids: list[torch.Tensor] = []
    train(
        data_config(tmp_path / "run", dataset),
        on_step=lambda step, batch, model: (
            seen.append(batch["sample_index"].tolist()),
            ids.append(batch["input_ids"]),
        ),
    )
    # batch_size 8: 16 steps read 128 rows, rows 0..99 then 0..27 again.
    order = [i for batch in seen for i in batch]
    assert order == [*range(ROWS), *range(28)]
    ds = kadyn.load_dataset(dataset)
    assert torch.equal(ids[0], torch.stack([ds[i]["input_ids"] for i in range(8)]))
    assert ids[0].dtype == torch.int32


class Killed(Exception):
    pass


def kill_at(at: int):
    def kill(step: int, record: dict, model: object) -> None:
        if step == at:
            raise Killed

    return kill


def test_a_killed_data_run_resumes_exactly(tmp_path: Path, dataset: Path) -> None:
    train(data_config(tmp_path / "full", dataset))
    with pytest.raises(Killed):
        train(data_config(tmp_path / "killed", dataset), on_eval=kill_at(8))
    train(data_config(tmp_path / "killed", dataset, resume=True))
    full, resumed = read_records(tmp_path / "full"), read_records(tmp_path / "killed")
    assert [r["step"] for r in resumed] == [0, 4, 8, 12, 16]
    assert_same_numbers(without_timing(full), without_timing(resumed))


def test_a_checkpoint_resumes_only_on_its_dataset(tmp_path: Path, dataset: Path) -> None:
    out, data = tmp_path / "run", tmp_path / "bios"
    with pytest.raises(Killed):
        train(data_config(out, make_dataset(data, "--seed", "3")), on_eval=kill_at(8))
    # Another --data is a changed setting; other rows at the same path are another dataset.
    with pytest.raises(ValueError, match="--data differs"):
        train(data_config(out, dataset, resume=True))
    shutil.rmtree(data)
    make_dataset(data, "--seed", "4")
    with pytest.raises(CheckpointError, match="another dataset"):
        train(data_config(out, data, resume=True))


def test_a_dataset_the_trainer_cannot_use_is_refused(tmp_path: Path) -> None:
    eval_rows = make_dataset(tmp_path / "eval", "--split", "eval")
    with pytest.raises(ValueError, match="'eval'-template rows"):
        train(data_config(tmp_path / "run", eval_rows))
    with pytest.raises(ValueError, match="--data: no dataset directory"):
        train(data_config(tmp_path / "run2", tmp_path / "nowhere"))


def test_print_config_shows_what_the_dataset_sets(dataset: Path, capsys) -> None:
    assert main(["--data", str(dataset), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "individuals = 24" in printed and 'sampling = "power"' in printed


def test_stacked_members_read_the_dataset_too(tmp_path: Path, dataset: Path) -> None:
    train(data_config(tmp_path / "solo", dataset, steps=8))
    outcomes = train_stacked(
        [data_config(tmp_path / f"m{seed}", dataset, steps=8, seed=seed) for seed in (0, 1)]
    )
    assert all(isinstance(o, dict) for o in outcomes)
    solo, member = read_records(tmp_path / "solo"), read_records(tmp_path / "m0")
    assert [r["step"] for r in member] == [r["step"] for r in solo]
    for a, b in zip(solo, member):
        assert b["eval/attr_loss"] == pytest.approx(a["eval/attr_loss"], rel=1e-4)
        assert b["no_knowledge/level"] == pytest.approx(a["no_knowledge/level"], rel=1e-9)
