//! An exclusive lock on the output directory for the whole run, so that two writers never
//! interleave their files in one dataset (each would delete the other's `.tmp` files).
//!
//! The convention is shared with the Python trainer (`kadyn.runlock`): a non-blocking `flock` on
//! `DIR/.kadyn.lock` (`File::try_lock` is flock on Linux), held until the process ends (the
//! kernel drops it even on SIGKILL, so a killed run leaves no stale lock), and one line written
//! after locking, `pid=<pid> host=<hostname> since=<unix seconds> command=<program>`, that names
//! the holder in the next process's error. The file is never deleted (deleting it while a second
//! process has it open would let a third lock a new file beside them) and is not part of the
//! dataset: directory scans ignore it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{GenError, Result};

pub const LOCK_FILE: &str = ".kadyn.lock";

/// Holds the lock until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
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

/// The holder's line in words, `pid 12 on host, kadyn-gen`, or `holder unknown` (a holder that
/// has locked but not yet written its line).
pub fn describe_holder(line: &str) -> String {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
    };
    match field("pid") {
        Some(pid) => format!(
            "pid {pid} on {}, {}",
            field("host").unwrap_or("?"),
            field("command").unwrap_or("?")
        ),
        None => "holder unknown".into(),
    }
}

impl DirLock {
    /// Creates `dir` if needed and locks it for `command`; `GenError::Busy` when another process
    /// holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<DirLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| GenError::out(dir, format!("cannot create the directory: {e}")))?;
        let path = dir.join(LOCK_FILE);
        let cannot =
            |e: std::io::Error| GenError::out(dir, format!("cannot lock {LOCK_FILE}: {e}"));
        // Not truncated on open: the holder's line must survive until we hold the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut line = String::new();
                let _ = file.read_to_string(&mut line);
                return Err(GenError::Busy {
                    path: dir.to_path_buf(),
                    holder: describe_holder(&line),
                });
            }
            Err(TryLockError::Error(e)) => return Err(cannot(e)),
        }
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = format!(
            "pid={} host={} since={since} command={command}\n",
            std::process::id(),
            hostname()
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(line.as_bytes()))
            .map_err(cannot)?;
        Ok(DirLock { _file: file })
    }
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
