//! kadyn-core: a deterministic world of synthetic biographies (Zucchet et al. 2025, after
//! Allen-Zhu & Li's bioS), counter-based samplers and an Arrow batch builder. Pure Rust, no Python:
//! the PyO3 bindings and the `kadyn-gen` CLI are thin layers over this crate.

pub mod attribute;
pub mod baseline;
pub mod batch;
pub mod error;
pub mod limits;
pub mod pools;
pub mod prefetch;
pub mod rng;
pub mod sampler;
pub mod spans;
pub mod table;
pub mod templates;
pub mod vocab;
pub mod world;

pub use attribute::{Attribute, ATTRIBUTE_NAMES, N_ATTRIBUTES};
pub use batch::{eval_set, Facts, Packing, RowBuilder, StreamSpec};
pub use error::{KadynError, Result};
pub use limits::{memory_limit, MAX_SEQ_LEN};
pub use pools::PoolSizes;
pub use prefetch::{Prefetcher, Schedule};
pub use sampler::{Curriculum, Distribution, Sampler};
pub use table::world_table;
pub use world::{Individual, Population, Split, World, WorldConfig};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
