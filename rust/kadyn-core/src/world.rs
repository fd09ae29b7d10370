//! The world: N individuals with unique full names, six attribute values drawn uniformly and
//! independently, and a per-individual split of the templates into 20 train and 5 eval ones.
//! Extra populations (`heldout`, `new`) come from the same generator and never share a name with
//! the training individuals. Everything is a pure function of the config.

use std::collections::HashSet;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attribute::{Attribute, N_ATTRIBUTES};
use crate::error::{KadynError, Result};
use crate::pools::{PoolSizes, Pools, MONTHS};
use crate::rng::{CounterRng, Domain};
use crate::spans::{Calendar, Sources, SpanTable};
use crate::templates::{self, Template, TemplateText, TEMPLATES_PER_ATTRIBUTE, TRAIN_TEMPLATES};
use crate::vocab::{split_words, Vocab, BOS_ID, EOS_ID};

/// Which group of individuals a stream or probe draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Population {
    Train,
    Heldout,
    New,
}

impl Population {
    pub const NAMES: [&'static str; 3] = ["train", "heldout", "new"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "train" => Ok(Population::Train),
            "heldout" => Ok(Population::Heldout),
            "new" => Ok(Population::New),
            _ => Err(KadynError::unknown("population", name, &Self::NAMES)),
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Which templates of an individual a sentence may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Eval,
}

impl Split {
    pub const NAMES: [&'static str; 2] = ["train", "eval"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "train" => Ok(Split::Train),
            "eval" => Ok(Split::Eval),
            _ => Err(KadynError::unknown("split", name, &Self::NAMES)),
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Positions in an individual's template permutation that belong to this split.
    pub fn range(self) -> std::ops::Range<usize> {
        match self {
            Split::Train => 0..TRAIN_TEMPLATES,
            Split::Eval => TRAIN_TEMPLATES..TEMPLATES_PER_ATTRIBUTE,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    pub n_individuals: u32,
    pub heldout: u32,
    pub new: u32,
    pub seed: u64,
    pub pools: PoolSizes,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            n_individuals: 1000,
            heldout: 0,
            new: 0,
            seed: 0,
            pools: PoolSizes::default(),
        }
    }
}

/// One person: pool indices of the three name parts, of the six values, and the template
/// permutation per attribute (the first 20 entries are its train templates, the last 5 eval).
#[derive(Clone, Debug)]
pub struct Individual {
    pub name: [u32; 3],
    pub values: [u32; N_ATTRIBUTES],
    pub templates: [[u8; TEMPLATES_PER_ATTRIBUTE]; N_ATTRIBUTES],
}

impl Individual {
    pub fn templates_of(&self, attr: Attribute, split: Split) -> &[u8] {
        &self.templates[attr as usize][split.range()]
    }
}

/// Token ids of every value, per attribute. Birth dates are composed from day/month/year.
#[derive(Clone, Debug)]
struct ValueTokens {
    first_names: Vec<u32>,
    last_names: Vec<u32>,
    lists: [Vec<Vec<u32>>; N_ATTRIBUTES],
    days: Vec<u32>,
    months: Vec<u32>,
    years: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct World {
    config: WorldConfig,
    pools: Pools,
    vocab: Vocab,
    template_texts: [Vec<TemplateText>; N_ATTRIBUTES],
    templates: [Vec<Template>; N_ATTRIBUTES],
    tokens: ValueTokens,
    individuals: Vec<Individual>,
    max_biography_tokens: usize,
    spans: SpanTable,
}

impl World {
    pub fn new(config: WorldConfig) -> Result<Self> {
        if config.n_individuals == 0 {
            return Err(KadynError::invalid("n_individuals", 0, ">= 1"));
        }
        let pools = Pools::new(&config.pools)?;
        let total = config.n_individuals as u64 + config.heldout as u64 + config.new as u64;
        // Rejection sampling of unique names stays fast while the pool is at most half used.
        let capacity = pools.name_capacity() / 2;
        if total > capacity {
            return Err(KadynError::invalid(
                "n_individuals + heldout + new",
                total,
                format!(
                    "<= {capacity} (half the {} distinct names of the pools; enlarge n_first_names or n_last_names)",
                    pools.name_capacity()
                ),
            ));
        }
        let template_texts = templates::template_texts()?;
        let vocab = build_vocab(&pools, &template_texts);
        let templates = templates::tokenize(&template_texts, &vocab)?;
        let tokens = tokenize_values(&pools, &vocab)?;
        let individuals = draw_individuals(&config, &pools, total as usize);
        let spans = SpanTable::new(&Sources {
            templates: &templates,
            values: &tokens.lists,
            first_names: &tokens.first_names,
            last_names: &tokens.last_names,
            days: &tokens.days,
            months: &tokens.months,
            years: &tokens.years,
            calendar: Calendar {
                days: pools.days,
                months: pools.months,
            },
        })?;
        let mut world = World {
            config,
            pools,
            vocab,
            template_texts,
            templates,
            tokens,
            individuals,
            max_biography_tokens: 0,
            spans,
        };
        world.max_biography_tokens = world.compute_max_biography_tokens();
        Ok(world)
    }

    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    pub fn template_texts(&self, attr: Attribute) -> &[TemplateText] {
        &self.template_texts[attr as usize]
    }

    /// The longest pad-mode row a biography can need, `<bos>` and `<eos>` included.
    pub fn max_biography_tokens(&self) -> usize {
        self.max_biography_tokens
    }

    /// The fragments and values as spans, for the batch builder's fast path.
    pub fn spans(&self) -> &SpanTable {
        &self.spans
    }

    /// A lower bound on any biography's tokens, `<bos>` and `<eos>` included.
    pub fn min_biography_tokens(&self) -> usize {
        let shortest = |v: &[Vec<u32>]| v.iter().map(Vec::len).min().unwrap_or(0);
        let mut total = 2;
        for attr in Attribute::ALL {
            let template = self.templates[attr as usize]
                .iter()
                .map(|t| t.before_name.len() + t.between.len() + t.after_value.len())
                .min()
                .unwrap_or(0);
            let value = match attr {
                Attribute::BirthDate => 3,
                _ => shortest(&self.tokens.lists[attr as usize]),
            };
            total += template + 3 + value;
        }
        total
    }

    /// All individuals of all populations, in global index order (train, heldout, new).
    pub fn individuals(&self) -> &[Individual] {
        &self.individuals
    }

    /// Global index range of a population inside `individuals`.
    pub fn population_range(&self, population: Population) -> std::ops::Range<usize> {
        let n = self.config.n_individuals as usize;
        let h = self.config.heldout as usize;
        let w = self.config.new as usize;
        match population {
            Population::Train => 0..n,
            Population::Heldout => n..n + h,
            Population::New => n + h..n + h + w,
        }
    }

    pub fn population_size(&self, population: Population) -> usize {
        self.population_range(population).len()
    }

    /// Individual `index` of a population, with a clear error when out of range.
    pub fn individual(&self, population: Population, index: usize) -> Result<&Individual> {
        let range = self.population_range(population);
        if index >= range.len() {
            return Err(KadynError::not_found(
                "individual",
                index,
                format!("0..{} in population {:?}", range.len(), population.name()),
            ));
        }
        Ok(&self.individuals[range.start + index])
    }

    /// Number of distinct values of an attribute type.
    pub fn value_count(&self, attr: Attribute) -> usize {
        match attr {
            Attribute::BirthDate => self.pools.n_dates() as usize,
            _ => self.tokens.lists[attr as usize].len(),
        }
    }

    pub fn value_text(&self, attr: Attribute, value: u32) -> String {
        let p = &self.pools;
        match attr {
            Attribute::BirthPlace | Attribute::CurrentLocation => p.cities[value as usize].into(),
            Attribute::University => p.universities[value as usize].into(),
            Attribute::Major => p.majors[value as usize].into(),
            Attribute::Company => p.companies[value as usize].into(),
            Attribute::BirthDate => {
                let (day, month, year) = self.pools.split_date(value);
                format!(
                    "{} {} {}",
                    day + 1,
                    MONTHS[month as usize],
                    p.year_min + year
                )
            }
        }
    }

    /// How many name tokens occur in exactly one individual of the population (a first and a
    /// middle name share one pool, so a token counts in either position).
    pub fn unique_name_tokens(&self, population: Population) -> usize {
        let mut first = vec![0u32; self.pools.first_names.len()];
        let mut last = vec![0u32; self.pools.last_names.len()];
        for ind in &self.individuals[self.population_range(population)] {
            // A token used twice by one person still identifies that person.
            first[ind.name[0] as usize] += 1;
            if ind.name[1] != ind.name[0] {
                first[ind.name[1] as usize] += 1;
            }
            last[ind.name[2] as usize] += 1;
        }
        first.iter().chain(&last).filter(|&&c| c == 1).count()
    }

    pub fn full_name(&self, ind: &Individual) -> String {
        format!(
            "{} {} {}",
            self.pools.first_names[ind.name[0] as usize],
            self.pools.first_names[ind.name[1] as usize],
            self.pools.last_names[ind.name[2] as usize]
        )
    }

    fn push_value(&self, attr: Attribute, value: u32, out: &mut Vec<u32>) {
        match attr {
            Attribute::BirthDate => {
                let (day, month, year) = self.pools.split_date(value);
                out.extend([
                    self.tokens.days[day as usize],
                    self.tokens.months[month as usize],
                    self.tokens.years[year as usize],
                ]);
            }
            _ => out.extend_from_slice(&self.tokens.lists[attr as usize][value as usize]),
        }
    }

    /// Appends one sentence: template fragments, the full name, the value (tagged with its
    /// attribute id in `attr_types`; every other token is tagged -1).
    pub fn render_sentence(
        &self,
        ind: &Individual,
        attr: Attribute,
        template: usize,
        tokens: &mut Vec<u32>,
        attr_types: &mut Vec<i8>,
    ) {
        let t = &self.templates[attr as usize][template];
        let start = tokens.len();
        tokens.extend_from_slice(&t.before_name);
        tokens.push(self.tokens.first_names[ind.name[0] as usize]);
        tokens.push(self.tokens.first_names[ind.name[1] as usize]);
        tokens.push(self.tokens.last_names[ind.name[2] as usize]);
        tokens.extend_from_slice(&t.between);
        let value_start = tokens.len();
        self.push_value(attr, ind.values[attr as usize], tokens);
        let value_end = tokens.len();
        tokens.extend_from_slice(&t.after_value);
        attr_types.extend(std::iter::repeat_n(-1, value_start - start));
        attr_types.extend(std::iter::repeat_n(attr as i8, value_end - value_start));
        attr_types.extend(std::iter::repeat_n(-1, tokens.len() - value_end));
    }

    /// Appends `<bos>`, the six sentences in a random order, each from a random template of the
    /// individual's `split`, then `<eos>`. All randomness comes from `rng`.
    pub fn render_biography(
        &self,
        ind: &Individual,
        split: Split,
        rng: &mut CounterRng,
        tokens: &mut Vec<u32>,
        attr_types: &mut Vec<i8>,
    ) {
        tokens.push(BOS_ID);
        attr_types.push(-1);
        for (attr, template) in SentenceDraws::draw(ind, split, rng).sentences() {
            self.render_sentence(ind, attr, template, tokens, attr_types);
        }
        tokens.push(EOS_ID);
        attr_types.push(-1);
    }

    fn compute_max_biography_tokens(&self) -> usize {
        let longest = |v: &[Vec<u32>]| v.iter().map(Vec::len).max().unwrap_or(0);
        let name = 3;
        let mut total = 2; // <bos>, <eos>
        for attr in Attribute::ALL {
            let template = self.templates[attr as usize]
                .iter()
                .map(|t| t.before_name.len() + t.between.len() + t.after_value.len())
                .max()
                .unwrap_or(0);
            let value = match attr {
                Attribute::BirthDate => 3,
                _ => longest(&self.tokens.lists[attr as usize]),
            };
            total += template + name + value;
        }
        total
    }
}

/// A biography's draws: its sentences' order (a shuffle of the six attributes), then each
/// sentence's template among the individual's `split` templates. The one place that fixes what a
/// biography's `rng` decides, for [`World::render_biography`] and the batch builder's span writer
/// alike. Packed (4 bits an attribute, 8 bits a template) so that drawing stays in registers: a
/// shuffled array in memory read back whole stalls on store forwarding, in the stream's hottest
/// loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentenceDraws {
    order: u32,
    templates: u64,
}

impl SentenceDraws {
    /// The draws `CounterRng::shuffle` over `Attribute::ALL`, then one `below` per sentence, make.
    #[inline]
    pub fn draw(ind: &Individual, split: Split, rng: &mut CounterRng) -> Self {
        // Attribute i in field i, 4 bits each; Fisher–Yates as `CounterRng::shuffle` does it.
        let mut order: u32 = 0x54_3210;
        for i in (1..N_ATTRIBUTES).rev() {
            let j = rng.below(i as u64 + 1) as u32;
            let (i, j) = (4 * i as u32, 4 * j);
            let diff = ((order >> i) ^ (order >> j)) & 0xF;
            order ^= (diff << i) | (diff << j);
        }
        let range = split.range();
        let mut templates = 0u64;
        for i in 0..N_ATTRIBUTES {
            let attr = ((order >> (4 * i)) & 0xF) as usize;
            let choices = &ind.templates[attr][range.clone()];
            let template = choices[rng.below(choices.len() as u64) as usize];
            templates |= (template as u64) << (8 * i);
        }
        SentenceDraws { order, templates }
    }

    /// The attribute id of the `i`-th sentence.
    #[inline]
    pub fn attribute(self, i: usize) -> usize {
        ((self.order >> (4 * i)) & 0xF) as usize
    }

    /// The template (index among the attribute's 25) of the `i`-th sentence.
    #[inline]
    pub fn template(self, i: usize) -> usize {
        ((self.templates >> (8 * i)) & 0xFF) as usize
    }

    /// (attribute, template) of each sentence, in order.
    pub fn sentences(self) -> impl Iterator<Item = (Attribute, usize)> {
        (0..N_ATTRIBUTES).map(move |i| (Attribute::ALL[self.attribute(i)], self.template(i)))
    }
}

fn value_texts(pools: &Pools, attr: Attribute) -> &[&'static str] {
    match attr {
        Attribute::BirthPlace | Attribute::CurrentLocation => &pools.cities,
        Attribute::University => &pools.universities,
        Attribute::Major => &pools.majors,
        Attribute::Company => &pools.companies,
        Attribute::BirthDate => &[],
    }
}

fn build_vocab(pools: &Pools, template_texts: &[Vec<TemplateText>; N_ATTRIBUTES]) -> Vocab {
    let mut words: Vec<String> = templates::template_words(template_texts);
    for list in [
        &pools.first_names,
        &pools.last_names,
        &pools.cities,
        &pools.universities,
        &pools.majors,
        &pools.companies,
    ] {
        words.extend(list.iter().flat_map(|t| split_words(t)));
    }
    words.extend((1..=pools.days).map(|d| d.to_string()));
    words.extend(
        MONTHS[..pools.months as usize]
            .iter()
            .map(|m| m.to_string()),
    );
    words.extend((pools.year_min..=pools.year_max).map(|y| y.to_string()));
    Vocab::build(words.iter().map(String::as_str))
}

fn tokenize_values(pools: &Pools, vocab: &Vocab) -> Result<ValueTokens> {
    let single = |list: &[&str]| list.iter().map(|w| vocab.id(w)).collect::<Result<Vec<_>>>();
    let mut lists: [Vec<Vec<u32>>; N_ATTRIBUTES] = Default::default();
    for attr in Attribute::ALL {
        lists[attr as usize] = value_texts(pools, attr)
            .iter()
            .map(|t| vocab.encode(t))
            .collect::<Result<_>>()?;
    }
    for (part, list) in [
        ("first_names", &pools.first_names),
        ("last_names", &pools.last_names),
    ] {
        if let Some(bad) = list.iter().find(|n| split_words(n).len() != 1) {
            return Err(KadynError::bad_data(
                part,
                format!("name {bad:?} is not one word"),
            ));
        }
    }
    let days: Vec<String> = (1..=pools.days).map(|d| d.to_string()).collect();
    let years: Vec<String> = (pools.year_min..=pools.year_max)
        .map(|y| y.to_string())
        .collect();
    Ok(ValueTokens {
        first_names: single(&pools.first_names)?,
        last_names: single(&pools.last_names)?,
        lists,
        days: days.iter().map(|d| vocab.id(d)).collect::<Result<_>>()?,
        months: single(&MONTHS[..pools.months as usize])?,
        years: years.iter().map(|y| vocab.id(y)).collect::<Result<_>>()?,
    })
}

fn draw_individuals(config: &WorldConfig, pools: &Pools, total: usize) -> Vec<Individual> {
    let n_first = pools.first_names.len() as u64;
    let n_last = pools.last_names.len() as u64;
    // Names are drawn in index order with rejection of repeats, so the training population does
    // not depend on how many held-out or new individuals follow it.
    let mut seen = HashSet::with_capacity(total);
    let names: Vec<[u32; 3]> = (0..total as u64)
        .map(|g| {
            let mut rng = CounterRng::new(config.seed, Domain::Name, &[g]);
            loop {
                let name = [
                    rng.below(n_first) as u32,
                    rng.below(n_first) as u32,
                    rng.below(n_last) as u32,
                ];
                if seen.insert(name) {
                    break name;
                }
            }
        })
        .collect();
    let sizes: Vec<u64> = Attribute::ALL
        .iter()
        .map(|&a| match a {
            Attribute::BirthDate => pools.n_dates() as u64,
            _ => value_texts(pools, a).len() as u64,
        })
        .collect();
    names
        .into_par_iter()
        .enumerate()
        .map(|(g, name)| {
            let mut values = [0u32; N_ATTRIBUTES];
            let mut templates = [[0u8; TEMPLATES_PER_ATTRIBUTE]; N_ATTRIBUTES];
            for attr in 0..N_ATTRIBUTES {
                let mut rng = CounterRng::new(config.seed, Domain::Value, &[g as u64, attr as u64]);
                values[attr] = rng.below(sizes[attr]) as u32;
                let mut perm: [u8; TEMPLATES_PER_ATTRIBUTE] = std::array::from_fn(|i| i as u8);
                CounterRng::new(config.seed, Domain::TemplateSplit, &[g as u64, attr as u64])
                    .shuffle(&mut perm);
                templates[attr] = perm;
            }
            Individual {
                name,
                values,
                templates,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The draws as `render_biography` first made them, on arrays: the shuffle of
    /// `CounterRng::shuffle`, then one template per sentence.
    fn reference(ind: &Individual, split: Split, rng: &mut CounterRng) -> Vec<(Attribute, usize)> {
        let mut order = Attribute::ALL;
        rng.shuffle(&mut order);
        order
            .into_iter()
            .map(|attr| {
                let choices = ind.templates_of(attr, split);
                (
                    attr,
                    choices[rng.below(choices.len() as u64) as usize] as usize,
                )
            })
            .collect()
    }

    #[test]
    fn packed_draws_are_the_array_draws() {
        let world = World::new(WorldConfig {
            n_individuals: 50,
            ..Default::default()
        })
        .unwrap();
        for (i, ind) in world.individuals().iter().enumerate() {
            for split in [Split::Train, Split::Eval] {
                for k in 0..40u64 {
                    let mut packed = CounterRng::new(5, Domain::Sample, &[i as u64, k]);
                    let mut arrays = packed.clone();
                    let draws = SentenceDraws::draw(ind, split, &mut packed);
                    assert_eq!(
                        draws.sentences().collect::<Vec<_>>(),
                        reference(ind, split, &mut arrays)
                    );
                    // Both consumed the same draws: the generators are at the same point.
                    assert_eq!(packed.next_u64(), arrays.next_u64());
                }
            }
        }
    }

    #[test]
    fn biography_lengths_lie_within_the_bounds() {
        let world = World::new(WorldConfig {
            n_individuals: 200,
            ..Default::default()
        })
        .unwrap();
        let (min, max) = (world.min_biography_tokens(), world.max_biography_tokens());
        assert!(2 < min && min < max, "{min} {max}");
        let (mut tokens, mut types) = (Vec::new(), Vec::new());
        let mut seen = (usize::MAX, 0);
        for (i, ind) in world.individuals().iter().enumerate() {
            for split in [Split::Train, Split::Eval] {
                tokens.clear();
                types.clear();
                let mut rng = CounterRng::new(1, Domain::Sample, &[i as u64]);
                world.render_biography(ind, split, &mut rng, &mut tokens, &mut types);
                seen = (seen.0.min(tokens.len()), seen.1.max(tokens.len()));
            }
        }
        assert!(
            min <= seen.0 && seen.1 <= max,
            "{seen:?} outside {min}..={max}"
        );
    }
}
