//! The output directory as a resumable, kill-safe state machine.
//!
//! - `.kadyn-gen-config.json` is written first; a directory holding another config is refused.
//! - Every file is written as `NAME.tmp`, fsynced, then renamed: a file under its final name is
//!   always complete. Stale `.tmp` files of a killed run are removed on the next start.
//! - A shard's record (rows, tokens, bytes, sha256) goes into `.kadyn-gen-progress.json` *before*
//!   the shard is renamed, so a shard under its final name always has a record to be verified
//!   against; a shard without one (or failing its check) is written again. Shards are pure
//!   functions of the config, so rewriting one yields the same bytes.
//! - `manifest.json` is removed at start and written last: it exists only for a complete dataset.
//!   One left by an earlier run must parse (a malformed one means the directory was damaged from
//!   outside: the run refuses it, naming the field, rather than guess).
//! - `.kadyn.lock` (see [`crate::lock`]) is the run's lock, not part of the dataset: every scan
//!   of the directory ignores it.
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
use crate::lock::LOCK_FILE;

pub const CONFIG_FILE: &str = ".kadyn-gen-config.json";
pub const PROGRESS_FILE: &str = ".kadyn-gen-progress.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const VOCAB_FILE: &str = "vocab.json";
pub const WORLD_FILE: &str = "world.parquet";
const TMP: &str = ".tmp";

pub fn shard_name(index: usize) -> String {
    format!("shard-{index:05}.parquet")
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
            file: shard_name(index),
            rows: i * self.shard_rows..((i + 1) * self.shard_rows).min(self.samples),
        }
    }

    /// The shard a file name belongs to, if it is one of this dataset's.
    pub fn index_of(&self, file: &str) -> Option<usize> {
        let digits = file.strip_prefix("shard-")?.strip_suffix(".parquet")?;
        let index: usize = digits.parse().ok()?;
        (index < self.count() && shard_name(index) == file).then_some(index)
    }
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

fn is_ours(name: &str) -> bool {
    let base = name.strip_suffix(TMP).unwrap_or(name);
    matches!(
        base,
        CONFIG_FILE | PROGRESS_FILE | MANIFEST_FILE | VOCAB_FILE | WORLD_FILE
    ) || (base.starts_with("shard-") && base.ends_with(".parquet"))
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

/// Writes `bytes` to `path` atomically (tmp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    drop(f);
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

/// Checks that `dir` (which exists: the lock is inside) can hold `config`, without changing
/// anything: it must be empty (but for our own stale `.tmp` files and the lock), or hold this same
/// config and, if it has one, a well-formed manifest. Returns true when it already holds this
/// config (a resumed or repeated run).
pub fn inspect(dir: &Path, config_json: &str) -> Result<bool> {
    let config_path = dir.join(CONFIG_FILE);
    let resumed = match fs::read_to_string(&config_path) {
        Ok(existing) => {
            let ours: Value = serde_json::from_str(config_json).expect("our own JSON");
            let theirs: Value = serde_json::from_str(&existing).map_err(|e| {
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
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries = fs::read_dir(dir)
                .map_err(|e| GenError::out(dir, format!("cannot list the directory: {e}")))?;
            for entry in entries {
                let name = entry.at(dir)?.file_name().to_string_lossy().into_owned();
                if name != LOCK_FILE && !(is_ours(&name) && name.ends_with(TMP)) {
                    return Err(GenError::out(
                        dir,
                        format!(
                            "is not empty and holds no kadyn-gen config (found {name:?}); \
                             use an empty or new directory"
                        ),
                    ));
                }
            }
            false
        }
        Err(e) => {
            return Err(GenError::out(
                dir,
                format!("cannot read {CONFIG_FILE}: {e}"),
            ))
        }
    };
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

/// Makes `dir` hold `config` once [`inspect`] has accepted it: writes the config file (first)
/// unless it is there, and clears stale `.tmp` files and the manifest.
pub fn prepare(dir: &Path, config_json: &str, resumed: bool) -> Result<()> {
    if !resumed {
        write_atomic(&dir.join(CONFIG_FILE), config_json.as_bytes())
            .map_err(|e| GenError::out(dir, format!("is not writable: {e}")))?;
    }
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(TMP) && is_ours(&name)) || name == MANIFEST_FILE {
            fs::remove_file(entry.path()).at(&entry.path())?;
        }
    }
    Ok(())
}

/// The recorded shards, and a warning when a progress file exists but cannot be read (then
/// nothing is recorded, and every shard on disk is verified against nothing and rewritten).
pub fn load_progress(dir: &Path) -> (Progress, Option<String>) {
    match fs::read_to_string(dir.join(PROGRESS_FILE)) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(progress) => (progress, None),
            Err(e) => (
                Progress::default(),
                Some(format!(
                    "{PROGRESS_FILE} is unreadable ({e}); shards already on disk are rewritten"
                )),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Progress::default(), None),
        Err(e) => (
            Progress::default(),
            Some(format!(
                "cannot read {PROGRESS_FILE} ({e}); shards already on disk are rewritten"
            )),
        ),
    }
}

pub fn save_progress(dir: &Path, progress: &Progress) -> Result<()> {
    let json = serde_json::to_string_pretty(progress).expect("serialisable") + "\n";
    write_atomic(&dir.join(PROGRESS_FILE), json.as_bytes())
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
    /// `unverifiable (no record in .kadyn-gen-progress.json)`, ...
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
        return damaged(format!("unverifiable (no record in {PROGRESS_FILE})"));
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

/// The shards worth checking: those with a record, and those with a file under their final name
/// (found by one listing of the directory, so the cost follows what is there, not `--samples`).
pub fn shards_to_check(dir: &Path, shards: &Shards, progress: &Progress) -> Result<Vec<usize>> {
    let mut found: BTreeSet<usize> = progress
        .shards
        .keys()
        .filter_map(|f| shards.index_of(f))
        .collect();
    for entry in fs::read_dir(dir).at(dir)? {
        if let Some(i) = shards.index_of(&entry.at(dir)?.file_name().to_string_lossy()) {
            found.insert(i);
        }
    }
    Ok(found.into_iter().collect())
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
