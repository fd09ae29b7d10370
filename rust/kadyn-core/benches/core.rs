//! Criterion micro-benchmarks of the hot paths under the stream: one sampler draw (uniform, power
//! law through the alias table, a two-phase curriculum), one rendered biography, and one
//! 1024-row batch built on a single thread. `cargo bench -p kadyn-core`.

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

fn build(c: &mut Criterion) {
    let world = world();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a pool");
    let mut group = c.benchmark_group("build_batch_1024x128");
    group.throughput(Throughput::Elements(1024));
    for packing in [Packing::Pad, Packing::Pack] {
        let builder = RowBuilder::new(
            world.clone(),
            StreamSpec {
                population: Population::Train,
                split: Split::Train,
                packing,
                seq_len: 128,
                seed: 0,
                sampling: Curriculum::single(Distribution::PowerLaw { alpha: 0.7 }),
                facts: Facts::Real,
            },
        )
        .expect("valid spec");
        let mut start = 0u64;
        group.bench_function(BenchmarkId::from_parameter(format!("{packing:?}")), |b| {
            b.iter(|| {
                let rows: Vec<u64> = (start..start + 1024).collect();
                start += 1024;
                black_box(pool.install(|| builder.build(&rows)).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, samplers, render, build);
criterion_main!(benches);
