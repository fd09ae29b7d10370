"""A kadyn-gen folder opens as it is in every reader the README names: pyarrow, polars, DuckDB and
Hugging Face `datasets`, each giving exactly the rows of `kadyn.load_dataset` (and DuckDB's count
exactly the manifest's total: no answer key or vocabulary among the rows). A reader that is not
installed skips its test; `pip install -e .[dev]` installs them all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

import kadyn
from kadyn.gen import main as gen

ROWS = 1000
INDIVIDUALS = 80
# 4 shards (the last one shorter), row groups of 128: the readers must stitch them in order.
ARGV = (
    f"--individuals {INDIVIDUALS} --samples {ROWS} --shard-rows 300 --batch-rows 128 "
    "--alpha 0.7 --seed 5 --quiet"
).split()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("readers") / "bios"
    assert gen([*ARGV, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def expected(folder: Path) -> dict[str, np.ndarray]:
    """The rows as kadyn reads them (checked against the manifest's sha256s)."""
    ds = kadyn.load_dataset(folder)
    batches = list(ds.iter_batches())
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def _ids(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed_size_list<int32> column as a (rows, seq_len) array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.values.to_numpy().reshape(len(array), -1)


def test_the_layout_keeps_the_rows_alone_in_data(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        f"shard-{i:05d}-of-00004.parquet" for i in range(4)
    ]
    assert [s["file"] for s in manifest["shards"]] == [
        f"data/shard-{i:05d}-of-00004.parquet" for i in range(4)
    ]
    assert manifest["world_table"]["file"] == "world/world.parquet"
    assert manifest["vocab"]["file"] == "vocab.json"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n- config_name: default\n")
    assert "path: data/*.parquet" in card and "path: world/world.parquet" in card
    assert f"--samples {ROWS} " in card and "--sampling power:0.7 " in card


def test_pyarrow_read_table_and_dataset(folder: Path, expected: dict[str, np.ndarray]) -> None:
    table = pq.read_table(folder / "data")
    assert table.num_rows == ROWS
    assert np.array_equal(_ids(table["input_ids"]), expected["input_ids"])
    assert np.array_equal(_ids(table["attr_type"]), expected["attr_type"])
    assert table["sample_index"].to_numpy().tolist() == list(range(ROWS))

    dataset = pads.dataset(folder / "data", format="parquet")
    assert dataset.count_rows() == ROWS
    batches = list(dataset.to_batches(batch_size=256))
    ids = np.concatenate([kadyn.to_torch(b)["input_ids"].numpy() for b in batches])
    assert np.array_equal(ids, expected["input_ids"])
    world = pq.read_table(folder / "world" / "world.parquet")
    assert world.num_rows == INDIVIDUALS


def test_polars(folder: Path, expected: dict[str, np.ndarray]) -> None:
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(folder / "data")
    assert df.height == ROWS
    assert df.schema["input_ids"] == pl.Array(pl.Int32, expected["input_ids"].shape[1])
    assert np.array_equal(df["input_ids"].to_numpy(), expected["input_ids"])
    lazy = pl.scan_parquet(str(folder / "data" / "*.parquet"))
    assert lazy.select(pl.len()).collect().item() == ROWS
    assert lazy.select(pl.col("sample_index").max()).collect().item() == ROWS - 1
    names = pl.read_parquet(folder / "world" / "world.parquet")["name"]
    assert names[0] == kadyn.World(n_individuals=INDIVIDUALS).individual(0)["name"]


def test_duckdb_counts_exactly_the_rows(folder: Path, expected: dict[str, np.ndarray]) -> None:
    duckdb = pytest.importorskip("duckdb")
    rows = f"'{folder}/data/*.parquet'"
    assert duckdb.sql(f"SELECT count(*) FROM {rows}").fetchone() == (ROWS,)
    # The rows' individuals, joined to the answer key beside them.
    joined = duckdb.sql(
        f"SELECT s.sample_index, s.individual, w.name FROM {rows} s "
        f"JOIN '{folder}/world/world.parquet' w USING (individual) ORDER BY s.sample_index"
    ).fetchall()
    assert len(joined) == ROWS
    assert [r[1] for r in joined] == expected["individual"].tolist()
    world = kadyn.World(n_individuals=INDIVIDUALS)
    assert joined[7][2] == world.individual(joined[7][1])["name"]


def test_hugging_face_datasets_reads_both_configs(
    folder: Path,
    expected: dict[str, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf-cache")
    rows = datasets.load_dataset(str(folder), cache_dir=cache)
    assert list(rows) == ["train"] and rows["train"].num_rows == ROWS
    train = rows["train"].with_format("numpy")
    assert np.array_equal(np.stack(train["input_ids"]), expected["input_ids"])
    assert np.array_equal(np.asarray(train["sample_index"]), np.arange(ROWS))
    world = datasets.load_dataset(str(folder), "world", cache_dir=cache)["train"]
    assert world.num_rows == INDIVIDUALS
    assert world.column_names[:2] == ["individual", "name"]
    assert world[3]["name"] == kadyn.World(n_individuals=INDIVIDUALS).individual(3)["name"]
