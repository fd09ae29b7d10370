//! Bounds on what one request may make the core hold in memory.
//!
//! A size that comes from a user (a sequence length, a batch size, a list of rows) is checked here
//! before anything is allocated: an oversized request becomes an error that names the field, the
//! value and the limit, where it used to be a failed allocation, which aborts the whole process
//! (Rust's default on out-of-memory, SIGABRT in Python). The buffers themselves are then reserved
//! fallibly ([`filled`]), for what the estimate cannot see (an address-space cap, other tenants).

use std::sync::OnceLock;

use crate::error::{KadynError, Result};

/// The longest row (tokens) any stream, probe set or dataset may have: 2^20 tokens, 5 MiB a row
/// (int32 ids + int8 attribute types). That is ~10^4 times the longest biography of the paper's
/// worlds, so it never binds a real run, while Arrow's own bound (i32::MAX) would let one row take
/// 10 GiB and a batch of them any amount.
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// One in-memory batch (for a prefetching stream: all its batches in flight) may take at most
/// 1/`MEMORY_FRACTION` of the memory this process may use, leaving the rest to the model, the
/// consumer's copies and everything else on the machine.
pub const MEMORY_FRACTION: u64 = 4;

/// The memory assumed where it cannot be read (neither sysconf nor a cgroup answers): 16 GiB.
const FALLBACK_MEMORY: u64 = 16 << 30;

/// Bytes one row of a batch holds: 4 (int32 id) + 1 (int8 attribute type) per token, plus its
/// sample index, individual(s) and per-row bookkeeping (a packed row's list of individuals).
pub fn row_bytes(seq_len: usize) -> u64 {
    (seq_len as u64).saturating_mul(5).saturating_add(64)
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(unix)]
fn sysconf_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| (pages as u64).saturating_mul(page as u64))
}

#[cfg(not(unix))]
fn sysconf_memory() -> Option<u64> {
    None
}

/// A container's memory limit (cgroup v2, then v1); None when unlimited or not in one.
fn cgroup_memory() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|path| std::fs::read_to_string(path).ok()?.trim().parse().ok())
}

/// The address-space cap (`ulimit -v`), when one is set.
#[cfg(unix)]
fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn address_space_limit() -> Option<u64> {
    None
}

/// The memory this process may use: the least of physical memory, its cgroup's limit and its
/// address-space cap (read once).
pub fn available_memory() -> u64 {
    static AVAILABLE: OnceLock<u64> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        [sysconf_memory(), cgroup_memory(), address_space_limit()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(FALLBACK_MEMORY)
    })
}

/// The most bytes one in-memory batch (or all batches in flight) may take.
pub fn memory_limit() -> u64 {
    available_memory() / MEMORY_FRACTION
}

/// Checks that `batches` batches of `rows` rows of `seq_len` tokens fit in [`memory_limit`];
/// the error names `field` (which holds `rows`) and the most rows that would fit.
pub fn check_rows(field: &'static str, rows: u64, seq_len: usize, batches: u64) -> Result<()> {
    let limit = memory_limit();
    let per_row = row_bytes(seq_len).saturating_mul(batches.max(1));
    let max_rows = limit / per_row;
    if rows <= max_rows {
        return Ok(());
    }
    let in_flight = if batches > 1 {
        format!(", {batches} batches in memory at once")
    } else {
        String::new()
    };
    Err(KadynError::invalid(
        field,
        rows,
        format!(
            "<= {max_rows} at seq_len {seq_len}{in_flight} (rows × {} bytes a row must fit in \
             the memory limit of {}, 1/{MEMORY_FRACTION} of the {} this process may use)",
            row_bytes(seq_len),
            human_bytes(limit),
            human_bytes(available_memory()),
        ),
    ))
}

/// `vec![value; len]`, but an error naming `field` when the allocator refuses the memory.
pub fn filled<T: Clone>(field: &'static str, len: usize, value: T) -> Result<Vec<T>> {
    let mut out = reserved(field, len)?;
    out.resize(len, value);
    Ok(out)
}

/// An empty vector with room for exactly `len` items (to be written once, without a fill
/// before), or an error naming `field` when the allocator refuses the memory.
pub fn reserved<T>(field: &'static str, len: usize) -> Result<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(len).map_err(|e| {
        KadynError::invalid(
            field,
            len,
            format!(
                "a size the allocator can provide ({} bytes requested: {e})",
                len.saturating_mul(std::mem::size_of::<T>())
            ),
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_sane() {
        assert!(memory_limit() >= 1 << 20, "{}", memory_limit());
        assert!(check_rows("rows", 1000, 512, 4).is_ok());
        let e = check_rows("batch_size", 1 << 24, 100_000, 6).unwrap_err();
        let e = e.to_string();
        assert!(e.starts_with("batch_size must be <= "), "{e}");
        assert!(
            e.contains("memory limit of") && e.ends_with("got 16777216"),
            "{e}"
        );
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }

    #[test]
    fn failed_reservations_are_errors() {
        let e = filled("rows", usize::MAX / 2, 0u8).unwrap_err().to_string();
        assert!(
            e.starts_with("rows must be a size the allocator can provide"),
            "{e}"
        );
        assert_eq!(filled("rows", 3, 7i8).unwrap(), vec![7, 7, 7]);
    }
}
