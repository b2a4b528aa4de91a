//! Building blocks shared by the architectures: linear maps, norms, rotary embeddings, attention.

use burn::module::{Module, Param};
use burn::tensor::{activation, backend::Backend, Int, Tensor};

use crate::dtype::{as_f32, WeightDType};
use crate::error::{ModelError, Result};
use crate::weights::{fetch, fetch_optional, HostTensor, TensorSource};

/// `y = x W (+ b)`. The weight is kept as `[d_in, d_out]` (the transpose of the Hugging Face
/// `[d_out, d_in]` layout) so that the forward pass is one contiguous GEMM.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `{prefix}.weight` (`[d_out, d_in]`) and, if `bias`, `{prefix}.bias`.
    pub fn load(
        source: &dyn TensorSource,
        prefix: &str,
        [d_out, d_in]: [usize; 2],
        bias: bool,
        device: &B::Device,
    ) -> Result<Self> {
        let (weight, bias) = fetch_weight_and_bias(source, prefix, [d_out, d_in], bias)?;
        Ok(Self::from_host(&weight, bias, source.weight_dtype(), device))
    }

    /// Loads a Hugging Face `Conv1D` (GPT-2): `{prefix}.weight` stored as `[d_in, d_out]`, and
    /// `{prefix}.bias`.
    pub fn load_conv1d(
        source: &dyn TensorSource,
        prefix: &str,
        [d_in, d_out]: [usize; 2],
        device: &B::Device,
    ) -> Result<Self> {
        let weight = fetch(source, &format!("{prefix}.weight"), &[d_in, d_out])?;
        let bias = fetch(source, &format!("{prefix}.bias"), &[d_out])?;
        Ok(Self {
            weight: Param::from_tensor(source.weight_dtype().place(weight, device)),
            bias: Some(Param::from_tensor(bias.into_tensor(device))),
        })
    }

    /// From a Hugging Face `[d_out, d_in]` weight, kept in `dtype`.
    pub fn from_host(
        weight: &HostTensor,
        bias: Option<HostTensor>,
        dtype: WeightDType,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: Param::from_tensor(dtype.place(weight.transposed(), device)),
            bias: bias.map(|b| Param::from_tensor(b.into_tensor(device))),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        on_rows(x, |x| x.matmul(as_f32(self.weight.val())), self.bias.as_ref())
    }

    /// The weight in the paper's orientation, `W ∈ R^{d_out × d_in}` (`v = W k`), in f32.
    pub fn matrix(&self) -> Tensor<B, 2> {
        as_f32(self.weight.val()).transpose()
    }

    /// Replaces the weight by `w ∈ R^{d_out × d_in}`, kept in `w`'s dtype (f32 for an edit: a
    /// half-precision weight would round a small update away).
    pub fn set_matrix(&mut self, w: Tensor<B, 2>) {
        self.weight = Param::from_tensor(w.transpose());
    }
}

/// `{prefix}.weight` (`[d_out, d_in]`) and, if `bias`, `{prefix}.bias` (`[d_out]`), as stored.
fn fetch_weight_and_bias(
    source: &dyn TensorSource,
    prefix: &str,
    [d_out, d_in]: [usize; 2],
    bias: bool,
) -> Result<(HostTensor, Option<HostTensor>)> {
    let weight = fetch(source, &format!("{prefix}.weight"), &[d_out, d_in])?;
    let bias = if bias { Some(fetch(source, &format!("{prefix}.bias"), &[d_out])?) } else { None };
    Ok((weight, bias))
}

/// `f` applied to `x` `[…, d_in]` as one `[rows, d_in]` matrix, plus `bias` `[d_out]`: `[…, d_out]`.
fn on_rows<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    bias: Option<&Param<Tensor<B, 1>>>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let rows = x.shape().num_elements() / dims[D - 1];
    let mut y = f(x.reshape([rows, dims[D - 1]]));
    if let Some(bias) = bias {
        y = y + bias.val().unsqueeze_dim(0);
    }
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// The output head, `logits = x Eᵀ (+ b)`, its weight `E` kept in the Hugging Face `[vocab,
/// d_model]` layout. The product then reads `Eᵀ` with unit stride along `d_model`, which the CPU
/// GEMM kernels use without packing: at the few positions whose logits a target search or scoring
/// asks for (tens to hundreds), SmolLM2's head (`vocab` 49,152) runs at twice the rate of the
/// `[d_model, vocab]` layout of [`Linear`], whose 49,152-wide rows are repacked at every product;
/// at 1,024 positions both run alike (`gemm` 0.19, one and two threads).
#[derive(Module, Debug)]
pub struct OutputHead<B: Backend> {
    /// `E`, `[vocab, d_model]`.
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> OutputHead<B> {
    /// Loads `{prefix}.weight` (`[vocab, d_model]`) and, if `bias`, `{prefix}.bias`.
    pub fn load(
        source: &dyn TensorSource,
        prefix: &str,
        shape: [usize; 2],
        bias: bool,
        device: &B::Device,
    ) -> Result<Self> {
        let (weight, bias) = fetch_weight_and_bias(source, prefix, shape, bias)?;
        Ok(Self::from_host(weight, bias, source.weight_dtype(), device))
    }

    /// `lm_head.weight` (`[vocab, d_model]`, no bias), or, when `tie` (the config's
    /// `tie_word_embeddings`), the token `embeddings` themselves; a missing untied head is an error.
    pub fn load_or_tie(
        source: &dyn TensorSource,
        tie: bool,
        embeddings: &Param<Tensor<B, 2>>,
        shape: [usize; 2],
        device: &B::Device,
    ) -> Result<Self> {
        match fetch_optional(source, "lm_head.weight", &shape)? {
            Some(head) if !tie => Ok(Self::from_host(head, None, source.weight_dtype(), device)),
            _ if tie => Ok(Self::tied(embeddings)),
            _ => Err(ModelError::MissingTensor {
                path: source.path().to_path_buf(),
                tensor: "lm_head.weight".into(),
            }),
        }
    }

    /// From a `[vocab, d_model]` weight (a head's, or a tied one's embeddings), kept in `dtype`.
    pub fn from_host(
        weight: HostTensor,
        bias: Option<HostTensor>,
        dtype: WeightDType,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: Param::from_tensor(dtype.place(weight, device)),
            bias: bias.map(|b| Param::from_tensor(b.into_tensor(device))),
        }
    }

    /// A head tied to the token embeddings `[vocab, d_model]`: the same tensor, not a copy.
    pub fn tied(embeddings: &Param<Tensor<B, 2>>) -> Self {
        Self { weight: Param::from_tensor(embeddings.val()), bias: None }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        on_rows(x, |x| x.matmul(as_f32(self.weight.val()).transpose()), self.bias.as_ref())
    }

    /// `E` in f32, `[vocab, d_model]`.
    pub fn matrix(&self) -> Tensor<B, 2> {
        as_f32(self.weight.val())
    }
}

/// `silu(x) = x · σ(x) = x / (1 + e^{−x})` (LLaMA's MLP). burn's `activation::silu` computes
/// `σ` as `exp(−log(1 + e^{−x}))`: two exponentials, a logarithm and seven passes over the
/// `[tokens, d_mlp]` activations; this form needs one exponential and five passes (forward pass of
/// SmolLM2 ~8 % faster on the CPU backend). `e^{−x}` is capped at `e^{80}`: silu(x) for x < −80 is
/// then `x / (1 + e^{80})` (|·| < 1e-32 instead of ~|x| e^{x}), and the backward pass never sees
/// an infinity.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let denominator = x.clone().neg().clamp_max(80.0).exp().add_scalar(1.0);
    x / denominator
}

/// Root-mean-square norm (LLaMA): `x / sqrt(mean(x²) + ε) · g`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(
        source: &dyn TensorSource,
        name: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self> {
        let weight = fetch(source, name, &[d])?.into_tensor(device);
        Ok(Self { weight: Param::from_tensor(weight), eps })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let ms = x.clone().powi_scalar(2).mean_dim(2);
        x * (ms + self.eps).sqrt().recip() * self.weight.val().unsqueeze::<3>()
    }
}

/// Layer norm (GPT-J, GPT-2): `(x − mean) / sqrt(var + ε) · g + b`.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(
        source: &dyn TensorSource,
        prefix: &str,
        d: usize,
        eps: f64,
        device: &B::Device,
    ) -> Result<Self> {
        let weight = fetch(source, &format!("{prefix}.weight"), &[d])?.into_tensor(device);
        let bias = fetch(source, &format!("{prefix}.bias"), &[d])?.into_tensor(device);
        Ok(Self { weight: Param::from_tensor(weight), bias: Param::from_tensor(bias), eps })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let centred = x.clone() - x.mean_dim(2);
        let var = centred.clone().powi_scalar(2).mean_dim(2);
        centred * (var + self.eps).sqrt().recip() * self.weight.val().unsqueeze::<3>()
            + self.bias.val().unsqueeze::<3>()
    }
}

/// How a rotary embedding pairs the dimensions it rotates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryPairing {
    /// LLaMA: dimension `i` is paired with `i + d/2` ("rotate half").
    Half,
    /// GPT-J: dimension `2i` is paired with `2i + 1` ("rotate every two").
    Interleaved,
}

/// Rotary position embedding over the first `dim` dimensions of each head, with cos/sin tables for
/// every position up to the model's context length.
#[derive(Module, Debug)]
pub struct Rotary<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    dim: usize,
    #[module(skip)]
    pairing: RotaryPairing,
}

/// How a checkpoint rescales its rotary frequencies for a longer context (`rope_scaling` in
/// transformers 4.x configs, `rope_parameters` in 5.x).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: default`: `θ_j = base^(−2j/dim)`.
    None,
    /// `rope_type: linear`: every frequency divided by `factor` (positions interpolated).
    Linear { factor: f64 },
    /// `rope_type: llama3` (LLaMA-3.1 and later): wavelengths longer than
    /// `original_max_positions / low_freq_factor` divided by `factor`, shorter than
    /// `original_max_positions / high_freq_factor` kept, those between interpolated smoothly.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_positions: f64 },
}

impl RopeScaling {
    /// The rotary inverse frequencies `θ_j` of `dim` dimensions, as transformers'
    /// `modeling_rope_utils` computes them (f32 results).
    pub fn inverse_frequencies(&self, dim: usize, base: f64) -> Vec<f32> {
        let plain = (0..dim / 2).map(|j| (1.0 / base.powf(2.0 * j as f64 / dim as f64)) as f32);
        match *self {
            RopeScaling::None => plain.collect(),
            RopeScaling::Linear { factor } => plain.map(|f| (f as f64 / factor) as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_positions,
            } => plain
                .map(|f| {
                    let f = f as f64;
                    let wavelength = 2.0 * std::f64::consts::PI / f;
                    if wavelength < original_max_positions / high_freq_factor {
                        f as f32
                    } else if wavelength > original_max_positions / low_freq_factor {
                        (f / factor) as f32
                    } else {
                        let smooth = (original_max_positions / wavelength - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        ((1.0 - smooth) * f / factor + smooth * f) as f32
                    }
                })
                .collect(),
        }
    }
}

impl<B: Backend> Rotary<B> {
    /// Frequencies `θ_j = base^(−2j/dim)`, rescaled by `scaling`, computed in f32 like the
    /// reference implementations.
    pub fn new(
        dim: usize,
        base: f64,
        scaling: &RopeScaling,
        max_positions: usize,
        pairing: RotaryPairing,
        device: &B::Device,
    ) -> Self {
        let half = dim / 2;
        let inv_freq = scaling.inverse_frequencies(dim, base);
        let mut cos = Vec::with_capacity(max_positions * dim);
        let mut sin = Vec::with_capacity(max_positions * dim);
        for p in 0..max_positions {
            let angles: Vec<f64> = inv_freq.iter().map(|&f| (p as f32 * f) as f64).collect();
            let column = |j: usize| match pairing {
                RotaryPairing::Half => angles[j % half],
                RotaryPairing::Interleaved => angles[j / 2],
            };
            cos.extend((0..dim).map(|j| column(j).cos() as f32));
            sin.extend((0..dim).map(|j| column(j).sin() as f32));
        }
        let table = |v: Vec<f32>| {
            HostTensor { shape: vec![max_positions, dim], data: v }.into_tensor(device)
        };
        Self { cos: table(cos), sin: table(sin), dim, pairing }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x: [b, h, t, head_dim]` by the angles of `positions: [b, t]`.
    pub fn apply(&self, x: Tensor<B, 4>, positions: &Tensor<B, 2, Int>) -> Tensor<B, 4> {
        let [b, h, t, hd] = x.dims();
        let flat = positions.clone().reshape([b * t]);
        let cos = self.cos.clone().select(0, flat.clone()).reshape([b, 1, t, self.dim]);
        let sin = self.sin.clone().select(0, flat).reshape([b, 1, t, self.dim]);
        let (rot, pass) = if self.dim == hd {
            (x, None)
        } else {
            (
                x.clone().slice([0..b, 0..h, 0..t, 0..self.dim]),
                Some(x.slice([0..b, 0..h, 0..t, self.dim..hd])),
            )
        };
        let turned = match self.pairing {
            RotaryPairing::Half => rotate_half(rot.clone()),
            RotaryPairing::Interleaved => rotate_every_two(rot.clone()),
        };
        // `cos` and `sin` broadcast over the heads (an `expand` would copy them per head).
        let rotated = rot * cos + turned * sin;
        match pass {
            None => rotated,
            Some(pass) => Tensor::cat(vec![rotated, pass], 3),
        }
    }
}

/// `[x1, x2] → [−x2, x1]` over the last dimension.
fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.slice([0..b, 0..h, 0..t, d / 2..d]);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

/// `(x0, x1, x2, x3, …) → (−x1, x0, −x3, x2, …)`.
fn rotate_every_two<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let pairs = x.reshape([b, h, t, d / 2, 2]);
    let even = pairs.clone().slice([0..b, 0..h, 0..t, 0..d / 2, 0..1]);
    let odd = pairs.slice([0..b, 0..h, 0..t, 0..d / 2, 1..2]);
    Tensor::cat(vec![odd.neg(), even], 4).reshape([b, h, t, d])
}

/// Scaled dot-product attention. `q: [b, h, t, d]`, `k, v: [b, h_kv, t_k, d]` (grouped-query
/// attention when `h_kv < h`: query head `i` reads key/value head `i / (h / h_kv)`; `t_k > t` when
/// earlier keys come from a [`crate::KvCache`]), `mask: [b, 1, t, t_k]` additive (0 where attending
/// is allowed, a large negative number elsewhere).
///
/// The `h / h_kv` query heads that share a key/value head are stacked into one product of
/// `h / h_kv · t` rows, so keys and values are never repeated per query head.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, t, d] = q.dims();
    let [_, h_kv, t_k, _] = k.dims();
    let rep = h / h_kv;
    // Scaling q ([b, h, t, d]) costs less than scaling the scores ([b, h, t, t_k]) once t_k > d.
    let q = (q / (d as f64).sqrt()).reshape([b, h_kv, rep * t, d]);
    // The mask broadcasts over the heads (an `expand` would copy it per head and layer).
    let scores = q.matmul(k.swap_dims(2, 3)).reshape([b, h, t, t_k]) + mask.clone();
    let weights = activation::softmax(scores, 3).reshape([b, h_kv, rep * t, t_k]);
    weights.matmul(v).reshape([b, h, t, d])
}

/// `[b, t, h·d] → [b, h, t, d]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, t, hd] = x.dims();
    x.reshape([b, t, heads, hd / heads]).swap_dims(1, 2)
}

/// `[b, h, t, d] → [b, t, h·d]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d])
}
