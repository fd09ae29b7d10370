"""Per-individual exposure counts of the trainer (--count-exposures): they equal the bincount of
the training stream's `individual` column over the steps run, and a killed-then-resumed run keeps
them (and its metrics) exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kadyn
from kadyn.checkpoint import load_checkpoint
from kadyn.config import TrainConfig, make_config
from kadyn.train import build_world, make_sampling, read_exposures, train

from small_run import SMALL_RUN

STEPS, EVAL_EVERY = 12, 4
# Power-law sampling: counts far from uniform, so a wrong index would show.
RUN = {**SMALL_RUN, "lr": 3e-3, "sampling": "power", "alpha": 1.0, "count_exposures": True}


def config(out: Path, **overrides) -> TrainConfig:
    return make_config(
        "tiny",
        out=str(out),
        **{
            **RUN,
            "steps": STEPS,
            "eval_every": EVAL_EVERY,
            "checkpoint_every": EVAL_EVERY,
            **overrides,
        },
    )


def records(out: Path) -> list[dict]:
    timing = ("perf/", "time/")
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith(timing)}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


def stream_counts(cfg: TrainConfig, steps: int) -> np.ndarray:
    """Bincount of the `individual` column of the stream the trainer reads, built here anew."""
    world = build_world(cfg)
    stream = kadyn.BiographyStream(
        world,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        sampling=make_sampling(cfg),
        population=cfg.population,
        seed=cfg.seed,
        rank=0,
        world_size=1,
        threads=1,
    )
    it = iter(stream)
    seen = [kadyn.to_torch(next(it))["individual"] for _ in range(steps)]
    n = world.population_size(cfg.population)
    return np.bincount(torch.cat(seen).numpy(), minlength=n) if seen else np.zeros(n, np.int64)


class Killed(Exception):
    pass


def test_exposures_match_the_stream_and_survive_a_resume(tmp_path) -> None:
    full = tmp_path / "full"
    train(config(full))
    cfg = config(full)
    for step in range(0, STEPS + 1, EVAL_EVERY):
        counts = read_exposures(full, step)
        assert counts is not None and counts.dtype == np.int64
        np.testing.assert_array_equal(counts, stream_counts(cfg, step))
    assert read_exposures(full, STEPS).sum() == STEPS * cfg.batch_size  # one biography per row
    ckpt = load_checkpoint(full / "checkpoint.pt")  # weights_only=True inside
    np.testing.assert_array_equal(
        ckpt["train_state"]["exposures"].numpy(), stream_counts(cfg, STEPS)
    )

    # Killed at the eval of step 8, before that step's checkpoint: resumes from step 4.
    killed = tmp_path / "killed"

    def kill(step: int, record: dict, model: object) -> None:
        if step == 2 * EVAL_EVERY:
            raise Killed

    with pytest.raises(Killed):
        train(config(killed), on_eval=kill)
    train(config(killed, resume=True))
    assert records(killed) == records(full)
    for step in range(0, STEPS + 1, EVAL_EVERY):
        np.testing.assert_array_equal(read_exposures(killed, step), read_exposures(full, step))


def test_resume_without_counts_is_refused(tmp_path) -> None:
    out = tmp_path / "run"
    train(config(out, count_exposures=False, steps=EVAL_EVERY))
    assert read_exposures(out, 0) is None
    # Changing what the run computes is refused like any other non-resumable field.
    with pytest.raises(ValueError, match="--count-exposures differs"):
        train(config(out, resume=True, steps=EVAL_EVERY))
