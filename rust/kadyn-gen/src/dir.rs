//! The output directory as a resumable, kill-safe state machine, and its layout.
//!
//! ```text
//! DIR/README.md                              dataset card; its YAML header declares the HF configs
//! DIR/data/shard-00000-of-00004.parquet ...  the rows, and nothing else (any reader globs them)
//! DIR/world/world.parquet                    the answer key (HF config `world`)
//! DIR/vocab.json                             token list and special ids
//! DIR/manifest.json                          written last: the source of truth
//! DIR/.kadyn-gen-config.json, .kadyn-gen-progress*.json, .kadyn*.lock   bookkeeping (hidden)
//! ```
//!
//! - `.kadyn-gen-config.json` is written first; a directory holding another config is refused.
//! - Every file is written as `NAME.tmp`, fsynced, then renamed: a file under its final name is
//!   always complete. Stale `.tmp` files of a killed run are removed on the next start.
//! - A shard's record (rows, tokens, bytes, sha256) goes into the progress file *before* the
//!   shard is renamed, so a shard under its final name always has a record to be verified
//!   against; a shard without one (or failing its check) is written again. Shards are pure
//!   functions of the config, so rewriting one yields the same bytes.
//! - `manifest.json` is removed at start and written last: it exists only for a complete dataset.
//!   One left by an earlier run must parse (a malformed one means the directory was damaged from
//!   outside: the run refuses it, naming the field, rather than guess).
//! - Parts (`--part I/N`, [`Part`]): several processes write disjoint blocks of shards into one
//!   directory. Each keeps its records in its own progress file
//!   (`.kadyn-gen-progress-part-I-of-N.json`) and cleans only its own `.tmp` files; a whole run
//!   or `kadyn-gen merge` reads every progress file, verifies every shard, and folds the records
//!   into `.kadyn-gen-progress.json`, so the directory ends as a one-process run leaves it.
//! - Locks (see [`crate::lock`]) are not part of the dataset: every scan of the directory
//!   ignores them.
//! - Shards are planned lazily (file name and rows from the shard index), and only shards that
//!   have a record or a file are verified: the work before the first write does not grow with
//!   `--samples`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{GenError, IoContext, Result};
use crate::lock::is_lock_file;

pub const CONFIG_FILE: &str = ".kadyn-gen-config.json";
pub const PROGRESS_FILE: &str = ".kadyn-gen-progress.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const VOCAB_FILE: &str = "vocab.json";
/// The dataset card (Hugging Face's `README.md` convention).
pub const CARD_FILE: &str = "README.md";
/// The folder of the rows: it holds the shards and nothing else.
pub const DATA_DIR: &str = "data";
/// The folder of the answer key, outside [`DATA_DIR`] so that no glob of the rows meets it.
pub const WORLD_DIR: &str = "world";
/// The answer key, relative to the dataset directory.
pub const WORLD_FILE: &str = "world/world.parquet";
const TMP: &str = ".tmp";

/// `data/shard-00003-of-00008.parquet`: shard `index` of `count`, relative to the dataset
/// directory (as Hugging Face names its shards; the count makes a missing last shard visible).
pub fn shard_name(index: usize, count: usize) -> String {
    format!("{DATA_DIR}/shard-{index:05}-of-{count:05}.parquet")
}

/// One shard to write: its file name and the global rows `[start, end)` it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    pub index: usize,
    pub file: String,
    pub rows: Range<u64>,
}

/// Rows `0..samples` cut into shards of `shard_rows` (the last one shorter), planned on demand:
/// a run with 10^14 rows holds no list of 10^8 plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shards {
    pub samples: u64,
    pub shard_rows: u64,
}

impl Shards {
    pub fn new(samples: u64, shard_rows: u64) -> Self {
        assert!(shard_rows > 0, "shard_rows is checked by the CLI");
        Shards {
            samples,
            shard_rows,
        }
    }

    pub fn count(&self) -> usize {
        self.samples.div_ceil(self.shard_rows) as usize
    }

    pub fn plan(&self, index: usize) -> ShardPlan {
        let i = index as u64;
        ShardPlan {
            index,
            file: shard_name(index, self.count()),
            rows: i * self.shard_rows..((i + 1) * self.shard_rows).min(self.samples),
        }
    }

    /// The shard a file name (relative to the dataset directory) belongs to, if it is one of
    /// this dataset's.
    pub fn index_of(&self, file: &str) -> Option<usize> {
        let rest = file.strip_prefix(DATA_DIR)?.strip_prefix('/')?;
        let digits = rest.strip_prefix("shard-")?.split_once("-of-")?.0;
        let index: usize = digits.parse().ok()?;
        (index < self.count() && shard_name(index, self.count()) == file).then_some(index)
    }

    /// The rows of shards `range`.
    pub fn rows(&self, range: &Range<usize>) -> Range<u64> {
        if range.is_empty() {
            return 0..0;
        }
        self.plan(range.start).rows.start..self.plan(range.end - 1).rows.end
    }
}

/// Part `index` of `count` (`--part I/N`): a contiguous block of the shards, so that N processes
/// (a Slurm array, a shell loop, several machines on a shared filesystem) write one dataset
/// together. Blocks differ in size by at most one shard; the bytes never depend on the parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl Part {
    /// Parses `I/N` (0 <= I < N).
    pub fn parse(text: &str) -> std::result::Result<Part, String> {
        let bad = || format!("must be I/N with 0 <= I < N (e.g. 0/4), got {text:?}");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Part { index, count })
    }

    /// The shard indices of this part among `shards`.
    pub fn range(&self, shards: usize) -> Range<usize> {
        let at = |i: u32| (shards as u64 * u64::from(i) / u64::from(self.count)) as usize;
        at(self.index)..at(self.index + 1)
    }

    /// `part-1-of-4`: names this part's progress file, lock file and temporary files.
    pub fn tag(&self) -> String {
        format!("part-{}-of-{}", self.index, self.count)
    }

    /// This part's own progress file.
    pub fn progress_file(&self) -> String {
        format!(".kadyn-gen-progress-{}.json", self.tag())
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Whether a name in the dataset directory is a part's progress file.
fn is_part_progress(name: &str) -> bool {
    name.starts_with(".kadyn-gen-progress-part-") && name.ends_with(".json")
}

/// What is known of a finished file: enough to verify it and to list it in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub file: String,
    /// First global row (shards only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_row: Option<u64>,
    pub rows: u64,
    /// Non-`<pad>` tokens (shards only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens: Option<u64>,
    pub bytes: u64,
    pub sha256: String,
    /// Per row group, in order (shards only): its rows and the sha256 of its column chunks as
    /// stored (see `shard::row_group_hashes`), so a reader can check each group it reads without
    /// hashing the whole file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub row_groups: Option<Vec<RowGroupRecord>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowGroupRecord {
    pub rows: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub shards: BTreeMap<String, FileRecord>,
}

/// Whether `name`, in the dataset directory itself, is a file kadyn-gen writes there (or a
/// temporary one of them: `NAME.tmp`, or `NAME.part-I-of-N.tmp` for a part's copy of a shared file).
fn is_ours(name: &str) -> bool {
    let base = name.strip_suffix(TMP).unwrap_or(name);
    let base = match base.rsplit_once(".part-") {
        Some((shared, _)) if name.ends_with(TMP) => shared,
        _ => base,
    };
    matches!(
        base,
        CONFIG_FILE | PROGRESS_FILE | MANIFEST_FILE | VOCAB_FILE | CARD_FILE
    ) || is_part_progress(base)
}

pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("a file path").to_os_string();
    name.push(TMP);
    path.with_file_name(name)
}

/// fsync of a directory makes the renames inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `bytes` to `tmp` and fsyncs it.
fn write_synced(tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(tmp).at(tmp)?;
    f.write_all(bytes).at(tmp)?;
    f.sync_all().at(tmp)
}

/// Writes `bytes` to `path` atomically (tmp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path).at(path)?;
    sync_dir(path.parent().expect("inside the output directory"))
}

/// `a.b: x here, y there` for the first few leaves where two JSON configs differ.
fn differences(ours: &Value, theirs: &Value) -> Vec<String> {
    fn walk(path: String, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        p,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {a} here, {b} there")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(String::new(), ours, theirs, &mut out);
    out
}

/// Compares the config stored in `dir` (`existing`) with ours; an error names the differences.
fn same_config(dir: &Path, config_json: &str, existing: &str) -> Result<()> {
    let ours: Value = serde_json::from_str(config_json).expect("our own JSON");
    let theirs: Value = serde_json::from_str(existing).map_err(|e| {
        GenError::out(
            dir,
            format!("{CONFIG_FILE} is unreadable ({e}); delete the directory"),
        )
    })?;
    if ours != theirs {
        let mut diff = differences(&ours, &theirs);
        // The options say it in the user's words; the derived sections repeat them.
        if diff.iter().any(|d| d.starts_with("options.")) {
            diff.retain(|d| d.starts_with("options."));
        }
        return Err(GenError::out(
            dir,
            format!(
                "holds a dataset with a different config ({}); use another directory or delete it",
                diff.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            ),
        ));
    }
    Ok(())
}

/// Checks that `dir` (which exists: the lock is inside) can hold `config`, without changing
/// anything: it must be empty (but for our own stale `.tmp` files and locks), or hold this same
/// config and, if it has one, a well-formed manifest. Returns true when it already holds this
/// config (a resumed or repeated run, or a part that started after another part).
pub fn inspect(dir: &Path, config_json: &str) -> Result<bool> {
    let config_path = dir.join(CONFIG_FILE);
    let resumed = 'found: loop {
        match fs::read_to_string(&config_path) {
            Ok(existing) => {
                same_config(dir, config_json, &existing)?;
                break 'found true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let entries = fs::read_dir(dir)
                    .map_err(|e| GenError::out(dir, format!("cannot list the directory: {e}")))?;
                for entry in entries {
                    let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
                    if name == CONFIG_FILE {
                        // Written meanwhile by a part starting beside us: compare it.
                        continue 'found;
                    }
                    let allowed = is_lock_file(&name) || (is_ours(&name) && name.ends_with(TMP));
                    if !allowed && config_path.exists() {
                        // A part beside us wrote the config and went on (readdir may list
                        // its later files without the config): compare it.
                        continue 'found;
                    }
                    if !allowed {
                        return Err(GenError::out(
                            dir,
                            format!(
                                "is not empty and holds no kadyn-gen config (found {name:?}); \
                                 use an empty or new directory"
                            ),
                        ));
                    }
                }
                break 'found false;
            }
            Err(e) => {
                return Err(GenError::out(
                    dir,
                    format!("cannot read {CONFIG_FILE}: {e}"),
                ))
            }
        }
    };
    if resumed {
        // Shards in the directory itself: the layout of kadyn-gen before the `data/` folder.
        for entry in fs::read_dir(dir).at(dir)? {
            let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-") && name.ends_with(".parquet") {
                return Err(GenError::out(
                    dir,
                    format!(
                        "holds {name} beside its config: a dataset in an older kadyn-gen's \
                         layout (shards now live in {DATA_DIR}/); regenerate it into a new \
                         directory"
                    ),
                ));
            }
        }
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    match fs::read(&manifest_path) {
        Ok(bytes) => {
            crate::manifest::parse(&bytes).map_err(|why| {
                GenError::out(
                    dir,
                    format!(
                        "{MANIFEST_FILE} is malformed ({why}); the directory was changed by \
                         something else than kadyn-gen: delete {MANIFEST_FILE} to rebuild it \
                         from the verified shards, or use another directory"
                    ),
                )
            })?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(GenError::out(
                dir,
                format!("cannot read {MANIFEST_FILE}: {e}"),
            ))
        }
    }
    Ok(resumed)
}

/// Writes the config file, first writer wins: parts starting together each write their copy
/// under their own temporary name and hard-link it into place, which fails if another got there
/// first; then the config already there must be ours (or the run is refused, as by [`inspect`]).
fn write_config(dir: &Path, config_json: &str, part: Option<Part>) -> Result<()> {
    let path = dir.join(CONFIG_FILE);
    let tmp = match part {
        Some(part) => dir.join(format!("{CONFIG_FILE}.{}{TMP}", part.tag())),
        None => tmp_path(&path),
    };
    write_synced(&tmp, config_json.as_bytes())?;
    let linked = fs::hard_link(&tmp, &path);
    match linked {
        Ok(()) => fs::remove_file(&tmp).at(&tmp)?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp).at(&tmp)?;
            let existing = fs::read_to_string(&path).at(&path)?;
            same_config(dir, config_json, &existing)?;
        }
        // A filesystem without hard links: a plain rename (same bytes if a part raced us).
        Err(_) => fs::rename(&tmp, &path).at(&path)?,
    }
    sync_dir(dir)
}

/// What a run writes: every shard (a whole run, `kadyn-gen merge`) or one part's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Whole,
    Part(Part),
}

/// Makes `dir` hold `config` once [`inspect`] has accepted it: writes the config file (first)
/// unless it is there, creates the folders, clears stale `.tmp` files (a part only its own: the
/// others may be writing theirs) and, with `drop_manifest`, the manifest.
pub fn prepare(
    dir: &Path,
    config_json: &str,
    resumed: bool,
    scope: Scope,
    shards: &Shards,
    drop_manifest: bool,
) -> Result<()> {
    if !resumed {
        let part = match scope {
            Scope::Part(part) => Some(part),
            Scope::Whole => None,
        };
        write_config(dir, config_json, part).map_err(|e| match e {
            e @ GenError::Out { .. } => e,
            e => GenError::out(dir, format!("is not writable: {e}")),
        })?;
    }
    let data = dir.join(DATA_DIR);
    fs::create_dir_all(&data).at(&data)?;
    let stale = |path: &Path| fs::remove_file(path).at(path);
    match scope {
        Scope::Whole => {
            let world = dir.join(WORLD_DIR);
            fs::create_dir_all(&world).at(&world)?;
            for entry in fs::read_dir(dir).at(dir)? {
                let entry = entry.at(dir)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if (name.ends_with(TMP) && is_ours(&name))
                    || (drop_manifest && name == MANIFEST_FILE)
                {
                    stale(&entry.path())?;
                }
            }
            let world_tmp = tmp_path(&dir.join(WORLD_FILE));
            if world_tmp.exists() {
                stale(&world_tmp)?;
            }
            for entry in fs::read_dir(&data).at(&data)? {
                let entry = entry.at(&data)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(base) = name.strip_suffix(TMP) {
                    if shards.index_of(&format!("{DATA_DIR}/{base}")).is_some() {
                        stale(&entry.path())?;
                    }
                }
            }
        }
        Scope::Part(part) => {
            let mine = part.range(shards.count());
            let progress_tmp = dir.join(format!("{}{TMP}", part.progress_file()));
            if progress_tmp.exists() {
                stale(&progress_tmp)?;
            }
            for entry in fs::read_dir(&data).at(&data)? {
                let entry = entry.at(&data)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(base) = name.strip_suffix(TMP) else {
                    continue;
                };
                if let Some(i) = shards.index_of(&format!("{DATA_DIR}/{base}")) {
                    if mine.contains(&i) {
                        stale(&entry.path())?;
                    }
                }
            }
            let manifest = dir.join(MANIFEST_FILE);
            if drop_manifest && manifest.exists() {
                stale(&manifest)?;
            }
        }
    }
    Ok(())
}

/// The records of every progress file in `dir`: `.kadyn-gen-progress.json`'s and each part's.
#[derive(Clone, Debug, Default)]
pub struct Records {
    /// `.kadyn-gen-progress.json` as read.
    pub main: Progress,
    /// Each part's progress file, by name, as read.
    pub parts: BTreeMap<String, Progress>,
    /// Every record of them all, by shard file (identical records of one shard collapse; where
    /// two differ, verifying the file against the one kept decides).
    pub all: BTreeMap<String, FileRecord>,
}

/// Reads every progress file, with a warning for each one that exists but cannot be read (its
/// records are then missing, and the shards they covered are verified against nothing and
/// rewritten).
pub fn load_progress(dir: &Path) -> Result<(Records, Vec<String>)> {
    let mut warnings = Vec::new();
    let mut read = |name: &str| match fs::read_to_string(dir.join(name)) {
        Ok(text) => match serde_json::from_str::<Progress>(&text) {
            Ok(progress) => Some(progress),
            Err(e) => {
                warnings.push(format!(
                    "{name} is unreadable ({e}); shards already on disk are rewritten"
                ));
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warnings.push(format!(
                "cannot read {name} ({e}); shards already on disk are rewritten"
            ));
            None
        }
    };
    let mut records = Records {
        main: read(PROGRESS_FILE).unwrap_or_default(),
        ..Records::default()
    };
    let mut names: Vec<String> = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
        if is_part_progress(&name) {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let progress = read(&name).unwrap_or_default();
        records.parts.insert(name, progress);
    }
    records.all = records.main.shards.clone();
    for progress in records.parts.values() {
        records
            .all
            .extend(progress.shards.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok((records, warnings))
}

/// Saves `progress` as `name` (the main progress file or a part's).
pub fn save_progress(dir: &Path, name: &str, progress: &Progress) -> Result<()> {
    let json = serde_json::to_string_pretty(progress).expect("serialisable") + "\n";
    write_atomic(&dir.join(name), json.as_bytes())
}

/// sha256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((format!("{:x}", hasher.finalize()), bytes))
}

/// Row count from a Parquet file's footer.
pub fn parquet_rows(path: &Path) -> Option<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(File::open(path).ok()?).ok()?;
    u64::try_from(reader.metadata().file_metadata().num_rows()).ok()
}

/// What a shard found on disk (or recorded) turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardCheck {
    /// On disk under its final name and matching its record (returned, with its row-group
    /// hashes filled in if an older run recorded none).
    Complete(FileRecord),
    /// Not under its final name (a record without a file is a run killed before the rename).
    Absent,
    /// On disk but not to be trusted, and why: `corrupt (sha256 differs from its record)`,
    /// `unverifiable (no record in a progress file)`, ...
    Damaged(String),
}

/// Checks shard `plan` against its record: the rows the plan expects (per the footer), the
/// recorded size and sha256; `row_group_rows` is the `--batch-rows` its groups must follow.
pub fn check_shard(
    dir: &Path,
    plan: &ShardPlan,
    record: Option<&FileRecord>,
    row_group_rows: u64,
) -> ShardCheck {
    let damaged = ShardCheck::Damaged;
    let path = dir.join(&plan.file);
    let Ok(meta) = fs::metadata(&path) else {
        return ShardCheck::Absent;
    };
    let Some(record) = record else {
        return damaged("unverifiable (no record in a progress file)".into());
    };
    let expected = plan.rows.end - plan.rows.start;
    if record.rows != expected || record.first_row != Some(plan.rows.start) {
        return damaged(format!(
            "unverifiable (recorded as rows {:?}+{}, expected {}+{expected})",
            record.first_row, record.rows, plan.rows.start
        ));
    }
    if meta.len() != record.bytes {
        return damaged(format!(
            "corrupt ({} bytes, its record says {})",
            meta.len(),
            record.bytes
        ));
    }
    if parquet_rows(&path) != Some(expected) {
        return damaged(format!("corrupt (no readable footer with {expected} rows)"));
    }
    match hash_file(&path) {
        Ok((sha, _)) if sha == record.sha256 => {}
        Ok(_) => return damaged("corrupt (sha256 differs from its record)".into()),
        Err(e) => return damaged(format!("unreadable ({e})")),
    }
    let layout: Vec<u64> = (plan.rows.start..plan.rows.end)
        .step_by(row_group_rows as usize)
        .map(|s| (s + row_group_rows).min(plan.rows.end) - s)
        .collect();
    let mut record = record.clone();
    if record.row_groups.is_none() {
        // Recorded by a kadyn-gen that kept no row-group hashes: the file matches its sha256,
        // so its groups' hashes can be taken from it.
        match crate::shard::row_group_hashes(&path) {
            Ok(groups) => record.row_groups = Some(groups),
            Err(e) => return damaged(format!("unreadable ({e})")),
        }
    }
    let recorded: Vec<u64> = record.row_groups.iter().flatten().map(|g| g.rows).collect();
    if recorded != layout {
        return damaged(format!(
            "unverifiable (its record lists {} row groups, expected {} of --batch-rows \
             {row_group_rows})",
            recorded.len(),
            layout.len()
        ));
    }
    ShardCheck::Complete(record)
}

/// The shards of `range` worth checking: those with a record, and those with a file under their
/// final name (found by one listing of `data/`, so the cost follows what is there, not
/// `--samples`).
pub fn shards_to_check(
    dir: &Path,
    shards: &Shards,
    records: &BTreeMap<String, FileRecord>,
    range: &Range<usize>,
) -> Result<Vec<usize>> {
    let mut found: BTreeSet<usize> = records.keys().filter_map(|f| shards.index_of(f)).collect();
    let data = dir.join(DATA_DIR);
    match fs::read_dir(&data) {
        Ok(entries) => {
            for entry in entries {
                let name = entry.at(&data)?.file_name().to_string_lossy().into_owned();
                if let Some(i) = shards.index_of(&format!("{DATA_DIR}/{name}")) {
                    found.insert(i);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at(&data),
    }
    Ok(found.into_iter().filter(|i| range.contains(i)).collect())
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir` (statvfs);
/// None where that cannot be asked.
#[cfg(unix)]
pub fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0;
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    ok.then(|| (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(not(unix))]
pub fn free_space(_dir: &Path) -> Option<u64> {
    None
}
