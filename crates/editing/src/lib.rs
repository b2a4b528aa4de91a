//! Knowledge editing under the preservation–memorization objective ("A Unified Framework for Model
//! Editing", Gupta et al. 2024): key statistics, keys, target values, the closed-form solver core,
//! ROME / MEMIT / EMMET / AlphaEdit, and the distribution of edits over layers.

pub mod causal_trace;
pub mod checkpoint;
pub mod context;
pub mod distribute;
pub mod error;
pub mod hparams;
pub mod keys;
pub mod methods;
pub mod request;
pub mod sampling;
pub mod score;
pub mod solver;
pub mod stats;
pub mod targets;
mod tensor_file;
pub mod ultraedit;

pub use distribute::{EditOutcome, EditSession, Editor};
pub use error::{EditError, Result};
pub use hparams::{Distribution, FamilyHparams, MethodHparams};
pub use methods::Method;
pub use request::EditRequest;
