//! `kadyn._native`: thin PyO3 bindings over kadyn-core. This crate only converts arguments and
//! errors and hands Arrow batches to pyarrow through the C data interface (no copies); every
//! algorithm lives in kadyn-core.

mod errors;
mod gen;
mod sampling;
mod stream;
mod world;

use pyo3::prelude::*;

/// The most bytes one in-memory batch may take (all batches in flight, for a prefetching stream):
/// 1/4 of the memory this process may use (physical memory, its cgroup limit, `ulimit -v`).
#[pyfunction]
fn memory_limit() -> u64 {
    kadyn_core::memory_limit()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", kadyn_core::VERSION)?;
    m.add("MAX_SEQ_LEN", kadyn_core::MAX_SEQ_LEN)?;
    m.add_function(wrap_pyfunction!(memory_limit, m)?)?;
    m.add_class::<world::World>()?;
    m.add_class::<sampling::Uniform>()?;
    m.add_class::<sampling::PowerLaw>()?;
    m.add_class::<sampling::Subset>()?;
    m.add_class::<sampling::Curriculum>()?;
    m.add_class::<stream::BatchStream>()?;
    m.add_function(wrap_pyfunction!(stream::build_rows, m)?)?;
    m.add_function(wrap_pyfunction!(gen::gen_main, m)?)?;
    Ok(())
}
