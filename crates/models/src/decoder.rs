//! The loop every decoder-only architecture shares: embed, run the blocks with the editing hooks,
//! stop early if asked.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::batch::PromptBatch;
use crate::dtype::as_f32;
use crate::hooks::{Hooks, LayerPatches, Patch, Site, Trace};

/// What one transformer block computes for the decoder loop.
pub(crate) struct BlockOutput<B: Backend> {
    /// Input of the MLP output projection.
    pub key: Tensor<B, 3>,
    /// Output of the MLP output projection.
    pub value: Tensor<B, 3>,
    /// The block's output hidden state.
    pub hidden: Tensor<B, 3>,
    /// The attention's output (as it joins the residual stream).
    pub attention: Tensor<B, 3>,
    /// The attention's keys and values over every column so far (cached ones first).
    pub kv: KeyValues<B>,
}

/// Rotated attention keys and values of one layer, `[b, h_kv, t, head_dim]` each.
pub type KeyValues<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// Keys and values of the columns already processed, per layer, so that generation feeds only the
/// new token to the model.
#[derive(Debug, Clone, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<KeyValues<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// Columns held for `layer` (0 when none).
    pub fn columns(&self, layer: usize) -> usize {
        self.layers.get(layer).and_then(Option::as_ref).map_or(0, |(k, _)| k.dims()[2])
    }

    /// The columns of a one-row cache, repeated for `rows` rows (a prefix that every row of a
    /// batch continues).
    pub fn repeat(&self, rows: usize) -> Self {
        let repeat = |x: &Tensor<B, 4>| x.clone().repeat_dim(0, rows);
        Self {
            layers: self
                .layers
                .iter()
                .map(|kv| kv.as_ref().map(|(k, v)| (repeat(k), repeat(v))))
                .collect(),
        }
    }

    /// The rows of `parts` one after another, each part's columns left-padded with zeros to the
    /// widest part's (the padding columns are to be masked, as left padding is).
    pub fn cat_rows(parts: Vec<Self>) -> Self {
        let width = (0..parts.first().map_or(0, |p| p.layers.len()))
            .map(|l| parts.iter().map(|p| p.columns(l)).max().unwrap_or(0))
            .collect::<Vec<_>>();
        let layers = width
            .iter()
            .enumerate()
            .map(|(l, &w)| {
                let padded = |x: &Tensor<B, 4>| {
                    let [b, h, c, d] = x.dims();
                    match w - c {
                        0 => x.clone(),
                        pad => Tensor::cat(
                            vec![Tensor::zeros([b, h, pad, d], &x.device()), x.clone()],
                            2,
                        ),
                    }
                };
                let kv: Option<Vec<_>> = parts
                    .iter()
                    .map(|p| p.layers[l].as_ref().map(|(k, v)| (padded(k), padded(v))))
                    .collect();
                kv.map(|kv| {
                    let (k, v): (Vec<_>, Vec<_>) = kv.into_iter().unzip();
                    (Tensor::cat(k, 0), Tensor::cat(v, 0))
                })
            })
            .collect();
        Self { layers }
    }

    /// Only the rows `rows` of every layer's columns, in that order (rows that finished
    /// generating leave the batch).
    pub fn keep_rows(&self, rows: &[usize]) -> Self {
        let keep = |x: &Tensor<B, 4>| {
            let index = TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]);
            x.clone().select(0, Tensor::<B, 1, Int>::from_data(index, &x.device()))
        };
        Self {
            layers: self
                .layers
                .iter()
                .map(|kv| kv.as_ref().map(|(k, v)| (keep(k), keep(v))))
                .collect(),
        }
    }
}

/// Where a forward pass begins.
#[derive(Debug, Clone)]
pub enum Start<B: Backend> {
    /// Embed the batch's token ids and run every block.
    Tokens,
    /// Run only the blocks above `layer`, on `hidden: [b, t, d_model]` taken as block `layer`'s
    /// output (the batch's token ids are not read).
    After { layer: usize, hidden: Tensor<B, 3> },
}

impl<B: Backend> Start<B> {
    /// The first block to run and its input; `table` is the `[vocab, d]` embedding matrix, whose
    /// rows are patched by the [`Site::Embedding`] patches.
    pub(crate) fn input(
        self,
        table: Tensor<B, 2>,
        ids: &Tensor<B, 2, Int>,
        patches: &[Patch<B>],
    ) -> (usize, Tensor<B, 3>) {
        match self {
            Self::Tokens => {
                (0, LayerPatches { patches, layer: 0 }.apply(Site::Embedding, embed(table, ids)))
            }
            Self::After { layer, hidden } => (layer + 1, hidden),
        }
    }
}

/// `past` followed by the new columns' keys and values.
pub(crate) fn extend_kv<B: Backend>(
    past: Option<KeyValues<B>>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> KeyValues<B> {
    match past {
        None => (k, v),
        Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
    }
}

pub(crate) trait Block<B: Backend> {
    /// What every block reads besides its input (the rotary tables; nothing for GPT-2).
    type Shared;
    /// One block on `x`, with `patches` applied to its attention and MLP outputs.
    fn forward(
        &self,
        x: Tensor<B, 3>,
        shared: &Self::Shared,
        batch: &PromptBatch<B>,
        past: Option<KeyValues<B>>,
        patches: LayerPatches<'_, B>,
    ) -> BlockOutput<B>;
}

/// Rows of the embedding matrix `[vocab, d]` for `ids: [b, t]`.
fn embed<B: Backend>(table: Tensor<B, 2>, ids: &Tensor<B, 2, Int>) -> Tensor<B, 3> {
    let [b, t] = ids.dims();
    let [_, d] = table.dims();
    as_f32(table.select(0, ids.clone().reshape([b * t]))).reshape([b, t, d])
}

/// The final hidden states `[b, t, d]`, or only those at `hooks.logits_at` as `[1, n, d]`.
pub(crate) fn scored_positions<B: Backend>(x: Tensor<B, 3>, hooks: &Hooks) -> Tensor<B, 3> {
    let Some(at) = &hooks.logits_at else { return x };
    let [b, t, d] = x.dims();
    select_rows(x.reshape([b * t, d]), at.iter().copied()).reshape([1, at.len(), d])
}

/// The rows `rows` of `table` `[n, d]`, in that order: `[rows.len(), d]`.
pub(crate) fn select_rows<B: Backend>(
    table: Tensor<B, 2>,
    rows: impl ExactSizeIterator<Item = usize>,
) -> Tensor<B, 2> {
    let n = rows.len();
    let index = TensorData::new(rows.map(|i| i as i64).collect::<Vec<_>>(), [n]);
    let device = table.device();
    table.select(0, Tensor::<B, 1, Int>::from_data(index, &device))
}

/// What one pass reads besides its input: the batch, the hooks, the patches.
pub(crate) struct Pass<'a, B: Backend> {
    pub batch: &'a PromptBatch<B>,
    pub hooks: &'a Hooks,
    pub patches: &'a [Patch<B>],
}

/// Runs `blocks[first..]` on `x`, reading and updating `cache` when given; `None` if the hooks
/// stopped the pass before the last block.
pub(crate) fn run_blocks<B: Backend, L: Block<B>>(
    blocks: &[L],
    (first, mut x): (usize, Tensor<B, 3>),
    shared: &L::Shared,
    pass: &Pass<'_, B>,
    trace: &mut Trace<B>,
    mut cache: Option<&mut KvCache<B>>,
) -> Option<Tensor<B, 3>> {
    let (batch, hooks, patches) = (pass.batch, pass.hooks, pass.patches);
    if let Some(cache) = cache.as_deref_mut() {
        cache.layers.resize(blocks.len(), None);
    }
    for (layer, block) in blocks.iter().enumerate().skip(first) {
        let past = cache.as_deref_mut().and_then(|c| c.layers[layer].take());
        let patches = LayerPatches { patches, layer };
        let mut out = block.forward(x, shared, batch, past, patches);
        out.hidden = patches.apply(Site::Hidden, out.hidden);
        trace.record(hooks, layer, &out);
        if let Some(cache) = cache.as_deref_mut() {
            cache.layers[layer] = Some(out.kv);
        }
        if hooks.stop_after == Some(layer) {
            return None;
        }
        x = out.hidden;
    }
    Some(x)
}
