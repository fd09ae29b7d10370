//! Criterion micro-benchmarks of the hot paths under the stream: one sampler draw (uniform, power
//! law through the alias table, a two-phase curriculum), one rendered biography, and one
//! 1024-row batch built on a single thread beside its memory-copy bound. `cargo bench -p
//! kadyn-core`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kadyn_core::rng::{CounterRng, Domain};
use kadyn_core::{
    Curriculum, Distribution, Facts, Packing, Population, RowBuilder, Sampler, Split, StreamSpec,
    World, WorldConfig,
};

fn world() -> Arc<World> {
    Arc::new(
        World::new(WorldConfig {
            n_individuals: 10_000,
            ..Default::default()
        })
        .expect("default world"),
    )
}

fn samplers(c: &mut Criterion) {
    let n = 10_000;
    let cases = [
        ("uniform", Curriculum::single(Distribution::Uniform)),
        (
            "power_0.7",
            Curriculum::single(Distribution::PowerLaw { alpha: 0.7 }),
        ),
        (
            "curriculum",
            Curriculum::new(vec![
                (Distribution::Subset { n: 2000 }, Some(50_000)),
                (Distribution::Uniform, None),
            ])
            .expect("valid"),
        ),
    ];
    let mut group = c.benchmark_group("sampler_draw");
    group.throughput(Throughput::Elements(1));
    for (name, curriculum) in cases {
        let sampler = Sampler::new(curriculum, n).expect("valid");
        let mut k = 0u64;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                k = k.wrapping_add(1);
                let mut rng = CounterRng::new(7, Domain::Sample, &[k, 0]);
                black_box(sampler.draw(k, &mut rng))
            })
        });
    }
    group.finish();
}

fn render(c: &mut Criterion) {
    let world = world();
    let (mut tokens, mut attrs) = (Vec::with_capacity(128), Vec::with_capacity(128));
    let mut k = 0u64;
    c.bench_function("render_biography", |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            let mut rng = CounterRng::new(7, Domain::Sample, &[k, 0]);
            let ind = &world.individuals()[(k % 10_000) as usize];
            tokens.clear();
            attrs.clear();
            world.render_biography(ind, Split::Train, &mut rng, &mut tokens, &mut attrs);
            black_box(tokens.len())
        })
    });
}

/// One 1024-row batch built on one thread (the one-thread stream's `build_here`: no pool), beside
/// its memory-copy bound measured in the same run: the batch's bytes (int32 ids and int8 types,
/// seq_len each a row, a uint32 and a uint64 a row) copied into freshly allocated buffers, as the
/// stream hands out fresh buffers. Throughput is in tokens (rows × seq_len), so the ratio of the
/// two figures is the stream thread's share of the bound.
fn build(c: &mut Criterion) {
    let world = world();
    let (rows, seq_len) = (1024usize, 128usize);
    let tokens = rows * seq_len;
    let mut group = c.benchmark_group("batch_1024x128_one_thread");
    group.throughput(Throughput::Elements(tokens as u64));
    let ids: Vec<i32> = (0..tokens as i32).collect();
    let types: Vec<i8> = (0..tokens).map(|i| i as i8).collect();
    let (individual, sample_index): (Vec<u32>, Vec<u64>) =
        ((0..rows as u32).collect(), (0..rows as u64).collect());
    group.bench_function("memcopy_fresh_bound", |b| {
        b.iter(|| {
            black_box((
                ids.to_vec(),
                types.to_vec(),
                individual.to_vec(),
                sample_index.to_vec(),
            ))
        })
    });
    for packing in [Packing::Pad, Packing::Pack] {
        let builder = RowBuilder::new(
            world.clone(),
            StreamSpec {
                population: Population::Train,
                split: Split::Train,
                packing,
                seq_len,
                seed: 0,
                sampling: Curriculum::single(Distribution::PowerLaw { alpha: 0.7 }),
                facts: Facts::Real,
            },
        )
        .expect("valid spec");
        let mut start = 0u64;
        group.bench_function(BenchmarkId::from_parameter(format!("{packing:?}")), |b| {
            b.iter(|| {
                let batch: Vec<u64> = (start..start + rows as u64).collect();
                start += rows as u64;
                black_box(builder.build_here(&batch).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, samplers, render, build);
criterion_main!(benches);
