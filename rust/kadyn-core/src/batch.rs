//! Builds Arrow record batches of rendered biographies. Row `k` of a stream is a pure function of
//! (stream seed, k), so rows can be built in any order, on any number of threads, on any rank, and
//! come out byte-identical.
//!
//! Schema (DESIGN.md): `input_ids` fixed_size_list<int32>[seq_len], `attr_type`
//! fixed_size_list<int8>[seq_len] (-1 or the attribute id of a value token), `individual` (uint32,
//! or list<uint32> when packed), `sample_index` uint64.

use std::sync::Arc;

use arrow_array::builder::{ListBuilder, UInt32Builder};
use arrow_array::{
    ArrayRef, FixedSizeListArray, Int32Array, Int8Array, RecordBatch, UInt32Array, UInt64Array,
};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{KadynError, Result};
use crate::limits::{self, MAX_SEQ_LEN};
use crate::rng::{CounterRng, Domain};
use crate::sampler::{Curriculum, Sampler};
use crate::vocab::PAD_ID;
use crate::world::{Population, Split, World};

/// How biographies are laid into rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// One biography per row, `<pad>`-filled (the paper's set-up).
    Pad,
    /// Whole biographies joined until the next one would not fit, then `<pad>`-filled.
    Pack,
}

impl Packing {
    pub const NAMES: [&'static str; 2] = ["pad", "pack"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "pad" => Ok(Packing::Pad),
            "pack" => Ok(Packing::Pack),
            _ => Err(KadynError::unknown("packing", name, &Self::NAMES)),
        }
    }
}

/// Whether a row states each individual's own values or values independent of the name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facts {
    /// The individual's own values (the training data).
    #[default]
    Real,
    /// The no-knowledge control: each sentence's value is the same attribute's value of a donor
    /// drawn from the population under the stream's own sampling distribution, independently of
    /// the name. Row k keeps the real row k's individual, sentence order and templates (the donors
    /// come from their own random domain), so only the facts differ; the value statistics are the
    /// stream's, and a model trained on it can learn statistics but no individual.
    Shuffled,
}

impl Facts {
    pub const NAMES: [&'static str; 2] = ["real", "shuffled"];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "real" => Ok(Facts::Real),
            "shuffled" => Ok(Facts::Shuffled),
            _ => Err(KadynError::unknown("facts", name, &Self::NAMES)),
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Everything that defines a stream's rows (not how they are split over ranks or batches).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamSpec {
    pub population: Population,
    pub split: Split,
    pub packing: Packing,
    pub seq_len: usize,
    pub seed: u64,
    pub sampling: Curriculum,
    #[serde(default)]
    pub facts: Facts,
}

pub fn schema(seq_len: usize, packing: Packing) -> SchemaRef {
    let individual = match packing {
        Packing::Pad => DataType::UInt32,
        Packing::Pack => DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, true))),
    };
    Arc::new(Schema::new(vec![
        Field::new(
            "input_ids",
            DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Int32, true)),
                seq_len as i32,
            ),
            false,
        ),
        Field::new(
            "attr_type",
            DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Int8, true)),
                seq_len as i32,
            ),
            false,
        ),
        Field::new("individual", individual, false),
        Field::new("sample_index", DataType::UInt64, false),
    ]))
}

/// A stream spec checked against a world, with its sampler compiled.
#[derive(Clone, Debug)]
pub struct RowBuilder {
    world: Arc<World>,
    spec: StreamSpec,
    sampler: Sampler,
    population_start: usize,
}

fn check_seq_len(world: &World, seq_len: usize) -> Result<()> {
    let need = world.max_biography_tokens();
    if seq_len < need {
        return Err(KadynError::invalid(
            "seq_len",
            seq_len,
            format!(">= {need} (the longest biography of this world, <bos> and <eos> included)"),
        ));
    }
    if seq_len > MAX_SEQ_LEN {
        return Err(KadynError::invalid(
            "seq_len",
            seq_len,
            format!("<= {MAX_SEQ_LEN} (MAX_SEQ_LEN, the longest row kadyn builds)"),
        ));
    }
    Ok(())
}

impl RowBuilder {
    pub fn new(world: Arc<World>, spec: StreamSpec) -> Result<Self> {
        check_seq_len(&world, spec.seq_len)?;
        let size = world.population_size(spec.population);
        if size == 0 {
            return Err(KadynError::invalid(
                "population",
                format!("{:?} with 0 individuals", spec.population.name()),
                "a population the World was built with (pass heldout=/new= to World)",
            ));
        }
        let sampler = Sampler::new(spec.sampling.clone(), size as u64)?;
        let population_start = world.population_range(spec.population).start;
        Ok(RowBuilder {
            world,
            spec,
            sampler,
            population_start,
        })
    }

    pub fn spec(&self) -> &StreamSpec {
        &self.spec
    }

    pub fn world(&self) -> &Arc<World> {
        &self.world
    }

    pub fn schema(&self) -> SchemaRef {
        schema(self.spec.seq_len, self.spec.packing)
    }

    /// Renders biography `j` of row `k` into the scratch vectors; returns the individual.
    fn biography(&self, k: u64, j: u64, tokens: &mut Vec<u32>, attrs: &mut Vec<i8>) -> u32 {
        let mut rng = CounterRng::new(self.spec.seed, Domain::Sample, &[k, j]);
        let local = self.sampler.draw(k, &mut rng);
        let individuals = &self.world.individuals()[self.population_start..];
        let ind = &individuals[local as usize];
        tokens.clear();
        attrs.clear();
        match self.spec.facts {
            Facts::Real => {
                self.world
                    .render_biography(ind, self.spec.split, &mut rng, tokens, attrs);
            }
            Facts::Shuffled => {
                let mut donors = CounterRng::new(self.spec.seed, Domain::Shuffle, &[k, j]);
                let mut twin = ind.clone();
                for (attr, value) in twin.values.iter_mut().enumerate() {
                    let donor = self.sampler.draw(k, &mut donors) as usize;
                    *value = individuals[donor].values[attr];
                }
                self.world
                    .render_biography(&twin, self.spec.split, &mut rng, tokens, attrs);
            }
        }
        local
    }

    /// Fills one row (`ids`, `types` of length seq_len); returns the individuals in it.
    fn fill_row(
        &self,
        k: u64,
        ids: &mut [i32],
        types: &mut [i8],
        inds: &mut Vec<u32>,
        (tokens, attrs): &mut (Vec<u32>, Vec<i8>),
    ) {
        inds.clear();
        let mut at = 0usize;
        for j in 0.. {
            let who = self.biography(k, j, tokens, attrs);
            // In pack mode biographies after the first drop their <bos>: one <bos> per row.
            let skip = usize::from(j > 0);
            let len = tokens.len() - skip;
            if at + len > ids.len() {
                break;
            }
            for (dst, &t) in ids[at..at + len].iter_mut().zip(&tokens[skip..]) {
                *dst = t as i32;
            }
            types[at..at + len].copy_from_slice(&attrs[skip..]);
            at += len;
            inds.push(who);
            if self.spec.packing == Packing::Pad {
                break;
            }
        }
        ids[at..].fill(PAD_ID as i32);
        types[at..].fill(-1);
    }

    /// Builds the rows with the given global indices, in parallel on the current rayon pool.
    /// An error (naming `rows`) when the batch would not fit in [`limits::memory_limit`].
    pub fn build(&self, rows: &[u64]) -> Result<RecordBatch> {
        let t = self.spec.seq_len;
        let n = rows.len();
        limits::check_rows("rows", n as u64, t, 1)?;
        let mut ids = limits::filled("rows", n * t, 0i32)?;
        let mut types = limits::filled("rows", n * t, 0i8)?;
        let mut inds: Vec<Vec<u32>> = limits::filled("rows", n, Vec::new())?;
        let cap = self.world.max_biography_tokens();
        ids.par_chunks_mut(t)
            .zip(types.par_chunks_mut(t))
            .zip(inds.par_iter_mut())
            .zip(rows.par_iter())
            // One scratch pair per rayon task, not two allocations per row (the profile's malloc).
            .for_each_init(
                || (Vec::with_capacity(cap), Vec::with_capacity(cap)),
                |scratch, (((row_ids, row_types), row_inds), &k)| {
                    self.fill_row(k, row_ids, row_types, row_inds, scratch);
                },
            );
        let individual: ArrayRef = match self.spec.packing {
            Packing::Pad => Arc::new(UInt32Array::from_iter_values(inds.iter().map(|v| v[0]))),
            Packing::Pack => {
                let mut b = ListBuilder::new(UInt32Builder::with_capacity(n * 8))
                    .with_field(Arc::new(Field::new_list_field(DataType::UInt32, true)));
                for v in &inds {
                    b.values().append_slice(v);
                    b.append(true);
                }
                Arc::new(b.finish())
            }
        };
        Ok(assemble(
            self.schema(),
            t,
            ids,
            types,
            individual,
            rows.to_vec(),
        ))
    }
}

fn assemble(
    schema: SchemaRef,
    seq_len: usize,
    ids: Vec<i32>,
    types: Vec<i8>,
    individual: ArrayRef,
    rows: Vec<u64>,
) -> RecordBatch {
    // List items are nullable-typed (Arrow's default "item" field) so that batches compare equal after
    // pickling or a Parquet round trip; they never hold nulls.
    let item = |dt| Arc::new(Field::new_list_field(dt, true));
    // Vec -> ScalarBuffer takes ownership of the allocation: no copy on the way to Arrow.
    let ids = Int32Array::new(ScalarBuffer::from(ids), None);
    let types = Int8Array::new(ScalarBuffer::from(types), None);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(FixedSizeListArray::new(
            item(DataType::Int32),
            seq_len as i32,
            Arc::new(ids),
            None,
        )),
        Arc::new(FixedSizeListArray::new(
            item(DataType::Int8),
            seq_len as i32,
            Arc::new(types),
            None,
        )),
        individual,
        Arc::new(UInt64Array::new(ScalarBuffer::from(rows), None)),
    ];
    RecordBatch::try_new(schema, columns).expect("columns follow the schema by construction")
}

/// Fixed probe rows: one pad-mode biography per individual (the first `max_individuals` of the
/// population), every sentence drawn from the individual's `split` templates. `sample_index` holds
/// the individual's index.
pub fn eval_set(
    world: &World,
    population: Population,
    split: Split,
    max_individuals: Option<usize>,
    seq_len: usize,
    seed: u64,
) -> Result<RecordBatch> {
    check_seq_len(world, seq_len)?;
    let range = world.population_range(population);
    let n = max_individuals.map_or(range.len(), |m| m.min(range.len()));
    limits::check_rows("max_individuals", n as u64, seq_len, 1)?;
    let mut ids = limits::filled("max_individuals", n * seq_len, PAD_ID as i32)?;
    let mut types = limits::filled("max_individuals", n * seq_len, -1i8)?;
    ids.par_chunks_mut(seq_len)
        .zip(types.par_chunks_mut(seq_len))
        .enumerate()
        .for_each(|(i, (row_ids, row_types))| {
            let mut rng = CounterRng::new(seed, Domain::EvalSet, &[population as u64, i as u64]);
            let (mut tokens, mut attrs) = (Vec::new(), Vec::new());
            let ind = &world.individuals()[range.start + i];
            world.render_biography(ind, split, &mut rng, &mut tokens, &mut attrs);
            for (dst, &t) in row_ids.iter_mut().zip(&tokens) {
                *dst = t as i32;
            }
            row_types[..attrs.len()].copy_from_slice(&attrs);
        });
    let individual = Arc::new(UInt32Array::from_iter_values(0..n as u32));
    Ok(assemble(
        schema(seq_len, Packing::Pad),
        seq_len,
        ids,
        types,
        individual,
        (0..n as u64).collect(),
    ))
}
