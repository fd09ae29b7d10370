//! The command line (clap) and its resolution into the dataset config: every option that changes
//! the bytes written, with defaults filled in (`--seq-len` from the world), plus the core's own
//! world config and stream spec. That config is what a dataset directory is compared against.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use kadyn_core::{
    Curriculum, Distribution, Facts, Packing, Population, RowBuilder, Split, StreamSpec, World,
    WorldConfig,
};
use serde::{Deserialize, Serialize};

use crate::dir::Part;
use crate::error::{from_core, GenError, Result};
use crate::spec::{format_sampling, parse_sampling};

/// Writes a kadyn dataset as Parquet shards: row k is row k of `kadyn.BiographyStream`.
///
/// The world, seed and sampling given here define the rows exactly as they define the stream's.
/// Re-running the same command after an interruption resumes it, and the result is
/// byte-identical to an uninterrupted run.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "kadyn-gen",
    version,
    args_override_self = true,
    after_help = "Shard-parallel: `--part I/N` (0 <= I < N) writes only the I-th of N blocks \
                  of shards into --out, so N processes (a Slurm array, a shell loop) write one \
                  dataset together; then `kadyn-gen merge DIR` verifies every shard and writes \
                  the card, world, vocab and manifest. The result is byte-identical to one run.\n\n\
                  Exit status: 0 done, 1 failed (the one error line says why), 2 bad option, \
                  75 --out is in use by another process (retry later), 130 interrupted."
)]
pub struct Args {
    /// Individuals in the training population.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub individuals: u32,
    /// Extra held-out individuals (never in the train population).
    #[arg(long, default_value_t = 0)]
    pub heldout: u32,
    /// Extra "new" individuals (for fine-tuning experiments).
    #[arg(long, default_value_t = 0)]
    pub new: u32,
    /// Rows to write.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples: u64,
    /// Tokens per row [default: the world's longest biography; at most kadyn's MAX_SEQ_LEN].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub seq_len: Option<u64>,
    /// Rows per record batch, which is also the rows per Parquet row group.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub batch_rows: u64,
    /// Power-law exponent: shorthand for --sampling power:<ALPHA> (with --sampling, only the
    /// same power law is accepted).
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// uniform | power:<alpha> | subset:<n> | phases such as subset:2000@50000,uniform.
    #[arg(long)]
    pub sampling: Option<String>,
    /// Which templates of each individual the sentences use.
    #[arg(long, default_value = "train", value_parser = Split::NAMES)]
    pub split: String,
    /// Which individuals the rows describe.
    #[arg(long, default_value = "train", value_parser = Population::NAMES)]
    pub population: String,
    /// real: each individual's own values; shuffled: the no-knowledge control, each value taken
    /// from a random individual of the same sampling distribution (names carry no information).
    #[arg(long, default_value = "real", value_parser = Facts::NAMES)]
    pub facts: String,
    /// Pack several biographies per row (joined by <eos>) instead of one padded biography.
    #[arg(long)]
    pub pack: bool,
    /// Seed of the sample stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seed of the world (names, values, template splits).
    #[arg(long, default_value_t = 0)]
    pub world_seed: u64,
    /// Worker threads [default: all cores]. Never changes the output.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub threads: Option<u64>,
    /// Rows per Parquet shard file.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_rows: u64,
    /// Output directory (created; must be empty, or hold this same dataset to resume it).
    #[arg(long)]
    pub out: PathBuf,
    /// Write only block I of N of the shards (0 <= I < N), beside the other parts in --out;
    /// `kadyn-gen merge DIR` then completes the dataset. Never changes the bytes.
    #[arg(long, value_name = "I/N", value_parser = Part::parse)]
    pub part: Option<Part>,
    /// No progress output (the summary line still goes to stdout).
    #[arg(long, short)]
    pub quiet: bool,
}

/// The options that define a dataset's bytes, resolved (`--threads`, `--quiet` and `--out` are
/// left out: they never change what is written).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Options {
    pub individuals: u32,
    pub heldout: u32,
    pub new: u32,
    pub samples: u64,
    pub seq_len: usize,
    pub batch_rows: u64,
    pub sampling: String,
    pub split: String,
    pub population: String,
    pub pack: bool,
    #[serde(default = "real_facts")]
    pub facts: String,
    pub seed: u64,
    pub world_seed: u64,
    pub shard_rows: u64,
}

impl Options {
    /// The `kadyn-gen` command that writes this dataset into `out`.
    pub fn command_line(&self, out: &str) -> String {
        let mut line = format!(
            "kadyn-gen --individuals {} --heldout {} --new {} --world-seed {} --samples {} \
             --seq-len {} --sampling {} --split {} --population {} --facts {} --seed {} \
             --shard-rows {} --batch-rows {}",
            self.individuals,
            self.heldout,
            self.new,
            self.world_seed,
            self.samples,
            self.seq_len,
            self.sampling,
            self.split,
            self.population,
            self.facts,
            self.seed,
            self.shard_rows,
            self.batch_rows,
        );
        if self.pack {
            line.push_str(" --pack");
        }
        line + " --out " + out
    }

    /// The command line these options came from, as parsed `Args` (what `kadyn-gen merge`
    /// rebuilds from a directory's stored config).
    pub fn to_args(&self, out: &std::path::Path) -> Args {
        Args {
            individuals: self.individuals,
            heldout: self.heldout,
            new: self.new,
            samples: self.samples,
            seq_len: Some(self.seq_len as u64),
            batch_rows: self.batch_rows,
            alpha: None,
            sampling: Some(self.sampling.clone()),
            split: self.split.clone(),
            population: self.population.clone(),
            facts: self.facts.clone(),
            pack: self.pack,
            seed: self.seed,
            world_seed: self.world_seed,
            threads: None,
            shard_rows: self.shard_rows,
            out: out.to_path_buf(),
            quiet: false,
            part: None,
        }
    }
}

fn real_facts() -> String {
    Facts::Real.name().to_string()
}

/// Everything a dataset is a pure function of; stored in the directory and in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetConfig {
    pub kadyn_version: String,
    pub options: Options,
    pub world: WorldConfig,
    pub stream: StreamSpec,
}

impl Args {
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        )
    }

    fn curriculum(&self) -> Result<Curriculum> {
        let alpha = self
            .alpha
            .map(|alpha| {
                Distribution::power_law(alpha)
                    .map(Curriculum::single)
                    .map_err(|e| from_core(e, "--alpha", None))
            })
            .transpose()?;
        match (&self.sampling, alpha) {
            (Some(spec), None) => parse_sampling(spec),
            (Some(spec), Some(power)) => {
                let sampling = parse_sampling(spec)?;
                if sampling != power {
                    return Err(GenError::option(
                        "--alpha",
                        format!(
                            "{} means --sampling {}, which conflicts with --sampling {spec}; \
                             give one of them",
                            self.alpha.expect("given"),
                            format_sampling(&power)
                        ),
                    ));
                }
                Ok(sampling)
            }
            (None, Some(power)) => Ok(power),
            (None, None) => Ok(Curriculum::single(Distribution::Uniform)),
        }
    }

    /// Builds the world and checks the stream spec against it (on the current rayon pool).
    pub fn resolve(&self) -> Result<(DatasetConfig, RowBuilder)> {
        let sampling = self.curriculum()?;
        let world_config = WorldConfig {
            n_individuals: self.individuals,
            heldout: self.heldout,
            new: self.new,
            seed: self.world_seed,
            ..Default::default()
        };
        let world =
            World::new(world_config.clone()).map_err(|e| from_core(e, "--individuals", None))?;
        let seq_len = self
            .seq_len
            .map_or(world.max_biography_tokens(), |s| s as usize);
        let population =
            Population::parse(&self.population).map_err(|e| from_core(e, "--population", None))?;
        let split = Split::parse(&self.split).map_err(|e| from_core(e, "--split", None))?;
        if world.population_size(population) == 0 {
            return Err(GenError::option(
                "--population",
                format!(
                    "{} has 0 individuals; add them with --{} <N>",
                    self.population, self.population
                ),
            ));
        }
        let stream = StreamSpec {
            population,
            split,
            packing: if self.pack {
                Packing::Pack
            } else {
                Packing::Pad
            },
            seq_len,
            seed: self.seed,
            sampling: sampling.clone(),
            facts: Facts::parse(&self.facts).map_err(|e| from_core(e, "--facts", None))?,
        };
        let spec_text = format_sampling(&sampling);
        let builder = RowBuilder::new(Arc::new(world), stream.clone())
            .map_err(|e| from_core(e, "--sampling", Some(&spec_text)))?;
        let options = Options {
            individuals: self.individuals,
            heldout: self.heldout,
            new: self.new,
            samples: self.samples,
            seq_len,
            batch_rows: self.batch_rows,
            sampling: spec_text,
            split: self.split.clone(),
            population: self.population.clone(),
            pack: self.pack,
            facts: self.facts.clone(),
            seed: self.seed,
            world_seed: self.world_seed,
            shard_rows: self.shard_rows,
        };
        let config = DatasetConfig {
            kadyn_version: kadyn_core::VERSION.to_string(),
            options,
            world: world_config,
            stream,
        };
        Ok((config, builder))
    }
}
