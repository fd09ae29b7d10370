//! `README.md`, the dataset card: a YAML header that declares the Hugging Face `datasets` configs
//! (`default`: the rows under `data/`; `world`: the answer key), so that
//! `datasets.load_dataset(DIR)` and `load_dataset(DIR, "world")` read the folder as it is, and a
//! short body for people: the columns, the config, the command that regenerates it and how to
//! read it. It is a pure function of the config (no paths, no times), like every other file.

use crate::args::DatasetConfig;
use crate::dir::{Shards, CARD_FILE, DATA_DIR, MANIFEST_FILE, VOCAB_FILE, WORLD_FILE};
use crate::manifest::schema_description;

/// The card's text.
pub fn card(config: &DatasetConfig) -> String {
    let o = &config.options;
    let shards = Shards::new(o.samples, o.shard_rows);
    let count = shards.count();
    let columns: String = schema_description(o.seq_len, o.pack)
        .iter()
        .map(|c| {
            // Markdown would take `<pad>` for an HTML tag.
            let meaning = c.meaning.replace("<pad>", "`<pad>`");
            format!("| `{}` | `{}` | {meaning} |\n", c.name, c.dtype)
        })
        .collect();
    let options = serde_json::to_value(o).expect("serialisable");
    let settings: String = options
        .as_object()
        .expect("an object")
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(text) => format!("| `{k}` | `{text}` |\n"),
            None => format!("| `{k}` | `{v}` |\n"),
        })
        .collect();
    let first = shards.plan(0).file;
    format!(
        "---
configs:
- config_name: default
  data_files:
  - split: train
    path: {DATA_DIR}/*.parquet
- config_name: world
  data_files:
  - split: train
    path: {WORLD_FILE}
tags:
- kadyn
- synthetic
---

# kadyn biographies: {samples} rows over {individuals} individuals

Synthetic biographies written by `kadyn-gen` (kadyn {version}). Row `k` is row `k` of
`kadyn.BiographyStream` with the same world, seed and sampling, byte for byte.
`{MANIFEST_FILE}` is the source of truth: every file with its size and sha256, and every row
group with its own sha256. This card ({CARD_FILE}) only summarises it.

## Files

| path | what |
| --- | --- |
| `{first}`, ... | the rows, in {count} shards of up to {shard_rows} rows (row groups of up to {group_rows}); nothing else lives in `{DATA_DIR}/` |
| `{WORLD_FILE}` | the answer key: one row per individual of the `{population}` population (config `world`) |
| `{VOCAB_FILE}` | the token list (`tokens`) and the ids of `<pad>`, `<bos>`, `<eos>` |
| `{MANIFEST_FILE}` | config, schema, files and row groups with their sha256 |

## Columns (config `default`)

| column | type | meaning |
| --- | --- | --- |
{columns}
Config `world`: `individual` (the row's number, as in the column above), `name`, and the six
attribute values as text: `birth_place`, `birth_date`, `university`, `major`, `company`,
`current_location`.

## Config

| option | value |
| --- | --- |
{settings}
Every row is a pure function of this config: this command gives these bytes, on one machine or
split into `--part I/N` runs completed by `kadyn-gen merge DIR`:

```bash
{command}
```

## Reading

```python
import pyarrow.parquet as pq; table = pq.read_table(\"DIR/{DATA_DIR}\")
import polars as pl; df = pl.read_parquet(\"DIR/{DATA_DIR}/*.parquet\")
import duckdb; duckdb.sql(\"SELECT count(*) FROM 'DIR/{DATA_DIR}/*.parquet'\")
from datasets import load_dataset; rows, world = load_dataset(\"DIR\"), load_dataset(\"DIR\", \"world\")
import kadyn; ds = kadyn.load_dataset(\"DIR\")  # a torch Dataset; checks each row group's sha256
```
",
        samples = o.samples,
        individuals = o.individuals,
        version = config.kadyn_version,
        shard_rows = o.shard_rows,
        group_rows = o.batch_rows.min(o.shard_rows),
        population = o.population,
        command = o.command_line("DIR"),
    )
}
