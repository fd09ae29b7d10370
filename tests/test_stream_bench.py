"""`kadyn.stream_bench` runs end to end and reports the stream beside its memory-copy bound
(figures only: no timing is asserted)."""

from __future__ import annotations

import statistics

import pytest

import kadyn
from kadyn import stream_bench


def test_copy_bound_copies_a_batch_into_fresh_arrays() -> None:
    step = stream_bench.copy_bound(batch=8, seq_len=16)
    assert step() == 8


@pytest.mark.parametrize("torch_tensors", [True, False])
def test_measure_reports_both_rates_and_their_ratio(torch_tensors: bool) -> None:
    world = kadyn.World(n_individuals=50, seed=1)
    result = stream_bench.measure(
        world, batch=16, seq_len=128, seconds=0.2, slices=2, torch_tensors=torch_tensors
    )
    assert len(result.ratios) == 2 and all(r > 0 for r in result.ratios)
    assert result.stream_tokens_per_s > 0 and result.bound_tokens_per_s > 0
    assert result.ratio == pytest.approx(statistics.median(result.ratios))
    line = result.line()
    assert line.startswith("stream (1 thread) / memcopy bound = ")
    assert "batch 16 x seq_len 128" in line
    assert set(result.as_dict()) >= {"ratio", "stream_tokens_per_s", "bound_tokens_per_s"}


def test_bad_slices_are_refused() -> None:
    with pytest.raises(ValueError, match="slices must be >= 1"):
        stream_bench.measure(kadyn.World(n_individuals=10), slices=0)


def test_main_prints_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--seconds", "0.2", "--slices", "1", "--batch", "8", "--individuals", "20"]
    assert stream_bench.main(argv) == 0
    assert capsys.readouterr().out.startswith("stream (1 thread) / memcopy bound = ")


@pytest.mark.parametrize("flag", ["--threads", "--slices"])
def test_main_refuses_counts_below_one(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        stream_bench.main([flag, "0"])
    assert f"argument {flag}: must be an integer in [1, " in capsys.readouterr().err
