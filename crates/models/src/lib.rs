//! GPT-J, GPT-2 and LLaMA-family causal language models on burn, with the hooks knowledge editing needs
//! (keys and values of the MLP output projection, passes that start above a layer, early stopping, weight
//! replacement), loaded from Hugging Face checkpoint directories or GGUF files.

pub mod backend;
pub mod batch;
pub mod chat;
mod decoder;
pub mod dtype;
pub mod error;
pub mod flops;
pub mod gguf;
pub mod gpt2;
pub mod gptj;
pub mod hooks;
pub mod layers;
pub mod llama;
pub mod model;
mod save;
pub mod tokenizer;
pub mod weights;

pub use backend::{BackendKind, BackendTask};
pub use batch::{Padding, PromptBatch, PromptTree};
pub use decoder::{KvCache, Start};
pub use dtype::WeightDType;
pub use error::{ModelError, Result};
pub use hooks::{Hooks, LayerTrace, Patch, Site, Trace, Write};
pub use model::{Architecture, LanguageModel, ModelDims, Next};
pub use tokenizer::TextTokenizer;
