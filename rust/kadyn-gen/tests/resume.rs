//! The output directory's life: determinism, verification of finished shards, rewriting of
//! damaged ones, interruption and resume, refusal of another config or of foreign files, and the
//! rows themselves against the core's `RowBuilder`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, UInt64Type};
use clap::Parser;
use kadyn_core::{RowBuilder, World};
use kadyn_gen::dir::{plan_shards, PROGRESS_FILE};
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

fn never() -> bool {
    false
}

/// Every file of a directory with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn plan_covers_every_row_once() {
    let plans = plan_shards(2500, 1000);
    assert_eq!(plans.len(), 3);
    assert_eq!(plans[0].rows, 0..1000);
    assert_eq!(plans[2].rows, 2000..2500);
    assert_eq!(plans[2].file, "shard-00002.parquet");
    assert_eq!(plan_shards(1000, 1000).len(), 1);
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
        "world.parquet",
        "shard-00002.parquet",
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
            let expected = builder.build(&rows);
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
    assert!(partial.contains_key("shard-00000.parquet"));
    assert!(partial.contains_key("shard-00001.parquet.tmp"));
    assert!(!partial.contains_key("shard-00001.parquet"));
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
    let shard = dir.path().join("shard-00001.parquet");
    let mut bytes = fs::read(&shard).unwrap();
    bytes[100] ^= 0xff;
    fs::write(&shard, bytes).unwrap();
    // Truncated.
    let shard0 = dir.path().join("shard-00000.parquet");
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
fn stale_tmp_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    run(&args(dir.path(), &[]), &never).unwrap();
    fs::write(dir.path().join("shard-00007.parquet.tmp"), "half").unwrap();
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
