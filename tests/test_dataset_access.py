"""Random access to a `kadyn.load_dataset` dataset: the row-group cache (bounded) and the
memory-mapped copy return the rows sequential reading does, a damaged row group or copy is an
error, and `kadyn-bench access --quick` runs end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gen import flip_inside_pages
from torch.utils.data import DataLoader

import kadyn
from kadyn import bench
from kadyn.dataset import KadynDataset
from kadyn.gen import main as gen

# 3000 rows in 3 shards of 1000, row groups of 256 rows: 9 groups of 256 and 3 of 232.
SMALL = (
    "--individuals 200 --samples 3000 --seq-len 110 --shard-rows 1000 --batch-rows 256 "
    "--sampling subset:20@500,power:0.7 --seed 3 --quiet"
).split()
GROUP_BYTES = 256 * (5 * 110 + 16)  # one decoded row group of 256 rows


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("access") / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    return out


def sequential(directory: Path) -> dict[str, torch.Tensor]:
    """Every row, read in order, row group by row group."""
    groups = list(kadyn.load_dataset(directory, verify=False).iter_batches())
    return {k: torch.cat([g[k] for g in groups]) for k in groups[0]}


def assert_rows(rows: list[dict[str, torch.Tensor]], indices: list[int], want: dict) -> None:
    assert len(rows) == len(indices)
    for row, i in zip(rows, indices):
        assert set(row) == set(want)
        for k, column in want.items():
            assert row[k].dtype == column.dtype and row[k].shape == column.shape[1:], k
            assert torch.equal(row[k], column[i]), (k, i)


def opened(directory: Path, cache: Path, row_cache_bytes: int) -> KadynDataset:
    ds = kadyn.load_dataset(directory, verify=False)
    ds.cache_dir = cache
    ds.row_cache_bytes = row_cache_bytes
    return ds


def test_random_access_returns_the_sequential_rows(data: Path, tmp_path: Path) -> None:
    want = sequential(data)
    assert int(want["sample_index"][1234]) == 1234
    order = np.random.default_rng(1).permutation(3000).tolist()
    picks = order[:400] + [-1, -3000, 5, 5]  # negative indices and repeats too
    # Fits the default row cache: decoded once, held in memory, no copy.
    ds = opened(data, tmp_path / "cache", KadynDataset.row_cache_bytes)
    assert_rows([ds[i] for i in picks], picks, want)
    assert_rows(ds.__getitems__(picks), picks, want)
    assert ds._store is None and not (tmp_path / "cache").exists()
    # A cache of three row groups, no copy: groups decoded again and again, rows unchanged.
    ds = opened(data, tmp_path / "cache", 3 * GROUP_BYTES)
    ds.random_access_copy = False
    assert_rows([ds[i] for i in picks], picks, want)
    assert_rows(ds.__getitems__(picks), picks, want)
    assert ds._store is None and not (tmp_path / "cache").exists()
    # The same cache with the copy: written at the first row group decoded twice.
    ds = opened(data, tmp_path / "cache", 3 * GROUP_BYTES)
    assert_rows([ds[i] for i in picks], picks, want)
    assert ds._store is not None and ds._store.path.parent == tmp_path / "cache" / "rows"
    assert_rows([ds[i] for i in picks], picks, want)
    assert_rows(ds.__getitems__(picks), picks, want)
    with pytest.raises(IndexError):
        ds[3000]
    with pytest.raises(IndexError):
        ds.__getitems__([0, -3001])
    # Fresh tensors from the copy: writable, and writing one leaves the copy alone.
    row = ds[7]
    row["input_ids"][0] = -5
    assert torch.equal(ds[7]["input_ids"], want["input_ids"][7])


def test_a_shuffled_dataloader_with_workers_reads_the_copy(data: Path, tmp_path: Path) -> None:
    want = sequential(data)
    ds = opened(data, tmp_path / "cache", GROUP_BYTES)
    path = ds.prepare_random_access()
    clone = pickle.loads(pickle.dumps(ds))  # what a worker gets: no open copy, no cache
    assert clone._store is None and not clone._lru and clone.cache_dir == tmp_path / "cache"
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["input_ids"].shape[1:] == (110,)
        for k, i in enumerate(batch["sample_index"].tolist()):
            assert torch.equal(batch["input_ids"][k], want["input_ids"][i])
            assert torch.equal(batch["attr_type"][k], want["attr_type"][i])
            assert int(batch["individual"][k]) == int(want["individual"][i])
        seen += batch["sample_index"].tolist()
    assert sorted(seen) == list(range(3000))
    assert [p.name for p in (tmp_path / "cache" / "rows").iterdir() if p.is_dir()] == [path.name]


def test_the_row_cache_is_bounded(data: Path, tmp_path: Path) -> None:
    order = np.random.default_rng(2).permutation(3000).tolist()
    for groups in (1, 3):
        ds = opened(data, tmp_path / "cache", groups * GROUP_BYTES)
        ds.random_access_copy = False
        for i in order[:300]:
            ds[i]
            assert len(ds._lru) <= groups and ds._lru_bytes <= groups * GROUP_BYTES
        assert len(ds._lru) == groups
    # Smaller than one row group: the last one is still kept.
    ds = opened(data, tmp_path / "cache", 1)
    ds.random_access_copy = False
    for i in order[:50]:
        ds[i]
        assert len(ds._lru) == 1
    # Everything fits: each row group decoded once, then held.
    ds = opened(data, tmp_path / "cache", KadynDataset.row_cache_bytes)
    for i in order:
        ds[i]
    assert len(ds._lru) == 12 and len(ds._decoded) == 12


def test_sequential_reads_make_no_copy_until_a_third_pass(data: Path, tmp_path: Path) -> None:
    ds = opened(data, tmp_path / "cache", GROUP_BYTES)
    for i in range(3000):
        assert int(ds[i]["sample_index"]) == i
    for batch in DataLoader(ds, batch_size=100):
        assert batch["input_ids"].shape == (100, 110)
    assert ds._store is None and not (tmp_path / "cache").exists()
    # A third pass: the first row group decoded a third time marks the copy as worth it, and the
    # next read makes it.
    assert_rows(ds.__getitems__(list(range(300))), list(range(300)), sequential(data))
    assert ds._store is None
    assert int(ds[300]["sample_index"]) == 300 and ds._store is not None


def test_a_copy_is_reused_and_a_stale_one_ignored(
    data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    path = opened(data, cache, GROUP_BYTES).prepare_random_access()
    assert "writing an uncompressed copy" in capfd.readouterr().err
    stamp = (path / "store.json").stat().st_mtime_ns
    # Another process (a fresh dataset object) opens it at its first random read.
    ds = opened(data, cache, GROUP_BYTES)
    assert int(ds[2999]["sample_index"]) == 2999 and ds._store is not None
    assert ds.prepare_random_access() == path
    assert (path / "store.json").stat().st_mtime_ns == stamp and capfd.readouterr().err == ""
    # A copy that does not match (here: cut short) is rewritten.
    (path / "input_ids.bin").write_bytes((path / "input_ids.bin").read_bytes()[:-4])
    assert opened(data, cache, GROUP_BYTES).prepare_random_access() == path
    assert "writing an uncompressed copy" in capfd.readouterr().err
    assert (path / "input_ids.bin").stat().st_size == 3000 * 110 * 4


def test_kadyn_cache_sets_the_default_place(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KADYN_CACHE", str(tmp_path / "env"))
    ds = kadyn.load_dataset(data, verify=False)
    assert ds.prepare_random_access().parent == tmp_path / "env" / "rows"


def test_a_corrupt_row_group_raises_on_random_access(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert gen([*SMALL, "--out", str(out)]) == 0
    shard = kadyn.load_dataset(out, verify=False).shard_paths[1]
    flip_inside_pages(shard, 2)  # rows 1512..1767
    ds = opened(out, tmp_path / "cache", GROUP_BYTES)
    assert int(ds[1511]["sample_index"]) == 1511
    with pytest.raises(ValueError, match=r"row group 2 \(rows 1512\.\.1767\) differs from its"):
        ds.__getitems__([5, 1600])
    # Writing the copy reads every row group, so it refuses too, and leaves no copy behind.
    ds = opened(out, tmp_path / "cache", GROUP_BYTES)
    with pytest.raises(ValueError, match=r"row group 2 \(rows 1512\.\.1767\) differs from its"):
        ds.prepare_random_access()
    assert not [p for p in (tmp_path / "cache" / "rows").iterdir() if p.is_dir()]


def test_a_corrupt_copy_raises(data: Path, tmp_path: Path) -> None:
    path = opened(data, tmp_path / "cache", GROUP_BYTES).prepare_random_access()
    groups = json.loads((path / "store.json").read_text())["groups"]
    assert [g["rows"] for g in groups] == [256] * 3 + [232] + ([256] * 3 + [232]) * 2
    ids = path / "input_ids.bin"
    raw = bytearray(ids.read_bytes())
    raw[(1600 * 110 + 7) * 4] ^= 0x01  # row 1600: the copy's rows 1512..1767 (group 6)
    ids.write_bytes(bytes(raw))
    ds = opened(data, tmp_path / "cache", GROUP_BYTES)
    assert int(ds[1511]["sample_index"]) == 1511  # the group before is intact
    with pytest.raises(ValueError, match=r"rows 1512\.\.1767 of the random-access copy .*corrupt"):
        ds[1700]
    with pytest.raises(ValueError, match=r"rows 1512\.\.1767 of the random-access copy"):
        ds.__getitems__([0, 1600])


def test_quick_access_bench_runs(tmp_path: Path) -> None:
    out = tmp_path / "access.json"
    assert bench.main(["access", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["rows"] == 6000 and result["kadyn_copy_s"] > 0
    rates = result["rows_per_s"]
    assert rates["kadyn ds[i]"] > 0 and rates["kadyn DataLoader"] > 0
    assert all(len(r) == 2 for r in result["slices"].values())
    if result["hf_conversion_s"] is not None:  # HF datasets installed
        assert rates["HF ds[i] (torch)"] > 0 and rates["HF DataLoader"] > 0
        assert set(result["ratios"]) == {
            "kadyn ds[i] / HF ds[i] (torch)",
            "kadyn ds[i] / HF ds[i] (python)",
            "kadyn DataLoader / HF DataLoader",
        }
