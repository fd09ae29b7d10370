//! The generator's errors. Each renders as one line that names the command-line option (or the
//! file) at fault, because that line is all a user sees before the process exits.

use std::path::{Path, PathBuf};

use kadyn_core::KadynError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum GenError {
    /// A bad option value, e.g. `--alpha must be >= 0 and finite, got -1`.
    #[error("{option} {message}")]
    Option {
        option: &'static str,
        message: String,
    },
    /// The output directory cannot hold this dataset (another config, foreign files, unwritable).
    #[error("--out {}: {message}", path.display())]
    Out { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: parquet: {message}", path.display())]
    Parquet { path: PathBuf, message: String },
    /// Another process holds the output directory's lock (see `lock`).
    #[error(
        "--out {} is in use by another process ({holder}); wait for it to finish or choose \
         another --out",
        path.display()
    )]
    Busy { path: PathBuf, holder: String },
    #[error("interrupted; rerun the same command to resume")]
    Interrupted,
}

/// Exit status of a bad option (as clap's).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when another process holds `--out` (sysexits' EX_TEMPFAIL: retrying later may
/// succeed).
pub const EXIT_BUSY: i32 = 75;
/// Exit status after Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

pub type Result<T> = std::result::Result<T, GenError>;

impl GenError {
    pub fn option(option: &'static str, message: impl ToString) -> Self {
        GenError::Option {
            option,
            message: message.to_string(),
        }
    }

    pub fn out(path: &Path, message: impl ToString) -> Self {
        GenError::Out {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }

    pub fn parquet(path: &Path, err: impl ToString) -> Self {
        GenError::Parquet {
            path: path.to_path_buf(),
            message: err.to_string(),
        }
    }

    /// The exit status: 2 for bad usage (as clap does), 75 when `--out` is in use, 130 for
    /// Ctrl-C, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            GenError::Option { .. } => EXIT_USAGE,
            GenError::Busy { .. } => EXIT_BUSY,
            GenError::Interrupted => EXIT_INTERRUPTED,
            _ => 1,
        }
    }
}

/// Attaches the path to an I/O error, so that the one line says which file failed.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| GenError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The command-line option that sets a kadyn-core field; `fallback` when the field has none.
fn option_of(field: &str, fallback: &'static str) -> &'static str {
    match field {
        "alpha" if fallback == "--alpha" => "--alpha",
        "seq_len" => "--seq-len",
        "n_individuals" => "--individuals",
        "n_individuals + heldout + new" => "--individuals/--heldout/--new",
        "population" => "--population",
        "split" => "--split",
        "threads" => "--threads",
        _ => fallback,
    }
}

/// A kadyn-core error as an option error: `seq_len must be >= 84, got 10` becomes
/// `--seq-len must be >= 84, got 10`. Inside `--sampling` the core's field name is kept after the
/// option (`--sampling power:-1: alpha must be ...`) since the option holds several fields.
pub fn from_core(err: KadynError, fallback: &'static str, spec: Option<&str>) -> GenError {
    let (field, message) = match &err {
        KadynError::InvalidArgument {
            field,
            value,
            allowed,
        } => (*field, format!("must be {allowed}, got {value}")),
        KadynError::UnknownName {
            field,
            value,
            allowed,
        } => (
            *field,
            format!("{value:?} is unknown; expected one of {allowed}"),
        ),
        _ => ("", err.to_string()),
    };
    let option = option_of(field, fallback);
    match spec {
        Some(spec) if option == fallback && !field.is_empty() => {
            GenError::option(option, format!("{spec:?}: {field} {message}"))
        }
        _ => GenError::option(option, message),
    }
}
