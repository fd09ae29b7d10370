//! The native batch iterator behind `kadyn.BiographyStream`: a core prefetcher whose batches cross
//! into Python as pyarrow record batches (C data interface, no copy), waited for without the GIL.

use std::sync::{Arc, Mutex};

use arrow::pyarrow::ToPyArrow;
use kadyn_core::{Facts, Packing, Population, Prefetcher, RowBuilder, Schedule, Split, StreamSpec};
use pyo3::prelude::*;

use crate::errors::{count, to_py};
use crate::sampling::curriculum;
use crate::world::World;

#[allow(clippy::too_many_arguments)]
fn row_builder(
    world: &World,
    sampling: &Bound<'_, PyAny>,
    seq_len: i64,
    split: &str,
    population: &str,
    packing: &str,
    seed: i64,
    facts: &str,
) -> PyResult<RowBuilder> {
    let spec = StreamSpec {
        population: Population::parse(population).map_err(to_py)?,
        split: Split::parse(split).map_err(to_py)?,
        packing: Packing::parse(packing).map_err(to_py)?,
        // The upper bound (MAX_SEQ_LEN) is the core's, checked with the world's lower one.
        seq_len: count("seq_len", seq_len, 1, i64::MAX)? as usize,
        seed: count("seed", seed, 0, i64::MAX)?,
        sampling: curriculum(sampling)?,
        facts: Facts::parse(facts).map_err(to_py)?,
    };
    RowBuilder::new(world.inner.clone(), spec).map_err(to_py)
}

#[pyclass(module = "kadyn._native")]
pub struct BatchStream {
    prefetcher: Mutex<Prefetcher>,
}

#[pymethods]
impl BatchStream {
    #[new]
    #[pyo3(signature = (
        world, sampling, batch_size, seq_len, split = "train", population = "train",
        packing = "pad", seed = 0, position = 0, rank = 0, world_size = 1,
        batch_start = 0, batch_step = 1, threads = 1, prefetch = 4, facts = "real",
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        world: PyRef<'_, World>,
        sampling: &Bound<'_, PyAny>,
        batch_size: i64,
        seq_len: i64,
        split: &str,
        population: &str,
        packing: &str,
        seed: i64,
        position: i64,
        rank: i64,
        world_size: i64,
        batch_start: i64,
        batch_step: i64,
        threads: i64,
        prefetch: i64,
        facts: &str,
    ) -> PyResult<Self> {
        let builder = row_builder(
            &world, sampling, seq_len, split, population, packing, seed, facts,
        )?;
        let schedule = Schedule {
            position: count("position", position, 0, i64::MAX)?,
            batch_size: count("batch_size", batch_size, 1, 1 << 24)?,
            rank: count("rank", rank, 0, i64::MAX)?,
            world_size: count("world_size", world_size, 1, 1 << 20)?,
            batch_start: count("batch_start", batch_start, 0, i64::MAX)?,
            batch_step: count("batch_step", batch_step, 1, 1 << 20)?,
        };
        let threads = count("threads", threads, 1, 1024)? as usize;
        let depth = count("prefetch", prefetch, 1, 1024)? as usize;
        let prefetcher = py
            .detach(|| Prefetcher::start(Arc::new(builder), schedule, threads, depth))
            .map_err(to_py)?;
        Ok(BatchStream {
            prefetcher: Mutex::new(prefetcher),
        })
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let batch = py
            .detach(|| self.prefetcher.lock().expect("not poisoned").next_batch())
            .map_err(to_py)?;
        batch.to_pyarrow(py)
    }
}

/// Builds the given global rows of a stream directly (no prefetching), on `threads` threads.
#[pyfunction]
#[pyo3(signature = (world, sampling, rows, seq_len, split = "train", population = "train", packing = "pad", seed = 0, threads = 1, facts = "real"))]
#[allow(clippy::too_many_arguments)]
pub fn build_rows<'py>(
    py: Python<'py>,
    world: PyRef<'_, World>,
    sampling: &Bound<'_, PyAny>,
    rows: Vec<u64>,
    seq_len: i64,
    split: &str,
    population: &str,
    packing: &str,
    seed: i64,
    threads: i64,
    facts: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let builder = row_builder(
        &world, sampling, seq_len, split, population, packing, seed, facts,
    )?;
    let threads = count("threads", threads, 1, 1024)? as usize;
    let batch = py.detach(|| -> PyResult<_> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        pool.install(|| builder.build(&rows)).map_err(to_py)
    })?;
    batch.to_pyarrow(py)
}
