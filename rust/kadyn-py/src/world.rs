//! The Python `World`: builds a core world once and answers questions about it.

use std::sync::Arc;

use arrow::pyarrow::ToPyArrow;
use kadyn_core::baseline::{pool_entropy, statistics_only_loss, value_table_entropy};
use kadyn_core::{
    eval_set, world_table, Attribute, PoolSizes, Population, Split, World as CoreWorld,
    WorldConfig, ATTRIBUTE_NAMES,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{count, to_py};
use crate::sampling::curriculum;

#[pyclass(module = "kadyn", frozen, subclass)]
pub struct World {
    pub inner: Arc<CoreWorld>,
}

const U32: i64 = u32::MAX as i64;

#[pymethods]
impl World {
    #[new]
    #[pyo3(signature = (
        n_individuals = 1000, seed = 0, heldout = 0, new = 0,
        n_first_names = 900, n_last_names = 1000, n_cities = 800, n_universities = 200,
        n_majors = 100, n_companies = 500, year_min = 1900, year_max = 2100,
        n_days = 31, n_months = 12,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        py: Python<'_>,
        n_individuals: i64,
        seed: i64,
        heldout: i64,
        new: i64,
        n_first_names: i64,
        n_last_names: i64,
        n_cities: i64,
        n_universities: i64,
        n_majors: i64,
        n_companies: i64,
        year_min: i64,
        year_max: i64,
        n_days: i64,
        n_months: i64,
    ) -> PyResult<Self> {
        let config = WorldConfig {
            n_individuals: count("n_individuals", n_individuals, 1, U32)? as u32,
            heldout: count("heldout", heldout, 0, U32)? as u32,
            new: count("new", new, 0, U32)? as u32,
            seed: count("seed", seed, 0, i64::MAX)?,
            pools: PoolSizes {
                first_names: count("n_first_names", n_first_names, 1, U32)? as u32,
                last_names: count("n_last_names", n_last_names, 1, U32)? as u32,
                cities: count("n_cities", n_cities, 1, U32)? as u32,
                universities: count("n_universities", n_universities, 1, U32)? as u32,
                majors: count("n_majors", n_majors, 1, U32)? as u32,
                companies: count("n_companies", n_companies, 1, U32)? as u32,
                year_min: count("year_min", year_min, 1, 9999)? as u32,
                year_max: count("year_max", year_max, 1, 9999)? as u32,
                days: count("n_days", n_days, 1, 31)? as u32,
                months: count("n_months", n_months, 1, 12)? as u32,
            },
        };
        let world = py.detach(|| CoreWorld::new(config)).map_err(to_py)?;
        Ok(World {
            inner: Arc::new(world),
        })
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "World(n_individuals={}, seed={}, heldout={}, new={}, vocab_size={})",
            c.n_individuals,
            c.seed,
            c.heldout,
            c.new,
            self.inner.vocab().len()
        )
    }

    #[getter]
    fn n_individuals(&self) -> u32 {
        self.inner.config().n_individuals
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.inner.config().seed
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab().len()
    }

    #[getter]
    fn pad_id(&self) -> u32 {
        kadyn_core::vocab::PAD_ID
    }

    #[getter]
    fn bos_id(&self) -> u32 {
        kadyn_core::vocab::BOS_ID
    }

    #[getter]
    fn eos_id(&self) -> u32 {
        kadyn_core::vocab::EOS_ID
    }

    #[getter]
    fn attribute_names(&self) -> Vec<&'static str> {
        ATTRIBUTE_NAMES.to_vec()
    }

    #[getter]
    fn max_biography_tokens(&self) -> usize {
        self.inner.max_biography_tokens()
    }

    /// The world's configuration as a JSON string (for manifests and checkpoints).
    fn config_json(&self) -> String {
        serde_json::to_string(self.inner.config()).expect("config serialises")
    }

    fn population_size(&self, population: &str) -> PyResult<usize> {
        Ok(self
            .inner
            .population_size(Population::parse(population).map_err(to_py)?))
    }

    fn vocab(&self) -> Vec<String> {
        self.inner.vocab().words().to_vec()
    }

    /// Writes the vocabulary as JSON: `{"tokens": [...], "pad_id": 0, "bos_id": 1, "eos_id": 2}`.
    fn save_vocab(&self, path: std::path::PathBuf) -> PyResult<()> {
        let json = serde_json::json!({
            "tokens": self.inner.vocab().words(),
            "pad_id": kadyn_core::vocab::PAD_ID,
            "bos_id": kadyn_core::vocab::BOS_ID,
            "eos_id": kadyn_core::vocab::EOS_ID,
        });
        std::fs::write(&path, json.to_string()).map_err(|e| {
            to_py(kadyn_core::KadynError::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            )))
        })
    }

    /// Text of token ids (a list, numpy array or tensor); `<pad>` is skipped.
    fn decode(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids: Vec<i64> = if ids.hasattr("tolist")? {
            ids.call_method0("tolist")?.extract()?
        } else {
            ids.extract()?
        };
        self.inner.vocab().decode(&ids).map_err(to_py)
    }

    /// Token ids of text made of the world's words.
    fn encode(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.vocab().encode(text).map_err(to_py)
    }

    /// The 25 templates of an attribute type, as text with `{name}` and `{value}`.
    fn templates(&self, attribute: &str) -> PyResult<Vec<String>> {
        let attr = Attribute::parse(attribute).map_err(to_py)?;
        Ok(self
            .inner
            .template_texts(attr)
            .iter()
            .map(|t| t.text.clone())
            .collect())
    }

    /// Individual `index` of a population: name, values and template split.
    #[pyo3(signature = (index, population = "train"))]
    fn individual<'py>(
        &self,
        py: Python<'py>,
        index: i64,
        population: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let pop = Population::parse(population).map_err(to_py)?;
        let size = self.inner.population_size(pop);
        if index < 0 || index as usize >= size {
            return Err(to_py(kadyn_core::KadynError::not_found(
                "individual",
                index,
                format!("0..{size} in population {population:?}"),
            )));
        }
        let ind = self.inner.individual(pop, index as usize).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("index", index)?;
        d.set_item("population", population)?;
        d.set_item("name", self.inner.full_name(ind))?;
        for attr in Attribute::ALL {
            d.set_item(
                attr.name(),
                self.inner.value_text(attr, ind.values[attr as usize]),
            )?;
        }
        for split in [Split::Train, Split::Eval] {
            let t = PyDict::new(py);
            for attr in Attribute::ALL {
                let ids: Vec<u32> = ind
                    .templates_of(attr, split)
                    .iter()
                    .map(|&x| x as u32)
                    .collect();
                t.set_item(attr.name(), ids)?;
            }
            d.set_item(format!("{}_templates", split.name()), t)?;
        }
        Ok(d)
    }

    /// Every sentence an individual can appear in under a split (6 × 20 train, 6 × 5 eval).
    #[pyo3(signature = (index, split = "train", population = "train"))]
    fn sentences(&self, index: usize, split: &str, population: &str) -> PyResult<Vec<String>> {
        let pop = Population::parse(population).map_err(to_py)?;
        let split = Split::parse(split).map_err(to_py)?;
        let ind = self.inner.individual(pop, index).map_err(to_py)?;
        let mut out = Vec::new();
        for attr in Attribute::ALL {
            for &t in ind.templates_of(attr, split) {
                let (mut tokens, mut types) = (Vec::new(), Vec::new());
                self.inner
                    .render_sentence(ind, attr, t as usize, &mut tokens, &mut types);
                let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
                out.push(self.inner.vocab().decode(&ids).map_err(to_py)?);
            }
        }
        Ok(out)
    }

    /// Fixed probe rows (pyarrow.RecordBatch, stream schema): one biography per individual.
    #[pyo3(signature = (split = "eval", population = "train", max_individuals = None, seq_len = None, seed = 0))]
    fn eval_set<'py>(
        &self,
        py: Python<'py>,
        split: &str,
        population: &str,
        max_individuals: Option<i64>,
        seq_len: Option<i64>,
        seed: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let split = Split::parse(split).map_err(to_py)?;
        let pop = Population::parse(population).map_err(to_py)?;
        let max = max_individuals
            .map(|m| count("max_individuals", m, 1, i64::MAX))
            .transpose()?
            .map(|m| m as usize);
        let seq_len = match seq_len {
            Some(s) => count("seq_len", s, 1, i64::MAX)? as usize,
            None => self.inner.max_biography_tokens(),
        };
        let seed = count("seed", seed, 0, i64::MAX)?;
        let world = self.inner.clone();
        let batch = py
            .detach(move || eval_set(&world, pop, split, max, seq_len, seed))
            .map_err(to_py)?;
        batch.to_pyarrow(py)
    }

    /// F, the statistics-only level the plateau sits at, in nats per value: per attribute type
    /// and `"mean"`. The loss of the best predictor that knows the stream's value statistics under
    /// `sampling` (a distribution, or a curriculum's phase at sample `at_sample`, default its last)
    /// but not who has which value, averaged over the first `max_individuals` of `population`
    /// (the individuals `eval_set` probes). Day, month and year of a birth date count as separate
    /// fields; see `kadyn_core::baseline`.
    #[pyo3(signature = (sampling = None, population = "train", max_individuals = None, at_sample = None))]
    fn no_knowledge_loss<'py>(
        &self,
        py: Python<'py>,
        sampling: Option<&Bound<'py, PyAny>>,
        population: &str,
        max_individuals: Option<i64>,
        at_sample: Option<i64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let pop = Population::parse(population).map_err(to_py)?;
        let plan = match sampling {
            Some(s) => curriculum(s)?,
            None => kadyn_core::Curriculum::single(kadyn_core::Distribution::Uniform),
        };
        let phase = match at_sample {
            Some(k) => {
                let k = count("at_sample", k, 0, i64::MAX)?;
                let size = self.inner.population_size(pop).max(1) as u64;
                kadyn_core::Sampler::new(plan.clone(), size)
                    .map_err(to_py)?
                    .phase(k)
            }
            None => plan.phases.len() - 1,
        };
        let probes = max_individuals
            .map(|m| count("max_individuals", m, 1, i64::MAX))
            .transpose()?
            .map(|m| m as usize);
        let values =
            statistics_only_loss(&self.inner, &plan.phases[phase].0, pop, probes).map_err(to_py)?;
        levels(py, values)
    }

    /// The entropy of each attribute's joint value distribution in `population` (nats): the floor
    /// that memorising which value combinations exist reaches, below F at small N.
    #[pyo3(signature = (population = "train"))]
    fn value_table_entropy<'py>(
        &self,
        py: Python<'py>,
        population: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let pop = Population::parse(population).map_err(to_py)?;
        if self.inner.population_size(pop) == 0 {
            return Err(PyValueError::new_err(format!(
                "population {population:?} has 0 individuals; pass heldout=/new= to World"
            )));
        }
        levels(py, value_table_entropy(&self.inner, pop))
    }

    /// ln(number of possible values) per attribute type: the level of an infinite world
    /// (≈ 6.78 nats on average with the paper's pools).
    fn pool_entropy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        levels(py, pool_entropy(&self.inner))
    }

    /// Name tokens (first, middle or last name) that occur in exactly one individual of the
    /// population: each identifies its owner alone, a shortcut the paper's worlds do not offer.
    #[pyo3(signature = (population = "train"))]
    fn unique_name_tokens(&self, population: &str) -> PyResult<usize> {
        let pop = Population::parse(population).map_err(to_py)?;
        Ok(self.inner.unique_name_tokens(pop))
    }

    /// One row per individual of a population: index, name and the six values as text.
    #[pyo3(signature = (population = "train"))]
    fn table<'py>(&self, py: Python<'py>, population: &str) -> PyResult<Bound<'py, PyAny>> {
        let pop = Population::parse(population).map_err(to_py)?;
        let batch = world_table(&self.inner, pop);
        batch.to_pyarrow(py)
    }
}

/// `{attribute: level, ..., "mean": level}`.
fn levels(py: Python<'_>, values: [f64; kadyn_core::N_ATTRIBUTES]) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for attr in Attribute::ALL {
        d.set_item(attr.name(), values[attr as usize])?;
    }
    d.set_item("mean", values.iter().sum::<f64>() / values.len() as f64)?;
    Ok(d)
}
