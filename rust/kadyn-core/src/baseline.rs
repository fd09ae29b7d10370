//! The no-knowledge baseline: the attribute loss of the best predictor that knows how values are
//! distributed within a population but not which individual has which. Summed over a value's
//! tokens, its cross-entropy is the entropy of the value distribution (chain rule), so the
//! baseline per attribute type is that entropy in nats.

use std::collections::BTreeMap;

use crate::attribute::{Attribute, N_ATTRIBUTES};
use crate::world::{Population, World};

/// Entropy (nats) of each attribute's empirical value distribution over the population's
/// individuals, weighted uniformly. Zero for an empty population.
pub fn no_knowledge_loss(world: &World, population: Population) -> [f64; N_ATTRIBUTES] {
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

/// The baseline of an infinite world: ln(number of possible values) per attribute type
/// (the paper's ≈ 6.78 nats on average with its pools).
pub fn uniform_no_knowledge_loss(world: &World) -> [f64; N_ATTRIBUTES] {
    Attribute::ALL.map(|a| (world.value_count(a) as f64).ln())
}
