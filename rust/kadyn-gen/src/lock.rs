//! Locks on the output directory, so that two writers never interleave their files in one dataset
//! (each would delete the other's `.tmp` files).
//!
//! The convention is shared with the Python trainer (`kadyn.runlock`): a non-blocking `flock` on
//! `DIR/.kadyn.lock` (`File::try_lock` is flock on Linux), held until the process ends (the
//! kernel drops it even on SIGKILL, so a killed run leaves no stale lock), and one line written
//! after locking, `pid=<pid> host=<hostname> since=<unix seconds> command=<program>`, that names
//! the holder in the next process's error. The file is never deleted (deleting it while a second
//! process has it open would let a third lock a new file beside them) and is not part of the
//! dataset: directory scans ignore it.
//!
//! A whole run and `kadyn-gen merge` hold `.kadyn.lock` exclusively. A part (`--part I/N`) holds
//! it *shared*, so that the parts of one dataset run side by side while a whole run or a merge
//! waits for all of them (and they for it), and holds its own `.kadyn-gen-part-I-of-N.lock`
//! exclusively, with its line, so that one part never runs twice at once. Parts of another N
//! running in the same directory are refused (their blocks would overlap). Part locks are
//! removed by the merge, under the exclusive lock: a part takes `.kadyn.lock` before it opens its
//! own, so none can hold or be opening one then.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dir::Part;
use crate::error::{GenError, IoContext, Result};

pub const LOCK_FILE: &str = ".kadyn.lock";
const PART_LOCK_PREFIX: &str = ".kadyn-gen-part-";

/// The lock file of a part: `.kadyn-gen-part-1-of-4.lock`.
pub fn part_lock_file(part: Part) -> String {
    format!(".kadyn-gen-{}.lock", part.tag())
}

/// Whether a name in the dataset directory is one of the locks (never part of the dataset).
pub fn is_lock_file(name: &str) -> bool {
    name == LOCK_FILE || (name.starts_with(PART_LOCK_PREFIX) && name.ends_with(".lock"))
}

/// Holds its locks until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _files: Vec<File>,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "unknown-host".into(),
    }
}

/// The holder's line in words, `pid 12 on host, kadyn-gen` (`kadyn-gen --part 1/4` for a part),
/// or `holder unknown` (a holder that has locked but not yet written its line).
pub fn describe_holder(line: &str) -> String {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
    };
    match field("pid") {
        Some(pid) => format!(
            "pid {pid} on {}, {}{}",
            field("host").unwrap_or("?"),
            field("command").unwrap_or("?"),
            field("part").map_or(String::new(), |p| format!(" --part {p}"))
        ),
        None => "holder unknown".into(),
    }
}

/// Opens (creating) a lock file without truncating it: the holder's line must survive until we
/// hold the lock.
fn open_lock(dir: &Path, name: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(name))
        .map_err(|e| GenError::out(dir, format!("cannot lock {name}: {e}")))
}

fn read_line(file: &mut File) -> String {
    let mut line = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut line);
    line
}

/// Replaces the file's line with ours (we hold its lock).
fn write_holder(dir: &Path, file: &mut File, command: &str, part: Option<Part>) -> Result<()> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let part = part.map_or(String::new(), |p| format!(" part={p}"));
    let line = format!(
        "pid={} host={} since={since} command={command}{part}\n",
        std::process::id(),
        hostname()
    );
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(line.as_bytes()))
        .map_err(|e| GenError::out(dir, format!("cannot write its lock: {e}")))
}

/// The part locks in `dir` (those `which` names) held by a running part, with their holders'
/// lines: probed with a shared lock, which fails only while the part holds its exclusive one.
fn running_parts(dir: &Path, which: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PART_LOCK_PREFIX) && n.ends_with(".lock") && which(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let mut file = File::open(dir.join(&name)).ok()?;
            match file.try_lock_shared() {
                Err(TryLockError::WouldBlock) => {
                    let line = read_line(&mut file);
                    Some((name, line))
                }
                _ => None,
            }
        })
        .collect()
}

impl DirLock {
    /// Creates `dir` if needed and locks it exclusively for `command`; `GenError::Busy` when
    /// another process holds it (a whole run, a merge, or any part).
    pub fn acquire(dir: &Path, command: &str) -> Result<DirLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| GenError::out(dir, format!("cannot create the directory: {e}")))?;
        let mut file = open_lock(dir, LOCK_FILE)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // Shared holders are parts, whose lines are in their own lock files.
                let holder = if file.try_lock_shared().is_ok() {
                    let _ = file.unlock();
                    let parts = running_parts(dir, |_| true);
                    match parts.split_first() {
                        Some(((_, line), [])) => describe_holder(line),
                        Some(((_, line), rest)) => {
                            format!("{} and {} more parts", describe_holder(line), rest.len())
                        }
                        None => "holder unknown".into(),
                    }
                } else {
                    describe_holder(&read_line(&mut file))
                };
                return Err(GenError::Busy {
                    path: dir.to_path_buf(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(GenError::out(dir, format!("cannot lock {LOCK_FILE}: {e}")))
            }
        }
        write_holder(dir, &mut file, command, None)?;
        Ok(DirLock { _files: vec![file] })
    }

    /// Creates `dir` if needed and locks it for part `part`: `.kadyn.lock` shared, the part's own
    /// lock exclusively. `GenError::Busy` when a whole run or a merge holds the directory, or
    /// this same part runs elsewhere; refused when parts of another count run here.
    pub fn acquire_part(dir: &Path, command: &str, part: Part) -> Result<DirLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| GenError::out(dir, format!("cannot create the directory: {e}")))?;
        let mut shared = open_lock(dir, LOCK_FILE)?;
        match shared.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(GenError::Busy {
                    path: dir.to_path_buf(),
                    holder: describe_holder(&read_line(&mut shared)),
                })
            }
            Err(TryLockError::Error(e)) => {
                return Err(GenError::out(dir, format!("cannot lock {LOCK_FILE}: {e}")))
            }
        }
        let name = part_lock_file(part);
        let mut own = open_lock(dir, &name)?;
        // A few tries: another process probing the part locks (a whole run naming the parts
        // that hold the folder, a part of another count) holds this one shared for an instant.
        let mut tries = 0;
        loop {
            match own.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(GenError::Busy {
                        path: dir.to_path_buf(),
                        holder: describe_holder(&read_line(&mut own)),
                    })
                }
                Err(TryLockError::Error(e)) => {
                    return Err(GenError::out(dir, format!("cannot lock {name}: {e}")))
                }
            }
        }
        write_holder(dir, &mut own, command, Some(part))?;
        // Only other counts' locks are probed: probing a sibling's would make it fail to start.
        let same_count = format!("-of-{}.lock", part.count);
        if let Some((other, line)) = running_parts(dir, |n| !n.ends_with(&same_count))
            .into_iter()
            .next()
        {
            return Err(GenError::out(
                dir,
                format!(
                    "is being written by parts of another count ({other}: {}); every part of \
                     one dataset takes the same --part I/N count",
                    describe_holder(&line)
                ),
            ));
        }
        Ok(DirLock {
            _files: vec![shared, own],
        })
    }
}

/// Removes the part lock files (by a holder of the exclusive lock, once the parts are merged).
pub fn remove_part_locks(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != LOCK_FILE && is_lock_file(&name) {
            std::fs::remove_file(entry.path()).at(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(dir.path(), "kadyn-gen").unwrap();
        let line = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            line.starts_with(&format!("pid={} host=", std::process::id())),
            "{line}"
        );
        assert!(line.ends_with(" command=kadyn-gen\n"), "{line}");
        // flock locks belong to the open file description: a second open conflicts, even here.
        let err = DirLock::acquire(dir.path(), "kadyn-gen").unwrap_err();
        assert_eq!(err.exit_code(), 75);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "is in use by another process (pid {} on ",
                std::process::id()
            )),
            "{msg}"
        );
        drop(held);
        DirLock::acquire(dir.path(), "kadyn-gen").unwrap();
    }

    #[test]
    fn holders_in_words() {
        assert_eq!(
            describe_holder("pid=12 host=box since=5 command=kadyn-train\n"),
            "pid 12 on box, kadyn-train"
        );
        assert_eq!(describe_holder(""), "holder unknown");
    }
}
