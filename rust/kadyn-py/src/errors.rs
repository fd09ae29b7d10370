//! Maps core errors onto the Python exceptions users expect.

use kadyn_core::KadynError;
use pyo3::exceptions::{PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

pub fn to_py(err: KadynError) -> PyErr {
    let msg = err.to_string();
    match err {
        KadynError::NotFound { .. } => PyKeyError::new_err(msg),
        KadynError::Io(_) => PyOSError::new_err(msg),
        KadynError::Internal { .. } => PyRuntimeError::new_err(msg),
        _ => PyValueError::new_err(msg),
    }
}

/// Checks a Python integer argument against `0..=max` (or `1..=max`) with a message naming it.
pub fn count(field: &'static str, value: i64, min: i64, max: i64) -> Result<u64, PyErr> {
    if value < min || value > max {
        return Err(PyValueError::new_err(format!(
            "{field} must be in {min}..={max}, got {value}"
        )));
    }
    Ok(value as u64)
}
