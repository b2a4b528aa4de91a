//! GPT-J: attention and MLP in parallel from one LayerNorm, partial interleaved ("rotate every
//! two") rotary embeddings, biased MLP and `lm_head`, unbiased attention projections, `gelu_new`.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{activation, backend::Backend, Tensor};
use serde::Deserialize;

use crate::batch::PromptBatch;
use crate::decoder::{self, Block, BlockOutput, KeyValues, KvCache, Pass, Start};
use crate::error::{ModelError, Result};
use crate::hooks::{LayerPatches, Site, Trace};
use crate::layers::{
    attention, merge_heads, split_heads, LayerNorm, Linear, OutputHead, RopeScaling, Rotary,
    RotaryPairing,
};
use crate::weights::{fetch, TensorSource};

/// The fields of a Hugging Face `config.json` (`model_type: gptj`) that matter here.
#[derive(Debug, Deserialize)]
pub struct GptJHfConfig {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub rotary_dim: Option<usize>,
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_positions() -> usize {
    2048
}
pub(crate) fn default_eps() -> f64 {
    1e-5
}
pub(crate) fn default_activation() -> String {
    "gelu_new".into()
}

/// Runtime configuration of a GPT-J model.
#[derive(Debug, Clone, PartialEq)]
pub struct GptJConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub rotary_dim: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
}

impl GptJHfConfig {
    pub fn into_config(self, path: &Path) -> Result<GptJConfig> {
        if self.activation_function != "gelu_new" {
            return Err(ModelError::config(
                path,
                "activation_function",
                format!("`{}` is not supported (only gelu_new)", self.activation_function),
            ));
        }
        if self.tie_word_embeddings {
            return Err(ModelError::config(
                path,
                "tie_word_embeddings",
                "GPT-J has a separate, biased lm_head; tied embeddings are not supported",
            ));
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::config(
                path,
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        let head_dim = self.n_embd / self.n_head;
        let rotary_dim = self.rotary_dim.unwrap_or(head_dim);
        if rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
            return Err(ModelError::config(
                path,
                "rotary_dim",
                format!("{rotary_dim} must be even and at most the head size {head_dim}"),
            ));
        }
        Ok(GptJConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.n_embd,
            intermediate_size: self.n_inner.unwrap_or(4 * self.n_embd),
            num_layers: self.n_layer,
            num_heads: self.n_head,
            rotary_dim,
            max_position_embeddings: self.n_positions,
            layer_norm_eps: self.layer_norm_epsilon,
        })
    }
}

#[derive(Module, Debug)]
pub struct GptJAttention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    num_heads: usize,
}

#[derive(Module, Debug)]
pub struct GptJMlp<B: Backend> {
    fc_in: Linear<B>,
    /// The edited projection: `W ∈ R^{d_model × d_mlp}` (with a bias).
    pub fc_out: Linear<B>,
}

#[derive(Module, Debug)]
pub struct GptJBlock<B: Backend> {
    ln_1: LayerNorm<B>,
    attn: GptJAttention<B>,
    pub mlp: GptJMlp<B>,
}

#[derive(Module, Debug)]
pub struct GptJ<B: Backend> {
    wte: Param<Tensor<B, 2>>,
    pub layers: Vec<GptJBlock<B>>,
    ln_f: LayerNorm<B>,
    lm_head: OutputHead<B>,
    rotary: Rotary<B>,
}

impl<B: Backend> Block<B> for GptJBlock<B> {
    type Shared = Rotary<B>;
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rotary: &Rotary<B>,
        batch: &PromptBatch<B>,
        past: Option<KeyValues<B>>,
        patches: LayerPatches<'_, B>,
    ) -> BlockOutput<B> {
        let n = self.ln_1.forward(x.clone());
        let a = &self.attn;
        let q =
            rotary.apply(split_heads(a.q_proj.forward(n.clone()), a.num_heads), &batch.positions);
        let k =
            rotary.apply(split_heads(a.k_proj.forward(n.clone()), a.num_heads), &batch.positions);
        let (k, v) =
            decoder::extend_kv(past, k, split_heads(a.v_proj.forward(n.clone()), a.num_heads));
        let attended = patches.apply(
            Site::Attention,
            a.out_proj.forward(merge_heads(attention(q, k.clone(), v.clone(), &batch.mask))),
        );
        let key = activation::gelu_approximate(self.mlp.fc_in.forward(n));
        let value = patches.apply(Site::Mlp, self.mlp.fc_out.forward(key.clone()));
        BlockOutput {
            hidden: x + attended.clone() + value.clone(),
            key,
            value,
            attention: attended,
            kv: (k, v),
        }
    }
}

impl<B: Backend> GptJ<B> {
    /// Loads the weights named as in Hugging Face's `GPTJForCausalLM`.
    pub fn load(
        config: &GptJConfig,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        let c = config;
        let (d, m) = (c.hidden_size, c.intermediate_size);
        let layers = (0..c.num_layers)
            .map(|i| {
                let p = format!("transformer.h.{i}");
                let linear = |name: &str, shape, bias| {
                    Linear::load(source, &format!("{p}.{name}"), shape, bias, device)
                };
                Ok(GptJBlock {
                    ln_1: LayerNorm::load(
                        source,
                        &format!("{p}.ln_1"),
                        d,
                        c.layer_norm_eps,
                        device,
                    )?,
                    attn: GptJAttention {
                        q_proj: linear("attn.q_proj", [d, d], false)?,
                        k_proj: linear("attn.k_proj", [d, d], false)?,
                        v_proj: linear("attn.v_proj", [d, d], false)?,
                        out_proj: linear("attn.out_proj", [d, d], false)?,
                        num_heads: c.num_heads,
                    },
                    mlp: GptJMlp {
                        fc_in: linear("mlp.fc_in", [m, d], true)?,
                        fc_out: linear("mlp.fc_out", [d, m], true)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            wte: Param::from_tensor(
                source
                    .weight_dtype()
                    .place(fetch(source, "transformer.wte.weight", &[c.vocab_size, d])?, device),
            ),
            layers,
            ln_f: LayerNorm::load(source, "transformer.ln_f", d, c.layer_norm_eps, device)?,
            lm_head: OutputHead::load(source, "lm_head", [c.vocab_size, d], true, device)?,
            rotary: Rotary::new(
                c.rotary_dim,
                10_000.0,
                &RopeScaling::None,
                c.max_position_embeddings,
                RotaryPairing::Interleaved,
                device,
            ),
        })
    }

    pub(crate) fn forward(
        &self,
        pass: &Pass<'_, B>,
        start: Start<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Trace<B> {
        let mut trace = Trace { logits: None, layers: Default::default() };
        let input = start.input(self.wte.val(), &pass.batch.ids, pass.patches);
        if let Some(x) =
            decoder::run_blocks(&self.layers, input, &self.rotary, pass, &mut trace, cache)
        {
            trace.logits = Some(
                self.lm_head.forward(decoder::scored_positions(self.ln_f.forward(x), pass.hooks)),
            );
        }
        trace
    }

    /// The `[vocab, d_model]` token embedding matrix.
    pub fn embedding_table(&self) -> Tensor<B, 2> {
        self.wte.val()
    }

    pub fn max_positions(&self) -> usize {
        self.rotary.max_positions()
    }
}
