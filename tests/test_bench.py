"""kadyn-bench's quick mode runs end to end and writes every figure; the plain-Python baseline
renders the world's own sentences."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import kadyn
from kadyn import bench


def test_quick_bench_writes_json_with_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--max-threads", "2", "--memory", "--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {
        "config",
        "memcopy",
        "stream",
        "python_baseline",
        "parquet_read",
        "gen_write",
        "stream_vs_python",
        "stream_vs_memcopy",
        "memory",
    }
    assert {(e["sampler"], e["threads"]) for e in result["stream"]} == {
        (s, t) for s in ("uniform", "power0.7", "curriculum") for t in (1, 2)
    }
    for entry in [*result["stream"], result["python_baseline"], result["parquet_read"]["pyarrow"]]:
        assert entry["samples_per_s"] > 0 and entry["ratio_to_memcopy"] > 0
    assert result["gen_write"]["mb_per_s"] > 0
    assert set(result["stream_vs_python"]) == {"1", "2"}
    paired = result["stream_vs_memcopy"]
    assert paired["threads"] == 1 and len(paired["ratios"]) == 10 and 0 < paired["ratio"]
    memory = result["memory"]
    assert memory["tokens"] >= 10**6 and memory["rss_after_mb"] > 0
    assert result["config"]["cpu"] == bench.cpu_model()


def test_cpu_model_names_the_processor_and_its_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
        "model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: another\n"
    )
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
    )
    assert bench.cpu_model() == "AMD EPYC (family 25, model 17)"

    def no_proc(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc here")

    monkeypatch.setattr("builtins.open", no_proc)
    monkeypatch.setattr(bench.platform, "processor", lambda: "arm")
    assert bench.cpu_model() == "arm"


def test_python_baseline_renders_the_worlds_sentences() -> None:
    baseline = bench.load_baseline(None)
    assert baseline is not None, "benches/python_baseline.py is part of the repository"
    world = kadyn.World(n_individuals=50, seed=1)
    gen = baseline.PythonBaseline(world, seq_len=128, seed=0)
    batch = gen.batch(8)
    assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (8, 128)
    assert batch["attr_type"].dtype == np.int8
    for ids, types, who in zip(batch["input_ids"], batch["attr_type"], batch["individual"]):
        text = world.decode(ids)
        sentences = world.sentences(int(who), split="train")
        assert sum(s in text for s in sentences) >= 6, text
        # Six attribute values, each one maximal run of its attribute id.
        runs = [t for i, t in enumerate(types) if t >= 0 and (i == 0 or types[i - 1] != t)]
        assert sorted(runs) == list(range(6))
        assert ids[0] == world.bos_id and world.pad_id in ids
