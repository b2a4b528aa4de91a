//! Editing benchmarks as typed records: CounterFact and multi-CounterFact (ROME's JSON), zsRE
//! (MEND's JSON) and the EasyEdit layout of both; selection of records (first N, seeded sample,
//! explicit case ids); the duplicate/conflict checks MCF needs; published checksums; the official
//! code's downstream tasks (few-shot prompts and label words).

pub mod downstream;
mod error;
mod load;
mod record;
pub mod rng;
mod select;
pub mod shared;

pub use error::{DataError, Result};
pub use load::{file_sha256, load, published_sha256, DatasetSource, Format};
pub use record::{Dataset, DatasetKind, Probe, Record, Rewrite};
pub use select::{consistency, Consistency, Selection};
