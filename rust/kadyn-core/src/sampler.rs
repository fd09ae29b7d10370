//! Which individual sample `k` describes. Distributions over a population's individuals
//! (uniform, power law, first-n subset) and curricula made of phases by sample count. Drawing is a
//! pure function of the counter-based generator handed in, so any sample can be made on its own.

use serde::{Deserialize, Serialize};

use crate::error::{KadynError, Result};
use crate::rng::CounterRng;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    /// P(i) ∝ (i + 1)^-alpha over the population's index: individual 0 is the most frequent.
    PowerLaw {
        alpha: f64,
    },
    /// Uniform over the first `n` individuals.
    Subset {
        n: u64,
    },
}

impl Distribution {
    pub fn power_law(alpha: f64) -> Result<Self> {
        if !alpha.is_finite() || alpha < 0.0 {
            return Err(KadynError::invalid("alpha", alpha, ">= 0 and finite"));
        }
        Ok(Distribution::PowerLaw { alpha })
    }

    pub fn subset(n: u64) -> Result<Self> {
        if n == 0 {
            return Err(KadynError::invalid("n", n, ">= 1"));
        }
        Ok(Distribution::Subset { n })
    }

    /// Unnormalised weight of individual `i` (0-based) among `population` individuals.
    pub fn weight(&self, i: u64, population: u64) -> f64 {
        match *self {
            Distribution::Uniform => 1.0,
            Distribution::PowerLaw { alpha } => ((i + 1) as f64).powf(-alpha),
            Distribution::Subset { n } => {
                if i < n.min(population) {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// Phases of `(distribution, number of samples)`; the last phase is open-ended (`None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curriculum {
    pub phases: Vec<(Distribution, Option<u64>)>,
}

impl Curriculum {
    pub fn new(phases: Vec<(Distribution, Option<u64>)>) -> Result<Self> {
        if phases.is_empty() {
            return Err(KadynError::invalid("phases", "[]", "a non-empty list"));
        }
        let last = phases.len() - 1;
        for (i, (_, n)) in phases.iter().enumerate() {
            match (i == last, n) {
                (true, Some(n)) => {
                    return Err(KadynError::invalid(
                        "phases[-1].n_samples",
                        n,
                        "None (the last phase must be open-ended)",
                    ))
                }
                (false, None) => {
                    return Err(KadynError::invalid(
                        "phases[i].n_samples",
                        format!("None at phase {i}"),
                        "an integer >= 1 for every phase but the last",
                    ))
                }
                (false, Some(0)) => {
                    return Err(KadynError::invalid(
                        "phases[i].n_samples",
                        format!("0 at phase {i}"),
                        ">= 1",
                    ))
                }
                _ => {}
            }
        }
        Ok(Curriculum { phases })
    }

    pub fn single(distribution: Distribution) -> Self {
        Curriculum {
            phases: vec![(distribution, None)],
        }
    }
}

/// Vose's alias table: O(n) to build, O(1) per draw.
#[derive(Clone, Debug)]
struct AliasTable {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    fn new(weights: &[f64]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Left-overs are 1 up to rounding.
        AliasTable { prob, alias }
    }

    #[inline]
    fn draw(&self, rng: &mut CounterRng) -> u32 {
        let i = rng.below(self.prob.len() as u64) as usize;
        // A coin flip on random data: a branch would be mispredicted every other draw.
        std::hint::select_unpredictable(rng.unit_f64() < self.prob[i], i as u32, self.alias[i])
    }
}

#[derive(Clone, Debug)]
enum Compiled {
    Uniform(u64),
    Alias(AliasTable),
}

/// A curriculum compiled against a population size.
#[derive(Clone, Debug)]
pub struct Sampler {
    curriculum: Curriculum,
    /// Cumulative end (exclusive) of each phase in samples; `None` for the open-ended last one.
    ends: Vec<Option<u64>>,
    compiled: Vec<Compiled>,
}

impl Sampler {
    pub fn new(curriculum: Curriculum, population: u64) -> Result<Self> {
        if population == 0 {
            return Err(KadynError::invalid(
                "population size",
                0,
                ">= 1 (the world has no such individuals)",
            ));
        }
        let mut ends = Vec::new();
        let mut compiled = Vec::new();
        let mut at = 0u64;
        for (dist, n) in &curriculum.phases {
            ends.push(n.map(|n| {
                at = at.saturating_add(n);
                at
            }));
            compiled.push(match *dist {
                Distribution::Uniform => Compiled::Uniform(population),
                Distribution::PowerLaw { alpha: 0.0 } => Compiled::Uniform(population),
                Distribution::PowerLaw { .. } => {
                    let weights: Vec<f64> = (0..population)
                        .map(|i| dist.weight(i, population))
                        .collect();
                    Compiled::Alias(AliasTable::new(&weights))
                }
                Distribution::Subset { n } => {
                    if n > population {
                        return Err(KadynError::invalid(
                            "Subset.n",
                            n,
                            format!("in 1..={population} (the population size)"),
                        ));
                    }
                    Compiled::Uniform(n)
                }
            });
        }
        Ok(Sampler {
            curriculum,
            ends,
            compiled,
        })
    }

    pub fn curriculum(&self) -> &Curriculum {
        &self.curriculum
    }

    /// Index of the phase sample `k` falls in.
    pub fn phase(&self, k: u64) -> usize {
        self.ends
            .iter()
            .position(|end| end.is_none_or(|e| k < e))
            .unwrap_or(self.ends.len() - 1)
    }

    /// The individual (index within the population) of sample `k`.
    #[inline]
    pub fn draw(&self, k: u64, rng: &mut CounterRng) -> u32 {
        let compiled = match self.compiled.as_slice() {
            [only] => only,
            phases => &phases[self.phase(k)],
        };
        match compiled {
            Compiled::Uniform(n) => rng.below(*n) as u32,
            Compiled::Alias(table) => table.draw(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Domain;

    fn chi2(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn power_law_matches_its_weights() {
        let population = 20u64;
        for alpha in [0.0, 0.7, 1.2] {
            let dist = Distribution::power_law(alpha).unwrap();
            let sampler = Sampler::new(Curriculum::single(dist.clone()), population).unwrap();
            let mut counts = vec![0u64; population as usize];
            for k in 0..200_000u64 {
                let mut rng = CounterRng::new(11, Domain::Sample, &[k]);
                counts[sampler.draw(k, &mut rng) as usize] += 1;
            }
            let w: Vec<f64> = (0..population)
                .map(|i| dist.weight(i, population))
                .collect();
            let total: f64 = w.iter().sum();
            let probs: Vec<f64> = w.iter().map(|x| x / total).collect();
            // 19 degrees of freedom: 43.82 is the 0.999 quantile.
            let stat = chi2(&counts, &probs);
            assert!(stat < 43.82, "alpha {alpha}: chi2 {stat}");
        }
    }

    #[test]
    fn curriculum_switches_by_sample_count() {
        let c = Curriculum::new(vec![
            (Distribution::subset(3).unwrap(), Some(100)),
            (Distribution::Uniform, None),
        ])
        .unwrap();
        let s = Sampler::new(c, 1000).unwrap();
        assert_eq!(s.phase(99), 0);
        assert_eq!(s.phase(100), 1);
        for k in 0..100 {
            let mut rng = CounterRng::new(0, Domain::Sample, &[k]);
            assert!(s.draw(k, &mut rng) < 3);
        }
        let late: Vec<u32> = (100..1100)
            .map(|k| s.draw(k, &mut CounterRng::new(0, Domain::Sample, &[k])))
            .collect();
        assert!(late.iter().any(|&i| i >= 3));
    }

    #[test]
    fn bad_curricula_are_refused() {
        assert!(Curriculum::new(vec![]).is_err());
        assert!(Curriculum::new(vec![(Distribution::Uniform, Some(5))]).is_err());
        assert!(Curriculum::new(vec![
            (Distribution::Uniform, None),
            (Distribution::Uniform, None)
        ])
        .is_err());
        assert!(Distribution::power_law(-1.0).is_err());
        assert!(Distribution::power_law(f64::NAN).is_err());
        assert!(Distribution::subset(0).is_err());
        assert!(Sampler::new(Curriculum::single(Distribution::Subset { n: 11 }), 10).is_err());
    }
}
