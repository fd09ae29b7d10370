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

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{GenError, IoContext, Result};

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

/// Cuts rows `0..samples` into shards of `shard_rows` (the last one shorter).
pub fn plan_shards(samples: u64, shard_rows: u64) -> Vec<ShardPlan> {
    assert!(shard_rows > 0, "shard_rows is checked by the CLI");
    (0..samples.div_ceil(shard_rows))
        .map(|i| ShardPlan {
            index: i as usize,
            file: shard_name(i as usize),
            rows: i * shard_rows..((i + 1) * shard_rows).min(samples),
        })
        .collect()
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

/// Makes `dir` hold `config`: creates it, refuses a directory holding another dataset or foreign
/// files, writes the config file (first), and clears stale `.tmp` files and the manifest.
/// Returns true when the directory already held this config (a resumed or repeated run).
pub fn claim(dir: &Path, config_json: &str) -> Result<bool> {
    fs::create_dir_all(dir)
        .map_err(|e| GenError::out(dir, format!("cannot create the directory: {e}")))?;
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
                if !is_ours(&name) || !name.ends_with(TMP) {
                    return Err(GenError::out(
                        dir,
                        format!(
                            "is not empty and holds no kadyn-gen config (found {name:?}); \
                             use an empty or new directory"
                        ),
                    ));
                }
            }
            write_atomic(&config_path, config_json.as_bytes())
                .map_err(|e| GenError::out(dir, format!("is not writable: {e}")))?;
            false
        }
        Err(e) => {
            return Err(GenError::out(
                dir,
                format!("cannot read {CONFIG_FILE}: {e}"),
            ))
        }
    };
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name.ends_with(TMP) && is_ours(&name)) || name == MANIFEST_FILE {
            fs::remove_file(entry.path()).at(&entry.path())?;
        }
    }
    Ok(resumed)
}

/// The recorded shards; empty when there is no (readable) progress file.
pub fn load_progress(dir: &Path) -> Progress {
    fs::read_to_string(dir.join(PROGRESS_FILE))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
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

/// True when the shard is on disk under its final name, has a record, and matches it: the rows
/// the plan expects (per the footer), the recorded size and sha256.
pub fn verify_shard(dir: &Path, plan: &ShardPlan, record: Option<&FileRecord>) -> bool {
    let Some(record) = record else {
        return false;
    };
    let path = dir.join(&plan.file);
    let expected = plan.rows.end - plan.rows.start;
    if record.rows != expected || record.first_row != Some(plan.rows.start) {
        return false;
    }
    if fs::metadata(&path).map(|m| m.len()).ok() != Some(record.bytes) {
        return false;
    }
    if parquet_rows(&path) != Some(expected) {
        return false;
    }
    matches!(hash_file(&path), Ok((sha, _)) if sha == record.sha256)
}
