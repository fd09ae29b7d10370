//! Python classes for the sampling distributions and the curriculum.

use kadyn_core::{Curriculum as CoreCurriculum, Distribution};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::errors::{count, to_py};

/// Every individual equally often.
#[pyclass(module = "kadyn", frozen, eq, skip_from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Uniform;

#[pymethods]
impl Uniform {
    #[new]
    fn new() -> Self {
        Uniform
    }

    fn __repr__(&self) -> String {
        "Uniform()".into()
    }
}

/// P(i) ∝ (i + 1)^-alpha over the population's index (alias table, O(1) per draw).
#[pyclass(module = "kadyn", frozen, eq, skip_from_py_object)]
#[derive(Clone, PartialEq)]
pub struct PowerLaw {
    #[pyo3(get)]
    alpha: f64,
}

#[pymethods]
impl PowerLaw {
    #[new]
    fn new(alpha: f64) -> PyResult<Self> {
        Distribution::power_law(alpha).map_err(to_py)?;
        Ok(PowerLaw { alpha })
    }

    fn __repr__(&self) -> String {
        format!("PowerLaw(alpha={})", self.alpha)
    }
}

/// Uniform over the first `n` individuals of the population.
#[pyclass(module = "kadyn", frozen, eq, skip_from_py_object)]
#[derive(Clone, PartialEq)]
pub struct Subset {
    #[pyo3(get)]
    n: u64,
}

#[pymethods]
impl Subset {
    #[new]
    fn new(n: i64) -> PyResult<Self> {
        Ok(Subset {
            n: count("n", n, 1, u32::MAX as i64)?,
        })
    }

    fn __repr__(&self) -> String {
        format!("Subset(n={})", self.n)
    }
}

/// Phases `[(distribution, n_samples), ..., (distribution, None)]` by sample count.
#[pyclass(module = "kadyn", frozen, skip_from_py_object)]
#[derive(Clone)]
pub struct Curriculum {
    pub inner: CoreCurriculum,
}

#[pymethods]
impl Curriculum {
    #[new]
    fn new(phases: Vec<(Bound<'_, PyAny>, Option<i64>)>) -> PyResult<Self> {
        let mut out = Vec::with_capacity(phases.len());
        for (i, (dist, n)) in phases.iter().enumerate() {
            let dist = distribution(dist)?;
            let n = match n {
                Some(n) if *n < 0 => {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "phases[{i}].n_samples must be >= 1, got {n}"
                    )))
                }
                Some(n) => Some(*n as u64),
                None => None,
            };
            out.push((dist, n));
        }
        Ok(Curriculum {
            inner: CoreCurriculum::new(out).map_err(to_py)?,
        })
    }

    fn __repr__(&self) -> String {
        let phases: Vec<String> = self
            .inner
            .phases
            .iter()
            .map(|(d, n)| {
                let n = n.map_or("None".to_string(), |n| n.to_string());
                format!("({}, {n})", repr(d))
            })
            .collect();
        format!("Curriculum([{}])", phases.join(", "))
    }

    /// The phases as `(kind, parameter, n_samples)` tuples, for configs and manifests.
    fn spec(&self) -> Vec<(String, f64, Option<u64>)> {
        self.inner
            .phases
            .iter()
            .map(|(d, n)| match *d {
                Distribution::Uniform => ("uniform".to_string(), 0.0, *n),
                Distribution::PowerLaw { alpha } => ("power".to_string(), alpha, *n),
                Distribution::Subset { n: k } => ("subset".to_string(), k as f64, *n),
            })
            .collect()
    }
}

fn repr(d: &Distribution) -> String {
    match *d {
        Distribution::Uniform => "Uniform()".into(),
        Distribution::PowerLaw { alpha } => format!("PowerLaw(alpha={alpha})"),
        Distribution::Subset { n } => format!("Subset(n={n})"),
    }
}

fn distribution(obj: &Bound<'_, PyAny>) -> PyResult<Distribution> {
    if obj.cast::<Uniform>().is_ok() {
        Ok(Distribution::Uniform)
    } else if let Ok(p) = obj.cast::<PowerLaw>() {
        Ok(Distribution::PowerLaw {
            alpha: p.get().alpha,
        })
    } else if let Ok(s) = obj.cast::<Subset>() {
        Ok(Distribution::Subset { n: s.get().n })
    } else {
        Err(PyTypeError::new_err(format!(
            "sampling must be kadyn.Uniform, PowerLaw, Subset or Curriculum, got {}",
            obj.get_type().name()?
        )))
    }
}

/// Any sampling object a stream accepts, as a core curriculum.
pub fn curriculum(obj: &Bound<'_, PyAny>) -> PyResult<CoreCurriculum> {
    if let Ok(c) = obj.cast::<Curriculum>() {
        return Ok(c.get().inner.clone());
    }
    Ok(CoreCurriculum::single(distribution(obj)?))
}
