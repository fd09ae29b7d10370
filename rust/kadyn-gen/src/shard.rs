//! Parquet writing: shards of stream rows and the world table.
//!
//! A shard's row groups are built *and encoded* in parallel (rayon), a window of them at a time,
//! with parquet's low-level column writers, then appended in order by the calling thread; so the
//! file does not depend on the thread count, and memory holds only one window of row groups.
//! Writer settings are fixed (zstd, one row group per `--batch-rows` rows, parquet-rs' fixed
//! `created_by`, no timestamps): the same config gives the same bytes.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use kadyn_core::vocab::PAD_ID;
use kadyn_core::RowBuilder;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterPropertiesPtr};
use parquet::schema::types::ColumnPath;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dir::{tmp_path, FileRecord, RowGroupRecord, ShardPlan};
use crate::error::{GenError, IoContext, Result};

/// Fixed writer settings: every field that could vary is set here, never taken from the
/// environment.
pub fn writer_properties(row_group_rows: usize) -> WriterPropertiesPtr {
    let path = |p: &str| ColumnPath::from(p.split('.').map(String::from).collect::<Vec<_>>());
    Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(row_group_rows))
            // Token ids: plain + zstd is smaller than dictionary + zstd (a 4k-word vocabulary
            // leaves 12-bit codes that zstd cannot shrink further) and takes less CPU to write.
            // attr_type keeps its dictionary: 7 values pack into 3 bits.
            .set_column_dictionary_enabled(path("input_ids.list.item"), false)
            // Consecutive counters: delta encoding stores them in a few bits per row.
            .set_column_dictionary_enabled(path("sample_index"), false)
            .set_column_encoding(path("sample_index"), Encoding::DELTA_BINARY_PACKED)
            .build(),
    )
}

/// A `Write` that hashes and counts what passes through, so a file's sha256 costs no re-read.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Sink = HashingWriter<BufWriter<File>>;

fn create_sink(tmp: &Path) -> Result<Sink> {
    Ok(HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, File::create(tmp).at(tmp)?),
        hasher: Sha256::new(),
        bytes: 0,
    })
}

/// Flushes and fsyncs the sink; returns (sha256 hex, bytes).
fn finish_sink(sink: Sink, tmp: &Path) -> Result<(String, u64)> {
    let HashingWriter {
        inner,
        hasher,
        bytes,
    } = sink;
    let file = inner.into_inner().map_err(|e| e.into_error()).at(tmp)?;
    file.sync_all().at(tmp)?;
    Ok((format!("{:x}", hasher.finalize()), bytes))
}

/// Non-`<pad>` tokens of a batch.
pub fn count_tokens(batch: &RecordBatch) -> u64 {
    let ids = batch.column(0).as_fixed_size_list().values();
    let ids = ids.as_primitive::<Int32Type>().values();
    ids.iter().filter(|&&t| t != PAD_ID as i32).count() as u64
}

/// Builds rows `rows` and encodes them as one row group's column chunks.
fn encode_group(
    builder: &RowBuilder,
    factory: &ArrowRowGroupWriterFactory,
    schema: &SchemaRef,
    rows: Range<u64>,
    index: usize,
) -> parquet::errors::Result<(Vec<ArrowColumnChunk>, u64)> {
    let rows: Vec<u64> = rows.collect();
    let batch = builder
        .build(&rows)
        .map_err(|e| parquet::errors::ParquetError::General(e.to_string()))?;
    let tokens = count_tokens(&batch);
    let mut writers = factory.create_column_writers(index)?;
    let mut next = writers.iter_mut();
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        for leaf in compute_leaves(field, column)? {
            next.next().expect("one writer per leaf").write(&leaf)?;
        }
    }
    let chunks = writers
        .into_iter()
        .map(|w| w.close())
        .collect::<parquet::errors::Result<_>>()?;
    Ok((chunks, tokens))
}

/// Per row group of a Parquet file: its rows and the sha256 of its column chunks as stored
/// (`manifest::ROW_GROUP_HASH`). Read back from the file rather than taken from the encoder, so
/// that the writer and every reader (Python's `kadyn.dataset` does the same from pyarrow's
/// metadata) hash exactly the same byte ranges.
pub fn row_group_hashes(path: &Path) -> Result<Vec<RowGroupRecord>> {
    use std::io::{Read, Seek, SeekFrom};

    use parquet::file::reader::{FileReader, SerializedFileReader};
    let perr = |e: parquet::errors::ParquetError| GenError::parquet(path, e);
    let mut file = File::open(path).at(path)?;
    let reader = SerializedFileReader::new(file.try_clone().at(path)?).map_err(perr)?;
    let mut buf = Vec::new();
    reader
        .metadata()
        .row_groups()
        .iter()
        .map(|group| {
            let mut hasher = Sha256::new();
            for column in group.columns() {
                let start = column
                    .dictionary_page_offset()
                    .unwrap_or_else(|| column.data_page_offset());
                let (Ok(start), Ok(len)) = (
                    u64::try_from(start),
                    usize::try_from(column.compressed_size()),
                ) else {
                    return Err(GenError::parquet(
                        path,
                        "negative column chunk offset or size",
                    ));
                };
                buf.resize(len, 0);
                file.seek(SeekFrom::Start(start)).at(path)?;
                file.read_exact(&mut buf).at(path)?;
                hasher.update(&buf);
            }
            Ok(RowGroupRecord {
                rows: group.num_rows() as u64,
                sha256: format!("{:x}", hasher.finalize()),
            })
        })
        .collect()
}

/// Bytes a row takes once written (zstd-compressed Parquet), measured on `rows` (the first row
/// group of the dataset): encoded in memory with the dataset's writer settings, footer included.
pub fn written_bytes_per_row(
    builder: &RowBuilder,
    props: WriterPropertiesPtr,
    rows: Range<u64>,
) -> Result<f64> {
    let n = rows.end - rows.start;
    let here = Path::new("<projection>");
    let perr = |e: parquet::errors::ParquetError| GenError::parquet(here, e);
    let rows: Vec<u64> = rows.collect();
    let batch = builder
        .build(&rows)
        .map_err(|e| crate::error::from_core(e, "--batch-rows", None))?;
    let mut writer =
        ArrowWriter::try_new(Vec::new(), builder.schema(), Some((*props).clone())).map_err(perr)?;
    writer.write(&batch).map_err(perr)?;
    let bytes = writer.into_inner().map_err(perr)?.len();
    Ok(bytes as f64 / n.max(1) as f64)
}

/// How to write shards of one dataset.
pub struct ShardWriter<'a> {
    pub builder: &'a RowBuilder,
    pub props: WriterPropertiesPtr,
    pub dir: &'a Path,
    pub row_group_rows: u64,
    /// Row groups in flight at once (a few per thread keeps every core busy).
    pub window: usize,
    pub pool: &'a rayon::ThreadPool,
}

impl ShardWriter<'_> {
    /// Writes the shard to `NAME.tmp` (fsynced) and returns its record and the tmp path; the
    /// caller records it, then renames. `cancel` is polled between windows on this thread;
    /// `on_rows` is told of every row group appended.
    pub fn write(
        &self,
        plan: &ShardPlan,
        cancel: &dyn Fn() -> bool,
        on_rows: &mut dyn FnMut(u64),
    ) -> Result<(FileRecord, PathBuf)> {
        let tmp = tmp_path(&self.dir.join(&plan.file));
        let perr = |e: parquet::errors::ParquetError| GenError::parquet(&tmp, e);
        let schema = self.builder.schema();
        let writer = ArrowWriter::try_new(
            create_sink(&tmp)?,
            schema.clone(),
            Some((*self.props).clone()),
        )
        .map_err(perr)?;
        let (mut writer, factory) = writer.into_serialized_writer().map_err(perr)?;
        let groups: Vec<Range<u64>> = (plan.rows.start..plan.rows.end)
            .step_by(self.row_group_rows as usize)
            .map(|s| s..(s + self.row_group_rows).min(plan.rows.end))
            .collect();
        let mut tokens = 0u64;
        for (w, window) in groups.chunks(self.window).enumerate() {
            if cancel() {
                return Err(GenError::Interrupted);
            }
            let encoded: Vec<_> = self.pool.install(|| {
                window
                    .par_iter()
                    .enumerate()
                    .map(|(i, rows)| {
                        encode_group(
                            self.builder,
                            &factory,
                            &schema,
                            rows.clone(),
                            w * self.window + i,
                        )
                    })
                    .collect()
            });
            for (result, rows) in encoded.into_iter().zip(window) {
                let (chunks, t) = result.map_err(perr)?;
                let mut group = writer.next_row_group().map_err(perr)?;
                for chunk in chunks {
                    chunk.append_to_row_group(&mut group).map_err(perr)?;
                }
                group.close().map_err(perr)?;
                tokens += t;
                on_rows(rows.end - rows.start);
            }
        }
        let sink = writer.into_inner().map_err(perr)?;
        let (sha256, bytes) = finish_sink(sink, &tmp)?;
        let record = FileRecord {
            file: plan.file.clone(),
            first_row: Some(plan.rows.start),
            rows: plan.rows.end - plan.rows.start,
            tokens: Some(tokens),
            bytes,
            sha256,
            row_groups: Some(row_group_hashes(&tmp)?),
        };
        Ok((record, tmp))
    }
}

/// Writes one record batch as a Parquet file at `dir/file` (`file` relative, as the manifest
/// names it), atomically; returns its record.
pub fn write_table(
    dir: &Path,
    file: &str,
    batch: &RecordBatch,
    props: WriterPropertiesPtr,
) -> Result<FileRecord> {
    let path = dir.join(file);
    let tmp = tmp_path(&path);
    let perr = |e: parquet::errors::ParquetError| GenError::parquet(&tmp, e);
    let mut writer =
        ArrowWriter::try_new(create_sink(&tmp)?, batch.schema(), Some((*props).clone()))
            .map_err(perr)?;
    writer.write(batch).map_err(perr)?;
    let sink = writer.into_inner().map_err(perr)?;
    let (sha256, bytes) = finish_sink(sink, &tmp)?;
    fs::rename(&tmp, &path).at(&path)?;
    Ok(FileRecord {
        file: file.to_string(),
        first_row: None,
        rows: batch.num_rows() as u64,
        tokens: None,
        bytes,
        sha256,
        row_groups: None,
    })
}
