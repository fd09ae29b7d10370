//! `kadyn._native`: thin PyO3 bindings over kadyn-core. This crate only converts arguments and
//! errors and hands Arrow batches to pyarrow through the C data interface (no copies); every
//! algorithm lives in kadyn-core.

mod errors;
mod gen;
mod sampling;
mod stream;
mod world;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", kadyn_core::VERSION)?;
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
