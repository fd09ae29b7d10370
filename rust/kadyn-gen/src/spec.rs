//! The `--sampling` mini-language: `uniform`, `power:<alpha>`, `subset:<n>`, and curricula made of
//! such phases separated by commas, every phase but the last ending in `@<n_samples>`
//! (`subset:2000@50000,uniform` is the paper's warm-up). Parsed into the core's `Curriculum`, so
//! the generator and the Python stream share one sampler.

use kadyn_core::{Curriculum, Distribution};

use crate::error::{from_core, GenError, Result};

const GRAMMAR: &str = "expected uniform, power:<alpha>, subset:<n>, or phases joined by commas \
                       with @<n_samples> on all but the last (e.g. subset:2000@50000,uniform)";

fn bad(spec: &str, why: impl std::fmt::Display) -> GenError {
    GenError::option("--sampling", format!("{spec:?}: {why}; {GRAMMAR}"))
}

fn distribution(spec: &str, text: &str) -> Result<Distribution> {
    let (kind, arg) = match text.split_once(':') {
        Some((k, a)) => (k.trim(), Some(a.trim())),
        None => (text.trim(), None),
    };
    let core = |e| from_core(e, "--sampling", Some(spec));
    match (kind, arg) {
        ("uniform", None) => Ok(Distribution::Uniform),
        ("power", Some(a)) => {
            let alpha: f64 = a
                .parse()
                .map_err(|_| bad(spec, format!("alpha {a:?} is not a number")))?;
            Distribution::power_law(alpha).map_err(core)
        }
        ("subset", Some(n)) => {
            let n: u64 = n
                .parse()
                .map_err(|_| bad(spec, format!("subset size {n:?} is not an integer >= 1")))?;
            Distribution::subset(n).map_err(core)
        }
        _ => Err(bad(spec, format!("unknown sampler {text:?}"))),
    }
}

/// Parses a `--sampling` value.
pub fn parse_sampling(spec: &str) -> Result<Curriculum> {
    let parts: Vec<&str> = spec.split(',').collect();
    let last = parts.len() - 1;
    let mut phases = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let (dist, n) = match part.rsplit_once('@') {
            Some((d, n)) => {
                let n: u64 = n.trim().parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    bad(spec, format!("phase length {n:?} is not an integer >= 1"))
                })?;
                (d, Some(n))
            }
            None => (*part, None),
        };
        match (i == last, n) {
            (true, Some(_)) => return Err(bad(spec, "the last phase must not have @<n_samples>")),
            (false, None) => return Err(bad(spec, format!("phase {part:?} lacks @<n_samples>"))),
            _ => {}
        }
        phases.push((distribution(spec, dist)?, n));
    }
    Curriculum::new(phases).map_err(|e| from_core(e, "--sampling", Some(spec)))
}

/// The canonical text of a curriculum (what `parse_sampling` reads back to the same value).
pub fn format_sampling(curriculum: &Curriculum) -> String {
    curriculum
        .phases
        .iter()
        .map(|(d, n)| {
            let d = match *d {
                Distribution::Uniform => "uniform".to_string(),
                Distribution::PowerLaw { alpha } => format!("power:{alpha}"),
                Distribution::Subset { n } => format!("subset:{n}"),
            };
            match n {
                Some(n) => format!("{d}@{n}"),
                None => d,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
