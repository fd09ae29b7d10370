//! kadyn-gen: writes a kadyn dataset as a folder that any reader opens as it is (pyarrow, polars,
//! DuckDB, HF `datasets`, `kadyn.load_dataset`), holding the exact rows of
//! `kadyn.BiographyStream`.
//!
//! Row `k` of a dataset is row `k` of the stream with the same world, seed and sampling: both
//! call `kadyn_core::RowBuilder`, there is no second implementation. The output directory holds
//!
//! - `data/shard-00000-of-00004.parquet`, ...: rows `[i * shard_rows, (i + 1) * shard_rows)`,
//!   zstd, one row group per `--batch-rows` rows, the stream's Arrow schema (DESIGN.md); the
//!   folder holds nothing else, so `data/*.parquet` (or the folder) is exactly the rows;
//! - `world/world.parquet`: one row per individual of the population (the answer key);
//! - `vocab.json`: the token list and special ids;
//! - `README.md`: the dataset card, whose YAML header declares the HF configs ([`card`]);
//! - `manifest.json`, written last: config, schema, files with row counts and sha256, and each
//!   shard's row groups with their own sha256 ([`manifest`]);
//! - hidden bookkeeping: the config, progress records and locks ([`dir`], [`lock`]).
//!
//! Runs are kill-safe and resumable (see [`dir`]); the same command gives the same bytes. With
//! `--part I/N` a run writes only its block of shards, so N processes write one dataset together,
//! and [`merge`] completes it, byte-identical to a one-process run. Before anything is written
//! the run checks its memory (one row group, one shard) against fixed caps and prints the
//! projected size, refusing when it exceeds the free space of `--out`.

pub mod args;
pub mod card;
pub mod dir;
pub mod error;
pub mod lock;
pub mod manifest;
pub mod report;
pub mod shard;
pub mod spec;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use clap::Parser;
use kadyn_core::limits::{human_bytes, memory_limit, row_bytes};
use kadyn_core::{vocab, world_table, RowBuilder};
use rayon::prelude::*;

pub use args::{Args, DatasetConfig, Options};
pub use dir::{FileRecord, Part, RowGroupRecord, ShardPlan};
pub use error::{GenError, Result};
pub use manifest::{
    schema_description, Column, Manifest, VocabInfo, FORMAT, FORMAT_VERSION, ROW_GROUP_HASH,
};
pub use spec::{format_sampling, parse_sampling};

use crate::dir::{
    check_shard, free_space, inspect, load_progress, prepare, save_progress, shards_to_check,
    sync_dir, write_atomic, Progress, Records, Scope, ShardCheck, Shards, CARD_FILE, CONFIG_FILE,
    MANIFEST_FILE, PROGRESS_FILE, VOCAB_FILE, WORLD_FILE,
};
use crate::error::IoContext;
use crate::lock::{remove_part_locks, DirLock};
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
    /// The part written (`--part I/N`): its rows and shards only, and no manifest yet.
    pub part: Option<Part>,
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
        let part = self.part.map_or(String::new(), |p| format!("part {p}: "));
        write!(
            f,
            "kadyn-gen: {part}{} rows, {} tokens in {} shards at {}; {:.1} MB written in {:.2} s ({:.1} MB/s, {:.0} rows/s)",
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
        if self.part.is_some() {
            write!(
                f,
                "; once every part is done: kadyn-gen merge {}",
                self.out.display()
            )?;
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

/// The shards of `range` already complete (verified against their records), by index. Damaged
/// ones are named on stderr (`rewriting it` unless `merging`, which only reports).
fn complete_shards(
    args: &Args,
    dir: &Path,
    shards: &Shards,
    records: &BTreeMap<String, FileRecord>,
    range: &Range<usize>,
    merging: bool,
    pool: &rayon::ThreadPool,
) -> Result<BTreeMap<usize, FileRecord>> {
    let candidates = shards_to_check(dir, shards, records, range)?;
    let checks: Vec<(usize, ShardCheck)> = pool.install(|| {
        candidates
            .par_iter()
            .map(|&i| {
                let plan = shards.plan(i);
                let record = records.get(&plan.file);
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
                let then = if merging { "" } else { "; rewriting it" };
                note(args.quiet, format!("{}: {why}{then}", shards.plan(i).file));
            }
        }
    }
    Ok(complete)
}

/// Prints the projected size of the rows of `range` and refuses, before anything is written,
/// when what remains to write exceeds the free space of `--out`'s filesystem. The bytes a row
/// takes are measured by encoding the first row group in memory (biographies compress 5-10x,
/// so the uncompressed rows × row bytes would refuse datasets that fit).
fn check_space(
    args: &Args,
    dir: &Path,
    builder: &RowBuilder,
    shards: &Shards,
    range: &Range<usize>,
    done: &BTreeMap<usize, FileRecord>,
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let rows = shards.rows(range);
    let samples = rows.end - rows.start;
    let first_group = rows.start..rows.start + args.batch_rows.min(args.shard_rows).min(samples);
    let props = writer_properties(args.batch_rows as usize);
    let per_row = pool.install(|| written_bytes_per_row(builder, props, first_group))?;
    let projected = (per_row * samples as f64).min(u64::MAX as f64) as u64;
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
                samples - done.values().map(|r| r.rows).sum::<u64>(),
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
            range.len()
        )
    };
    let part = args.part.map_or(String::new(), |p| format!("part {p}: "));
    let free = free.map_or(String::new(), |f| format!("; {} free", human_bytes(f)));
    note(
        args.quiet,
        format!(
            "{part}{samples} rows in {} shards: about {} projected (~{per_row:.0} bytes a row as written){resumed}{free}",
            range.len(),
            human_bytes(projected),
        ),
    );
    Ok(())
}

/// Writes the files beside the rows: vocabulary, world table and card.
fn write_shared_files(
    dir: &Path,
    config: &DatasetConfig,
    builder: &RowBuilder,
    props: &parquet::file::properties::WriterPropertiesPtr,
    pool: &rayon::ThreadPool,
) -> Result<(VocabInfo, FileRecord, u64)> {
    let vocab = write_vocab(dir, builder)?;
    let table = pool.install(|| world_table(builder.world(), builder.spec().population));
    let world = write_table(dir, WORLD_FILE, &table, props.clone())?;
    let card = card::card(config);
    write_atomic(&dir.join(CARD_FILE), card.as_bytes())?;
    let bytes = vocab.bytes + world.bytes + card.len() as u64;
    Ok((vocab, world, bytes))
}

/// Whether a run writes rows or only checks and completes what parts wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Write,
    Merge,
}

/// Generates (or resumes, or re-verifies) the dataset `args` describes, or with `--part I/N`
/// its I-th block of shards. `cancel` is polled between row-group windows on the calling thread
/// (the Python binding checks for Ctrl-C there).
pub fn run(args: &Args, cancel: &dyn Fn() -> bool) -> Result<Summary> {
    generate(args, Mode::Write, cancel)
}

/// `kadyn-gen merge DIR`: completes a dataset whose shards were written by parts (`--part I/N`).
/// Reads the config stored in `dir`, verifies every shard against its record, refuses (naming
/// them) if any is missing or damaged, then writes the card, vocabulary, world table, the merged
/// progress records and the manifest, exactly as a one-process run would have.
pub fn merge(dir: &Path, threads: Option<u64>, quiet: bool) -> Result<Summary> {
    let path = dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(GenError::out(
                dir,
                format!(
                    "holds no kadyn-gen dataset to merge (no {CONFIG_FILE}); write its parts \
                     first (kadyn-gen ... --part I/N --out DIR)"
                ),
            ))
        }
        Err(e) => return Err(e).at(&path),
    };
    let config: DatasetConfig = serde_json::from_str(&text).map_err(|e| {
        GenError::out(
            dir,
            format!("{CONFIG_FILE} is unreadable ({e}); delete the directory"),
        )
    })?;
    let mut args = config.options.to_args(dir);
    args.threads = threads;
    args.quiet = quiet;
    generate(&args, Mode::Merge, &|| false)
}

fn generate(args: &Args, mode: Mode, cancel: &dyn Fn() -> bool) -> Result<Summary> {
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
    let shards = Shards::new(args.samples, args.shard_rows);
    let (scope, range) = match args.part {
        Some(part) if part.count as usize > shards.count() => {
            return Err(GenError::option(
                "--part",
                format!(
                    "{part}: the dataset has {} shards (--samples / --shard-rows), fewer than \
                     {} parts; use at most {} parts or a smaller --shard-rows",
                    shards.count(),
                    part.count,
                    shards.count()
                ),
            ))
        }
        Some(part) => (Scope::Part(part), part.range(shards.count())),
        None => (Scope::Whole, 0..shards.count()),
    };
    // Held until this function returns (the kernel releases it if the process dies).
    let _lock = match scope {
        Scope::Part(part) => DirLock::acquire_part(dir, PROGRAM, part)?,
        Scope::Whole => DirLock::acquire(dir, PROGRAM)?,
    };
    let resumed = inspect(dir, &config_json)?;

    let mut records = Records::default();
    if resumed {
        let (loaded, warnings) = load_progress(dir)?;
        for warning in warnings {
            note(args.quiet, warning);
        }
        records = loaded;
    }
    // Verified before the space check (complete shards need no new space).
    let complete = if resumed {
        complete_shards(
            args,
            dir,
            &shards,
            &records.all,
            &range,
            mode == Mode::Merge,
            &pool,
        )?
    } else {
        BTreeMap::new()
    };
    if mode == Mode::Merge && complete.len() < range.len() {
        let missing: Vec<String> = range
            .clone()
            .filter(|i| !complete.contains_key(i))
            .take(3)
            .map(|i| shards.plan(i).file)
            .collect();
        let more = range.len() - complete.len() - missing.len();
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(GenError::out(
            dir,
            format!(
                "cannot be merged: {} of {} shards are missing or damaged ({}{more}); rerun \
                 the parts that write them (--part I/N), or the command without --part to \
                 write them here",
                range.len() - complete.len(),
                range.len(),
                missing.join(", ")
            ),
        ));
    }
    // The verified records are this run's: a whole run (or merge) folds every part's into
    // the main progress file; a part keeps those of its block in its own.
    let progress_file = match scope {
        Scope::Part(part) => part.progress_file(),
        Scope::Whole => PROGRESS_FILE.to_string(),
    };
    let mut progress = Progress {
        shards: complete
            .values()
            .map(|r| (r.file.clone(), r.clone()))
            .collect(),
    };
    if resumed {
        let saved = match scope {
            Scope::Part(_) => records.parts.get(&progress_file).cloned(),
            Scope::Whole => Some(records.main.clone()),
        };
        let folding = scope == Scope::Whole && !records.parts.is_empty();
        if saved.as_ref() != Some(&progress) || folding {
            save_progress(dir, &progress_file, &progress)?;
        }
        if scope == Scope::Whole {
            for name in records.parts.keys() {
                std::fs::remove_file(dir.join(name)).at(&dir.join(name))?;
            }
        }
    }
    if mode == Mode::Write {
        check_space(args, dir, &builder, &shards, &range, &complete, &pool)?;
    }
    let drop_manifest = scope == Scope::Whole || complete.len() < range.len();
    prepare(dir, &config_json, resumed, scope, &shards, drop_manifest)?;

    let props = writer_properties(args.batch_rows as usize);
    let mut bytes_written = 0;
    let shared = if scope == Scope::Whole {
        let (vocab, world, bytes) = write_shared_files(dir, &config, &builder, &props, &pool)?;
        bytes_written += bytes;
        Some((vocab, world))
    } else {
        None
    };

    let rows = shards.rows(&range);
    let mut reporter = Reporter::new(args.quiet, rows.end - rows.start);
    let writer = ShardWriter {
        builder: &builder,
        props: props.clone(),
        dir,
        row_group_rows: args.batch_rows,
        window,
        pool: &pool,
    };
    let mut rows_written = 0;
    for index in range.clone() {
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
        save_progress(dir, &progress_file, &progress)?;
        std::fs::rename(&tmp, &final_path).at(&final_path)?;
        sync_dir(final_path.parent().expect("inside data/"))?;
        bytes_written += record.bytes;
        rows_written += record.rows;
        reporter.written(&record, shard_started);
    }
    reporter.finish();

    let records: Vec<FileRecord> = range
        .clone()
        .map(|i| progress.shards[&shards.plan(i).file].clone())
        .collect();
    let mut summary = Summary {
        out: dir.to_path_buf(),
        part: args.part,
        rows: records.iter().map(|s| s.rows).sum(),
        tokens: records.iter().filter_map(|s| s.tokens).sum(),
        shards: records.len(),
        shards_resumed: complete.len(),
        rows_written,
        bytes_written,
        seconds: 0.0,
    };
    if let Some((vocab, world)) = shared {
        // No part runs (we hold the directory exclusively): their lock files can go.
        remove_part_locks(dir)?;
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            kadyn_version: kadyn_core::VERSION.into(),
            schema: schema_description(config.options.seq_len, config.options.pack),
            config,
            vocab,
            world_table: world,
            row_group_hash: ROW_GROUP_HASH.into(),
            total_rows: summary.rows,
            total_tokens: summary.tokens,
            shards: records,
        };
        let json = serde_json::to_string_pretty(&manifest).expect("serialisable") + "\n";
        write_atomic(&dir.join(MANIFEST_FILE), json.as_bytes())?;
        summary.bytes_written += json.len() as u64;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
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

/// Completes a dataset written in parts (`kadyn-gen ... --part I/N --out DIR`): verifies every
/// shard, then writes the card, world, vocabulary and manifest.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "kadyn-gen merge",
    version,
    after_help = "Exit status: 0 merged, 1 failed (e.g. a shard missing: the line names it), \
                  2 bad option, 75 DIR is in use (a part is still running)."
)]
pub struct MergeArgs {
    /// The dataset directory the parts wrote into (their --out).
    pub dir: std::path::PathBuf,
    /// Worker threads for verifying shards [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// No progress output (the summary line still goes to stdout).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Parses `argv` as `T`, or returns the exit code after printing help, the version or one
/// error line.
fn parse_or_exit<T: Parser>(argv: Vec<OsString>) -> std::result::Result<T, i32> {
    match T::try_parse_from(argv) {
        Ok(args) => Ok(args),
        Err(err) if !err.use_stderr() => {
            // --help and --version.
            let _ = err.print();
            Err(0)
        }
        Err(err) => {
            eprintln!("{PROGRAM}: {}", one_line(&err));
            Err(err.exit_code())
        }
    }
}

/// The whole command line: parses `argv` (program name first; `kadyn-gen merge DIR` for the
/// merge step), runs, prints the summary to stdout or one `error: ...` line to stderr, and
/// returns the exit code.
pub fn main_with<I, T>(argv: I, cancel: &dyn Fn() -> bool) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let result = if argv.get(1).is_some_and(|a| a == "merge") {
        let rest =
            std::iter::once(OsString::from("kadyn-gen merge")).chain(argv[2..].iter().cloned());
        match parse_or_exit::<MergeArgs>(rest.collect()) {
            Ok(m) => merge(&m.dir, m.threads, m.quiet),
            Err(code) => return code,
        }
    } else {
        match parse_or_exit::<Args>(argv) {
            Ok(args) => run(&args, cancel),
            Err(code) => return code,
        }
    };
    match result {
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
