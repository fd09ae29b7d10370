"""Atomic writes: the new content lands whole, no temporary file is left, a failure keeps the old."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kadyn.fileio import atomic_write, atomic_write_bytes, atomic_write_text


def test_writes_bytes_and_text_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo\n")  # creates the parent
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_text(tmp_path / "a.bin", "replaced")
    assert (tmp_path / "a.bin").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "sub"]


def test_streaming_writer(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    atomic_write(path, lambda f: torch.save({"x": torch.arange(3)}, f))
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_writer_keeps_the_old_file_and_no_temporary_file(
    tmp_path: Path, error: type[BaseException]
) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def write(f) -> None:
        f.write(b"half of the new")
        raise error("killed mid-write")

    with pytest.raises(error):
        atomic_write(path, write)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
