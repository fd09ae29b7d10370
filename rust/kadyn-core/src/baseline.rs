//! The no-knowledge levels of the attribute loss, in the paper's unit (nats summed over a value's
//! tokens, per attribute type).
//!
//! - [`statistics_only_loss`] is **F**, the level the plateau sits at: the expected loss of the best
//!   predictor that knows the attribute type and the value statistics of the training stream
//!   (under its sampling distribution) but not who has which value. It meets a value token by
//!   token, as a language model does. Each *independently drawn field* of a value is predicted
//!   from that field's stream frequencies: the birth date's day, month and year separately (they
//!   are drawn independently, as in the paper's ln(201 · 12 · 31)), every other value whole (the
//!   tokens of one city name are vocabulary, not knowledge: by the chain rule, predicting them one
//!   after the other given the previous ones costs -ln p(city)). What it does *not* know is the
//!   population's table of value combinations: which (day, month, year) triples occur. At small N
//!   nearly every date is unique to its owner, and knowing that table is memorisation, not
//!   statistics. An alternative definition (each token given only the previous token of its value)
//!   counts part of that table as statistics (the (day, month) and (month, year) pairs) and so
//!   lands between F and the floor below; the factorized one is chosen because its fields are
//!   exactly the world's independent draws, and it equals the paper's formula at large N.
//! - [`value_table_entropy`] is the floor that memorising that table reaches: the entropy of each
//!   attribute's joint value distribution in the population. At the paper's sizes the two agree;
//!   CPU-scale worlds are given pools small enough that they agree too.
//! - [`pool_entropy`] is the infinite-world level: ln(number of possible values) (the paper's
//!   ≈ 6.78 nats with its pools).
//!
//! All sums run sequentially in index order, so every process gets the same bits.

use std::collections::BTreeMap;

use crate::attribute::{Attribute, N_ATTRIBUTES};
use crate::error::{KadynError, Result};
use crate::sampler::Distribution;
use crate::world::{Population, World};

/// The independently drawn fields of a value: (day, month, year) for a birth date, the value
/// itself otherwise. Unused slots are `None`.
fn fields(world: &World, attr: Attribute, value: u32) -> [Option<u32>; 3] {
    match attr {
        Attribute::BirthDate => {
            let (day, month, year) = world.pools().split_date(value);
            [Some(day), Some(month), Some(year)]
        }
        _ => [Some(value), None, None],
    }
}

/// F per attribute type: the cross-entropy, averaged over the first `probes` individuals of
/// `population` (all of them if `None`; `World::eval_set` probes the first ones), of each value
/// under the stream's field frequencies, where individual i of the population is sampled with
/// probability ∝ `distribution.weight(i)`. A probed value the stream never shows gives +inf.
pub fn statistics_only_loss(
    world: &World,
    distribution: &Distribution,
    population: Population,
    probes: Option<usize>,
) -> Result<[f64; N_ATTRIBUTES]> {
    let inds = &world.individuals()[world.population_range(population)];
    if inds.is_empty() {
        return Err(KadynError::invalid(
            "population",
            format!("{:?} with 0 individuals", population.name()),
            "a population the World was built with (pass heldout=/new= to World)",
        ));
    }
    let n = inds.len() as u64;
    let probed = probes.map_or(inds.len(), |p| p.min(inds.len()));
    if probed == 0 {
        return Err(KadynError::invalid("max_individuals", 0, ">= 1"));
    }
    let weights: Vec<f64> = (0..n).map(|i| distribution.weight(i, n)).collect();
    let total: f64 = weights.iter().sum();
    let mut out = [0.0; N_ATTRIBUTES];
    for attr in Attribute::ALL {
        // Stream probability of each field value, per field slot.
        let mut freq: [BTreeMap<u32, f64>; 3] = Default::default();
        for (ind, &w) in inds.iter().zip(&weights) {
            for (slot, field) in fields(world, attr, ind.values[attr as usize])
                .into_iter()
                .enumerate()
            {
                if let Some(x) = field {
                    *freq[slot].entry(x).or_default() += w / total;
                }
            }
        }
        let mut sum = 0.0;
        for ind in &inds[..probed] {
            for (slot, field) in fields(world, attr, ind.values[attr as usize])
                .into_iter()
                .enumerate()
            {
                if let Some(x) = field {
                    let p = freq[slot].get(&x).copied().unwrap_or(0.0);
                    sum -= p.ln();
                }
            }
        }
        out[attr as usize] = sum / probed as f64;
    }
    Ok(out)
}

/// Entropy (nats) of each attribute's joint value distribution over the population's individuals,
/// weighted uniformly: the floor a model reaches by memorising which values occur. Zero for an
/// empty population.
pub fn value_table_entropy(world: &World, population: Population) -> [f64; N_ATTRIBUTES] {
    let range = world.population_range(population);
    let n = range.len() as f64;
    let mut out = [0.0; N_ATTRIBUTES];
    for attr in Attribute::ALL {
        // Ordered map: the float sum runs in the same order in every process (HashMap's order is
        // randomised per process, which changed the last bit between DDP ranks and resumes).
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for ind in &world.individuals()[range.clone()] {
            *counts.entry(ind.values[attr as usize]).or_default() += 1;
        }
        out[attr as usize] = counts
            .values()
            .map(|&c| {
                let p = c as f64 / n;
                -p * p.ln()
            })
            .sum();
    }
    out
}

/// The level of an infinite world: ln(number of possible values) per attribute type
/// (the paper's ≈ 6.78 nats on average with its pools).
pub fn pool_entropy(world: &World) -> [f64; N_ATTRIBUTES] {
    Attribute::ALL.map(|a| (world.value_count(a) as f64).ln())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::PoolSizes;
    use crate::world::WorldConfig;

    fn world(n: u32, days: u32, months: u32, years: u32) -> World {
        World::new(WorldConfig {
            n_individuals: n,
            pools: PoolSizes {
                first_names: 20,
                last_names: 20,
                cities: 8,
                universities: 5,
                majors: 5,
                companies: 6,
                year_min: 1990,
                year_max: 1990 + years - 1,
                days,
                months,
            },
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn large_worlds_meet_the_pool_entropy() {
        // Every value common: F, the joint entropy and ln(pool) all agree.
        let w = world(2000, 2, 2, 2);
        let f = statistics_only_loss(&w, &Distribution::Uniform, Population::Train, None).unwrap();
        let joint = value_table_entropy(&w, Population::Train);
        let pool = pool_entropy(&w);
        for a in 0..N_ATTRIBUTES {
            assert!(
                (f[a] - pool[a]).abs() < 0.01,
                "{a}: {} vs {}",
                f[a],
                pool[a]
            );
            assert!(
                (joint[a] - pool[a]).abs() < 0.01,
                "{a}: {} vs {}",
                joint[a],
                pool[a]
            );
        }
    }

    #[test]
    fn rare_dates_split_the_levels() {
        // 40 people, 31 * 12 * 10 dates: dates are unique, so the joint entropy is ln 40 while
        // the factorized level stays near ln(31 * 12 * 10) (a little below: empirical fields).
        let w = world(40, 31, 12, 10);
        let f = statistics_only_loss(&w, &Distribution::Uniform, Population::Train, None).unwrap();
        let joint = value_table_entropy(&w, Population::Train);
        let d = Attribute::BirthDate as usize;
        assert!(joint[d] <= (40f64).ln() + 1e-9);
        assert!(f[d] > joint[d] + 1.0, "F {} joint {}", f[d], joint[d]);
    }

    #[test]
    fn power_law_weights_the_head() {
        // Under a steep power law the stream is mostly individual 0: probing only it gives a loss
        // near 0 per field, far below the uniform level.
        let w = world(200, 4, 4, 4);
        let steep = Distribution::power_law(4.0).unwrap();
        let f = statistics_only_loss(&w, &steep, Population::Train, Some(1)).unwrap();
        let u =
            statistics_only_loss(&w, &Distribution::Uniform, Population::Train, Some(1)).unwrap();
        for a in 0..N_ATTRIBUTES {
            assert!(f[a] < 0.5 && f[a] < u[a], "{a}: {} vs {}", f[a], u[a]);
        }
        // A subset stream never shows most people: their unseen values cost +inf.
        let sub = Distribution::subset(1).unwrap();
        let f = statistics_only_loss(&w, &sub, Population::Train, None).unwrap();
        assert!(f.iter().any(|x| x.is_infinite()));
    }
}
