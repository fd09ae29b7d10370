//! `kadyn._native.gen_main`: the `kadyn-gen` command line run in-process, so that the Python
//! package ships the generator as a console script without a separate binary.

use pyo3::prelude::*;

/// Runs `kadyn-gen` with `argv` (the arguments, without the program name) and returns the exit
/// code. The GIL is released while it runs; Ctrl-C is noticed between row groups (the partial
/// shard is left as a `.tmp` file that the next run removes) and returns 130.
#[pyfunction]
pub fn gen_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let argv = std::iter::once("kadyn-gen".to_string()).chain(argv);
    py.detach(|| {
        // Signal handlers run on the main thread only: the one that called us and polls here.
        let cancel = || Python::attach(|py| py.check_signals().is_err());
        kadyn_gen::main_with(argv, &cancel)
    })
}
