//! The output directory's life: determinism, verification of finished shards, rewriting of
//! damaged ones, interruption and resume, refusal of another config or of foreign files, and the
//! rows themselves against the core's `RowBuilder`.

mod common;
use common::{never, snapshot};

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt64Type};
use clap::Parser;
use kadyn_core::{RowBuilder, World};
use kadyn_gen::dir::{Shards, PROGRESS_FILE};
use kadyn_gen::{run, Args, GenError, Manifest};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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
        "1000",
        "--batch-rows",
        "300",
        "--sampling",
        "subset:10@700,power:0.7",
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
fn plan_covers_every_row_once() {
    let shards = Shards::new(2500, 1000);
    assert_eq!(shards.count(), 3);
    assert_eq!(shards.plan(0).rows, 0..1000);
    assert_eq!(shards.plan(2).rows, 2000..2500);
    assert_eq!(shards.plan(2).file, "data/shard-00002-of-00003.parquet");
    assert_eq!(
        shards.index_of("data/shard-00002-of-00003.parquet"),
        Some(2)
    );
    assert_eq!(shards.index_of("data/shard-00003-of-00003.parquet"), None);
    assert_eq!(shards.index_of("data/shard-00002-of-00004.parquet"), None);
    assert_eq!(shards.index_of("data/shard-2-of-3.parquet"), None);
    assert_eq!(shards.index_of("shard-00002-of-00003.parquet"), None);
    assert_eq!(shards.rows(&(1..3)), 1000..2500);
    assert_eq!(Shards::new(1000, 1000).count(), 1);
    // Planned on demand: no list of 10^8 plans for 10^14 rows.
    let huge = Shards::new(100_000_000_000_000, 1_000_000);
    assert_eq!(huge.count(), 100_000_000);
    assert_eq!(huge.plan(99_999_999).rows.end, 100_000_000_000_000);
}

#[test]
fn same_command_same_bytes_whatever_the_threads() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let summary = run(&args(a.path(), &["--threads", "1"]), &never).unwrap();
    assert_eq!(
        (summary.rows, summary.shards, summary.shards_resumed),
        (2500, 3, 0)
    );
    run(&args(b.path(), &["--threads", "3"]), &never).unwrap();
    let (sa, sb) = (snapshot(a.path()), snapshot(b.path()));
    assert_eq!(sa, sb);
    for f in [
        "manifest.json",
        "vocab.json",
        "README.md",
        "world/world.parquet",
        "data/shard-00002-of-00003.parquet",
    ] {
        assert!(sa.contains_key(f), "{f} missing");
    }
    assert!(!sa.keys().any(|k| k.ends_with(".tmp")));
    // A repeated run verifies everything, rewrites nothing, and leaves the same bytes.
    let again = run(&args(a.path(), &[]), &never).unwrap();
    assert_eq!(again.shards_resumed, 3);
    assert_eq!(snapshot(a.path()), sb);
}

#[test]
fn rows_are_the_stream_rows() {
    let dir = tempfile::tempdir().unwrap();
    let a = args(dir.path(), &[]);
    run(&a, &never).unwrap();
    let (config, _) = a.resolve().unwrap();
    let builder =
        RowBuilder::new(Arc::new(World::new(config.world).unwrap()), config.stream).unwrap();
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.total_rows, 2500);
    let mut next_row = 0u64;
    for shard in &manifest.shards {
        let file = fs::File::open(dir.path().join(&shard.file)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let rows: Vec<u64> = (next_row..next_row + batch.num_rows() as u64).collect();
            let expected = builder.build(&rows).unwrap();
            let got_index = batch.column(3).as_primitive::<UInt64Type>();
            assert_eq!(got_index.values().to_vec(), rows);
            let ids = |b: &arrow_array::RecordBatch| {
                b.column(0)
                    .as_fixed_size_list()
                    .values()
                    .as_primitive::<Int32Type>()
                    .values()
                    .to_vec()
            };
            assert_eq!(ids(&batch), ids(&expected));
            assert_eq!(batch.column(1).to_data(), expected.column(1).to_data());
            assert_eq!(batch.column(2).to_data(), expected.column(2).to_data());
            next_row += batch.num_rows() as u64;
        }
    }
    assert_eq!(next_row, 2500);
}

#[test]
fn interrupted_run_resumes_to_identical_files() {
    let (full, cut) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&args(full.path(), &[]), &never).unwrap();
    // Cancel in the middle of the second shard (windows of 2 row groups with --threads 1).
    let polls = AtomicUsize::new(0);
    let cancel = || polls.fetch_add(1, Ordering::SeqCst) >= 3;
    let err = run(&args(cut.path(), &["--threads", "1"]), &cancel).unwrap_err();
    assert!(matches!(err, GenError::Interrupted));
    let partial = snapshot(cut.path());
    assert!(partial.contains_key("data/shard-00000-of-00003.parquet"));
    assert!(partial.contains_key("data/shard-00001-of-00003.parquet.tmp"));
    assert!(!partial.contains_key("data/shard-00001-of-00003.parquet"));
    assert!(!partial.contains_key("manifest.json"));
    let resumed = run(&args(cut.path(), &[]), &never).unwrap();
    assert_eq!(resumed.shards_resumed, 1);
    assert_eq!(snapshot(cut.path()), snapshot(full.path()));
}

#[test]
fn damaged_or_unrecorded_shards_are_rewritten() {
    let (full, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&args(full.path(), &[]), &never).unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    // Same length, one byte changed: only the checksum can tell.
    let shard = dir.path().join("data/shard-00001-of-00003.parquet");
    let mut bytes = fs::read(&shard).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&shard, bytes).unwrap();
    // Truncated.
    let shard0 = dir.path().join("data/shard-00000-of-00003.parquet");
    let len = fs::metadata(&shard0).unwrap().len();
    fs::write(&shard0, &fs::read(&shard0).unwrap()[..len as usize / 2]).unwrap();
    let summary = run(&args(dir.path(), &[]), &never).unwrap();
    assert_eq!(summary.shards_resumed, 1);
    assert_eq!(snapshot(dir.path()), snapshot(full.path()));
    // Without the progress file nothing can be trusted: everything is written again.
    fs::remove_file(dir.path().join(PROGRESS_FILE)).unwrap();
    let summary = run(&args(dir.path(), &[]), &never).unwrap();
    assert_eq!(summary.shards_resumed, 0);
    assert_eq!(snapshot(dir.path()), snapshot(full.path()));
}

#[test]
fn another_config_or_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    let before = snapshot(dir.path());
    let err = run(&args(dir.path(), &["--pack"]), &never)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("--out "), "{err}");
    assert!(
        err.contains("different config") && err.contains("options.pack"),
        "{err}"
    );
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused run must not touch the directory"
    );
    // --threads never changes the bytes, so it is not part of the config.
    run(&args(dir.path(), &["--threads", "2"]), &never).unwrap();

    let foreign = tempfile::tempdir().unwrap();
    fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    let err = run(&args(foreign.path(), &[]), &never)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not empty") && err.contains("notes.txt"),
        "{err}"
    );
}

#[test]
fn a_dataset_in_the_old_flat_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    // As kadyn-gen wrote shards before the data/ folder: beside the config.
    fs::write(dir.path().join("shard-00000.parquet"), "old").unwrap();
    let err = run(&args(dir.path(), &[]), &never).unwrap_err().to_string();
    assert!(
        err.contains("holds shard-00000.parquet beside its config: a dataset in an older"),
        "{err}"
    );
}

#[test]
fn stale_tmp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    fs::write(
        dir.path().join("data/shard-00002-of-00003.parquet.tmp"),
        "half",
    )
    .unwrap();
    fs::write(dir.path().join("world/world.parquet.tmp"), "half").unwrap();
    fs::write(dir.path().join("manifest.json.tmp"), "half").unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    assert!(!snapshot(dir.path()).keys().any(|k| k.ends_with(".tmp")));
}

#[test]
fn option_errors_are_one_line_and_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["--seq-len", "10"], "--seq-len must be >= "),
        (
            &["--population", "new"],
            "--population new has 0 individuals",
        ),
        (
            &["--sampling", "subset:60"],
            "--sampling \"subset:60\": Subset.n must be in 1..=50",
        ),
        (
            &["--sampling", "zipf"],
            "--sampling \"zipf\": unknown sampler",
        ),
    ];
    for (extra, want) in cases {
        let mut a = args(dir.path(), &[]);
        a = Args::try_parse_from(
            [
                "kadyn-gen",
                "--samples",
                "5",
                "--individuals",
                "50",
                "--out",
            ]
            .into_iter()
            .chain([a.out.to_str().unwrap()])
            .chain(extra.iter().copied()),
        )
        .unwrap();
        let err = run(&a, &never).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.starts_with(want), "{msg:?} should start with {want:?}");
        assert!(!msg.contains('\n'));
    }
    let alpha =
        Args::try_parse_from(["kadyn-gen", "--samples", "5", "--alpha", "-1", "--out", "x"])
            .unwrap();
    assert_eq!(
        run(&alpha, &never).unwrap_err().to_string(),
        "--alpha must be >= 0 and finite, got -1"
    );
    assert!(Args::try_parse_from(["kadyn-gen", "--samples", "0", "--out", "x"]).is_err());
}

#[test]
fn a_locked_directory_is_refused_with_its_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let held = kadyn_gen::lock::DirLock::acquire(dir.path(), "kadyn-train").unwrap();
    let err = run(&args(dir.path(), &[]), &never).unwrap_err();
    assert_eq!(err.exit_code(), kadyn_gen::error::EXIT_BUSY);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "--out {} is in use by another process (pid ",
            dir.path().display()
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with(", kadyn-train); wait for it to finish or choose another --out"),
        "{msg}"
    );
    // Nothing but the lock was written; released, the same command runs.
    assert!(snapshot(dir.path()).is_empty());
    drop(held);
    run(&args(dir.path(), &[]), &never).unwrap();
}

#[test]
fn manifest_lists_row_groups_with_their_hashes() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.format_version, 3);
    assert_eq!(manifest.row_group_hash, kadyn_gen::ROW_GROUP_HASH);
    for shard in &manifest.shards {
        let groups = shard.row_groups.as_ref().unwrap();
        let rows: Vec<u64> = groups.iter().map(|g| g.rows).collect();
        let expected = if shard.rows == 1000 {
            vec![300, 300, 300, 100]
        } else {
            vec![300, 200]
        };
        assert_eq!(rows, expected, "{}", shard.file);
        let path = dir.path().join(&shard.file);
        assert_eq!(&kadyn_gen::shard::row_group_hashes(&path).unwrap(), groups);
    }
    // Each hash covers its own group: one changed byte in group 1's pages changes only hash 1.
    let path = dir.path().join("data/shard-00000-of-00003.parquet");
    let before = kadyn_gen::shard::row_group_hashes(&path).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let len = bytes.len();
    let meta =
        parquet::file::reader::SerializedFileReader::new(fs::File::open(&path).unwrap()).unwrap();
    use parquet::file::reader::FileReader;
    let column = meta.metadata().row_group(1).column(0);
    let at = column
        .dictionary_page_offset()
        .unwrap_or(column.data_page_offset()) as usize
        + 40;
    assert!(at < len);
    bytes[at] ^= 0x55;
    fs::write(&path, &bytes).unwrap();
    let after = kadyn_gen::shard::row_group_hashes(&path).unwrap();
    let changed: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a != b).collect();
    assert_eq!(changed, [false, true, false, false]);
}

#[test]
fn records_without_row_group_hashes_are_upgraded_without_rewriting() {
    let (full, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&args(full.path(), &[]), &never).unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    // As a kadyn-gen of format version 1 left it: no row groups in the records or the manifest.
    let progress_path = dir.path().join(PROGRESS_FILE);
    let mut progress: serde_json::Value =
        serde_json::from_slice(&fs::read(&progress_path).unwrap()).unwrap();
    for record in progress["shards"].as_object_mut().unwrap().values_mut() {
        record.as_object_mut().unwrap().remove("row_groups");
    }
    fs::write(&progress_path, progress.to_string()).unwrap();
    let summary = run(&args(dir.path(), &[]), &never).unwrap();
    assert_eq!(summary.shards_resumed, 3);
    assert_eq!(summary.rows_written, 0);
    assert_eq!(snapshot(dir.path()), snapshot(full.path()));
}

#[test]
fn a_malformed_manifest_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    let path = dir.path().join("manifest.json");
    let good: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let mut wrong_type = good.clone();
    wrong_type["shards"][1]["rows"] = "many".into();
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("total_rows");
    let mut bad_options = good.clone();
    bad_options["config"]["options"]["seed"] = "x".into();
    let cases = [
        ("{\"format\": ".to_string(), "not valid JSON"),
        (
            wrong_type.to_string(),
            "field shards[1].rows must be an integer >= 0, got \"many\"",
        ),
        (missing.to_string(), "missing field total_rows"),
        (
            bad_options.to_string(),
            "field config.options: invalid type: string \"x\"",
        ),
    ];
    for (text, want) in cases {
        fs::write(&path, &text).unwrap();
        let err = run(&args(dir.path(), &[]), &never).unwrap_err().to_string();
        assert!(
            err.starts_with("--out ") && err.contains("manifest.json is malformed ("),
            "{err}"
        );
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "left as it was");
    }
    // Deleted, it is rebuilt from the verified shards.
    fs::remove_file(&path).unwrap();
    let summary = run(&args(dir.path(), &[]), &never).unwrap();
    assert_eq!(summary.shards_resumed, 3);
}

#[test]
fn oversized_requests_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let parse = |extra: &[&str]| {
        Args::try_parse_from(
            [
                "kadyn-gen",
                "--individuals",
                "50",
                "--out",
                out.to_str().unwrap(),
            ]
            .into_iter()
            .chain(extra.iter().copied()),
        )
        .unwrap()
    };
    let cases: [(&[&str], &str); 4] = [
        (
            &["--samples", "10", "--seq-len", "1000000000"],
            "--seq-len must be <= 1048576 (MAX_SEQ_LEN",
        ),
        (
            &["--samples", "100000", "--seq-len", "1048576"],
            // 204 rows of 5 MiB make the 1 GiB cap (less on a machine with under 8 GiB).
            "--batch-rows must be <= ",
        ),
        (
            &["--samples", "100000", "--batch-rows", "1"],
            "--shard-rows must be <= 32768 with --batch-rows 1",
        ),
        (&["--samples", "100000000000000"], "but its filesystem has"),
    ];
    for (extra, want) in cases {
        let err = run(&parse(extra), &never).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        assert!(!msg.contains('\n'));
        assert!(!out.join(".kadyn-gen-config.json").exists(), "{msg}");
    }
}
