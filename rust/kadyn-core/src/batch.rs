//! Builds Arrow record batches of rendered biographies. Row `k` of a stream is a pure function of
//! (stream seed, k), so rows can be built in any order, on any number of threads, on any rank, and
//! come out byte-identical.
//!
//! Schema (DESIGN.md): `input_ids` fixed_size_list<int32>[seq_len], `attr_type`
//! fixed_size_list<int8>[seq_len] (-1 or the attribute id of a value token), `individual` (uint32,
//! or list<uint32> when packed), `sample_index` uint64.

use std::mem::MaybeUninit;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, FixedSizeListArray, Int32Array, Int8Array, ListArray, RecordBatch, UInt32Array,
    UInt64Array,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{KadynError, Result};
use crate::limits::{self, MAX_SEQ_LEN};
use crate::rng::{CounterRng, Domain, KeyPrefix};
use crate::sampler::{Curriculum, Sampler};
use crate::spans::{Sentences, SLACK};
use crate::vocab::PAD_ID;
use crate::world::{Population, SentenceDraws, Split, World};

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
    /// The (seed, domain) part of every row's keys, hashed once.
    sample_key: KeyPrefix,
    shuffle_key: KeyPrefix,
    /// The most biographies a row can hold: 1 in pad mode.
    max_per_row: usize,
    /// Biographies a row's first draws are made for ahead of the writing (see [`CHUNK`]): the
    /// one of pad mode; in pack mode two, as a row's second is almost always drawn (to learn
    /// whether it fits).
    drawn_ahead: usize,
    /// Pad mode with room after the longest biography for the writer's lanes: a biography's
    /// length is then not needed before it is written (nor a scratch to write it in).
    room_to_spare: bool,
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

/// Rows whose first individuals are looked up (and asked of the cache) before any of them is
/// written: in a population larger than the cache, a row would otherwise wait on memory for its
/// individual.
const CHUNK: usize = 64;

/// What a rayon task reuses from chunk to chunk: each row's first draw, and room for one
/// biography written with whole-lane copies at the end of a row, where they would spill past it.
struct Scratch {
    /// The first draws of each row's first biographies: individual, and the generator of the
    /// rest of the biography's draws.
    first: Vec<(CounterRng, u32)>,
    ids: Vec<MaybeUninit<i32>>,
    types: Vec<MaybeUninit<i8>>,
}

impl Scratch {
    fn new(world: &World) -> Self {
        let len = world.max_biography_tokens() + SLACK;
        Scratch {
            first: Vec::with_capacity(2 * CHUNK),
            ids: vec![MaybeUninit::new(PAD_ID as i32); len],
            types: vec![MaybeUninit::new(-1); len],
        }
    }
}

/// Asks the cache for the lines of `value` ahead of its use (a hint: nothing on targets without
/// one).
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = (value as *const T).cast::<i8>();
        let last = std::mem::size_of::<T>().saturating_sub(1);
        for offset in [0, 64, 128, 192] {
            // SAFETY: a prefetch never faults, and the address is inside `value`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset.min(last))) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
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
        // The first biography of a row has at least `min` tokens, each later one (no <bos>)
        // at least `min - 1`.
        let min = world.min_biography_tokens();
        let max_per_row = match spec.packing {
            Packing::Pad => 1,
            Packing::Pack => 1 + (spec.seq_len - min) / (min - 1),
        };
        let room_to_spare =
            spec.packing == Packing::Pad && spec.seq_len >= world.max_biography_tokens() + SLACK;
        Ok(RowBuilder {
            sample_key: KeyPrefix::new(spec.seed, Domain::Sample),
            shuffle_key: KeyPrefix::new(spec.seed, Domain::Shuffle),
            world,
            spec,
            sampler,
            population_start,
            max_per_row,
            drawn_ahead: max_per_row.min(2),
            room_to_spare,
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

    /// The first draw of biography `j` of row `k`: its individual (index within the population),
    /// and the generator the rest of its draws come from.
    #[inline]
    fn who(&self, k: u64, j: u64) -> (CounterRng, u32) {
        let mut rng = self.sample_key.rng(&[k, j]);
        let local = self.sampler.draw(k, &mut rng);
        (rng, local)
    }

    /// The rest of biography `j` of row `k`'s draws, after [`who`](Self::who)'s: what its
    /// sentences state, in which order, with which templates.
    #[inline]
    fn biography(&self, k: u64, j: u64, (mut rng, local): (CounterRng, u32)) -> Sentences {
        let individuals = &self.world.individuals()[self.population_start..];
        let ind = &individuals[local as usize];
        let mut values = ind.values;
        if self.spec.facts == Facts::Shuffled {
            // The donors come from their own domain, so the row's other draws stay the real
            // row's.
            let mut donors = self.shuffle_key.rng(&[k, j]);
            for (attr, value) in values.iter_mut().enumerate() {
                let donor = self.sampler.draw(k, &mut donors) as usize;
                *value = individuals[donor].values[attr];
            }
        }
        Sentences {
            name: ind.name,
            values,
            draws: SentenceDraws::draw(ind, self.spec.split, &mut rng),
        }
    }

    /// Fills a chunk of rows (`ids` and `types` hold `rows.len()` rows of seq_len slots, every
    /// one written: the biographies, then <pad>); each row's individuals go to `inds`, their
    /// number to `counts`.
    fn fill_rows(
        &self,
        rows: &[u64],
        ids: &mut [MaybeUninit<i32>],
        types: &mut [MaybeUninit<i8>],
        inds: &mut [u32],
        counts: &mut [usize],
        scratch: &mut Scratch,
    ) {
        let individuals = &self.world.individuals()[self.population_start..];
        scratch.first.clear();
        for &k in rows {
            for j in 0..self.drawn_ahead {
                let (rng, local) = self.who(k, j as u64);
                prefetch(&individuals[local as usize]);
                scratch.first.push((rng, local));
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (std checks once and caches the answer).
            return unsafe { self.write_rows_avx2(rows, ids, types, inds, counts, scratch) };
        }
        self.write_rows(rows, ids, types, inds, counts, scratch);
    }

    /// [`write_rows`](Self::write_rows) compiled for AVX2: the writer is mostly fixed-width
    /// copies, which AVX2 makes in half the loads and stores of the baseline's SSE2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn write_rows_avx2(
        &self,
        rows: &[u64],
        ids: &mut [MaybeUninit<i32>],
        types: &mut [MaybeUninit<i8>],
        inds: &mut [u32],
        counts: &mut [usize],
        scratch: &mut Scratch,
    ) {
        self.write_rows(rows, ids, types, inds, counts, scratch);
    }

    /// The rows of [`fill_rows`](Self::fill_rows), their first draws made.
    #[inline(always)]
    fn write_rows(
        &self,
        rows: &[u64],
        ids: &mut [MaybeUninit<i32>],
        types: &mut [MaybeUninit<i8>],
        inds: &mut [u32],
        counts: &mut [usize],
        scratch: &mut Scratch,
    ) {
        let (t, per_row) = (self.spec.seq_len, self.max_per_row);
        let Scratch {
            first,
            ids: scratch_ids,
            types: scratch_types,
        } = scratch;
        for (r, (&k, first)) in rows.iter().zip(first.chunks(self.drawn_ahead)).enumerate() {
            counts[r] = self.write_row(
                k,
                first,
                &mut ids[r * t..(r + 1) * t],
                &mut types[r * t..(r + 1) * t],
                &mut inds[r * per_row..(r + 1) * per_row],
                (&mut scratch_ids[..], &mut scratch_types[..]),
            );
        }
    }

    /// Writes row `k` (the first draws of its first biographies made) into `ids` and `types`,
    /// and its individuals into `inds`; returns how many.
    #[inline(always)]
    fn write_row(
        &self,
        k: u64,
        first: &[(CounterRng, u32)],
        ids: &mut [MaybeUninit<i32>],
        types: &mut [MaybeUninit<i8>],
        inds: &mut [u32],
        scratch: (&mut [MaybeUninit<i32>], &mut [MaybeUninit<i8>]),
    ) -> usize {
        let spans = self.world.spans();
        let row_len = ids.len();
        // Every token but a value's is tagged -1: one fill, then the writer tags the values.
        types.fill(MaybeUninit::new(-1));
        let (mut at, mut count) = (0, 0);
        for j in 0.. {
            let (rng, individual) = match first.get(j) {
                Some(drawn) => drawn.clone(),
                None => self.who(k, j as u64),
            };
            let j = j as u64;
            let sentences = self.biography(k, j, (rng, individual));
            // In pack mode biographies after the first drop their <bos>: one <bos> a row.
            let bos = j == 0;
            if self.room_to_spare {
                // The one biography fits with room for the writer's lanes: its length is not
                // needed before writing it.
                at = spans.write(&sentences, bos, ids, types);
            } else {
                let len = spans.biography_len(&sentences) - usize::from(!bos);
                if at + len > row_len {
                    break;
                }
                if at + len + SLACK <= row_len {
                    spans.write(&sentences, bos, &mut ids[at..], &mut types[at..]);
                } else {
                    // The lanes would spill past the row (into the next row, another thread's):
                    // write into scratch and copy the exact length.
                    let (scratch_ids, scratch_types) = (&mut *scratch.0, &mut *scratch.1);
                    scratch_types.fill(MaybeUninit::new(-1));
                    spans.write(&sentences, bos, scratch_ids, scratch_types);
                    ids[at..at + len].copy_from_slice(&scratch_ids[..len]);
                    types[at..at + len].copy_from_slice(&scratch_types[..len]);
                }
                at += len;
            }
            inds[count] = individual;
            count += 1;
            if self.spec.packing == Packing::Pad {
                break;
            }
        }
        ids[at..].fill(MaybeUninit::new(PAD_ID as i32));
        count
    }

    /// Builds the rows with the given global indices, in parallel on the current rayon pool.
    /// An error (naming `rows`) when the batch would not fit in [`limits::memory_limit`].
    pub fn build(&self, rows: &[u64]) -> Result<RecordBatch> {
        self.build_on(rows, true)
    }

    /// [`build`](Self::build) on the calling thread alone, without a rayon pool: what a one-thread
    /// stream does, sparing each batch two hand-offs between threads. The same bytes.
    pub fn build_here(&self, rows: &[u64]) -> Result<RecordBatch> {
        self.build_on(rows, false)
    }

    fn build_on(&self, rows: &[u64], parallel: bool) -> Result<RecordBatch> {
        let t = self.spec.seq_len;
        let n = rows.len();
        limits::check_rows("rows", n as u64, t, 1)?;
        // The token buffers are written once, row by row, without a fill before: the stream
        // hands out fresh buffers, and a fill would be a second pass over all their bytes.
        let mut ids: Vec<i32> = limits::reserved("rows", n * t)?;
        let mut types: Vec<i8> = limits::reserved("rows", n * t)?;
        let per_row = self.max_per_row;
        let mut inds = limits::filled("rows", n * per_row, 0u32)?;
        let mut counts = limits::filled("rows", n, 0usize)?;
        let (ids_out, types_out) = (
            &mut ids.spare_capacity_mut()[..n * t],
            &mut types.spare_capacity_mut()[..n * t],
        );
        if parallel {
            // Chunks small enough that a small batch still spreads over the pool.
            let chunk = (n / (4 * rayon::current_num_threads())).clamp(1, CHUNK);
            ids_out
                .par_chunks_mut(t * chunk)
                .zip(types_out.par_chunks_mut(t * chunk))
                .zip(inds.par_chunks_mut(per_row * chunk))
                .zip(counts.par_chunks_mut(chunk))
                .zip(rows.par_chunks(chunk))
                // One scratch per rayon task, not one per chunk or row.
                .for_each_init(
                    || Scratch::new(&self.world),
                    |scratch, ((((ids, types), inds), counts), rows)| {
                        self.fill_rows(rows, ids, types, inds, counts, scratch);
                    },
                );
        } else {
            let mut scratch = Scratch::new(&self.world);
            ids_out
                .chunks_mut(t * CHUNK)
                .zip(types_out.chunks_mut(t * CHUNK))
                .zip(inds.chunks_mut(per_row * CHUNK))
                .zip(counts.chunks_mut(CHUNK))
                .zip(rows.chunks(CHUNK))
                .for_each(|((((ids, types), inds), counts), rows)| {
                    self.fill_rows(rows, ids, types, inds, counts, &mut scratch);
                });
        }
        // SAFETY: `write_row` wrote all `t` slots of each of the `n` rows (its biographies, then
        // <pad> to the row's end; every type -1 first), so the first `n * t` items are
        // initialised. A panic in it propagates before this line.
        unsafe {
            ids.set_len(n * t);
            types.set_len(n * t);
        }
        let individual: ArrayRef = match self.spec.packing {
            Packing::Pad => Arc::new(UInt32Array::from(inds)),
            Packing::Pack => {
                let total = counts.iter().sum();
                let mut values = limits::reserved::<u32>("rows", total)?;
                let mut offsets = limits::reserved::<i32>("rows", n + 1)?;
                offsets.push(0);
                for (row, &count) in inds.chunks_exact(per_row).zip(&counts) {
                    values.extend_from_slice(&row[..count]);
                    offsets.push(values.len() as i32);
                }
                Arc::new(ListArray::new(
                    Arc::new(Field::new_list_field(DataType::UInt32, true)),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Arc::new(UInt32Array::from(values)),
                    None,
                ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::PoolSizes;
    use crate::sampler::Distribution;
    use crate::world::WorldConfig;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int8Type, UInt32Type};

    /// Row `k` as the builder made it before the span writer: each biography rendered into
    /// vectors by `World::render_biography`, then copied into the row. The reference the fast
    /// path must match byte for byte.
    fn reference_row(b: &RowBuilder, k: u64) -> (Vec<i32>, Vec<i8>, Vec<u32>) {
        let t = b.spec.seq_len;
        let (mut ids, mut types, mut inds) = (Vec::new(), Vec::new(), Vec::new());
        let individuals = &b.world.individuals()[b.population_start..];
        for j in 0.. {
            let mut rng = CounterRng::new(b.spec.seed, Domain::Sample, &[k, j]);
            let local = b.sampler.draw(k, &mut rng);
            let mut ind = individuals[local as usize].clone();
            if b.spec.facts == Facts::Shuffled {
                let mut donors = CounterRng::new(b.spec.seed, Domain::Shuffle, &[k, j]);
                for (attr, value) in ind.values.iter_mut().enumerate() {
                    let donor = b.sampler.draw(k, &mut donors) as usize;
                    *value = individuals[donor].values[attr];
                }
            }
            let (mut tokens, mut attrs) = (Vec::new(), Vec::new());
            b.world
                .render_biography(&ind, b.spec.split, &mut rng, &mut tokens, &mut attrs);
            let skip = usize::from(j > 0);
            if ids.len() + tokens.len() - skip > t {
                break;
            }
            ids.extend(tokens[skip..].iter().map(|&x| x as i32));
            types.extend_from_slice(&attrs[skip..]);
            inds.push(local);
            if b.spec.packing == Packing::Pad {
                break;
            }
        }
        ids.resize(t, PAD_ID as i32);
        types.resize(t, -1);
        (ids, types, inds)
    }

    fn check(world: &Arc<World>, spec: StreamSpec, pool: &rayon::ThreadPool) {
        let b = RowBuilder::new(world.clone(), spec.clone()).unwrap();
        let rows: Vec<u64> = (0..150).chain([1 << 33, u64::MAX >> 1]).collect();
        let batch = b.build_here(&rows).unwrap();
        // Any pool, any chunking: the same batch.
        assert_eq!(pool.install(|| b.build(&rows)).unwrap(), batch);
        assert_eq!(b.build(&rows[3..20]).unwrap(), batch.slice(3, 17));
        let t = spec.seq_len;
        let ids = batch.column(0).as_fixed_size_list().values().clone();
        let ids = ids.as_primitive::<Int32Type>().values();
        let types = batch.column(1).as_fixed_size_list().values().clone();
        let types = types.as_primitive::<Int8Type>().values();
        for (i, &k) in rows.iter().enumerate() {
            let (want_ids, want_types, want_inds) = reference_row(&b, k);
            assert_eq!(&ids[i * t..(i + 1) * t], &want_ids[..], "{spec:?} row {k}");
            assert_eq!(
                &types[i * t..(i + 1) * t],
                &want_types[..],
                "{spec:?} row {k}"
            );
            let got: Vec<u32> = match spec.packing {
                Packing::Pad => vec![batch.column(2).as_primitive::<UInt32Type>().value(i)],
                Packing::Pack => batch
                    .column(2)
                    .as_list::<i32>()
                    .value(i)
                    .as_primitive::<UInt32Type>()
                    .values()
                    .to_vec(),
            };
            assert_eq!(got, want_inds, "{spec:?} row {k}");
            let tokens = want_ids.iter().filter(|&&id| id != PAD_ID as i32).count();
            assert!(tokens >= world.min_biography_tokens(), "{spec:?} row {k}");
        }
    }

    #[test]
    fn span_writer_matches_render_biography() {
        let big = World::new(WorldConfig {
            n_individuals: 300,
            heldout: 20,
            seed: 4,
            ..Default::default()
        })
        .unwrap();
        // A calendar and pools small enough that values repeat and dates stay short.
        let small = World::new(WorldConfig {
            n_individuals: 40,
            heldout: 5,
            seed: 1,
            pools: PoolSizes {
                cities: 5,
                universities: 3,
                days: 2,
                months: 1,
                year_min: 1990,
                year_max: 1993,
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        let samplings = [
            Curriculum::single(Distribution::Uniform),
            Curriculum::single(Distribution::PowerLaw { alpha: 0.7 }),
            Curriculum::new(vec![
                (Distribution::Subset { n: 3 }, Some(70)),
                (Distribution::Uniform, None),
            ])
            .unwrap(),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for world in [big, small].map(Arc::new) {
            let longest = world.max_biography_tokens();
            // At the longest biography (the scratch path), just above, and with room to spare.
            for seq_len in [
                longest,
                longest + 5,
                longest + SLACK + 1,
                2 * longest + 7,
                400,
            ] {
                for packing in [Packing::Pad, Packing::Pack] {
                    for (split, population, facts) in [
                        (Split::Train, Population::Train, Facts::Real),
                        (Split::Eval, Population::Train, Facts::Shuffled),
                        (Split::Train, Population::Heldout, Facts::Shuffled),
                        (Split::Eval, Population::Heldout, Facts::Real),
                    ] {
                        for sampling in &samplings {
                            let spec = StreamSpec {
                                population,
                                split,
                                packing,
                                seq_len,
                                seed: 11,
                                sampling: sampling.clone(),
                                facts,
                            };
                            check(&world, spec, &pool);
                        }
                    }
                }
            }
        }
    }
}
