//! End-to-end properties of the core: determinism whatever the thread count, exact resume,
//! disjoint rank shards, the eval-template firewall, the baseline, and argument checks.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int8Type, UInt32Type, UInt64Type};
use arrow_array::RecordBatch;
use kadyn_core::*;

fn world(n: u32) -> Arc<World> {
    Arc::new(
        World::new(WorldConfig {
            n_individuals: n,
            heldout: 10,
            new: 5,
            seed: 3,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn spec(w: &World, packing: Packing) -> StreamSpec {
    StreamSpec {
        population: Population::Train,
        split: Split::Train,
        packing,
        seq_len: w.max_biography_tokens() + if packing == Packing::Pack { 200 } else { 0 },
        seed: 9,
        sampling: Curriculum::single(Distribution::power_law(0.7).unwrap()),
        facts: Facts::Real,
    }
}

fn ids(batch: &RecordBatch) -> Vec<i32> {
    batch
        .column(0)
        .as_fixed_size_list()
        .values()
        .as_primitive::<Int32Type>()
        .values()
        .to_vec()
}

fn sample_index(batch: &RecordBatch) -> Vec<u64> {
    batch
        .column(3)
        .as_primitive::<UInt64Type>()
        .values()
        .to_vec()
}

fn collect(
    builder: Arc<RowBuilder>,
    schedule: Schedule,
    threads: usize,
    n: usize,
) -> Vec<RecordBatch> {
    let p = Prefetcher::start(builder, schedule, threads, 2).unwrap();
    (0..n).map(|_| p.next_batch().unwrap()).collect()
}

fn schedule(position: u64, rank: u64, world_size: u64) -> Schedule {
    Schedule {
        position,
        batch_size: 16,
        rank,
        world_size,
        batch_start: 0,
        batch_step: 1,
    }
}

#[test]
fn same_bytes_whatever_the_thread_count() {
    let w = world(100);
    for packing in [Packing::Pad, Packing::Pack] {
        let b = Arc::new(RowBuilder::new(w.clone(), spec(&w, packing)).unwrap());
        let one = collect(b.clone(), schedule(0, 0, 1), 1, 4);
        let four = collect(b, schedule(0, 0, 1), 4, 4);
        assert_eq!(one, four);
    }
}

#[test]
fn resume_continues_byte_identically() {
    let w = world(100);
    let b = Arc::new(RowBuilder::new(w.clone(), spec(&w, Packing::Pad)).unwrap());
    let all = collect(b.clone(), schedule(0, 0, 1), 2, 6);
    let resumed = collect(b, schedule(3 * 16, 0, 1), 2, 3);
    assert_eq!(&all[3..], &resumed[..]);
}

#[test]
fn rank_shards_are_disjoint_and_complete() {
    let w = world(100);
    let b = Arc::new(RowBuilder::new(w.clone(), spec(&w, Packing::Pad)).unwrap());
    let single: Vec<RecordBatch> = collect(b.clone(), schedule(0, 0, 1), 2, 3);
    let mut single_rows: Vec<(u64, Vec<i32>)> = Vec::new();
    for batch in &single {
        let t = w.max_biography_tokens();
        for (i, k) in sample_index(batch).into_iter().enumerate() {
            single_rows.push((k, ids(batch)[i * t..(i + 1) * t].to_vec()));
        }
    }
    let mut sharded: Vec<(u64, Vec<i32>)> = Vec::new();
    for rank in 0..3 {
        for batch in collect(b.clone(), schedule(0, rank, 3), 1, 1) {
            let t = w.max_biography_tokens();
            for (i, k) in sample_index(&batch).into_iter().enumerate() {
                assert_eq!(k % 3, rank);
                sharded.push((k, ids(&batch)[i * t..(i + 1) * t].to_vec()));
            }
        }
    }
    sharded.sort();
    assert_eq!(sharded.len(), 48);
    let keys: HashSet<u64> = sharded.iter().map(|r| r.0).collect();
    assert_eq!(keys.len(), 48, "ranks overlap");
    assert_eq!(sharded, single_rows);
}

#[test]
fn pad_rows_hold_one_biography_and_tag_values() {
    let w = world(50);
    let b = RowBuilder::new(w.clone(), spec(&w, Packing::Pad)).unwrap();
    let batch = b.build(&[0, 1, 2]).unwrap();
    let t = w.max_biography_tokens();
    let types = batch
        .column(1)
        .as_fixed_size_list()
        .values()
        .as_primitive::<Int8Type>()
        .values()
        .to_vec();
    let tokens = ids(&batch);
    for row in 0..3 {
        let r = &tokens[row * t..(row + 1) * t];
        assert_eq!(r[0], 1, "<bos> first");
        assert_eq!(r.iter().filter(|&&x| x == 2).count(), 1, "one <eos>");
        // Six values, one maximal run each, in six distinct attribute ids.
        let ty = &types[row * t..(row + 1) * t];
        let mut runs = Vec::new();
        for (i, &a) in ty.iter().enumerate() {
            if a >= 0 && (i == 0 || ty[i - 1] != a) {
                runs.push(a);
            }
        }
        runs.sort();
        assert_eq!(runs, vec![0, 1, 2, 3, 4, 5]);
    }
    let who = batch
        .column(2)
        .as_primitive::<UInt32Type>()
        .values()
        .to_vec();
    assert!(who.iter().all(|&i| i < 50));
}

#[test]
fn eval_sentences_never_appear_in_training_rows() {
    let w = world(20);
    let mut s = spec(&w, Packing::Pad);
    s.sampling = Curriculum::single(Distribution::Uniform);
    let b = RowBuilder::new(w.clone(), s).unwrap();
    let rows: Vec<u64> = (0..2000).collect();
    let batch = b.build(&rows).unwrap();
    let t = w.max_biography_tokens();
    let tokens = ids(&batch);
    let who = batch
        .column(2)
        .as_primitive::<UInt32Type>()
        .values()
        .to_vec();
    for (row, &i) in who.iter().enumerate() {
        let ind = w.individual(Population::Train, i as usize).unwrap();
        let text = w
            .vocab()
            .decode(
                &tokens[row * t..(row + 1) * t]
                    .iter()
                    .map(|&x| x as i64)
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        // Whole sentences: every template ends with its value and a final ".".
        let body = text.trim_start_matches("<bos> ").trim_end_matches(" <eos>");
        let sentences: HashSet<String> = body
            .split_inclusive(". ")
            .map(|s| s.trim().to_string())
            .collect();
        assert_eq!(sentences.len(), 6, "{text}");
        for attr in Attribute::ALL {
            for &e in ind.templates_of(attr, Split::Eval) {
                let (mut tk, mut at) = (Vec::new(), Vec::new());
                w.render_sentence(ind, attr, e as usize, &mut tk, &mut at);
                let sentence = w
                    .vocab()
                    .decode(&tk.iter().map(|&x| x as i64).collect::<Vec<_>>())
                    .unwrap();
                assert!(
                    !sentences.contains(&sentence),
                    "eval sentence {sentence:?} in training row {text:?}"
                );
            }
        }
    }
}

#[test]
fn pack_rows_join_biographies() {
    let w = world(50);
    let b = RowBuilder::new(w.clone(), spec(&w, Packing::Pack)).unwrap();
    let batch = b.build(&[0, 1]).unwrap();
    let lists = batch.column(2).as_list::<i32>();
    for row in 0..2 {
        let n = lists.value(row).len();
        assert!(n >= 2, "seq_len leaves room for at least two biographies");
        let t = b.spec().seq_len;
        let r = &ids(&batch)[row * t..(row + 1) * t];
        assert_eq!(
            r.iter().filter(|&&x| x == 2).count(),
            n,
            "one <eos> per biography"
        );
        assert_eq!(
            r.iter().filter(|&&x| x == 1).count(),
            1,
            "one <bos> per row"
        );
    }
}

#[test]
fn value_table_entropy_is_the_empirical_entropy() {
    let w = world(200);
    let got = kadyn_core::baseline::value_table_entropy(&w, Population::Train);
    for attr in Attribute::ALL {
        let mut counts = std::collections::HashMap::new();
        for i in 0..200 {
            *counts
                .entry(w.value_text(
                    attr,
                    w.individual(Population::Train, i).unwrap().values[attr as usize],
                ))
                .or_insert(0u32) += 1;
        }
        let h: f64 = counts
            .values()
            .map(|&c| {
                let p = c as f64 / 200.0;
                -p * p.ln()
            })
            .sum();
        assert!((h - got[attr as usize]).abs() < 1e-12);
    }
    let uniform = kadyn_core::baseline::pool_entropy(&w);
    let mean: f64 = uniform.iter().sum::<f64>() / 6.0;
    assert!(
        (mean - 6.785).abs() < 0.01,
        "paper pools give about 6.78 nats, got {mean}"
    );
}

#[test]
fn bad_arguments_are_refused() {
    assert!(World::new(WorldConfig {
        n_individuals: 0,
        ..Default::default()
    })
    .is_err());
    let mut c = WorldConfig::default();
    c.pools.first_names = 2;
    c.pools.last_names = 2;
    c.n_individuals = 5;
    let e = World::new(c).unwrap_err().to_string();
    assert!(e.contains("n_individuals + heldout + new"), "{e}");
    let w = world(10);
    let mut s = spec(&w, Packing::Pad);
    s.seq_len = 10;
    let e = RowBuilder::new(w.clone(), s).unwrap_err().to_string();
    assert!(e.starts_with("seq_len must be >="), "{e}");
    let bad = Schedule {
        rank: 2,
        world_size: 2,
        ..schedule(0, 0, 1)
    };
    assert!(bad.validate().is_err());
    let mut s = spec(&w, Packing::Pad);
    s.population = Population::Heldout;
    s.sampling = Curriculum::single(Distribution::Subset { n: 11 });
    assert!(RowBuilder::new(w.clone(), s).is_err());
}

#[test]
fn oversized_requests_are_errors_not_aborts() {
    let w = world(10);
    let mut s = spec(&w, Packing::Pad);
    s.seq_len = 1_000_000_000;
    let e = RowBuilder::new(w.clone(), s).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("seq_len must be <= {MAX_SEQ_LEN} (MAX_SEQ_LEN")),
        "{e}"
    );
    let e = eval_set(&w, Population::Train, Split::Eval, None, 1 << 30, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MAX_SEQ_LEN"), "{e}");

    // In range per field, too large together: refused before anything is allocated.
    let mut s = spec(&w, Packing::Pad);
    s.seq_len = 100_000;
    let builder = Arc::new(RowBuilder::new(w.clone(), s).unwrap());
    let huge = Schedule {
        batch_size: 1 << 24,
        ..schedule(0, 0, 1)
    };
    let e = Prefetcher::start(builder.clone(), huge, 1, 4)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.starts_with("batch_size must be <= "), "{e}");
    assert!(
        e.contains("6 batches in memory at once") && e.contains("memory limit"),
        "{e}"
    );
    let rows = (memory_limit() / limits::row_bytes(100_000) + 1) as usize;
    let e = builder.build(&vec![0; rows]).unwrap_err().to_string();
    assert!(e.starts_with("rows must be <= "), "{e}");
    // One probe row more than the limit holds at MAX_SEQ_LEN.
    let n = memory_limit() / limits::row_bytes(MAX_SEQ_LEN) + 1;
    let big = World::new(WorldConfig {
        n_individuals: n as u32,
        ..Default::default()
    })
    .unwrap();
    let e = eval_set(&big, Population::Train, Split::Eval, None, MAX_SEQ_LEN, 0)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("max_individuals must be <= "), "{e}");
}

#[test]
fn populations_are_disjoint() {
    let w = world(100);
    let names: Vec<String> = w.individuals().iter().map(|i| w.full_name(i)).collect();
    let set: HashSet<&String> = names.iter().collect();
    assert_eq!(set.len(), names.len());
    assert_eq!(names.len(), 115);
    // The training population does not depend on the size of the others.
    let other = World::new(WorldConfig {
        n_individuals: 100,
        heldout: 0,
        new: 0,
        seed: 3,
        ..Default::default()
    })
    .unwrap();
    for i in 0..100 {
        assert_eq!(
            w.full_name(&w.individuals()[i]),
            other.full_name(&other.individuals()[i])
        );
        assert_eq!(w.individuals()[i].values, other.individuals()[i].values);
    }
}

#[test]
fn shuffled_facts_keep_the_row_but_not_the_values() {
    let w = world(300);
    let real = RowBuilder::new(w.clone(), spec(&w, Packing::Pad)).unwrap();
    let control = RowBuilder::new(
        w.clone(),
        StreamSpec {
            facts: Facts::Shuffled,
            ..spec(&w, Packing::Pad)
        },
    )
    .unwrap();
    let rows: Vec<u64> = (0..400).collect();
    let (a, b) = (real.build(&rows).unwrap(), control.build(&rows).unwrap());
    // Same individuals (sample draw), same layout of value tokens per sentence order/template.
    assert_eq!(a.column(2).as_ref(), b.column(2).as_ref());
    let types = |batch: &RecordBatch| -> Vec<i8> {
        batch
            .column(1)
            .as_fixed_size_list()
            .values()
            .as_primitive::<Int8Type>()
            .values()
            .to_vec()
    };
    let (ta, tb) = (types(&a), types(&b));
    let non_value = |t: &[i8], ids: &[i32]| -> Vec<i32> {
        ids.iter()
            .zip(t)
            .filter(|(&i, &x)| x < 0 && i != 0)
            .map(|(&i, _)| i)
            .collect()
    };
    // Everything outside the values is the real row's (names, templates, order).
    assert_eq!(non_value(&ta, &ids(&a)), non_value(&tb, &ids(&b)));
    // The values differ on most rows, and the same bytes come back on a rebuild.
    let differ = ids(&a) != ids(&b);
    assert!(differ);
    assert_eq!(ids(&control.build(&rows).unwrap()), ids(&b));
}
