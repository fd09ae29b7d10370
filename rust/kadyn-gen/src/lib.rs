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
//! - `manifest.json`, written last: config, schema, files with row counts and sha256, and each
//!   shard's row groups with their own sha256 ([`manifest`]);
//! - `.kadyn.lock`: held by the run writing the directory ([`lock`]); not part of the dataset.
//!
//! Runs are kill-safe and resumable (see [`dir`]); the same command gives the same bytes. Before
//! anything is written the run checks its memory (one row group, one shard) against fixed caps
//! and prints the projected size, refusing when it exceeds the free space of `--out`.

pub mod args;
pub mod dir;
pub mod error;
pub mod lock;
pub mod manifest;
pub mod report;
pub mod shard;
pub mod spec;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use kadyn_core::limits::{human_bytes, memory_limit, row_bytes};
use kadyn_core::{vocab, world_table, RowBuilder};
use rayon::prelude::*;

pub use args::{Args, DatasetConfig, Options};
pub use dir::{FileRecord, RowGroupRecord, ShardPlan};
pub use error::{GenError, Result};
pub use manifest::{
    schema_description, Column, Manifest, VocabInfo, FORMAT, FORMAT_VERSION, ROW_GROUP_HASH,
};
pub use spec::{format_sampling, parse_sampling};

use crate::dir::{
    check_shard, free_space, inspect, load_progress, prepare, save_progress, shards_to_check,
    sync_dir, write_atomic, Progress, ShardCheck, Shards, MANIFEST_FILE, VOCAB_FILE, WORLD_FILE,
};
use crate::error::IoContext;
use crate::lock::DirLock;
use crate::report::{mb, Reporter};
use crate::shard::{write_table, writer_properties, written_bytes_per_row, ShardWriter};

/// The program name, in messages and in the lock file.
pub const PROGRAM: &str = "kadyn-gen";

/// The most bytes one row group may take while it is built and encoded (its Arrow batch; the
/// encoded pages take at most about as much again). Parquet readers decode a group at a time,
/// so this also bounds a reader's memory: 1 GiB.
pub const MAX_ROW_GROUP_BYTES: u64 = 1 << 30;

/// The most row groups one shard may hold (2^15): a shard's footer lists them all and every
/// reader loads it whole; some readers also take a group's ordinal as an i16.
pub const MAX_ROW_GROUPS_PER_SHARD: u64 = 1 << 15;

/// One line on stderr, unless `--quiet`.
fn note(quiet: bool, message: impl std::fmt::Display) {
    if !quiet {
        eprintln!("{PROGRAM}: {message}");
    }
}

/// Checks the memory one row group and one shard take against the caps above (before anything
/// is created), and returns how many row groups may be in flight at once: two per thread, fewer
/// when that would pass the core's memory limit.
fn in_flight_groups(args: &Args, seq_len: usize, threads: usize) -> Result<usize> {
    let group_rows = args.batch_rows.min(args.shard_rows).min(args.samples);
    let per_row = row_bytes(seq_len);
    let limit = memory_limit();
    let cap = MAX_ROW_GROUP_BYTES.min(limit / 2);
    if group_rows.saturating_mul(per_row) > cap {
        let why = if cap == MAX_ROW_GROUP_BYTES {
            format!("the cap on one row group, {}", human_bytes(cap))
        } else {
            format!(
                "half the memory limit of {} (1/{} of this machine's memory)",
                human_bytes(limit),
                kadyn_core::limits::MEMORY_FRACTION
            )
        };
        return Err(GenError::option(
            "--batch-rows",
            format!(
                "must be <= {} at --seq-len {seq_len}: a row group is built in memory at {}                  bytes a row and must fit in {why}; got {}",
                (cap / per_row).max(1),
                per_row,
                args.batch_rows
            ),
        ));
    }
    let groups = args.shard_rows.min(args.samples).div_ceil(args.batch_rows);
    if groups > MAX_ROW_GROUPS_PER_SHARD {
        return Err(GenError::option(
            "--shard-rows",
            format!(
                "must be <= {} with --batch-rows {} (at most {MAX_ROW_GROUPS_PER_SHARD} row                  groups a shard: readers load a shard's footer, which lists them, whole); got {}",
                args.batch_rows.saturating_mul(MAX_ROW_GROUPS_PER_SHARD),
                args.batch_rows,
                args.shard_rows
            ),
        ));
    }
    // An encoded group beside its batch: about twice the batch.
    let fit = limit / (2 * group_rows * per_row).max(1);
    Ok((fit as usize).clamp(1, 2 * threads))
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

/// The shards already complete (verified against their records), by index. Damaged ones are
/// named on stderr; records upgraded with row-group hashes are saved.
fn complete_shards(
    args: &Args,
    dir: &Path,
    shards: &Shards,
    progress: &mut Progress,
    pool: &rayon::ThreadPool,
) -> Result<BTreeMap<usize, FileRecord>> {
    let candidates = shards_to_check(dir, shards, progress)?;
    let checks: Vec<(usize, ShardCheck)> = pool.install(|| {
        candidates
            .par_iter()
            .map(|&i| {
                let plan = shards.plan(i);
                let record = progress.shards.get(&plan.file);
                (i, check_shard(dir, &plan, record, args.batch_rows))
            })
            .collect()
    });
    let mut complete = BTreeMap::new();
    for (i, check) in checks {
        match check {
            ShardCheck::Complete(record) => {
                complete.insert(i, record);
            }
            ShardCheck::Absent => {}
            ShardCheck::Damaged(why) => {
                note(
                    args.quiet,
                    format!("{}: {why}; rewriting it", shards.plan(i).file),
                );
            }
        }
    }
    let verified: BTreeMap<String, FileRecord> = complete
        .values()
        .map(|r| (r.file.clone(), r.clone()))
        .collect();
    if verified != progress.shards {
        progress.shards = verified;
        save_progress(dir, progress)?;
    }
    Ok(complete)
}

/// Prints the projected size of the dataset and refuses, before anything is written, when what
/// remains to write exceeds the free space of `--out`'s filesystem. The bytes a row takes are
/// measured by encoding the first row group in memory (biographies compress 5-10x, so the
/// uncompressed rows × row bytes would refuse datasets that fit).
fn check_space(
    args: &Args,
    dir: &Path,
    builder: &RowBuilder,
    shards: &Shards,
    done: &BTreeMap<usize, FileRecord>,
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let first_group = 0..args.batch_rows.min(args.shard_rows).min(args.samples);
    let props = writer_properties(args.batch_rows as usize);
    let per_row = pool.install(|| written_bytes_per_row(builder, props, first_group))?;
    let projected = (per_row * args.samples as f64).min(u64::MAX as f64) as u64;
    let done_bytes: u64 = done.values().map(|r| r.bytes).sum();
    let remaining = projected.saturating_sub(done_bytes);
    let free = free_space(dir);
    if let Some(free) = free.filter(|&free| remaining > free) {
        return Err(GenError::out(
            dir,
            format!(
                "needs about {} more ({} rows × ~{per_row:.0} bytes a row as written), but its \
                 filesystem has {} free; lower --samples or choose another --out",
                human_bytes(remaining),
                args.samples - done.values().map(|r| r.rows).sum::<u64>(),
                human_bytes(free)
            ),
        ));
    }
    let resumed = if done.is_empty() {
        String::new()
    } else {
        format!(
            ", {} of it still to write ({} of {} shards complete)",
            human_bytes(remaining),
            done.len(),
            shards.count()
        )
    };
    let free = free.map_or(String::new(), |f| format!("; {} free", human_bytes(f)));
    note(
        args.quiet,
        format!(
            "{} rows in {} shards: about {} projected (~{per_row:.0} bytes a row as written){resumed}{free}",
            args.samples,
            shards.count(),
            human_bytes(projected),
        ),
    );
    Ok(())
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
    let window = in_flight_groups(args, config.options.seq_len, threads)?;
    let config_json = serde_json::to_string_pretty(&config).expect("serialisable") + "\n";
    let dir = args.out.as_path();
    // Held until this function returns (the kernel releases it if the process dies).
    let _lock = DirLock::acquire(dir, PROGRAM)?;
    let resumed = inspect(dir, &config_json)?;

    let shards = Shards::new(args.samples, args.shard_rows);
    let mut progress = Progress::default();
    if resumed {
        let (loaded, warning) = load_progress(dir);
        if let Some(warning) = warning {
            note(args.quiet, warning);
        }
        progress = loaded;
    }
    // Verified before the space check (complete shards need no new space).
    let complete = if resumed {
        complete_shards(args, dir, &shards, &mut progress, &pool)?
    } else {
        BTreeMap::new()
    };
    check_space(args, dir, &builder, &shards, &complete, &pool)?;
    prepare(dir, &config_json, resumed)?;

    let props = writer_properties(args.batch_rows as usize);
    let vocab = write_vocab(dir, &builder)?;
    let table = pool.install(|| world_table(builder.world(), builder.spec().population));
    let world = write_table(&dir.join(WORLD_FILE), &table, props.clone())?;
    drop(table);
    let mut bytes_written = vocab.bytes + world.bytes;

    let mut reporter = Reporter::new(args.quiet, args.samples);
    let writer = ShardWriter {
        builder: &builder,
        props: props.clone(),
        dir,
        row_group_rows: args.batch_rows,
        window,
        pool: &pool,
    };
    let mut rows_written = 0;
    for index in 0..shards.count() {
        let plan = shards.plan(index);
        if let Some(record) = complete.get(&index) {
            reporter.resumed(record);
            continue;
        }
        let final_path = dir.join(&plan.file);
        // A shard that failed verification is rewritten from scratch.
        if final_path.exists() {
            std::fs::remove_file(&final_path).at(&final_path)?;
        }
        let shard_started = Instant::now();
        let result = writer.write(&plan, cancel, &mut |n| reporter.rows(n));
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

    let records: Vec<FileRecord> = (0..shards.count())
        .map(|i| progress.shards[&shards.plan(i).file].clone())
        .collect();
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        kadyn_version: kadyn_core::VERSION.into(),
        schema: schema_description(config.options.seq_len, config.options.pack),
        config,
        vocab,
        world_table: world,
        row_group_hash: ROW_GROUP_HASH.into(),
        total_rows: records.iter().map(|s| s.rows).sum(),
        total_tokens: records.iter().filter_map(|s| s.tokens).sum(),
        shards: records,
    };
    let json = serde_json::to_string_pretty(&manifest).expect("serialisable") + "\n";
    write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())?;
    bytes_written += json.len() as u64;
    Ok(Summary {
        out: dir.to_path_buf(),
        rows: manifest.total_rows,
        tokens: manifest.total_tokens,
        shards: manifest.shards.len(),
        shards_resumed: complete.len(),
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
            eprintln!("{PROGRAM}: {}", one_line(&err));
            return err.exit_code();
        }
    };
    match run(&args, cancel) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(err) => {
            eprintln!("{PROGRAM}: error: {err}");
            err.exit_code()
        }
    }
}
