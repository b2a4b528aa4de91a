//! What editing needs from a forward pass: read the edited projection's input and output (keys and
//! values) and the block outputs at chosen layers, add a vector at one token of each sequence, and
//! stop early.

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::batch::PromptBatch;

/// Where an [`Intervention`] adds its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The output of the MLP's output projection (ROME's value space).
    MlpOutput,
    /// The block's output hidden state, i.e. the residual stream (MEMIT's `z` space).
    BlockOutput,
}

/// Adds `add: [b, t, d_model]` at `site` of `layer`.
#[derive(Debug, Clone)]
pub struct Intervention<B: Backend> {
    pub layer: usize,
    pub site: Site,
    pub add: Tensor<B, 3>,
}

impl<B: Backend> Intervention<B> {
    /// Adds row `r` of `deltas: [b, d]` at column `columns[r]` of row `r` only.
    pub fn at_columns(layer: usize, site: Site, batch: &PromptBatch<B>, columns: &[usize], deltas: Tensor<B, 2>) -> Self {
        let (b, t) = (batch.rows(), batch.width());
        let [_, d] = deltas.dims();
        let mut one_hot = vec![0.0f32; b * t];
        for (row, &col) in columns.iter().enumerate() {
            one_hot[row * t + col] = 1.0;
        }
        let one_hot = Tensor::<B, 3>::from_data(TensorData::new(one_hot, [b, t, 1]), &deltas.device());
        let add = one_hot.expand([b, t, d]) * deltas.unsqueeze_dim::<3>(1).expand([b, t, d]);
        Self { layer, site, add }
    }
}

/// Instructions for one forward pass.
#[derive(Debug, Clone)]
pub struct Hooks<B: Backend> {
    /// Layers whose keys, values and block outputs are returned in the [`Trace`].
    pub capture: Vec<usize>,
    /// Stop after this block: no logits are computed.
    pub stop_after: Option<usize>,
    pub intervention: Option<Intervention<B>>,
    /// Compute logits only at these flat positions (`row · t + column`): the [`Trace`]'s logits
    /// are then `[1, n, vocab]`. Saves the output head's cost where few positions are scored.
    pub logits_at: Option<Vec<usize>>,
}

impl<B: Backend> Default for Hooks<B> {
    fn default() -> Self {
        Self { capture: Vec::new(), stop_after: None, intervention: None, logits_at: None }
    }
}

impl<B: Backend> Hooks<B> {
    pub fn capture(layers: &[usize]) -> Self {
        Self { capture: layers.to_vec(), ..Self::default() }
    }

    /// Capture `layers` and stop after the highest of them (statistics need nothing above).
    pub fn capture_only(layers: &[usize]) -> Self {
        Self { capture: layers.to_vec(), stop_after: layers.iter().copied().max(), ..Self::default() }
    }

    /// `x` plus the intervention's vector if it targets `site` of `layer`.
    pub(crate) fn apply(&self, layer: usize, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.intervention {
            Some(i) if i.layer == layer && i.site == site => x + i.add.clone(),
            _ => x,
        }
    }
}

/// Activations of one layer, all `[b, t, ·]`.
#[derive(Debug, Clone)]
pub struct LayerTrace<B: Backend> {
    /// Input of the MLP output projection, `k` (`[b, t, d_mlp]`).
    pub key: Tensor<B, 3>,
    /// Output of the MLP output projection, `v = W k (+ b)`, including any intervention there.
    pub value: Tensor<B, 3>,
    /// Output of the block, `h_l`.
    pub hidden: Tensor<B, 3>,
}

/// The result of a forward pass.
#[derive(Debug, Clone)]
pub struct Trace<B: Backend> {
    /// `[b, t, vocab]` (`[1, n, vocab]` with [`Hooks::logits_at`]), absent when the pass stopped early.
    pub logits: Option<Tensor<B, 3>>,
    pub layers: BTreeMap<usize, LayerTrace<B>>,
}

impl<B: Backend> Trace<B> {
    /// Records layer `layer`'s activations if `hooks` asks for them.
    pub(crate) fn record(&mut self, hooks: &Hooks<B>, layer: usize, key: Tensor<B, 3>, value: Tensor<B, 3>, hidden: &Tensor<B, 3>) {
        if hooks.capture.contains(&layer) {
            self.layers.insert(layer, LayerTrace { key, value, hidden: hidden.clone() });
        }
    }
}
