//! Shard-parallel generation: `--part I/N` runs write disjoint blocks of one dataset into one
//! directory (side by side), and `kadyn-gen merge` completes it. Whatever the parts, the result is
//! the one-process run's directory, byte for byte, manifest and bookkeeping included.

mod common;
use common::{never, snapshot};

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use kadyn_gen::lock::DirLock;
use kadyn_gen::{main_with, merge, run, Args, GenError, Part};

fn args(out: &Path, extra: &[&str]) -> Args {
    let mut argv = vec![
        "kadyn-gen",
        "--individuals",
        "50",
        "--samples",
        "2500",
        "--seq-len",
        "120",
        "--shard-rows",
        "500",
        "--batch-rows",
        "200",
        "--sampling",
        "power:0.7",
        "--seed",
        "4",
        "--quiet",
        "--out",
    ];
    argv.push(out.to_str().unwrap());
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

#[test]
fn parts_are_contiguous_blocks_covering_every_shard_once() {
    assert_eq!(Part::parse("1/4"), Ok(Part { index: 1, count: 4 }));
    for bad in ["4/4", "1", "-1/4", "a/b", "0/0", ""] {
        let err = Part::parse(bad).unwrap_err();
        assert!(err.starts_with("must be I/N with 0 <= I < N"), "{err}");
    }
    for (shards, count) in [(5, 2), (5, 5), (7, 3), (100, 7)] {
        let ranges: Vec<_> = (0..count)
            .map(|index| Part { index, count }.range(shards))
            .collect();
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges.last().unwrap().end, shards);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(ranges.iter().all(|r| r.len() >= shards / count as usize));
    }
}

#[test]
fn two_parts_side_by_side_then_merge_equal_one_run_byte_for_byte() {
    let (one, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&args(one.path(), &[]), &never).unwrap();
    // Both parts at once, as two array jobs would run them.
    let out = split.path();
    let summaries: Vec<_> = std::thread::scope(|s| {
        let jobs: Vec<_> = ["0/2", "1/2"]
            .map(|p| s.spawn(move || run(&args(out, &["--part", p]), &never)))
            .into_iter()
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap().unwrap())
            .collect()
    });
    // 5 shards: parts of 2 and 3.
    assert_eq!(
        summaries
            .iter()
            .map(|s| (s.shards, s.rows))
            .collect::<Vec<_>>(),
        [(2, 1000), (3, 1500)]
    );
    assert!(summaries[0].to_string().ends_with(&format!(
        "once every part is done: kadyn-gen merge {}",
        split.path().display()
    )));
    let parts = snapshot(split.path());
    for absent in [
        "manifest.json",
        "README.md",
        "vocab.json",
        "world/world.parquet",
    ] {
        assert!(!parts.contains_key(absent), "{absent} written by a part");
    }
    assert!(parts.contains_key(".kadyn-gen-progress-part-1-of-2.json"));
    assert!(parts.contains_key(".kadyn-gen-part-0-of-2.lock"));
    let merged = merge(split.path(), Some(2), true).unwrap();
    assert_eq!(
        (merged.rows, merged.shards_resumed, merged.rows_written),
        (2500, 5, 0)
    );
    let (want, got) = (snapshot(one.path()), snapshot(split.path()));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &want {
        assert!(&got[name] == bytes, "{name} differs");
    }
    // Merging again, or running the whole command, verifies and changes nothing.
    merge(split.path(), None, true).unwrap();
    assert_eq!(
        run(&args(split.path(), &[]), &never).unwrap().rows_written,
        0
    );
    assert_eq!(snapshot(split.path()), want);
}

#[test]
fn a_whole_run_completes_and_folds_unfinished_parts() {
    let (one, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&args(one.path(), &[]), &never).unwrap();
    run(&args(dir.path(), &["--part", "1/2"]), &never).unwrap();
    // Part 0 of 2 interrupted inside its second shard.
    let polls = AtomicUsize::new(0);
    let cancel = || polls.fetch_add(1, Ordering::SeqCst) >= 3;
    let err = run(
        &args(dir.path(), &["--part", "0/2", "--threads", "1"]),
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, GenError::Interrupted));
    let summary = run(&args(dir.path(), &[]), &never).unwrap();
    assert_eq!(summary.shards_resumed, 3 + 1);
    assert_eq!(snapshot(dir.path()), snapshot(one.path()));
}

#[test]
fn merge_refuses_missing_or_damaged_shards_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    // 5 shards in parts of 1, 2 and 2.
    run(&args(dir.path(), &["--part", "1/3"]), &never).unwrap();
    let before = snapshot(dir.path());
    let err = merge(dir.path(), None, true).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "--out {}: cannot be merged: 3 of 5 shards are missing or damaged \
             (data/shard-00000-of-00005.parquet, data/shard-00003-of-00005.parquet, \
             data/shard-00004-of-00005.parquet); rerun the parts that write them \
             (--part I/N), or the command without --part to write them here",
            dir.path().display()
        )
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused merge changes nothing"
    );
    run(&args(dir.path(), &["--part", "0/3"]), &never).unwrap();
    run(&args(dir.path(), &["--part", "2/3"]), &never).unwrap();
    let shard = dir.path().join("data/shard-00001-of-00005.parquet");
    let mut bytes = fs::read(&shard).unwrap();
    bytes[100] ^= 1;
    fs::write(&shard, &bytes).unwrap();
    let err = merge(dir.path(), None, true).unwrap_err().to_string();
    assert!(
        err.contains("1 of 5 shards are missing or damaged (data/shard-00001-of-00005.parquet)"),
        "{err}"
    );
    // The part that owns it rewrites it; then the merge goes through.
    run(&args(dir.path(), &["--part", "1/3"]), &never).unwrap();
    merge(dir.path(), None, true).unwrap();
    assert!(dir.path().join("manifest.json").is_file());
    let nothing = tempfile::tempdir().unwrap();
    let err = merge(nothing.path(), None, true).unwrap_err().to_string();
    assert!(err.contains("holds no kadyn-gen dataset to merge"), "{err}");
}

#[test]
fn parts_exclude_whole_runs_the_same_part_and_parts_of_another_count() {
    let dir = tempfile::tempdir().unwrap();
    let held = DirLock::acquire_part(dir.path(), "kadyn-gen", Part { index: 1, count: 2 }).unwrap();
    // Another part of the same count runs beside it.
    run(&args(dir.path(), &["--part", "0/2"]), &never).unwrap();
    let busy = |extra: &[&str]| run(&args(dir.path(), extra), &never).unwrap_err();
    for err in [busy(&[]), busy(&["--part", "1/2"])] {
        assert_eq!(err.exit_code(), 75, "{err}");
        assert!(
            err.to_string()
                .contains(&format!("(pid {} on ", std::process::id())),
            "{err}"
        );
        assert!(err.to_string().contains(", kadyn-gen --part 1/2)"), "{err}");
    }
    assert_eq!(merge(dir.path(), None, true).unwrap_err().exit_code(), 75);
    let err = busy(&["--part", "0/3"]).to_string();
    assert!(
        err.contains("is being written by parts of another count (.kadyn-gen-part-1-of-2.lock: "),
        "{err}"
    );
    drop(held);
    // A whole run holds the folder: parts wait for it.
    let whole = DirLock::acquire(dir.path(), "kadyn-gen").unwrap();
    assert_eq!(busy(&["--part", "1/2"]).exit_code(), 75);
    drop(whole);
    run(&args(dir.path(), &["--part", "1/2"]), &never).unwrap();
    merge(dir.path(), None, true).unwrap();
}

#[test]
fn more_parts_than_shards_is_an_option_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = run(&args(dir.path(), &["--part", "0/6"]), &never).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .starts_with("--part 0/6: the dataset has 5 shards"),
        "{err}"
    );
    assert!(!dir.path().join(".kadyn-gen-config.json").exists());
}

#[test]
fn the_merge_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let base: Vec<String> = std::iter::once("kadyn-gen".to_string())
        .chain(
            "--individuals 50 --samples 900 --seq-len 120 --shard-rows 300 --quiet"
                .split(' ')
                .map(String::from),
        )
        .chain(["--out".to_string(), out.to_string()])
        .collect();
    for p in ["0/2", "1/2"] {
        let mut argv = base.clone();
        argv.extend(["--part".to_string(), p.to_string()]);
        assert_eq!(main_with(argv, &never), 0);
    }
    assert_eq!(main_with(["kadyn-gen", "merge", out, "--quiet"], &never), 0);
    assert!(dir.path().join("manifest.json").is_file());
    assert_eq!(main_with(["kadyn-gen", "merge"], &never), 2);
}

#[test]
fn the_card_declares_both_configs_and_the_command() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &["--pack"]), &never).unwrap();
    let card = fs::read_to_string(dir.path().join("README.md")).unwrap();
    assert!(card.starts_with(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*.parquet\n\
         - config_name: world\n  data_files:\n  - split: train\n    path: world/world.parquet\n"
    ), "{card}");
    assert!(card.contains(
        "kadyn-gen --individuals 50 --heldout 0 --new 0 --world-seed 0 --samples 2500 --seq-len 120 \
         --sampling power:0.7 --split train --population train --facts real --seed 4 \
         --shard-rows 500 --batch-rows 200 --pack --out DIR"
    ), "{card}");
    assert!(card.contains("| `individual` | `list<uint32>` |"), "{card}");
    assert!(!card.contains(dir.path().to_str().unwrap()));
}
