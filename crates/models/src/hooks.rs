//! What editing needs from a forward pass: read the edited projection's input and output (keys and
//! values) and the block outputs at chosen layers, score only chosen positions, and stop early; and
//! what causal tracing needs: replace activations at chosen positions ([`Patch`]).

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor};

use crate::decoder::BlockOutput;

/// Instructions for one forward pass.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    /// Layers whose keys, values and block outputs are returned in the [`Trace`].
    pub capture: Vec<usize>,
    /// Stop after this block: no logits are computed.
    pub stop_after: Option<usize>,
    /// Compute logits only at these flat positions (`row · t + column`): the [`Trace`]'s logits
    /// are then `[1, n, vocab]`. Saves the output head's cost where few positions are scored.
    pub logits_at: Option<Vec<usize>>,
}

impl Hooks {
    pub fn capture(layers: &[usize]) -> Self {
        Self { capture: layers.to_vec(), ..Self::default() }
    }

    /// Capture `layers` and stop after the highest of them (statistics need nothing above).
    pub fn capture_only(layers: &[usize]) -> Self {
        Self {
            capture: layers.to_vec(),
            stop_after: layers.iter().copied().max(),
            ..Self::default()
        }
    }
}

/// Activations of one layer, all `[b, t, ·]`.
#[derive(Debug, Clone)]
pub struct LayerTrace<B: Backend> {
    /// Input of the MLP output projection, `k` (`[b, t, d_mlp]`).
    pub key: Tensor<B, 3>,
    /// Output of the MLP output projection, `v = W k (+ b)`.
    pub value: Tensor<B, 3>,
    /// Output of the block, `h_l`.
    pub hidden: Tensor<B, 3>,
    /// Output of the attention (after its output projection), `a_l`.
    pub attention: Tensor<B, 3>,
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
    pub(crate) fn record(&mut self, hooks: &Hooks, layer: usize, out: &BlockOutput<B>) {
        if hooks.capture.contains(&layer) {
            let (key, value, hidden, attention) =
                (out.key.clone(), out.value.clone(), out.hidden.clone(), out.attention.clone());
            self.layers.insert(layer, LayerTrace { key, value, hidden, attention });
        }
    }
}

/// Where a [`Patch`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The token embeddings (before GPT-2's position embeddings); the patch's layer is ignored.
    Embedding,
    /// The attention's output, before it joins the residual stream.
    Attention,
    /// The MLP's output (the edited projection's output `v`), before it joins the residual stream.
    Mlp,
    /// The block's output hidden state `h_l`.
    Hidden,
}

/// How a [`Patch`] writes its `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `x ← x + mask ⊙ (value − x)`: causal tracing restores clean states into corrupted runs.
    Replace,
    /// `x ← x + mask ⊙ value`: a zero `value` that requires a gradient reads `∂L/∂x`.
    Add,
}

/// Writes activations at chosen positions during a pass.
///
/// # Shapes
/// - `mask`: `[b, t, 1]`, 1 where `value` is written, 0 where `x` stays
/// - `value`: `[b, t, d]` or `[1, t, d]` (the same values for every row)
#[derive(Debug, Clone)]
pub struct Patch<B: Backend> {
    pub site: Site,
    pub layer: usize,
    pub mask: Tensor<B, 3>,
    pub value: Tensor<B, 3>,
    pub write: Write,
}

/// The patches of one layer (all of a pass's patches and the layer they are filtered by).
pub(crate) struct LayerPatches<'a, B: Backend> {
    pub patches: &'a [Patch<B>],
    pub layer: usize,
}

impl<B: Backend> Clone for LayerPatches<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for LayerPatches<'_, B> {}

impl<B: Backend> LayerPatches<'_, B> {
    /// `x` with every patch of this layer at `site` applied.
    pub fn apply(&self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.patches
            .iter()
            .filter(|p| p.site == site && (site == Site::Embedding || p.layer == self.layer))
            .fold(x, |x, p| match p.write {
                Write::Replace => x.clone() + p.mask.clone() * (p.value.clone() - x),
                Write::Add => x + p.mask.clone() * p.value.clone(),
            })
    }
}
