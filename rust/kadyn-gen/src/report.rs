//! Progress output on stderr: an indicatif bar on a terminal, one plain line per shard otherwise
//! (logs, CI), nothing with `--quiet`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

use crate::dir::FileRecord;

pub enum Reporter {
    Bar(ProgressBar),
    Lines { total: u64, done: u64 },
    Quiet,
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

impl Reporter {
    pub fn new(quiet: bool, total_rows: u64) -> Self {
        if quiet {
            Reporter::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_rows).with_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows \
                     ({rate}, ETA {eta})",
                )
                .expect("a valid template")
                .with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} rows/s", state.per_sec());
                    },
                )
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Reporter::Bar(bar)
        } else {
            Reporter::Lines {
                total: total_rows,
                done: 0,
            }
        }
    }

    /// Rows appended to the shard being written.
    pub fn rows(&mut self, n: u64) {
        if let Reporter::Bar(bar) = self {
            bar.inc(n);
        }
    }

    /// A shard found complete and verified: counted as done without being written.
    pub fn resumed(&mut self, record: &FileRecord) {
        match self {
            Reporter::Bar(bar) => bar.inc(record.rows),
            Reporter::Lines { total, done } => {
                *done += record.rows;
                eprintln!(
                    "kadyn-gen: {} complete (verified), skipped; {done}/{total} rows",
                    record.file
                );
            }
            Reporter::Quiet => {}
        }
    }

    pub fn written(&mut self, record: &FileRecord, started: Instant) {
        if let Reporter::Lines { total, done } = self {
            *done += record.rows;
            let s = started.elapsed().as_secs_f64();
            eprintln!(
                "kadyn-gen: {} written: {} rows, {:.1} MB, {s:.2} s ({:.0} rows/s); {done}/{total} rows",
                record.file,
                record.rows,
                mb(record.bytes),
                record.rows as f64 / s.max(1e-9)
            );
        }
    }

    pub fn finish(&self) {
        if let Reporter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
