//! The one error type of the core. Every message names the offending field, the value it got and
//! what would have been allowed, so that the Python bindings can surface it verbatim.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KadynError {
    /// A numeric or structural argument outside its allowed range.
    #[error("{field} must be {allowed}, got {value}")]
    InvalidArgument {
        field: &'static str,
        value: String,
        allowed: String,
    },
    /// A name (split, population, attribute, packing, ...) that is not one of the known ones.
    #[error("unknown {field} {value:?}; expected one of {allowed}")]
    UnknownName {
        field: &'static str,
        value: String,
        allowed: String,
    },
    /// A lookup by index or token that does not exist.
    #[error("{field} {value} does not exist; allowed: {allowed}")]
    NotFound {
        field: &'static str,
        value: String,
        allowed: String,
    },
    /// Shipped data (pools, templates) or a dataset on disk that does not have the expected form.
    #[error("{source_name}: {message}")]
    BadData {
        source_name: String,
        message: String,
    },
    /// A worker thread died (a bug): surfaced as an exception rather than a hang or an abort.
    #[error("internal error in {component}: {message}")]
    Internal {
        component: &'static str,
        message: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, KadynError>;

impl KadynError {
    pub fn invalid(field: &'static str, value: impl ToString, allowed: impl ToString) -> Self {
        KadynError::InvalidArgument {
            field,
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    pub fn unknown(field: &'static str, value: impl ToString, allowed: &[&str]) -> Self {
        KadynError::UnknownName {
            field,
            value: value.to_string(),
            allowed: allowed.join(", "),
        }
    }

    pub fn not_found(field: &'static str, value: impl ToString, allowed: impl ToString) -> Self {
        KadynError::NotFound {
            field,
            value: value.to_string(),
            allowed: allowed.to_string(),
        }
    }

    pub fn bad_data(source_name: impl ToString, message: impl ToString) -> Self {
        KadynError::BadData {
            source_name: source_name.to_string(),
            message: message.to_string(),
        }
    }
}
