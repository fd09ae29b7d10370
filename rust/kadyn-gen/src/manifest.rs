//! `manifest.json`: the contract between the generator and every reader (`kadyn.load_dataset`,
//! or any Parquet reader). It names the config, the schema and every file (by its path relative
//! to the dataset directory) with its size and sha256, and, since format version 2, every shard's
//! row groups with their own sha256, so that a reader can check each group as it reads it without
//! hashing whole files first.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::args::DatasetConfig;
use crate::dir::FileRecord;

pub const FORMAT: &str = "kadyn-dataset";
/// 3: the folder layout (`data/shard-I-of-N.parquet`, `world/world.parquet`, a `README.md`
/// card): file names are paths relative to the dataset directory. 2: shards list their row
/// groups (`row_groups`: rows and sha256 each; see [`ROW_GROUP_HASH`]). Version 1 manifests have
/// none; older versions still parse (their files are named the same way, relative paths).
pub const FORMAT_VERSION: u32 = 3;

/// How `row_groups[i].sha256` is computed, stored in the manifest for readers in other languages.
pub const ROW_GROUP_HASH: &str = "sha256 over the row group's column chunks as stored in the \
    file, in column order; each chunk is total_compressed_size bytes from its \
    dictionary_page_offset, or from its data_page_offset when it has no dictionary page";

/// One column of the shards' schema, for readers that do not speak Arrow schemas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub dtype: String,
    pub meaning: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VocabInfo {
    pub file: String,
    pub size: usize,
    pub pad_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`: present only once every shard is complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub kadyn_version: String,
    pub config: DatasetConfig,
    pub schema: Vec<Column>,
    pub vocab: VocabInfo,
    pub world_table: FileRecord,
    /// [`ROW_GROUP_HASH`] (absent from version 1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub row_group_hash: String,
    pub shards: Vec<FileRecord>,
    pub total_rows: u64,
    pub total_tokens: u64,
}

pub fn schema_description(seq_len: usize, pack: bool) -> Vec<Column> {
    let col = |name: &str, dtype: String, meaning: &str| Column {
        name: name.into(),
        dtype,
        meaning: meaning.into(),
    };
    vec![
        col(
            "input_ids",
            format!("fixed_size_list<int32>[{seq_len}]"),
            "token ids (vocab.json), <pad>-filled or packed",
        ),
        col(
            "attr_type",
            format!("fixed_size_list<int8>[{seq_len}]"),
            "-1 for ordinary tokens, 0..5 for tokens of an attribute value (one value = one maximal run)",
        ),
        col(
            "individual",
            if pack { "list<uint32>" } else { "uint32" }.into(),
            "which individual(s) of the population the row describes (rows of world/world.parquet)",
        ),
        col(
            "sample_index",
            "uint64".into(),
            "the stream counter k of the row's (first) biography: row k of the dataset",
        ),
    ]
}

/// The JSON types a manifest's fields must have; checked before serde so that an error can name
/// the field (`shards[2].rows`), which serde's messages do not.
enum Shape {
    Str,
    Int,
    /// Left to serde (the world and stream sections of the config), named by their path.
    Serde(fn(&Value) -> Result<(), String>),
    Object(&'static [(&'static str, Shape, bool)]),
    List(&'static Shape),
}

fn serde_check<T: serde::de::DeserializeOwned>(value: &Value) -> Result<(), String> {
    T::deserialize(value).map(|_| ()).map_err(|e| e.to_string())
}

const FILE_FIELDS: &[(&str, Shape, bool)] = &[
    ("file", Shape::Str, true),
    ("first_row", Shape::Int, false),
    ("rows", Shape::Int, true),
    ("tokens", Shape::Int, false),
    ("bytes", Shape::Int, true),
    ("sha256", Shape::Str, true),
    (
        "row_groups",
        Shape::List(&Shape::Object(&[
            ("rows", Shape::Int, true),
            ("sha256", Shape::Str, true),
        ])),
        false,
    ),
];

const MANIFEST_SHAPE: Shape = Shape::Object(&[
    ("format", Shape::Str, true),
    ("format_version", Shape::Int, true),
    ("kadyn_version", Shape::Str, true),
    (
        "config",
        Shape::Object(&[
            ("kadyn_version", Shape::Str, true),
            (
                "options",
                Shape::Serde(serde_check::<crate::args::Options>),
                true,
            ),
            (
                "world",
                Shape::Serde(serde_check::<kadyn_core::WorldConfig>),
                true,
            ),
            (
                "stream",
                Shape::Serde(serde_check::<kadyn_core::StreamSpec>),
                true,
            ),
        ]),
        true,
    ),
    (
        "schema",
        Shape::List(&Shape::Object(&[
            ("name", Shape::Str, true),
            ("type", Shape::Str, true),
            ("meaning", Shape::Str, true),
        ])),
        true,
    ),
    (
        "vocab",
        Shape::Object(&[
            ("file", Shape::Str, true),
            ("size", Shape::Int, true),
            ("pad_id", Shape::Int, true),
            ("bos_id", Shape::Int, true),
            ("eos_id", Shape::Int, true),
            ("bytes", Shape::Int, true),
            ("sha256", Shape::Str, true),
        ]),
        true,
    ),
    ("world_table", Shape::Object(FILE_FIELDS), true),
    ("row_group_hash", Shape::Str, false),
    ("shards", Shape::List(&Shape::Object(FILE_FIELDS)), true),
    ("total_rows", Shape::Int, true),
    ("total_tokens", Shape::Int, true),
]);

fn check(value: &Value, shape: &Shape, path: &str) -> Result<(), String> {
    let wrong = |want: &str| {
        let mut got = value.to_string();
        if got.chars().count() > 40 {
            got = got.chars().take(40).chain("...".chars()).collect();
        }
        Err(format!("field {path} must be {want}, got {got}"))
    };
    match shape {
        Shape::Str if !value.is_string() => wrong("a string"),
        Shape::Int if !value.is_u64() => wrong("an integer >= 0"),
        Shape::Serde(f) => f(value).map_err(|e| format!("field {path}: {e}")),
        Shape::List(item) => match value.as_array() {
            None => wrong("a list"),
            Some(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| check(v, item, &format!("{path}[{i}]"))),
        },
        Shape::Object(fields) => {
            let Some(object) = value.as_object() else {
                return wrong("an object");
            };
            for (name, shape, required) in *fields {
                let sub = if path.is_empty() {
                    (*name).to_string()
                } else {
                    format!("{path}.{name}")
                };
                match object.get(*name) {
                    Some(v) => check(v, shape, &sub)?,
                    None if *required => return Err(format!("missing field {sub}")),
                    None => {}
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Parses a manifest (version 1 to 3); the error names the first bad field, in words.
pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err("the top level must be an object".into());
    }
    check(&value, &MANIFEST_SHAPE, "")?;
    if value["format"] != FORMAT {
        return Err(format!(
            "field format must be {FORMAT:?}, got {}",
            value["format"]
        ));
    }
    let version = &value["format_version"];
    if !(1..=FORMAT_VERSION as u64).contains(&version.as_u64().unwrap_or(0)) {
        return Err(format!(
            "field format_version must be in 1..={FORMAT_VERSION}, got {version}"
        ));
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_manifests_name_the_field() {
        assert!(parse(b"{not json")
            .unwrap_err()
            .starts_with("not valid JSON"));
        assert_eq!(parse(b"[]").unwrap_err(), "the top level must be an object");
        assert_eq!(
            parse(br#"{"format": "kadyn-dataset"}"#).unwrap_err(),
            "missing field format_version"
        );
        assert_eq!(
            parse(br#"{"format": 3}"#).unwrap_err(),
            "field format must be a string, got 3"
        );
    }
}
