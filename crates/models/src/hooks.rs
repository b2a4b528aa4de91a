//! What editing needs from a forward pass: read the edited projection's input and output (keys and
//! values) and the block outputs at chosen layers, score only chosen positions, and stop early.

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, Tensor};

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
        Self { capture: layers.to_vec(), stop_after: layers.iter().copied().max(), ..Self::default() }
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
    pub(crate) fn record(&mut self, hooks: &Hooks, layer: usize, key: Tensor<B, 3>, value: Tensor<B, 3>, hidden: &Tensor<B, 3>) {
        if hooks.capture.contains(&layer) {
            self.layers.insert(layer, LayerTrace { key, value, hidden: hidden.clone() });
        }
    }
}
