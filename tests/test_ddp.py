"""Data-parallel training: two gloo processes on CPU, spawned the way torchrun would start them.

Each rank records the `sample_index` of its rows and its parameters after every step; the ranks
must have seen disjoint samples, covering the global stream's first rows, and hold identical
parameters (DDP averaged the gradients). Evaluation sums are all-reduced, so both ranks report the
same metrics, equal to a single-process evaluation of the same initial model.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from kadyn.config import make_config
from kadyn.train import train

from small_run import SMALL_RUN

STEPS, BATCH = 3, 8
SMALL = {**SMALL_RUN, "steps": STEPS, "eval_every": STEPS, "device": "cpu"}


def _worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    import os

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    seen: dict[str, list] = {"samples": [], "params": [], "records": []}

    def on_step(step: int, batch: dict, model: torch.nn.Module) -> None:
        seen["samples"].append(batch["sample_index"].tolist())
        seen["params"].append(torch.cat([p.detach().flatten() for p in model.parameters()]))

    def on_eval(step: int, record: dict, model: torch.nn.Module) -> None:
        seen["records"].append({k: v for k, v in record.items() if k != "time/elapsed_s"})

    train(make_config("tiny", out=f"{tmp}/run", **SMALL), on_step=on_step, on_eval=on_eval)
    torch.save(seen, f"{tmp}/rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for step in range(STEPS):
        a, b = (set(r["samples"][step]) for r in ranks)
        assert len(a) == len(b) == BATCH // 2
        assert not a & b, f"step {step}: both ranks saw {a & b}"
        # Together the ranks took exactly the next BATCH rows of the global stream.
        assert a | b == set(range(step * BATCH, (step + 1) * BATCH))
        assert torch.equal(ranks[0]["params"][step], ranks[1]["params"][step])
    assert not torch.equal(ranks[0]["params"][0], ranks[0]["params"][-1])  # it did train
    timing = {"perf/tokens_per_s", "perf/mfu"}
    strip = [[{k: v for k, v in r.items() if k not in timing} for r in x["records"]] for x in ranks]
    assert strip[0] == strip[1]
    assert [r["step"] for r in strip[0]] == [0, STEPS]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt",
        "config.toml",
        "curves.png",
        "metrics.jsonl",
        "summary.json",
    ]

    # The sharded, all-reduced evaluation equals one process evaluating every probe.
    single: list[dict] = []
    train(
        make_config("tiny", out=str(tmp_path / "single"), **{**SMALL, "steps": 1, "eval_every": 1}),
        on_eval=lambda step, record, model: single.append(record),
    )
    for key in ("train/attr_loss", "eval/attr_loss", "eval/attr_acc", "heldout/attr_loss"):
        assert abs(single[0][key] - strip[0][0][key]) < 1e-5, key
