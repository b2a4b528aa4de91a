//! LLaMA / LLaMA-2 / LLaMA-3 (and SmolLM2), Mistral and Qwen2: RMSNorm, SwiGLU MLP, rotate-half
//! rotary embeddings (LLaMA-3's frequency scaling included), grouped-query attention, optionally
//! tied input/output embeddings; Qwen2 adds biases to the query, key and value projections, Mistral
//! a sliding attention window (exact for sequences within it, refused beyond).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};
use serde::Deserialize;

use crate::batch::PromptBatch;
use crate::decoder::{self, Block, BlockOutput, KeyValues, KvCache, Pass, Start};
use crate::dtype::as_f32;
use crate::error::{ModelError, Result};
use crate::hooks::{LayerPatches, Site, Trace};
use crate::layers::{
    attention, merge_heads, silu, split_heads, Linear, OutputHead, RmsNorm, RopeScaling, Rotary,
    RotaryPairing,
};
use crate::weights::{fetch, HostTensor, TensorSource};

/// The fields of a Hugging Face `config.json` (`model_type: llama`, `mistral` or `qwen2`) that
/// matter here, in both the transformers 4.x (`rope_theta`, `rope_scaling`, `torch_dtype`) and 5.x
/// (`rope_parameters`, `dtype`) spellings.
#[derive(Debug, Deserialize)]
pub struct LlamaHfConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<serde_json::Value>,
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral (and Qwen2 with `use_sliding_window`): each token attends to at most this many.
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}

/// Which member of the LLaMA family a `config.json` describes (its `model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaFamily {
    Llama,
    Mistral,
    Qwen2,
}

/// Runtime configuration of a LLaMA-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the query, key and value projections (LLaMA `attention_bias`, always for Qwen2).
    pub attention_bias: bool,
    /// A bias on the attention's output projection (LLaMA `attention_bias`; never for Qwen2).
    pub output_bias: bool,
    pub mlp_bias: bool,
    /// The sliding attention window, where the model has one: sequences must fit in it.
    pub sliding_window: Option<usize>,
}

/// A number of a rope-scaling object, or an error naming `field.key`.
fn rope_number(params: &serde_json::Value, field: &str, key: &str, path: &Path) -> Result<f64> {
    params
        .get(key)
        .and_then(|v| v.as_f64())
        .ok_or_else(|| ModelError::config(path, &format!("{field}.{key}"), "a number is required"))
}

/// The frequency scaling described by `params` (the object under `field`).
fn rope_scaling(
    params: Option<&serde_json::Value>,
    field: &str,
    path: &Path,
) -> Result<RopeScaling> {
    let Some(params) = params.filter(|v| !v.is_null()) else { return Ok(RopeScaling::None) };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let number = |key: &str| rope_number(params, field, key, path);
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: number("factor")? }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: number("factor")?,
            low_freq_factor: number("low_freq_factor")?,
            high_freq_factor: number("high_freq_factor")?,
            original_max_positions: number("original_max_position_embeddings")?,
        }),
        other => Err(ModelError::config(
            path,
            &format!("{field}.rope_type"),
            format!("`{other}` is not supported (default, linear, llama3)"),
        )),
    }
}

impl LlamaHfConfig {
    pub fn into_config(self, path: &Path, family: LlamaFamily) -> Result<LlamaConfig> {
        let scaling = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(s), _) if !s.is_null() => rope_scaling(Some(s), "rope_scaling", path)?,
            (_, p) => rope_scaling(p.as_ref(), "rope_parameters", path)?,
        };
        let rope_theta = self
            .rope_theta
            .or(self
                .rope_parameters
                .as_ref()
                .and_then(|r| r.get("rope_theta"))
                .and_then(|v| v.as_f64()))
            .unwrap_or(10_000.0);
        let num_kv_heads = self.num_key_value_heads.unwrap_or(self.num_attention_heads);
        if self.num_attention_heads == 0
            || num_kv_heads == 0
            || !self.num_attention_heads.is_multiple_of(num_kv_heads)
        {
            return Err(ModelError::config(
                path,
                "num_key_value_heads",
                format!(
                    "{num_kv_heads} does not divide num_attention_heads {}",
                    self.num_attention_heads
                ),
            ));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads);
        if !head_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                path,
                "head_dim",
                format!("{head_dim} must be even for rotary embeddings"),
            ));
        }
        let (attention_bias, output_bias) = match family {
            LlamaFamily::Qwen2 => (true, false),
            _ => (self.attention_bias, self.attention_bias),
        };
        let sliding_window = match family {
            LlamaFamily::Mistral => self.sliding_window,
            LlamaFamily::Qwen2 if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        };
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling: scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias,
            output_bias,
            mlp_bias: self.mlp_bias,
            sliding_window,
        })
    }
}

#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    o_proj: Linear<B>,
    num_heads: usize,
    num_kv_heads: usize,
}

#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    gate_proj: Linear<B>,
    up_proj: Linear<B>,
    /// The edited projection: `W ∈ R^{d_model × d_mlp}`.
    pub down_proj: Linear<B>,
}

#[derive(Module, Debug)]
pub struct LlamaBlock<B: Backend> {
    input_layernorm: RmsNorm<B>,
    self_attn: LlamaAttention<B>,
    post_attention_layernorm: RmsNorm<B>,
    pub mlp: LlamaMlp<B>,
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<LlamaBlock<B>>,
    norm: RmsNorm<B>,
    lm_head: OutputHead<B>,
    rotary: Rotary<B>,
    #[module(skip)]
    config: LlamaConfig,
}

impl<B: Backend> LlamaAttention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: &Rotary<B>,
        batch: &PromptBatch<B>,
        past: Option<KeyValues<B>>,
    ) -> (Tensor<B, 3>, KeyValues<B>) {
        let q = rotary
            .apply(split_heads(self.q_proj.forward(x.clone()), self.num_heads), &batch.positions);
        let k = rotary.apply(
            split_heads(self.k_proj.forward(x.clone()), self.num_kv_heads),
            &batch.positions,
        );
        let (k, v) =
            decoder::extend_kv(past, k, split_heads(self.v_proj.forward(x), self.num_kv_heads));
        (self.o_proj.forward(merge_heads(attention(q, k.clone(), v.clone(), &batch.mask))), (k, v))
    }
}

impl<B: Backend> Block<B> for LlamaBlock<B> {
    type Shared = Rotary<B>;
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: &Rotary<B>,
        batch: &PromptBatch<B>,
        past: Option<KeyValues<B>>,
        patches: LayerPatches<'_, B>,
    ) -> BlockOutput<B> {
        let (attended, kv) =
            self.self_attn.forward(self.input_layernorm.forward(x.clone()), rotary, batch, past);
        let attention = patches.apply(Site::Attention, attended);
        let h = x + attention.clone();
        let n = self.post_attention_layernorm.forward(h.clone());
        let key = silu(self.mlp.gate_proj.forward(n.clone())) * self.mlp.up_proj.forward(n);
        let value = patches.apply(Site::Mlp, self.mlp.down_proj.forward(key.clone()));
        BlockOutput { hidden: h + value.clone(), key, value, attention, kv }
    }
}

impl<B: Backend> Llama<B> {
    /// Loads the weights named as in Hugging Face's `LlamaForCausalLM`.
    pub fn load(
        config: &LlamaConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        let c = config;
        let (d, q_dim, kv_dim) =
            (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let layers = (0..c.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let linear = |name: &str, shape, bias| {
                    Linear::load(source, &format!("{p}.{name}"), shape, bias, device)
                };
                Ok(LlamaBlock {
                    input_layernorm: RmsNorm::load(
                        source,
                        &format!("{p}.input_layernorm.weight"),
                        d,
                        c.rms_norm_eps,
                        device,
                    )?,
                    self_attn: LlamaAttention {
                        q_proj: linear("self_attn.q_proj", [q_dim, d], c.attention_bias)?,
                        k_proj: linear("self_attn.k_proj", [kv_dim, d], c.attention_bias)?,
                        v_proj: linear("self_attn.v_proj", [kv_dim, d], c.attention_bias)?,
                        o_proj: linear("self_attn.o_proj", [d, q_dim], c.output_bias)?,
                        num_heads: c.num_heads,
                        num_kv_heads: c.num_kv_heads,
                    },
                    post_attention_layernorm: RmsNorm::load(
                        source,
                        &format!("{p}.post_attention_layernorm.weight"),
                        d,
                        c.rms_norm_eps,
                        device,
                    )?,
                    mlp: LlamaMlp {
                        gate_proj: linear("mlp.gate_proj", [c.intermediate_size, d], c.mlp_bias)?,
                        up_proj: linear("mlp.up_proj", [c.intermediate_size, d], c.mlp_bias)?,
                        down_proj: linear("mlp.down_proj", [d, c.intermediate_size], c.mlp_bias)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = fetch(source, "model.embed_tokens.weight", &[c.vocab_size, d])?;
        let embed_tokens = Param::from_tensor(source.weight_dtype().place(embed, device));
        let lm_head = OutputHead::load_or_tie(
            source,
            c.tie_word_embeddings,
            &embed_tokens,
            [c.vocab_size, d],
            device,
        )?;
        Ok(Self {
            lm_head,
            embed_tokens,
            layers,
            norm: RmsNorm::load(source, "model.norm.weight", d, c.rms_norm_eps, device)?,
            rotary: Rotary::new(
                c.head_dim,
                c.rope_theta,
                &c.rope_scaling,
                c.max_position_embeddings,
                RotaryPairing::Half,
                device,
            ),
            config: c.clone(),
        })
    }

    pub(crate) fn forward(
        &self,
        pass: &Pass<'_, B>,
        start: Start<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Trace<B> {
        let mut trace = Trace { logits: None, layers: Default::default() };
        let input = start.input(self.embed_tokens.val(), &pass.batch.ids, pass.patches);
        if let Some(x) =
            decoder::run_blocks(&self.layers, input, &self.rotary, pass, &mut trace, cache)
        {
            trace.logits = Some(
                self.lm_head.forward(decoder::scored_positions(self.norm.forward(x), pass.hooks)),
            );
        }
        trace
    }

    /// The `[vocab, d_model]` token embedding matrix.
    pub fn embedding_table(&self) -> Tensor<B, 2> {
        self.embed_tokens.val()
    }

    pub fn max_positions(&self) -> usize {
        self.rotary.max_positions()
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Every weight under its Hugging Face name and layout (`[d_out, d_in]` for projections).
    pub fn export(&self) -> Result<Vec<(String, HostTensor)>> {
        let mut out =
            vec![("model.embed_tokens.weight".to_string(), host(as_f32(self.embed_tokens.val()))?)];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                host(l.input_layernorm.weight.val())?,
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                host(l.post_attention_layernorm.weight.val())?,
            ));
            let a = &l.self_attn;
            for (name, linear) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &l.mlp.gate_proj),
                ("mlp.up_proj", &l.mlp.up_proj),
                ("mlp.down_proj", &l.mlp.down_proj),
            ] {
                out.push((format!("{p}.{name}.weight"), host(linear.matrix())?));
                if let Some(b) = &linear.bias {
                    out.push((format!("{p}.{name}.bias"), host(b.val())?));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), host(self.norm.weight.val())?));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), host(self.lm_head.matrix())?));
        }
        Ok(out)
    }

    /// A transformers `config.json` (4.x spelling) for this model.
    pub fn hf_config(&self, dims: &crate::model::ModelDims) -> serde_json::Value {
        let c = &self.config;
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
            "vocab_size": dims.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
            "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings,
            "attention_bias": c.attention_bias, "mlp_bias": c.mlp_bias, "hidden_act": "silu",
            "rope_scaling": match c.rope_scaling {
                RopeScaling::None => serde_json::Value::Null,
                RopeScaling::Linear { factor } => serde_json::json!({"rope_type": "linear", "factor": factor}),
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_positions } => serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_positions,
                }),
            },
        })
    }
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| ModelError::Input(format!("reading a tensor back: {e:?}")))?;
    Ok(HostTensor { shape, data })
}
