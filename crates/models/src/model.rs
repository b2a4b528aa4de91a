//! A loaded causal language model of any supported architecture, with its tokenizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::Deserialize;

use crate::batch::{Padding, PromptBatch, PromptTree};
use crate::decoder::{self, KvCache, Pass, Start};
use crate::dtype::{as_f32, WeightDType};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufLlamaSource};
use crate::gpt2::{Gpt2, Gpt2Config, Gpt2HfConfig};
use crate::gptj::{GptJ, GptJConfig, GptJHfConfig};
use crate::hooks::{Hooks, Patch, Trace};
use crate::layers::Linear;
use crate::llama::{Llama, LlamaConfig, LlamaFamily, LlamaHfConfig};
use crate::tokenizer::TextTokenizer;
use crate::weights::{InDType, SafetensorsSource};

pub enum Architecture<B: Backend> {
    Llama(Llama<B>),
    GptJ(GptJ<B>),
    Gpt2(Gpt2<B>),
}

/// A checkpoint directory's `config.json`, by `model_type`.
enum HfConfig {
    Llama(LlamaConfig),
    GptJ(GptJConfig),
    Gpt2(Gpt2Config),
}

impl HfConfig {
    fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|cause| ModelError::Json { path: config_path.clone(), cause })?;
        match json.get("model_type").and_then(|v| v.as_str()).unwrap_or("<none>") {
            "llama" => Ok(Self::Llama(
                from_json::<LlamaHfConfig>(&text, &config_path)?
                    .into_config(&config_path, LlamaFamily::Llama)?,
            )),
            "mistral" => Ok(Self::Llama(
                from_json::<LlamaHfConfig>(&text, &config_path)?
                    .into_config(&config_path, LlamaFamily::Mistral)?,
            )),
            "qwen2" => Ok(Self::Llama(
                from_json::<LlamaHfConfig>(&text, &config_path)?
                    .into_config(&config_path, LlamaFamily::Qwen2)?,
            )),
            "gptj" => Ok(Self::GptJ(
                from_json::<GptJHfConfig>(&text, &config_path)?.into_config(&config_path)?,
            )),
            "gpt2" => Ok(Self::Gpt2(
                from_json::<Gpt2HfConfig>(&text, &config_path)?.into_config(&config_path)?,
            )),
            other => Err(ModelError::UnknownArchitecture {
                path: config_path,
                found: other.to_string(),
                supported: "llama, mistral, qwen2, gptj, gpt2",
            }),
        }
    }
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
    /// Number of parameters (weights and biases) editbench holds in memory, from the configuration
    /// (a tied output head is the embedding tensor itself, so it counts once).
    pub parameters: u64,
}

/// The dtype a Hugging Face checkpoint's tensors are all stored in; `None` for a GGUF file or
/// tensors of mixed types.
pub fn checkpoint_dtype(path: &Path) -> Result<Option<WeightDType>> {
    Ok(if path.is_dir() { SafetensorsSource::open(path)?.stored_dtype() } else { None })
}

impl ModelDims {
    /// The sizes of the model at `path` from its configuration (no weights are read, but the
    /// weight files must be there and their headers whole), so that settings can be checked before
    /// any work.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let config = HfConfig::read(path)?;
            SafetensorsSource::open(path)?;
            Ok(match config {
                HfConfig::Llama(c) => c.dims(),
                HfConfig::GptJ(c) => c.dims(),
                HfConfig::Gpt2(c) => c.dims(),
            })
        } else if path.extension().is_some_and(|e| e == "gguf") {
            Ok(GgufFile::open(path)?.llama_config()?.dims())
        } else if path.exists() {
            Err(ModelError::Input(format!(
                "{}: expected a Hugging Face checkpoint directory or a .gguf file",
                path.display()
            )))
        } else {
            Err(ModelError::io(path, std::io::ErrorKind::NotFound.into()))
        }
    }
}

/// The state [`LanguageModel::extend`] decodes from: rows ordered by prompt length.
struct Prefilled<B: Backend> {
    cache: KvCache<B>,
    /// The sequence of each row.
    rows: Vec<usize>,
    /// Padding columns at the start of each row's cache.
    offsets: Vec<usize>,
    /// Tokens of each row's own in the cache.
    lengths: Vec<usize>,
    /// Columns in the cache.
    columns: usize,
    /// Each row's next-token logits, `[rows * vocab]`.
    logits: Vec<f32>,
}

/// A row's next step in [`LanguageModel::extend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Append this token and go on.
    Token(u32),
    /// Append this token; the sequence is finished.
    Last(u32),
    /// Append nothing; the sequence is finished.
    Stop,
}

pub struct LanguageModel<B: Backend> {
    pub arch: Architecture<B>,
    pub dims: ModelDims,
    /// `llama`, `gptj` or `gpt2`.
    pub family: &'static str,
    dtype: WeightDType,
    pub path: PathBuf,
    tokenizer: Option<Arc<TextTokenizer>>,
    /// Weights of one block, counted once at load for [`Self::block_flops`].
    block_weights: f64,
}

impl<B: Backend> LanguageModel<B> {
    /// Loads a Hugging Face checkpoint directory (`config.json` + safetensors) or a `.gguf` file,
    /// its weights in the default dtype (see [`LanguageModel::load_as`]).
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        Self::load_as(path, None, device)
    }

    /// Like [`LanguageModel::load`], the weight matrices and embedding tables kept in `dtype`
    /// ([`crate::dtype`]). `None`: the dtype the checkpoint's tensors are stored in where the backend
    /// stores it too (lossless), else f32 — so f32 on the CPU backend and for GGUF files.
    pub fn load_as(path: &Path, dtype: Option<WeightDType>, device: &B::Device) -> Result<Self> {
        if path.is_dir() {
            Self::load_hf_dir(path, dtype, device)
        } else if path.extension().is_some_and(|e| e == "gguf") {
            Self::load_gguf(path, dtype.unwrap_or_default(), device)
        } else if path.exists() {
            Err(ModelError::Input(format!(
                "{}: expected a Hugging Face checkpoint directory or a .gguf file",
                path.display()
            )))
        } else {
            Err(ModelError::io(path, std::io::ErrorKind::NotFound.into()))
        }
    }

    fn load_hf_dir(dir: &Path, dtype: Option<WeightDType>, device: &B::Device) -> Result<Self> {
        // The config first: a directory without one is not a checkpoint, whatever else is missing.
        let config = HfConfig::read(dir)?;
        let safetensors = SafetensorsSource::open(dir)?;
        let stored = safetensors.stored_dtype().filter(|d| d.stored_natively::<B>(device));
        let dtype = dtype.or(stored).unwrap_or_default();
        let source = InDType { source: &safetensors, dtype };
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = tokenizer_path
            .exists()
            .then(|| TextTokenizer::from_file(&tokenizer_path))
            .transpose()?;
        let (arch, dims, family) = match config {
            HfConfig::Llama(c) => {
                (Architecture::Llama(Llama::load(&c, &source, device)?), c.dims(), "llama")
            }
            HfConfig::GptJ(c) => {
                (Architecture::GptJ(GptJ::load(&c, &source, device)?), c.dims(), "gptj")
            }
            HfConfig::Gpt2(c) => {
                (Architecture::Gpt2(Gpt2::load(&c, &source, device)?), c.dims(), "gpt2")
            }
        };
        let block_weights = block_weights(&arch, &dims);
        Ok(Self {
            arch,
            dims,
            family,
            dtype,
            path: dir.to_path_buf(),
            tokenizer: tokenizer.map(Arc::new),
            block_weights,
        }
        .logged())
    }

    fn load_gguf(path: &Path, dtype: WeightDType, device: &B::Device) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let c = file.llama_config()?;
        let gguf =
            GgufLlamaSource { file: &file, num_heads: c.num_heads, num_kv_heads: c.num_kv_heads };
        let source = InDType { source: &gguf, dtype };
        let model = Llama::load(&c, &source, device)?;
        let beside = path.with_file_name("tokenizer.json");
        let tokenizer = if beside.exists() {
            Some(TextTokenizer::from_file(&beside)?)
        } else if file.metadata.contains_key("tokenizer.ggml.model") {
            Some(TextTokenizer::from_gguf(&file)?)
        } else {
            None
        };
        let arch = Architecture::Llama(model);
        let block_weights = block_weights(&arch, &c.dims());
        Ok(Self {
            arch,
            dims: c.dims(),
            family: "llama",
            dtype,
            path: path.to_path_buf(),
            tokenizer: tokenizer.map(Arc::new),
            block_weights,
        }
        .logged())
    }

    /// Says at load time how the weights are kept.
    fn logged(self) -> Self {
        let device = self.device();
        match self.dtype {
            WeightDType::F32 => {}
            d if d.stored_natively::<B>(&device) => tracing::info!("{}: weights kept in {d}", self.path.display()),
            d => tracing::warn!("{}: this backend cannot store {d}: weights rounded to {d}, kept in f32 (no memory saved)", self.path.display()),
        }
        self
    }

    /// The dtype the weight matrices and embedding tables were loaded in (a layer written by an
    /// edit is f32 from then on).
    pub fn dtype(&self) -> WeightDType {
        self.dtype
    }

    pub fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_deref().ok_or_else(|| {
            ModelError::Input(format!(
                "{}: no tokenizer.json beside the model",
                self.path.display()
            ))
        })
    }

    pub fn device(&self) -> B::Device {
        self.mlp_out(0).weight.val().device()
    }

    /// A padded batch of `sequences`, checked against the vocabulary and context length.
    pub fn batch(&self, sequences: &[Vec<u32>], padding: Padding) -> Result<PromptBatch<B>> {
        sequences.iter().try_for_each(|seq| self.check(seq))?;
        PromptBatch::new(sequences, padding, self.pad_id(), &self.device())
    }

    /// A batch of prompts, each with the continuations that share it ([`PromptBatch::trees`]),
    /// every prompt + continuation checked as [`Self::batch`] checks a sequence; all continue the
    /// `past` tokens of a [`KvCache`] (none when 0).
    pub fn tree_batch(&self, trees: &[PromptTree], past: usize) -> Result<PromptBatch<B>> {
        for tree in trees {
            let prefix = vec![0; past];
            self.check(&[prefix.as_slice(), tree.prompt].concat())?;
            tree.paths().try_for_each(|path| self.check(&[prefix.as_slice(), &path].concat()))?;
        }
        PromptBatch::trees(trees, past, self.pad_id(), &self.device())
    }

    /// Refuses a sequence with a token outside the vocabulary or longer than the model reads.
    fn check(&self, seq: &[u32]) -> Result<()> {
        if let Some(&bad) = seq.iter().find(|&&id| id as usize >= self.dims.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.dims.vocab_size
            )));
        }
        if let Some(window) = self.sliding_window().filter(|&w| seq.len() > w) {
            return Err(ModelError::Input(format!("a sequence of {} tokens exceeds the sliding attention window of {window} tokens (config.json `sliding_window`): editbench computes sliding-window attention only within one window", seq.len())));
        }
        if seq.len() > self.dims.max_positions {
            return Err(ModelError::Input(format!(
                "a sequence of {} tokens exceeds the context length {}",
                seq.len(),
                self.dims.max_positions
            )));
        }
        Ok(())
    }

    /// The token padding is filled with: end-of-sequence where the tokenizer has one.
    fn pad_id(&self) -> u32 {
        self.tokenizer.as_ref().and_then(|t| t.eos).unwrap_or(0)
    }

    /// The sliding attention window of a Mistral or Qwen2 model that has one.
    fn sliding_window(&self) -> Option<usize> {
        match &self.arch {
            Architecture::Llama(m) => m.config().sliding_window,
            _ => None,
        }
    }

    pub fn forward(&self, batch: &PromptBatch<B>, hooks: &Hooks) -> Trace<B> {
        self.forward_cached(batch, hooks, None)
    }

    /// [`Self::forward`] that attends to the columns held in `cache` and appends this batch's.
    pub fn forward_cached(
        &self,
        batch: &PromptBatch<B>,
        hooks: &Hooks,
        cache: Option<&mut KvCache<B>>,
    ) -> Trace<B> {
        self.forward_from(Start::Tokens, batch, hooks, cache)
    }

    /// [`Self::forward_cached`] from `start`: e.g. only the blocks above an edited layer, on its
    /// output hidden states, when nothing below changes between passes.
    pub fn forward_from(
        &self,
        start: Start<B>,
        batch: &PromptBatch<B>,
        hooks: &Hooks,
        cache: Option<&mut KvCache<B>>,
    ) -> Trace<B> {
        self.pass(&Pass { batch, hooks, patches: &[] }, start, cache)
    }

    /// [`Self::forward_from`] with `patches` replacing activations on the way (causal tracing).
    pub fn forward_patched(
        &self,
        start: Start<B>,
        batch: &PromptBatch<B>,
        hooks: &Hooks,
        patches: &[Patch<B>],
    ) -> Trace<B> {
        self.pass(&Pass { batch, hooks, patches }, start, None)
    }

    fn pass(
        &self,
        pass: &Pass<'_, B>,
        start: Start<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Trace<B> {
        let first = match &start {
            Start::Tokens => 0,
            Start::After { layer, .. } => layer + 1,
        };
        let past = cache.as_deref().map_or(0, |c| c.columns(first));
        let trace = match &self.arch {
            Architecture::Llama(m) => m.forward(pass, start, cache),
            Architecture::GptJ(m) => m.forward(pass, start, cache),
            Architecture::Gpt2(m) => m.forward(pass, start, cache),
        };
        let blocks =
            pass.hooks.stop_after.map_or(self.dims.num_layers, |s| s + 1).saturating_sub(first);
        let (rows, t) = (pass.batch.rows(), pass.batch.width());
        let positions = trace
            .logits
            .as_ref()
            .map_or(0, |l| l.dims().iter().product::<usize>() / self.dims.vocab_size);
        crate::flops::add(self.pass_flops(rows * t, past + t, blocks, positions));
        trace
    }

    /// The token embeddings of `ids`, `[t, d_model]` (GPT-2's position embeddings not added).
    pub fn token_embeddings(&self, ids: &[u32]) -> Tensor<B, 2> {
        let table = match &self.arch {
            Architecture::Llama(m) => m.embedding_table(),
            Architecture::GptJ(m) => m.embedding_table(),
            Architecture::Gpt2(m) => m.embedding_table(),
        };
        as_f32(decoder::select_rows(table, ids.iter().map(|&i| i as usize)))
    }

    /// Extends every sequence token by token (one KV-cached column per step) until it holds
    /// `max_len` tokens or `choose` ends it. The prompts are run in groups of like length (at most
    /// `prefill_rows` rows, left-padded), then decoded together; a finished sequence leaves the
    /// batch. `choose(row, logits)` picks row `row`'s next token from its next-token logits.
    pub fn extend(
        &self,
        mut seqs: Vec<Vec<u32>>,
        max_len: usize,
        prefill_rows: usize,
        mut choose: impl FnMut(usize, &[f32]) -> Next,
    ) -> Result<Vec<Vec<u32>>> {
        let vocab = self.dims.vocab_size;
        if seqs.iter().all(|s| s.len() >= max_len) {
            return Ok(seqs);
        }
        let Prefilled { mut cache, mut rows, mut offsets, mut lengths, mut columns, mut logits } =
            self.prefill(&seqs, prefill_rows)?;
        let device = self.device();
        loop {
            let (mut kept, mut fed) = (Vec::new(), Vec::new());
            for (i, &row) in rows.iter().enumerate() {
                let seq = &mut seqs[row];
                if seq.len() >= max_len {
                    continue;
                }
                let (id, more) = match choose(row, &logits[i * vocab..(i + 1) * vocab]) {
                    Next::Token(id) => (id, true),
                    Next::Last(id) => (id, false),
                    Next::Stop => continue,
                };
                seq.push(id);
                if more && seq.len() < max_len {
                    kept.push(i);
                    fed.push(id);
                }
            }
            if kept.is_empty() || columns + 1 > self.dims.max_positions {
                return Ok(seqs);
            }
            if kept.len() < rows.len() {
                cache = cache.keep_rows(&kept);
                rows = kept.iter().map(|&i| rows[i]).collect();
                offsets = kept.iter().map(|&i| offsets[i]).collect();
                lengths = kept.iter().map(|&i| lengths[i]).collect();
            }
            let batch = PromptBatch::step(&offsets, &lengths, columns, &fed, &device);
            logits = self.last_logits(&batch, &mut cache)?;
            columns += 1;
            lengths.iter_mut().for_each(|n| *n += 1);
        }
    }

    /// Every sequence run through the model, in groups of like length, its columns cached.
    fn prefill(&self, seqs: &[Vec<u32>], rows: usize) -> Result<Prefilled<B>> {
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut parts = Vec::new();
        let mut widths = Vec::new();
        let mut offsets = Vec::new();
        let mut lengths = Vec::new();
        let mut logits = Vec::new();
        for group in order.chunks(rows.max(1)) {
            let group: Vec<Vec<u32>> = group.iter().map(|&i| seqs[i].clone()).collect();
            let batch = self.batch(&group, Padding::Left)?;
            let mut cache = KvCache::default();
            logits.extend(self.last_logits(&batch, &mut cache)?);
            parts.push(cache);
            widths.push((batch.width(), batch.rows()));
            offsets.extend(batch.offsets);
            lengths.extend(batch.lengths);
        }
        let columns = widths.iter().map(|&(w, _)| w).max().unwrap_or(0);
        let shifts = widths.iter().flat_map(|&(w, rows)| std::iter::repeat_n(columns - w, rows));
        let offsets = offsets.iter().zip(shifts).map(|(o, shift)| o + shift).collect();
        let cache = KvCache::cat_rows(parts);
        Ok(Prefilled { cache, rows: order, offsets, lengths, columns, logits })
    }

    /// The next-token logits of each row of `batch` (at its last column), host-side, `[rows *
    /// vocab]`, its columns added to `cache`.
    fn last_logits(&self, batch: &PromptBatch<B>, cache: &mut KvCache<B>) -> Result<Vec<f32>> {
        let t = batch.width();
        let last: Vec<usize> = (0..batch.rows()).map(|row| row * t + t - 1).collect();
        self.forward_cached(
            batch,
            &Hooks { logits_at: Some(last), ..Hooks::default() },
            Some(cache),
        )
        .logits
        .expect("full pass")
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("reading logits back: {e:?}")))
    }

    /// Logits `[t, vocab]` of every position of one sequence.
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor<B, 2>> {
        let batch = self.batch(&[ids.to_vec()], Padding::Right)?;
        let logits =
            self.forward(&batch, &Hooks::default()).logits.expect("no early stop requested");
        Ok(logits.squeeze_dim::<2>(0))
    }

    /// Greedy continuation of `prompt` by up to `max_new_tokens` tokens (stops at end-of-sequence).
    pub fn generate(&self, prompt: &str, max_new_tokens: usize) -> Result<String> {
        let tokenizer = self.tokenizer()?;
        let ids = tokenizer.encode(prompt)?;
        let start = ids.len();
        let argmax = |logits: &[f32]| {
            (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best })
                as u32
        };
        let out = self.extend(vec![ids], start + max_new_tokens, 1, |_, logits| {
            let id = argmax(logits);
            if Some(id) == tokenizer.eos {
                Next::Stop
            } else {
                Next::Token(id)
            }
        })?;
        tokenizer.decode(&out[0][start..])
    }

    /// Matrix-multiply FLOPs per token of a forward pass over `t` tokens (a multiply-add counts 2):
    /// every block's and the head's weights once, plus the attention scores and mixing.
    pub fn matmul_flops_per_token(&self, t: usize) -> f64 {
        self.dims.num_layers as f64 * self.block_flops(1, t) + self.head_flops(1)
    }

    /// Matrix-multiply FLOPs of one block on `tokens` tokens that each attend to `context` columns
    /// (masked ones included, as they are computed): `2 ·` the block's weights `+ 2 · 2 · context ·
    /// d_model` per token. The block's weights are all parameters but the embedding table and the
    /// head, shared by the layers (norms, biases, GPT-2's position table: < 1 %).
    pub fn block_flops(&self, tokens: usize, context: usize) -> f64 {
        tokens as f64 * (2.0 * self.block_weights + 4.0 * (context * self.dims.hidden_size) as f64)
    }

    /// Matrix-multiply FLOPs of a pass of `tokens` tokens attending to `context` columns through
    /// `blocks` blocks, with logits at `positions` positions (what [`crate::flops`] counts).
    pub fn pass_flops(
        &self,
        tokens: usize,
        context: usize,
        blocks: usize,
        positions: usize,
    ) -> f64 {
        blocks as f64 * self.block_flops(tokens, context) + self.head_flops(positions)
    }

    /// Matrix-multiply FLOPs of the head at `positions` positions: `2 · d_model · vocab` each.
    pub fn head_flops(&self, positions: usize) -> f64 {
        2.0 * (positions * self.dims.hidden_size * self.dims.vocab_size) as f64
    }

    /// The edited projection of `layer` (LLaMA `mlp.down_proj`, GPT-J `mlp.fc_out`, GPT-2
    /// `mlp.c_proj`).
    pub fn mlp_out(&self, layer: usize) -> &Linear<B> {
        match &self.arch {
            Architecture::Llama(m) => &m.layers[layer].mlp.down_proj,
            Architecture::GptJ(m) => &m.layers[layer].mlp.fc_out,
            Architecture::Gpt2(m) => &m.layers[layer].mlp.c_proj,
        }
    }

    pub fn mlp_out_mut(&mut self, layer: usize) -> &mut Linear<B> {
        match &mut self.arch {
            Architecture::Llama(m) => &mut m.layers[layer].mlp.down_proj,
            Architecture::GptJ(m) => &mut m.layers[layer].mlp.fc_out,
            Architecture::Gpt2(m) => &mut m.layers[layer].mlp.c_proj,
        }
    }
}

impl LlamaConfig {
    fn dims(&self) -> ModelDims {
        let (d, ff, v) =
            (self.hidden_size as u64, self.intermediate_size as u64, self.vocab_size as u64);
        let (q, kv) =
            ((self.num_heads * self.head_dim) as u64, (self.num_kv_heads * self.head_dim) as u64);
        let attention = d * q
            + 2 * d * kv
            + q * d
            + if self.attention_bias { q + 2 * kv } else { 0 }
            + if self.output_bias { d } else { 0 };
        let mlp = 3 * d * ff + if self.mlp_bias { 2 * ff + d } else { 0 };
        let layer = attention + mlp + 2 * d;
        // The embeddings, and the head unless it is tied to them (then it is the same tensor).
        let tables = if self.tie_word_embeddings { 1 } else { 2 };
        let parameters = tables * v * d + self.num_layers as u64 * layer + d;
        // Within a sliding window attention is exact; longer sequences are refused.
        let max_positions = self
            .sliding_window
            .map_or(self.max_position_embeddings, |w| w.min(self.max_position_embeddings));
        ModelDims {
            num_layers: self.num_layers,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            max_positions,
            parameters,
        }
    }
}

impl GptJConfig {
    fn dims(&self) -> ModelDims {
        let (d, ff, v) =
            (self.hidden_size as u64, self.intermediate_size as u64, self.vocab_size as u64);
        // q, k, v, out (no biases); fc_in, fc_out with biases; ln_1 weight and bias.
        let layer = 4 * d * d + 2 * d * ff + ff + d + 2 * d;
        let parameters = v * d + (v * d + v) + self.num_layers as u64 * layer + 2 * d;
        ModelDims {
            num_layers: self.num_layers,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            max_positions: self.max_position_embeddings,
            parameters,
        }
    }
}

impl Gpt2Config {
    fn dims(&self) -> ModelDims {
        let (d, ff, v, p) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
            self.max_position_embeddings as u64,
        );
        // ln_1, ln_2 (weight and bias); c_attn, attn.c_proj, c_fc, mlp.c_proj with biases.
        let layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d);
        // Token and position embeddings, the head unless tied (then it is the token embeddings), ln_f.
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        let parameters = v * d + p * d + head + self.num_layers as u64 * layer + 2 * d;
        ModelDims {
            num_layers: self.num_layers,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            max_positions: self.max_position_embeddings,
            parameters,
        }
    }
}

/// Weights of one block ([`LanguageModel::block_flops`]): all parameters but the embedding table and
/// the head (burn counts a tied head as a second table), shared by the layers.
fn block_weights<B: Backend>(arch: &Architecture<B>, d: &ModelDims) -> f64 {
    let params = match arch {
        Architecture::Llama(m) => m.num_params(),
        Architecture::GptJ(m) => m.num_params(),
        Architecture::Gpt2(m) => m.num_params(),
    };
    (params - 2 * d.vocab_size * d.hidden_size) as f64 / d.num_layers as f64
}

/// Parses `text` (the contents of `path`); serde's message names the field, line and column.
fn from_json<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|cause| ModelError::Json { path: path.to_path_buf(), cause })
}

impl<B: AutodiffBackend> LanguageModel<B> {
    /// The same model on the autodiff backend, sharing the weights, with no gradient tracked for
    /// them (gradients flow only to tensors marked with `require_grad`, e.g. a vector added to a hidden state).
    pub fn from_inner(inner: &LanguageModel<B::InnerBackend>) -> Self {
        let arch = match &inner.arch {
            Architecture::Llama(m) => Architecture::Llama(Llama::from_inner(m.clone()).no_grad()),
            Architecture::GptJ(m) => Architecture::GptJ(GptJ::from_inner(m.clone()).no_grad()),
            Architecture::Gpt2(m) => Architecture::Gpt2(Gpt2::from_inner(m.clone()).no_grad()),
        };
        Self {
            arch,
            dims: inner.dims,
            family: inner.family,
            dtype: inner.dtype,
            path: inner.path.clone(),
            tokenizer: inner.tokenizer.clone(),
            block_weights: inner.block_weights,
        }
    }
}
