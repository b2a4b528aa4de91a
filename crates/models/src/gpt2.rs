//! GPT-2 (GPT2-XL is the paper's third model): learned position embeddings, pre-LayerNorm blocks
//! with biases everywhere, fused `c_attn` query/key/value projection, `gelu_new` MLP, output head
//! tied to the token embeddings. Hugging Face stores its projections as `Conv1D`, i.e. the weight
//! as `[d_in, d_out]` (the transpose of `nn.Linear`); the edited projection is `mlp.c_proj`.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{activation, backend::Backend, Tensor};
use serde::Deserialize;

use crate::batch::PromptBatch;
use crate::decoder::{self, Block, BlockOutput, KeyValues, KvCache, Pass, Start};
use crate::error::{ModelError, Result};
use crate::hooks::{LayerPatches, Site, Trace};
use crate::layers::{attention, merge_heads, split_heads, LayerNorm, Linear, OutputHead};
use crate::weights::{fetch, TensorSource};

/// The fields of a Hugging Face `config.json` (`model_type: gpt2`) that matter here; fields that
/// would change the math and are not implemented are refused by name.
#[derive(Debug, Deserialize)]
pub struct Gpt2HfConfig {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    #[serde(default = "crate::gptj::default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "crate::gptj::default_activation")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    pub reorder_and_upcast_attn: bool,
}

fn default_positions() -> usize {
    1024
}
fn yes() -> bool {
    true
}

/// Runtime configuration of a GPT-2 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    /// `gelu_new` (tanh approximation) or the exact `gelu`.
    pub exact_gelu: bool,
    pub tie_word_embeddings: bool,
}

impl Gpt2HfConfig {
    pub fn into_config(self, path: &Path) -> Result<Gpt2Config> {
        let exact_gelu = match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" => false,
            "gelu" => true,
            other => {
                return Err(ModelError::config(
                    path,
                    "activation_function",
                    format!("`{other}` is not supported (gelu_new, gelu)"),
                ))
            }
        };
        if !self.scale_attn_weights {
            return Err(ModelError::config(
                path,
                "scale_attn_weights",
                "false is not supported (attention scores are scaled by 1/√head_dim)",
            ));
        }
        if self.scale_attn_by_inverse_layer_idx {
            return Err(ModelError::config(
                path,
                "scale_attn_by_inverse_layer_idx",
                "true is not supported",
            ));
        }
        if self.reorder_and_upcast_attn {
            return Err(ModelError::config(
                path,
                "reorder_and_upcast_attn",
                "true is not supported",
            ));
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::config(
                path,
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        Ok(Gpt2Config {
            vocab_size: self.vocab_size,
            hidden_size: self.n_embd,
            intermediate_size: self.n_inner.unwrap_or(4 * self.n_embd),
            num_layers: self.n_layer,
            num_heads: self.n_head,
            max_position_embeddings: self.n_positions,
            layer_norm_eps: self.layer_norm_epsilon,
            exact_gelu,
            tie_word_embeddings: self.tie_word_embeddings,
        })
    }
}

#[derive(Module, Debug)]
pub struct Gpt2Attention<B: Backend> {
    /// Query, key and value in one projection: `[.., d] → [.., 3d]`.
    c_attn: Linear<B>,
    c_proj: Linear<B>,
    num_heads: usize,
}

#[derive(Module, Debug)]
pub struct Gpt2Mlp<B: Backend> {
    c_fc: Linear<B>,
    /// The edited projection: `W ∈ R^{d_model × d_mlp}` (with a bias).
    pub c_proj: Linear<B>,
    exact_gelu: bool,
}

#[derive(Module, Debug)]
pub struct Gpt2Block<B: Backend> {
    ln_1: LayerNorm<B>,
    attn: Gpt2Attention<B>,
    ln_2: LayerNorm<B>,
    pub mlp: Gpt2Mlp<B>,
}

#[derive(Module, Debug)]
pub struct Gpt2<B: Backend> {
    wte: Param<Tensor<B, 2>>,
    wpe: Param<Tensor<B, 2>>,
    pub layers: Vec<Gpt2Block<B>>,
    ln_f: LayerNorm<B>,
    lm_head: OutputHead<B>,
    /// `transformer.` for checkpoints saved from `GPT2LMHeadModel`, empty for the original OpenAI
    /// uploads (whose names start at `h.0.`).
    #[module(skip)]
    pub prefix: String,
}

impl<B: Backend> Gpt2Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        batch: &PromptBatch<B>,
        past: Option<KeyValues<B>>,
    ) -> (Tensor<B, 3>, KeyValues<B>) {
        let [b, t, _] = x.dims();
        let qkv = self.c_attn.forward(x);
        let d = qkv.dims()[2] / 3;
        let part = |i: usize| {
            split_heads(qkv.clone().slice([0..b, 0..t, i * d..(i + 1) * d]), self.num_heads)
        };
        let (k, v) = decoder::extend_kv(past, part(1), part(2));
        (
            self.c_proj.forward(merge_heads(attention(part(0), k.clone(), v.clone(), &batch.mask))),
            (k, v),
        )
    }
}

impl<B: Backend> Block<B> for Gpt2Block<B> {
    type Shared = ();
    fn forward(
        &self,
        x: Tensor<B, 3>,
        _: &(),
        batch: &PromptBatch<B>,
        past: Option<KeyValues<B>>,
        patches: LayerPatches<'_, B>,
    ) -> BlockOutput<B> {
        let (attended, kv) = self.attn.forward(self.ln_1.forward(x.clone()), batch, past);
        let attention = patches.apply(Site::Attention, attended);
        let h = x + attention.clone();
        let up = self.mlp.c_fc.forward(self.ln_2.forward(h.clone()));
        let key = if self.mlp.exact_gelu {
            activation::gelu(up)
        } else {
            activation::gelu_approximate(up)
        };
        let value = patches.apply(Site::Mlp, self.mlp.c_proj.forward(key.clone()));
        BlockOutput { hidden: h + value.clone(), key, value, attention, kv }
    }
}

impl<B: Backend> Gpt2<B> {
    /// Loads the weights named as in Hugging Face's `GPT2LMHeadModel` (with or without the
    /// `transformer.` prefix).
    pub fn load(
        config: &Gpt2Config,
        source: &dyn TensorSource,
        device: &B::Device,
    ) -> Result<Self> {
        let c = config;
        let (d, m) = (c.hidden_size, c.intermediate_size);
        let prefix =
            if source.get("transformer.wte.weight")?.is_some() { "transformer." } else { "" };
        let layers = (0..c.num_layers)
            .map(|i| {
                let p = format!("{prefix}h.{i}");
                let conv = |name: &str, shape| {
                    Linear::load_conv1d(source, &format!("{p}.{name}"), shape, device)
                };
                let norm = |name: &str| {
                    LayerNorm::load(source, &format!("{p}.{name}"), d, c.layer_norm_eps, device)
                };
                Ok(Gpt2Block {
                    ln_1: norm("ln_1")?,
                    attn: Gpt2Attention {
                        c_attn: conv("attn.c_attn", [d, 3 * d])?,
                        c_proj: conv("attn.c_proj", [d, d])?,
                        num_heads: c.num_heads,
                    },
                    ln_2: norm("ln_2")?,
                    mlp: Gpt2Mlp {
                        c_fc: conv("mlp.c_fc", [d, m])?,
                        c_proj: conv("mlp.c_proj", [m, d])?,
                        exact_gelu: c.exact_gelu,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = fetch(source, &format!("{prefix}wte.weight"), &[c.vocab_size, d])?;
        let wte = Param::from_tensor(source.weight_dtype().place(wte, device));
        let lm_head = OutputHead::load_or_tie(
            source,
            c.tie_word_embeddings,
            &wte,
            [c.vocab_size, d],
            device,
        )?;
        Ok(Self {
            lm_head,
            wte,
            wpe: Param::from_tensor(
                fetch(source, &format!("{prefix}wpe.weight"), &[c.max_position_embeddings, d])?
                    .into_tensor(device),
            ),
            layers,
            ln_f: LayerNorm::load(source, &format!("{prefix}ln_f"), d, c.layer_norm_eps, device)?,
            prefix: prefix.to_string(),
        })
    }

    pub(crate) fn forward(
        &self,
        pass: &Pass<'_, B>,
        start: Start<B>,
        cache: Option<&mut KvCache<B>>,
    ) -> Trace<B> {
        let mut trace = Trace { logits: None, layers: Default::default() };
        let batch = pass.batch;
        let (first, mut x) = start.input(self.wte.val(), &batch.ids, pass.patches);
        if first == 0 {
            let [b, t, d] = x.dims();
            x = x + self
                .wpe
                .val()
                .select(0, batch.positions.clone().reshape([b * t]))
                .reshape([b, t, d]);
        }
        if let Some(x) = decoder::run_blocks(&self.layers, (first, x), &(), pass, &mut trace, cache)
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
        self.wpe.dims()[0]
    }
}
