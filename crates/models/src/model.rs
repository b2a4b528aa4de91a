//! A loaded causal language model of any supported architecture, with its tokenizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::Deserialize;

use crate::batch::{Padding, PromptBatch};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufLlamaSource};
use crate::gptj::{GptJ, GptJHfConfig};
use crate::hooks::{Hooks, Trace};
use crate::layers::Linear;
use crate::llama::{Llama, LlamaHfConfig};
use crate::tokenizer::TextTokenizer;
use crate::weights::SafetensorsSource;

pub enum Architecture<B: Backend> {
    Llama(Llama<B>),
    GptJ(GptJ<B>),
}

/// Sizes editing code needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDims {
    pub num_layers: usize,
    /// `d_model`: width of the residual stream (`d_out` of the edited projection).
    pub hidden_size: usize,
    /// `d_mlp`: width of the keys (`d_in` of the edited projection).
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_positions: usize,
}

pub struct LanguageModel<B: Backend> {
    pub arch: Architecture<B>,
    pub dims: ModelDims,
    /// `llama` or `gptj`.
    pub family: &'static str,
    pub path: PathBuf,
    tokenizer: Option<Arc<TextTokenizer>>,
}

impl<B: Backend> LanguageModel<B> {
    /// Loads a Hugging Face checkpoint directory (`config.json` + safetensors) or a `.gguf` file.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        if path.is_dir() {
            Self::load_hf_dir(path, device)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            Self::load_gguf(path, device)
        } else if path.exists() {
            Err(ModelError::Input(format!("{}: expected a Hugging Face checkpoint directory or a .gguf file", path.display())))
        } else {
            Err(ModelError::io(path, std::io::ErrorKind::NotFound.into()))
        }
    }

    fn load_hf_dir(dir: &Path, device: &B::Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::Json { path: config_path.clone(), source })?;
        let model_type = json.get("model_type").and_then(|v| v.as_str()).unwrap_or("<none>").to_string();
        let source = SafetensorsSource::open(dir)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizer_path.exists().then(|| TextTokenizer::from_file(&tokenizer_path)).transpose()?;
        let (arch, dims, family) = match model_type.as_str() {
            "llama" => {
                let c = from_json::<LlamaHfConfig>(&text, &config_path)?.into_config(&config_path)?;
                let model = Llama::load(&c, &source, device)?;
                (Architecture::Llama(model), dims(c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size, c.max_position_embeddings), "llama")
            }
            "gptj" => {
                let c = from_json::<GptJHfConfig>(&text, &config_path)?.into_config(&config_path)?;
                let model = GptJ::load(&c, &source, device)?;
                (Architecture::GptJ(model), dims(c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size, c.max_position_embeddings), "gptj")
            }
            other => {
                return Err(ModelError::UnknownArchitecture { path: config_path, found: other.to_string(), supported: "llama, gptj" })
            }
        };
        Ok(Self { arch, dims, family, path: dir.to_path_buf(), tokenizer: tokenizer.map(Arc::new) })
    }

    fn load_gguf(path: &Path, device: &B::Device) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let c = file.llama_config()?;
        let source = GgufLlamaSource { file: &file, num_heads: c.num_heads, num_kv_heads: c.num_kv_heads };
        let model = Llama::load(&c, &source, device)?;
        let beside = path.with_file_name("tokenizer.json");
        let tokenizer = if beside.exists() {
            Some(TextTokenizer::from_file(&beside)?)
        } else if file.metadata.contains_key("tokenizer.ggml.model") {
            Some(TextTokenizer::from_gguf(&file)?)
        } else {
            None
        };
        Ok(Self {
            arch: Architecture::Llama(model),
            dims: dims(c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size, c.max_position_embeddings),
            family: "llama",
            path: path.to_path_buf(),
            tokenizer: tokenizer.map(Arc::new),
        })
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer
            .as_deref()
            .ok_or_else(|| ModelError::Input(format!("{}: no tokenizer.json beside the model", self.path.display())))
    }

    pub fn device(&self) -> B::Device {
        self.mlp_out(0).weight.val().device()
    }

    /// A padded batch of `sequences`, checked against the vocabulary and context length.
    pub fn batch(&self, sequences: &[Vec<u32>], padding: Padding) -> Result<PromptBatch<B>> {
        for seq in sequences {
            if let Some(&bad) = seq.iter().find(|&&id| id as usize >= self.dims.vocab_size) {
                return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary (size {})", self.dims.vocab_size)));
            }
            if seq.len() > self.dims.max_positions {
                return Err(ModelError::Input(format!("a sequence of {} tokens exceeds the context length {}", seq.len(), self.dims.max_positions)));
            }
        }
        let pad = self.tokenizer.as_ref().and_then(|t| t.eos).unwrap_or(0);
        PromptBatch::new(sequences, padding, pad, &self.device())
    }

    pub fn forward(&self, batch: &PromptBatch<B>, hooks: &Hooks<B>) -> Trace<B> {
        match &self.arch {
            Architecture::Llama(m) => m.forward(batch, hooks),
            Architecture::GptJ(m) => m.forward(batch, hooks),
        }
    }

    /// Logits `[t, vocab]` of every position of one sequence.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor<B, 2>> {
        let batch = self.batch(&[ids.to_vec()], Padding::Right)?;
        let logits = self.forward(&batch, &Hooks::default()).logits.expect("no early stop requested");
        Ok(logits.squeeze_dim::<2>(0))
    }

    /// Greedy continuation of `prompt` by up to `max_new_tokens` tokens (stops at end-of-sequence).
    pub fn generate(&self, prompt: &str, max_new_tokens: usize) -> Result<String> {
        let tokenizer = self.tokenizer()?;
        let mut ids = tokenizer.encode(prompt)?;
        let start = ids.len();
        for _ in 0..max_new_tokens {
            let logits = self.logits(&ids)?;
            let [t, _] = logits.dims();
            let next = logits.slice([t - 1..t]).argmax(1).into_data().to_vec::<i64>().map_err(|e| ModelError::Input(format!("{e:?}")))?[0] as u32;
            if Some(next) == tokenizer.eos {
                break;
            }
            ids.push(next);
        }
        tokenizer.decode(&ids[start..])
    }

    /// Matrix-multiply FLOPs per token of a forward pass over `t` tokens (a multiply-add counts 2):
    /// every weight matrix once (all parameters but the embedding table; norms are negligible) plus
    /// the attention scores and mixing, `2 · 2 · t · d_model` per layer.
    pub fn matmul_flops_per_token(&self, t: usize) -> f64 {
        let params = match &self.arch {
            Architecture::Llama(m) => m.num_params(),
            Architecture::GptJ(m) => m.num_params(),
        };
        let d = &self.dims;
        let weights = params - d.vocab_size * d.hidden_size;
        2.0 * weights as f64 + (d.num_layers * 4 * t * d.hidden_size) as f64
    }

    /// The edited projection of `layer` (LLaMA `mlp.down_proj`, GPT-J `mlp.fc_out`).
    pub fn mlp_out(&self, layer: usize) -> &Linear<B> {
        match &self.arch {
            Architecture::Llama(m) => &m.layers[layer].mlp.down_proj,
            Architecture::GptJ(m) => &m.layers[layer].mlp.fc_out,
        }
    }

    pub fn mlp_out_mut(&mut self, layer: usize) -> &mut Linear<B> {
        match &mut self.arch {
            Architecture::Llama(m) => &mut m.layers[layer].mlp.down_proj,
            Architecture::GptJ(m) => &mut m.layers[layer].mlp.fc_out,
        }
    }
}

fn dims(num_layers: usize, hidden_size: usize, intermediate_size: usize, vocab_size: usize, max_positions: usize) -> ModelDims {
    ModelDims { num_layers, hidden_size, intermediate_size, vocab_size, max_positions }
}

/// Parses `text` (the contents of `path`); serde's message names the field, line and column.
fn from_json<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })
}

impl<B: AutodiffBackend> LanguageModel<B> {
    /// The same model on the autodiff backend, sharing the weights, with no gradient tracked for
    /// them (gradients flow only to tensors marked with `require_grad`, e.g. an intervention).
    pub fn from_inner(inner: &LanguageModel<B::InnerBackend>) -> Self {
        let arch = match &inner.arch {
            Architecture::Llama(m) => Architecture::Llama(Llama::from_inner(m.clone()).no_grad()),
            Architecture::GptJ(m) => Architecture::GptJ(GptJ::from_inner(m.clone()).no_grad()),
        };
        Self { arch, dims: inner.dims, family: inner.family, path: inner.path.clone(), tokenizer: inner.tokenizer.clone() }
    }
}
