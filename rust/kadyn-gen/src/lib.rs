//! kadyn-gen: writes a kadyn dataset as Parquet shards plus a manifest, so that any Arrow reader
//! (pyarrow, polars, DuckDB, HF `datasets`) can train on the exact rows of `kadyn.BiographyStream`.
//!
//! Row `k` of a dataset is row `k` of the stream with the same world, seed and sampling: both
//! call `kadyn_core::RowBuilder`, there is no second implementation. The output directory holds
//!
//! - `shard-00000.parquet`, ...: rows `[i * shard_rows, (i + 1) * shard_rows)`, zstd, one row group
//!   per `--batch-rows` rows, the stream's Arrow schema (DESIGN.md);
//! - `world.parquet`: one row per individual of the population (the answer key);
//! - `vocab.json`: the token list and special ids;
//! - `manifest.json`, written last: config, schema, files with row counts and sha256.
//!
//! Runs are kill-safe and resumable (see [`dir`]); the same command gives the same bytes.

pub mod args;
pub mod dir;
pub mod error;
pub mod report;
pub mod shard;
pub mod spec;

use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use kadyn_core::{vocab, world_table, RowBuilder};
use serde::{Deserialize, Serialize};

pub use args::{Args, DatasetConfig, Options};
pub use dir::{FileRecord, ShardPlan};
pub use error::{GenError, Result};
pub use spec::{format_sampling, parse_sampling};

use crate::dir::{
    claim, load_progress, plan_shards, save_progress, sync_dir, verify_shard, write_atomic,
    MANIFEST_FILE, VOCAB_FILE, WORLD_FILE,
};
use crate::error::IoContext;
use crate::report::{mb, Reporter};
use crate::shard::{write_table, writer_properties, ShardWriter};

pub const FORMAT: &str = "kadyn-dataset";
pub const FORMAT_VERSION: u32 = 1;

/// One column of the shards' schema, for readers that do not speak Arrow schemas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub dtype: String,
    pub meaning: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VocabInfo {
    pub file: String,
    pub size: usize,
    pub pad_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`: present only once every shard is complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub kadyn_version: String,
    pub config: DatasetConfig,
    pub schema: Vec<Column>,
    pub vocab: VocabInfo,
    pub world_table: FileRecord,
    pub shards: Vec<FileRecord>,
    pub total_rows: u64,
    pub total_tokens: u64,
}

pub fn schema_description(seq_len: usize, pack: bool) -> Vec<Column> {
    let col = |name: &str, dtype: String, meaning: &str| Column {
        name: name.into(),
        dtype,
        meaning: meaning.into(),
    };
    vec![
        col(
            "input_ids",
            format!("fixed_size_list<int32>[{seq_len}]"),
            "token ids (vocab.json), <pad>-filled or packed",
        ),
        col(
            "attr_type",
            format!("fixed_size_list<int8>[{seq_len}]"),
            "-1 for ordinary tokens, 0..5 for tokens of an attribute value (one value = one maximal run)",
        ),
        col(
            "individual",
            if pack { "list<uint32>" } else { "uint32" }.into(),
            "which individual(s) of the population the row describes (rows of world.parquet)",
        ),
        col(
            "sample_index",
            "uint64".into(),
            "the stream counter k of the row's (first) biography: row k of the dataset",
        ),
    ]
}

/// What a run did, printed as its last line.
#[derive(Clone, Debug)]
pub struct Summary {
    pub out: std::path::PathBuf,
    pub rows: u64,
    pub tokens: u64,
    pub shards: usize,
    pub shards_resumed: usize,
    /// Rows and bytes written by this run (resumed shards are not rewritten).
    pub rows_written: u64,
    pub bytes_written: u64,
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.seconds.max(1e-9);
        write!(
            f,
            "kadyn-gen: {} rows, {} tokens in {} shards at {}; {:.1} MB written in {:.2} s ({:.1} MB/s, {:.0} rows/s)",
            self.rows,
            self.tokens,
            self.shards,
            self.out.display(),
            mb(self.bytes_written),
            self.seconds,
            mb(self.bytes_written) / s,
            self.rows_written as f64 / s,
        )?;
        if self.shards_resumed > 0 {
            write!(f, "; {} shards were already complete", self.shards_resumed)?;
        }
        Ok(())
    }
}

fn write_vocab(dir: &Path, builder: &RowBuilder) -> Result<VocabInfo> {
    let words = builder.world().vocab().words();
    let json = serde_json::json!({
        "tokens": words,
        "pad_id": vocab::PAD_ID,
        "bos_id": vocab::BOS_ID,
        "eos_id": vocab::EOS_ID,
    })
    .to_string();
    let path = dir.join(VOCAB_FILE);
    write_atomic(&path, json.as_bytes())?;
    use sha2::{Digest, Sha256};
    Ok(VocabInfo {
        file: VOCAB_FILE.into(),
        size: words.len(),
        pad_id: vocab::PAD_ID,
        bos_id: vocab::BOS_ID,
        eos_id: vocab::EOS_ID,
        bytes: json.len() as u64,
        sha256: format!("{:x}", Sha256::digest(json.as_bytes())),
    })
}

/// Generates (or resumes, or re-verifies) the dataset `args` describes. `cancel` is polled
/// between row-group windows on the calling thread (the Python binding checks for Ctrl-C there).
pub fn run(args: &Args, cancel: &dyn Fn() -> bool) -> Result<Summary> {
    let started = Instant::now();
    let threads = args.threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("kadyn-gen-{i}"))
        .build()
        .map_err(|e| GenError::option("--threads", format!("{threads}: {e}")))?;
    let (config, builder) = pool.install(|| args.resolve())?;
    let config_json = serde_json::to_string_pretty(&config).expect("serialisable") + "\n";
    let dir = args.out.as_path();
    claim(dir, &config_json)?;

    let props = writer_properties(args.batch_rows as usize);
    let vocab = write_vocab(dir, &builder)?;
    let table = pool.install(|| world_table(builder.world(), builder.spec().population));
    let world = write_table(&dir.join(WORLD_FILE), &table, props.clone())?;
    drop(table);
    let mut bytes_written = vocab.bytes + world.bytes;

    let plans = plan_shards(args.samples, args.shard_rows);
    let mut progress = load_progress(dir);
    let complete: Vec<bool> = pool.install(|| {
        use rayon::prelude::*;
        plans
            .par_iter()
            .map(|p| verify_shard(dir, p, progress.shards.get(&p.file)))
            .collect()
    });
    progress.shards.retain(|name, _| {
        plans
            .iter()
            .zip(&complete)
            .any(|(p, &c)| c && &p.file == name)
    });

    let mut reporter = Reporter::new(args.quiet, args.samples);
    let writer = ShardWriter {
        builder: &builder,
        props: props.clone(),
        dir,
        row_group_rows: args.batch_rows,
        window: 2 * threads,
        pool: &pool,
    };
    let mut resumed = 0;
    let mut rows_written = 0;
    for (plan, done) in plans.iter().zip(&complete) {
        if *done {
            reporter.resumed(&progress.shards[&plan.file]);
            resumed += 1;
            continue;
        }
        let final_path = dir.join(&plan.file);
        // A shard that failed verification is rewritten from scratch.
        if final_path.exists() {
            std::fs::remove_file(&final_path).at(&final_path)?;
        }
        let shard_started = Instant::now();
        let result = writer.write(plan, cancel, &mut |n| reporter.rows(n));
        let (record, tmp) = match result {
            Ok(r) => r,
            Err(e) => {
                reporter.finish();
                return Err(e);
            }
        };
        // Record first, rename second: a shard under its final name always has a record.
        progress.shards.insert(plan.file.clone(), record.clone());
        save_progress(dir, &progress)?;
        std::fs::rename(&tmp, &final_path).at(&final_path)?;
        sync_dir(dir)?;
        bytes_written += record.bytes;
        rows_written += record.rows;
        reporter.written(&record, shard_started);
    }
    reporter.finish();

    let shards: Vec<FileRecord> = plans
        .iter()
        .map(|p| progress.shards[&p.file].clone())
        .collect();
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        kadyn_version: kadyn_core::VERSION.into(),
        schema: schema_description(config.options.seq_len, config.options.pack),
        config,
        vocab,
        world_table: world,
        total_rows: shards.iter().map(|s| s.rows).sum(),
        total_tokens: shards.iter().filter_map(|s| s.tokens).sum(),
        shards,
    };
    let json = serde_json::to_string_pretty(&manifest).expect("serialisable") + "\n";
    write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())?;
    bytes_written += json.len() as u64;
    Ok(Summary {
        out: dir.to_path_buf(),
        rows: manifest.total_rows,
        tokens: manifest.total_tokens,
        shards: manifest.shards.len(),
        shards_resumed: resumed,
        rows_written,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// clap's multi-line error as one line: the lines before `Usage:`, joined.
fn one_line(err: &clap::Error) -> String {
    err.render()
        .to_string()
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole command line: parses `argv` (program name first), runs, prints the summary to stdout
/// or one `error: ...` line to stderr, and returns the exit code.
pub fn main_with<I, T>(argv: I, cancel: &dyn Fn() -> bool) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            return 0;
        }
        Err(err) => {
            eprintln!("{}", one_line(&err));
            return err.exit_code();
        }
    };
    match run(&args, cancel) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}
