//! Target values (algo §4): for each edit, the vector `z = v_init + δ` at one layer that makes the
//! model predict the new target, found by gradient descent on `δ`.
//!
//! All edits of a batch are optimised together: one forward/backward pass over every edit's
//! prompts per step, each edit with its own `δ` (the reference runs them one at a time). The loss is
//! the sum of the edits' losses, so each `δ` receives exactly its own gradient, and Adam is
//! per coordinate: the result equals independent optimisations. Each step recomputes only what `δ`
//! changes (see [`target_values`]).

use std::ops::Range;
use std::path::PathBuf;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{activation, Int, Tensor, TensorData};
use editbench_models::backend::{concurrent_passes, side_by_side};
use editbench_models::{
    Hooks, KvCache, LanguageModel, ModelDims, Padding, PromptBatch, Start, WeightDType,
};
use faer::Mat;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::context::ContextTemplates;
use crate::error::{EditError, Result};
use crate::hparams::MethodHparams;
use crate::keys::{host, locate, rows_at, to_columns, Activation};
use crate::request::EditRequest;
use crate::score::target_ids;
use crate::tensor_file;

/// The optimisation stops for an edit once its loss falls below this (reference value).
const LOSS_TARGET: f64 = 5e-2;
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

#[derive(Debug, Clone)]
pub struct Targets {
    /// `z = v_init + δ`, `d_model × E`.
    pub z: Mat<f64>,
    /// The unedited activation at the bare prompt, `d_model × E`.
    pub v_init: Mat<f64>,
    /// Adam steps taken per edit.
    pub steps: Vec<usize>,
    /// Loss per edit at the last evaluation.
    pub loss: Vec<f64>,
}

/// The rows of the optimisation batch: every edit's rewriting prompts, then its KL prompt.
struct Layout {
    sequences: Vec<Vec<u32>>,
    /// Edit each row belongs to.
    edit_of_row: Vec<usize>,
    /// Subject's last token in each row (where δ is added).
    lookup: Vec<usize>,
    /// Tokens of each row a step recomputes: from `lookup` to the last scored one.
    ranges: Vec<Range<usize>>,
    /// `(row, token, label)` whose next-token log-probability enters the NLL.
    label_positions: Vec<(usize, usize, u32)>,
    /// `(row, token)` whose next-token distribution enters the KL term (one per edit).
    kl_rows: Vec<(usize, usize)>,
    /// Weight of each label in its edit's NLL: `1 / (T · prompts)`.
    label_weight: Vec<f32>,
    /// Row of each edit's bare-prompt rewriting sentence (template `{}`), for `v_init`.
    bare_row: Vec<usize>,
}

fn layout<B: Backend>(
    model: &LanguageModel<B>,
    requests: &[EditRequest],
    templates: &ContextTemplates,
) -> Result<Layout> {
    let tokenizer = model.tokenizer()?;
    let mut l = Layout {
        sequences: vec![],
        edit_of_row: vec![],
        lookup: vec![],
        ranges: vec![],
        label_positions: vec![],
        kl_rows: vec![],
        label_weight: vec![],
        bare_row: vec![],
    };
    let n_templates = templates.count();
    for (e, request) in requests.iter().enumerate() {
        let target = target_ids(tokenizer, &request.prompt_text(), &request.target())?;
        let weight = 1.0 / (target.len() * n_templates) as f32;
        l.bare_row.push(l.sequences.len());
        for template in templates.groups.iter().flatten() {
            let sentence = locate(tokenizer, template, request, "")?;
            let row = l.sequences.len();
            let start = sentence.ids.len() - 1;
            let mut ids = sentence.ids;
            ids.extend_from_slice(&target[..target.len() - 1]);
            for (j, &token) in target.iter().enumerate() {
                l.label_positions.push((row, start + j, token));
                l.label_weight.push(weight);
            }
            l.ranges.push(sentence.lookup..ids.len());
            l.sequences.push(ids);
            l.edit_of_row.push(e);
            l.lookup.push(sentence.lookup);
        }
        let kl_request = EditRequest { prompt: "{} is a".into(), ..request.clone() };
        let kl = locate(tokenizer, "{}", &kl_request, "")?;
        l.kl_rows.push((l.sequences.len(), kl.lookup));
        l.ranges.push(kl.lookup..kl.lookup + 1);
        l.sequences.push(kl.ids);
        l.edit_of_row.push(e);
        l.lookup.push(kl.lookup);
    }
    Ok(l)
}

fn int_tensor<B: Backend, const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Edits searched together at most (each search's rows are split over the CPU's threads).
const MAX_EDITS_PER_SEARCH: usize = 32;

/// What the searches running at once may hold, by [`search_row_bytes`]: on 2 threads SmolLM2
/// searches 32 CounterFact edits per chunk within it, and QAEdit questions inside its chat template
/// (rows five times as long from the subject on; ~0.17 GB per edit) about 12.
pub const SEARCH_BYTES: u64 = 4 << 30;

/// The estimated bytes a search holds for one row of `tokens` tokens of which the last
/// `recomputed` are recomputed at every step through the blocks above `layer`, with `scored`
/// positions: every layer's keys and values of the row (at d_model, an upper bound under
/// grouped-query attention); for the backward pass, per recomputed token and block, the inputs of
/// the projections and norms and the MLP's three d_mlp-wide activations (6 d + 3 d_mlp); four
/// vocabulary rows per scored position (logits, log-probabilities and their gradients). SmolLM2,
/// 16 edits: CounterFact 2.4 GB estimated with the weights, 2.0 GB peak RSS; QAEdit in the chat
/// template 2.7 GB estimated without them, 5.0 GB peak RSS of the whole run.
pub fn search_row_bytes(
    dims: &ModelDims,
    layer: usize,
    tokens: usize,
    recomputed: usize,
    scored: usize,
) -> u64 {
    let (d, ff, v) =
        (dims.hidden_size as u64, dims.intermediate_size as u64, dims.vocab_size as u64);
    let above = dims.num_layers.saturating_sub(layer) as u64;
    let f32 = 4;
    tokens as u64 * dims.num_layers as u64 * 2 * d * f32
        + recomputed as u64 * above * (6 * d + 3 * ff) * f32
        + 4 * scored as u64 * v * f32
}

/// Finds `z = v_init + δ` for every request at `layer` (algo §4): `δ` is added to the layer's output
/// at the subject's last token and `z` lives in `space` — the MLP output (`Activation::Value`,
/// ROME's `v`) or the residual stream (`Activation::Hidden`, MEMIT's `z`). The edits' searches are
/// independent, so they are searched in chunks of consecutive edits — at most
/// [`MAX_EDITS_PER_SEARCH`], on the CPU backend as many side by side as [`concurrent_passes`], and
/// together within [`SEARCH_BYTES`] (long prompts make smaller chunks).
pub fn target_values<B: AutodiffBackend>(
    model: &LanguageModel<B::InnerBackend>,
    requests: &[EditRequest],
    templates: &ContextTemplates,
    layer: usize,
    space: Activation,
    h: &MethodHparams,
) -> Result<Targets> {
    let concurrent = concurrent_passes::<B::InnerBackend>(&model.device());
    let size = MAX_EDITS_PER_SEARCH.min(requests.len().div_ceil(concurrent)).max(1);
    let bytes = edit_bytes(&layout(model, requests, templates)?, &model.dims, layer);
    let chunks = chunks_within(&bytes, size, SEARCH_BYTES / concurrent as u64);
    tracing::debug!(
        "target search: {} edits in chunks of {chunks:?}, {:.2} GB estimated in all",
        requests.len(),
        bytes.iter().sum::<u64>() as f64 / 1e9
    );
    if chunks.len() == 1 {
        return search::<B>(model, requests, templates, layer, space, h);
    }
    let chunks: Vec<&[EditRequest]> = chunks
        .iter()
        .scan(0, |start, &n| {
            *start += n;
            Some(&requests[*start - n..*start])
        })
        .collect();
    let mut found = Vec::with_capacity(requests.len());
    let search_chunk =
        |chunk: &&[EditRequest]| search::<B>(model, chunk, templates, layer, space, h);
    side_by_side(&chunks, concurrent, search_chunk, |chunk, targets| {
        found.extend((0..chunk.len()).map(|j| targets.found(j)))
    })?;
    Ok(Targets::from_found(&found.iter().collect::<Vec<_>>(), model.dims.hidden_size))
}

/// Each edit's estimated search bytes ([`search_row_bytes`] over its rows).
fn edit_bytes(l: &Layout, dims: &ModelDims, layer: usize) -> Vec<u64> {
    let mut scored = vec![0; l.sequences.len()];
    for &(row, _, _) in &l.label_positions {
        scored[row] += 1;
    }
    for &(row, _) in &l.kl_rows {
        scored[row] += 1;
    }
    let mut bytes = vec![0; l.bare_row.len()];
    for (row, ids) in l.sequences.iter().enumerate() {
        bytes[l.edit_of_row[row]] +=
            search_row_bytes(dims, layer, ids.len(), l.ranges[row].len(), scored[row]);
    }
    bytes
}

/// Sizes of consecutive chunks of the edits: at most `size` edits each, and within `budget` bytes
/// unless one edit alone exceeds it.
fn chunks_within(bytes: &[u64], size: usize, budget: u64) -> Vec<usize> {
    let mut chunks: Vec<(usize, u64)> = vec![];
    for &b in bytes {
        match chunks.last_mut() {
            Some((n, held)) if *n < size && *held + b <= budget => {
                (*n, *held) = (*n + 1, *held + b)
            }
            _ => chunks.push((1, b)),
        }
    }
    chunks.into_iter().map(|(n, _)| n).collect()
}

/// [`target_values`] of one batch of edits searched together.
///
/// `δ` enters each row at its subject's last token, so nothing below `layer`'s output and nothing
/// before that token changes between steps: one pass on the unedited model caches those keys,
/// values and hidden states, and each step recomputes only the blocks above `layer` on the tokens
/// from the subject's last to the last scored one (a few per row instead of the whole sentence).
/// The rows are split into [`Part`]s run side by side, as many as [`concurrent_passes`].
fn search<B: AutodiffBackend>(
    model: &LanguageModel<B::InnerBackend>,
    requests: &[EditRequest],
    templates: &ContextTemplates,
    layer: usize,
    space: Activation,
    h: &MethodHparams,
) -> Result<Targets> {
    let device = model.device();
    let l = layout(model, requests, templates)?;
    let (e, d) = (requests.len(), model.dims.hidden_size);
    let grad_model = LanguageModel::<B>::from_inner(model);
    let concurrent = concurrent_passes::<B::InnerBackend>(&device);
    let parts = split_rows(&l.ranges, concurrent)
        .into_iter()
        .map(|rows| Part::new(&grad_model, &l, rows, e, layer, space))
        .collect::<Result<Vec<_>>>()?;
    let v_init = initial_values(&parts, &l);
    let step_flops: f64 =
        parts.iter().map(|p| step_pass_flops(&grad_model, &p.groups, layer, p.scored)).sum();
    let label_edit: Vec<usize> = l.label_positions.iter().map(|p| l.edit_of_row[p.0]).collect();

    let mut delta = Tensor::<B::InnerBackend, 2>::zeros([e, d], &device);
    let (mut m, mut v) = (delta.clone(), delta.clone());
    let mut active = vec![true; e];
    let mut steps = vec![0usize; e];
    let mut losses = vec![0.0; e];
    // MPES: per edit, consecutive evaluations at which the target was the most probable everywhere.
    let mut most_probable_for = vec![0usize; e];
    let init_sq = Tensor::<B, 1>::from_inner(v_init.clone().powi_scalar(2).sum_dim(1).reshape([e]));
    let bar = indicatif::ProgressBar::new(h.v_num_grad_steps as u64)
        .with_message(format!("target search, {e} edit(s) at layer {layer}"));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} step {pos}/{len} [{elapsed}]")
            .expect("valid template"),
    );

    for it in 0..h.v_num_grad_steps {
        bar.set_position(it as u64);
        let mut passes = Vec::with_capacity(parts.len());
        let forward = |p: &Part<B>| {
            p.forward(&grad_model, delta.clone(), layer, h, p.first.then_some(&init_sq))
        };
        side_by_side(&parts, concurrent, forward, |_, pass| passes.push(pass))?;
        losses = vec![0.0; e];
        for pass in &passes {
            losses.iter_mut().zip(&pass.losses).for_each(|(sum, &x)| *sum += f64::from(x));
        }
        tracing::debug!("target search step {it}: losses {losses:.4?}");
        if let Some(bad) = losses.iter().position(|l| !l.is_finite()) {
            return Err(EditError::Input(format!(
                "target search diverged at step {it} for `{}` (loss {})",
                requests[bad].prompt_text(),
                losses[bad]
            )));
        }
        for (a, &loss) in active.iter_mut().zip(&losses) {
            *a &= loss >= LOSS_TARGET;
        }
        if let Some(patience) = h.mpes_patience {
            let correct = most_probable(&parts, &passes, &l);
            for (a, stop) in active.iter_mut().zip(mpes_stop(
                &correct,
                &label_edit,
                &mut most_probable_for,
                patience,
            )) {
                *a &= !stop;
            }
        }
        bar.set_message(format!(
            "target search at layer {layer}: {} of {e} edit(s) still above loss {LOSS_TARGET}",
            active.iter().filter(|&&a| a).count()
        ));
        // The last step's backward pass is run too: burn-autodiff frees a graph that no backward
        // pass consumed only one level per later backward pass, so every search would leave its
        // last forward pass's activations behind (QAEdit, chat prompts: +2.5 GB per 16 edits).
        let mut grads = Vec::with_capacity(parts.len());
        side_by_side(
            &passes,
            concurrent,
            |pass| Ok::<_, EditError>(pass.gradient()),
            |_, grad| grads.push(grad),
        )?;
        if it + 1 == h.v_num_grad_steps || !active.iter().any(|&a| a) {
            break;
        }
        let grad = grads.into_iter().reduce(|a, b| a + b).expect("at least one part");
        // Input gradients only (the weights are constants): each product of the step's pass once more.
        editbench_models::flops::add(step_flops);
        for (s, &a) in steps.iter_mut().zip(&active) {
            *s += a as usize;
        }
        let mask = Tensor::<B::InnerBackend, 2>::from_data(
            TensorData::new(active.iter().map(|&a| a as u8 as f32).collect::<Vec<_>>(), [e, 1]),
            &device,
        )
        .expand([e, d]);
        (delta, m, v) = adam_step(delta, m, v, grad, mask, h.v_lr, it + 1);
        delta = clamp_rows(delta, v_init.clone(), h.clamp_norm_factor);
    }
    bar.finish_and_clear();
    let v_init = to_columns(&host(v_init)?, e, d);
    let delta = to_columns(&host(delta)?, e, d);
    Ok(Targets { z: &v_init + &delta, v_init, steps, loss: losses })
}

/// The unedited `space` activation at each edit's bare-prompt row, `[edits, d]`.
fn initial_values<B: AutodiffBackend>(parts: &[Part<B>], l: &Layout) -> Tensor<B::InnerBackend, 2> {
    let groups: Vec<&Group<B>> = parts.iter().flat_map(|p| &p.groups).collect();
    let mut concatenated = vec![0; l.ranges.len()];
    for (i, row) in groups.iter().flat_map(|g| &g.rows).enumerate() {
        concatenated[*row] = i;
    }
    let device = groups[0].index.device();
    let bare = int_tensor(
        l.bare_row.iter().map(|&r| concatenated[r] as i64).collect(),
        [l.bare_row.len()],
        &device,
    );
    Tensor::cat(groups.iter().map(|g| g.at_lookup.clone()).collect(), 0).select(0, bare).inner()
}

/// Whether each label of the layout was its position's most probable token in this step's `passes`.
fn most_probable<B: AutodiffBackend>(
    parts: &[Part<B>],
    passes: &[PartPass<B>],
    l: &Layout,
) -> Vec<bool> {
    let mut correct = vec![false; l.label_positions.len()];
    for (part, pass) in parts.iter().zip(passes) {
        let top = pass.top.as_ref().expect("MPES asks for the most probable tokens");
        for &(j, row) in &part.label_rows {
            correct[j] = top[row] == l.label_positions[j].2 as i64;
        }
    }
    correct
}

/// The layout's rows split into `parts` sets of about equal recomputed tokens (longest row first,
/// each to the lightest set), each in layout order; all rows in one set when `parts` ≤ 1.
fn split_rows(ranges: &[Range<usize>], parts: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&r| std::cmp::Reverse(ranges[r].len()));
    let mut sets = vec![(0usize, Vec::new()); parts.clamp(1, ranges.len().max(1))];
    for r in order {
        let lightest = sets.iter_mut().min_by_key(|(load, _)| *load).expect("at least one set");
        lightest.0 += ranges[r].len();
        lightest.1.push(r);
    }
    sets.into_iter()
        .map(|(_, mut rows)| {
            rows.sort_unstable();
            rows
        })
        .collect()
}

/// Rows of the search that one thread runs forward and backward, with the loss terms of their scored
/// positions. The rows of one edit alone make products too small for two threads to share well, so
/// a lone search is split into parts that run side by side, each with its own `δ` leaf; the loss is
/// the sum of the parts' losses and its gradient the sum of theirs.
struct Part<B: AutodiffBackend> {
    groups: Vec<Group<B>>,
    hooks: Vec<Hooks>,
    /// Edit of each of the part's rows, in layout order.
    row_edit: Tensor<B, 1, Int>,
    /// Per logits row (in the groups' order: reordering `[n, vocab]` would copy it forward and
    /// back): its label (0 for a KL row); and A[e, row] = its weight in edit e's NLL.
    labels: Tensor<B, 2, Int>,
    assign: Tensor<B, 2>,
    /// The logits rows of the part's KL prompts, and K[e, i] = 1 where KL row i is edit e's.
    kl: Option<(Tensor<B, 1, Int>, Tensor<B, 2>)>,
    /// The KL rows' log-probabilities at the first step.
    kl_reference: std::sync::OnceLock<Tensor<B, 2>>,
    /// `(label index in the layout, logits row)` of each label scored here.
    label_rows: Vec<(usize, usize)>,
    /// Positions whose logits the part computes.
    scored: usize,
    /// The part that also carries the norm term of the loss.
    first: bool,
}

/// A part's forward pass of one step: its loss per edit, the `δ` leaf to take the gradient at, and
/// the most probable token of each logits row where MPES asks.
struct PartPass<B: AutodiffBackend> {
    leaf: Tensor<B, 2>,
    loss: Tensor<B, 1>,
    losses: Vec<f32>,
    top: Option<Vec<i64>>,
}

impl<B: AutodiffBackend> PartPass<B> {
    fn gradient(&self) -> Tensor<B::InnerBackend, 2> {
        let grads = self.loss.clone().sum().backward();
        self.leaf.grad(&grads).expect("δ requires a gradient")
    }
}

impl<B: AutodiffBackend> Part<B> {
    /// The part of the layout's `rows` (sorted), for `edits` edits.
    fn new(
        model: &LanguageModel<B>,
        l: &Layout,
        rows: Vec<usize>,
        edits: usize,
        layer: usize,
        space: Activation,
    ) -> Result<Self> {
        let device = model.device();
        let ranges: Vec<Range<usize>> = rows.iter().map(|&r| l.ranges[r].clone()).collect();
        let groups = group_rows(&ranges)
            .into_iter()
            .map(|at| Group::new(model, l, at.iter().map(|&i| rows[i]).collect(), at, layer, space))
            .collect::<Result<Vec<_>>>()?;
        let here = |row: usize| rows.binary_search(&row).is_ok();
        let labels: Vec<usize> =
            (0..l.label_positions.len()).filter(|&j| here(l.label_positions[j].0)).collect();
        let kl_edits: Vec<usize> = (0..edits).filter(|&k| here(l.kl_rows[k].0)).collect();
        let scored: Vec<(usize, usize)> = labels
            .iter()
            .map(|&j| (l.label_positions[j].0, l.label_positions[j].1))
            .chain(kl_edits.iter().map(|&k| l.kl_rows[k]))
            .collect();
        let (hooks, order) =
            logits_hooks(&groups, &places(&groups, l.ranges.len()), &l.ranges, &scored);
        let n = scored.len();
        let (mut row_label, mut assign) = (vec![0i64; n], vec![0.0f32; edits * n]);
        for (i, &j) in labels.iter().enumerate() {
            let (row, _, label) = l.label_positions[j];
            row_label[order[i]] = label as i64;
            assign[l.edit_of_row[row] * n + order[i]] = l.label_weight[j];
        }
        let kl = (!kl_edits.is_empty()).then(|| {
            let k = kl_edits.len();
            let mut of_edit = vec![0.0f32; edits * k];
            kl_edits.iter().enumerate().for_each(|(i, &edit)| of_edit[edit * k + i] = 1.0);
            let at = order[labels.len()..].iter().map(|&r| r as i64).collect();
            (
                int_tensor(at, [k], &device),
                Tensor::from_data(TensorData::new(of_edit, [edits, k]), &device),
            )
        });
        Ok(Self {
            groups,
            hooks,
            row_edit: int_tensor(
                rows.iter().map(|&r| l.edit_of_row[r] as i64).collect(),
                [rows.len()],
                &device,
            ),
            labels: int_tensor(row_label, [n, 1], &device),
            assign: Tensor::from_data(TensorData::new(assign, [edits, n]), &device),
            kl,
            kl_reference: Default::default(),
            label_rows: labels.iter().enumerate().map(|(i, &j)| (j, order[i])).collect(),
            scored: n,
            first: rows.contains(&0),
        })
    }

    /// The part's loss per edit at `delta` (algo §4): the NLL of its labels, the KL term of its KL
    /// rows, and where `init_sq` (‖v_init‖² per edit) is given, the norm term.
    fn forward(
        &self,
        model: &LanguageModel<B>,
        delta: Tensor<B::InnerBackend, 2>,
        layer: usize,
        h: &MethodHparams,
        init_sq: Option<&Tensor<B, 1>>,
    ) -> Result<PartPass<B>> {
        let edits = self.assign.dims()[0];
        let leaf = Tensor::<B, 2>::from_inner(delta).require_grad();
        let row_deltas = leaf.clone().select(0, self.row_edit.clone());
        let logits = self.groups.iter().zip(&self.hooks).map(|(g, hooks)| {
            let start = Start::After {
                layer,
                hidden: add_at_first_column(
                    g.hidden.clone(),
                    row_deltas.clone().select(0, g.index.clone()),
                ),
            };
            let logits = model
                .forward_from(start, &g.suffixes, hooks, Some(&mut g.cache.clone()))
                .logits
                .expect("full pass");
            logits.squeeze_dim::<2>(0)
        });
        let log_probs = activation::log_softmax(Tensor::cat(logits.collect(), 0), 1);
        let top = h
            .mpes_patience
            .map(|_| log_probs.clone().inner().argmax(1).into_data().iter::<i64>().collect());
        let mut loss = self
            .assign
            .clone()
            .matmul(log_probs.clone().gather(1, self.labels.clone()).neg())
            .reshape([edits]);
        if let Some((rows, of_edit)) = &self.kl {
            let kl_lp = log_probs.select(0, rows.clone());
            let reference = self.kl_reference.get_or_init(|| kl_lp.clone().detach()).clone();
            let kl = (kl_lp.clone().exp() * (kl_lp - reference)).sum_dim(1);
            loss = loss + of_edit.clone().matmul(kl).reshape([edits]) * h.kl_factor;
        }
        if let Some(init_sq) = init_sq {
            // ‖δ‖, with a tiny offset so its gradient at δ = 0 is 0 rather than NaN (as torch.norm's).
            let delta_norm =
                (leaf.clone().powi_scalar(2).sum_dim(1).reshape([edits]) + 1e-24).sqrt();
            loss = loss + delta_norm / init_sq.clone() * h.v_weight_decay;
        }
        let losses = host(loss.clone().inner())?;
        Ok(PartPass { leaf, loss, losses, top })
    }
}

/// MPES (arXiv 2502.01636): an edit's search stops once its target was the most probable token at
/// every label position (`correct`, with `label_edit` the edit of each label) for more than
/// `patience` consecutive evaluations; `counts` carries those runs between steps.
fn mpes_stop(
    correct: &[bool],
    label_edit: &[usize],
    counts: &mut [usize],
    patience: usize,
) -> Vec<bool> {
    let mut all = vec![true; counts.len()];
    for (&c, &e) in correct.iter().zip(label_edit) {
        all[e] &= c;
    }
    counts
        .iter_mut()
        .zip(&all)
        .map(|(n, &ok)| {
            *n = if ok { *n + 1 } else { 0 };
            *n > patience
        })
        .collect()
}

/// Rows of the search whose recomputed tokens are run as one padded pass, with what the search
/// never changes there, from one pass of the unedited model over the whole rows.
struct Group<B: Backend> {
    /// Rows of the layout, in this group's order, and their positions among their part's rows.
    rows: Vec<usize>,
    index: Tensor<B, 1, Int>,
    /// Keys and values of every layer and column.
    cache: KvCache<B>,
    /// Block `layer`'s output at the recomputed tokens, laid out as `suffixes`.
    hidden: Tensor<B, 3>,
    /// The recomputed tokens of each row (`Layout::ranges`).
    suffixes: PromptBatch<B>,
    /// The `space` activation at each row's subject token, `[rows, d]`.
    at_lookup: Tensor<B, 2>,
}

impl<B: Backend> Group<B> {
    fn new(
        model: &LanguageModel<B>,
        l: &Layout,
        rows: Vec<usize>,
        index: Vec<usize>,
        layer: usize,
        space: Activation,
    ) -> Result<Self> {
        let batch = model.batch(
            &rows.iter().map(|&r| l.sequences[r].clone()).collect::<Vec<_>>(),
            Padding::Right,
        )?;
        let ranges: Vec<Range<usize>> = rows.iter().map(|&r| l.ranges[r].clone()).collect();
        let mut cache = KvCache::default();
        // Every block runs (their keys and values are cached); no logits are needed.
        let hooks = Hooks {
            capture: vec![layer],
            stop_after: Some(model.dims.num_layers - 1),
            ..Hooks::default()
        };
        let trace = model.forward_cached(&batch, &hooks, Some(&mut cache));
        let lookup: Vec<usize> = rows.iter().map(|&r| l.lookup[r]).collect();
        let at_lookup = rows_at(&trace, layer, space, &lookup);
        let hidden = batch.take(trace.layers[&layer].hidden.clone(), &ranges);
        let index =
            int_tensor(index.iter().map(|&i| i as i64).collect(), [index.len()], &model.device());
        Ok(Self { rows, index, cache, hidden, suffixes: batch.suffixes(&ranges)?, at_lookup })
    }
}

/// Matrix-product FLOPs of one step's pass (the blocks above `layer` on every group's recomputed
/// tokens, the head at the `scored` positions), as [`editbench_models::flops`] counts them.
fn step_pass_flops<B: Backend>(
    model: &LanguageModel<B>,
    groups: &[Group<B>],
    layer: usize,
    scored: usize,
) -> f64 {
    let blocks = model.dims.num_layers - layer - 1;
    let pass = |g: &Group<B>| {
        let (rows, t) = (g.suffixes.rows(), g.suffixes.width());
        model.pass_flops(rows * t, g.cache.columns(layer + 1) + t, blocks, 0)
    };
    groups.iter().map(pass).sum::<f64>() + model.head_flops(scored)
}

/// `(group, index in the group)` of each of the layout's `rows`.
fn places<B: Backend>(groups: &[Group<B>], rows: usize) -> Vec<(usize, usize)> {
    let mut place = vec![(0, 0); rows];
    for (g, group) in groups.iter().enumerate() {
        for (i, &row) in group.rows.iter().enumerate() {
            place[row] = (g, i);
        }
    }
    place
}

/// The extra cost of one more pass, in recomputed token slots. Measured since the output head stopped
/// being repacked at every product (`bench targets`, SmolLM2, 16 edits, CPU, two runs of each in one
/// session): 128 → 3.62 / 3.87 s per edit, 48 → 3.47 / 3.51, 16 → 3.32 / 3.47 (22 % fewer FLOPs
/// than 128), 4 no better than 16.
const PASS_COST: usize = 16;

/// Rows grouped by the length of their recomputed range so that little padding is computed: the
/// partition of the sorted distinct lengths into consecutive groups with the least
/// `Σ rows · longest + PASS_COST · groups`.
fn group_rows(ranges: &[Range<usize>]) -> Vec<Vec<usize>> {
    let mut lengths: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let count: Vec<usize> =
        lengths.iter().map(|&n| ranges.iter().filter(|r| r.len() == n).count()).collect();
    // best[j]: cheapest grouping of the first j lengths, whose last group starts at cut[j].
    let (mut best, mut cut) = (vec![0usize; lengths.len() + 1], vec![0usize; lengths.len() + 1]);
    for j in 1..=lengths.len() {
        best[j] = usize::MAX;
        for i in 0..j {
            let cost = best[i] + PASS_COST + count[i..j].iter().sum::<usize>() * lengths[j - 1];
            if cost < best[j] {
                (best[j], cut[j]) = (cost, i);
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = lengths.len();
    while j > 0 {
        let within = lengths[cut[j]]..=lengths[j - 1];
        groups.push((0..ranges.len()).filter(|&r| within.contains(&ranges[r].len())).collect());
        j = cut[j];
    }
    groups.reverse();
    groups
}

/// Per group, the hooks that compute logits at its share of the `scored` `(row, token)` pairs
/// (rows recomputed from `ranges[row].start`); and `order`: the row of each scored pair, in `scored`
/// order, in the groups' concatenated logits.
fn logits_hooks<B: Backend>(
    groups: &[Group<B>],
    place: &[(usize, usize)],
    ranges: &[Range<usize>],
    scored: &[(usize, usize)],
) -> (Vec<Hooks>, Vec<usize>) {
    let mut at: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    let mut items: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
    for (k, &(row, token)) in scored.iter().enumerate() {
        let (g, i) = place[row];
        at[g].push(i * groups[g].suffixes.width() + token - ranges[row].start);
        items[g].push(k);
    }
    let mut order = vec![0; scored.len()];
    for (j, &k) in items.iter().flatten().enumerate() {
        order[k] = j;
    }
    let hooks =
        at.into_iter().map(|at| Hooks { logits_at: Some(at), ..Hooks::default() }).collect();
    (hooks, order)
}

/// `hidden: [rows, t, d]` with row `r` of `deltas: [rows, d]` added at column 0.
fn add_at_first_column<B: Backend>(hidden: Tensor<B, 3>, deltas: Tensor<B, 2>) -> Tensor<B, 3> {
    let [rows, t, d] = hidden.dims();
    let first = hidden.clone().slice([0..rows, 0..1, 0..d]) + deltas.unsqueeze_dim::<3>(1);
    if t == 1 {
        return first;
    }
    Tensor::cat(vec![first, hidden.slice([0..rows, 1..t, 0..d])], 1)
}

/// One Adam step (β = (0.9, 0.999), ε = 1e-8, no weight decay) on the rows where `mask` is 1.
fn adam_step<B: Backend>(
    x: Tensor<B, 2>,
    m: Tensor<B, 2>,
    v: Tensor<B, 2>,
    grad: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    lr: f64,
    step: usize,
) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
    let (b1, b2) = ADAM_BETAS;
    let m = m * b1 + grad.clone() * (1.0 - b1);
    let v = v * b2 + grad.powi_scalar(2) * (1.0 - b2);
    let m_hat = m.clone() / (1.0 - b1.powi(step as i32));
    let v_hat = v.clone() / (1.0 - b2.powi(step as i32));
    let update = m_hat / (v_hat.sqrt() + ADAM_EPS) * lr;
    (x - update * mask, m, v)
}

/// Rescales each row of `delta` whose norm exceeds `factor · ‖init row‖` to that norm.
fn clamp_rows<B: Backend>(delta: Tensor<B, 2>, init: Tensor<B, 2>, factor: f64) -> Tensor<B, 2> {
    let [e, d] = delta.dims();
    let max = init.powi_scalar(2).sum_dim(1).sqrt() * factor;
    let norm = delta.clone().powi_scalar(2).sum_dim(1).sqrt();
    let scale = (max / norm.clamp_min(1e-12)).clamp_max(1.0);
    delta * scale.expand([e, d])
}

/// Targets found on the unedited model, shared by every editor of a run. A target depends on the
/// model, the request, the templates, the layer, the space and the search's hyperparameters — not on
/// the batch it is edited in — so cells that differ only in batch size or solver reuse them.
/// Requests are searched in fixed chunks of a canonical list, so a target's value never depends on
/// which cell asked first.
#[derive(Debug)]
pub struct TargetCache {
    requests: Vec<EditRequest>,
    chunk: usize,
    /// (settings key, request index) → that request's column of the search's result.
    found: std::collections::HashMap<(String, usize), Found>,
    /// Where searched chunks are also kept on disk (one JSON file each), so a resumed run reuses them.
    dir: Option<PathBuf>,
}

/// A searched chunk on disk: the settings key, the chunk's requests and their targets.
#[derive(Serialize, Deserialize)]
struct ChunkFile {
    key: String,
    requests: Vec<EditRequest>,
    found: Vec<Found>,
}

/// One request's share of a [`Targets`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Found {
    z: Vec<f64>,
    v_init: Vec<f64>,
    steps: usize,
    loss: f64,
}

impl Targets {
    /// Edit `j`'s share.
    fn found(&self, j: usize) -> Found {
        let column = |m: &Mat<f64>| m.col(j).iter().copied().collect();
        Found {
            z: column(&self.z),
            v_init: column(&self.v_init),
            steps: self.steps[j],
            loss: self.loss[j],
        }
    }

    /// The targets of the edits `found`, in order (`d = d_model`).
    fn from_found(found: &[&Found], d: usize) -> Self {
        let matrix =
            |f: fn(&Found) -> &Vec<f64>| Mat::from_fn(d, found.len(), |r, c| f(found[c])[r]);
        Self {
            z: matrix(|f| &f.z),
            v_init: matrix(|f| &f.v_init),
            steps: found.iter().map(|f| f.steps).collect(),
            loss: found.iter().map(|f| f.loss).collect(),
        }
    }
}

impl TargetCache {
    /// Caches targets of `requests` (the canonical order), searched `chunk` at a time.
    pub fn new(requests: Vec<EditRequest>, chunk: usize) -> Self {
        Self { requests, chunk: chunk.max(1), found: Default::default(), dir: None }
    }

    /// Also keeps every searched chunk in `dir`, and reads chunks found there instead of searching
    /// them (a file whose settings or requests differ is ignored and rewritten).
    pub fn persisted_in(mut self, dir: PathBuf) -> Self {
        self.dir = Some(dir);
        self
    }

    fn chunk_path(&self, key: &str, chunk: usize) -> Option<PathBuf> {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        self.dir.as_ref().map(|d| d.join(format!("targets-{}-{chunk:05}.json", &digest[..16])))
    }

    fn load_chunk(&self, key: &str, chunk: usize, requests: &[EditRequest]) -> Option<Vec<Found>> {
        let path = self.chunk_path(key, chunk)?;
        let file: ChunkFile = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
        let valid =
            file.key == key && file.requests == requests && file.found.len() == requests.len();
        if !valid {
            tracing::warn!(
                "{}: written for other settings or requests; searching again",
                path.display()
            );
        }
        valid.then_some(file.found)
    }

    fn save_chunk(
        &self,
        key: &str,
        chunk: usize,
        requests: &[EditRequest],
        found: &[Found],
    ) -> Result<()> {
        let Some(path) = self.chunk_path(key, chunk) else { return Ok(()) };
        let file =
            ChunkFile { key: key.to_string(), requests: requests.to_vec(), found: found.to_vec() };
        let json = serde_json::to_string(&file).expect("targets serialise");
        tensor_file::replace_file(&path, |tmp| {
            std::fs::write(tmp, json).map_err(|e| EditError::file(tmp, e))
        })
    }

    /// [`target_values`] of `requests` on the unedited `model`, from the cache where present.
    /// Requests outside the canonical list are searched directly.
    pub fn targets<B: AutodiffBackend>(
        &mut self,
        model: &LanguageModel<B::InnerBackend>,
        requests: &[EditRequest],
        templates: &ContextTemplates,
        layer: usize,
        space: Activation,
        h: &MethodHparams,
    ) -> Result<Targets> {
        let Some(indices) = requests
            .iter()
            .map(|r| self.requests.iter().position(|c| c == r))
            .collect::<Option<Vec<usize>>>()
        else {
            return target_values::<B>(model, requests, templates, layer, space, h);
        };
        let mut key = serde_json::json!({
            "model": model.path, "layer": layer, "space": format!("{space:?}"), "templates": templates,
            "search": [h.v_num_grad_steps as f64, h.v_lr, h.v_weight_decay, h.clamp_norm_factor, h.kl_factor],
        });
        // Only when on, so the keys (and files) of searches without MPES stay as they were.
        if let Some(patience) = h.mpes_patience {
            key["mpes_patience"] = serde_json::json!(patience);
        }
        if model.dtype() != WeightDType::F32 {
            key["weight_dtype"] = serde_json::json!(model.dtype());
        }
        let key = key.to_string();
        let mut chunks: Vec<usize> = indices
            .iter()
            .filter(|&&i| !self.found.contains_key(&(key.clone(), i)))
            .map(|i| i / self.chunk)
            .collect();
        chunks.dedup();
        for c in chunks {
            let range = c * self.chunk..((c + 1) * self.chunk).min(self.requests.len());
            let chunk_requests = &self.requests[range.clone()];
            let found = match self.load_chunk(&key, c, chunk_requests) {
                Some(found) => found,
                None => {
                    let targets =
                        target_values::<B>(model, chunk_requests, templates, layer, space, h)?;
                    let found: Vec<Found> =
                        (0..chunk_requests.len()).map(|j| targets.found(j)).collect();
                    self.save_chunk(&key, c, chunk_requests, &found)?;
                    found
                }
            };
            for (i, f) in range.zip(found) {
                self.found.insert((key.clone(), i), f);
            }
        }
        let cached: Vec<&Found> = indices.iter().map(|&i| &self.found[&(key.clone(), i)]).collect();
        Ok(Targets::from_found(&cached, model.dims.hidden_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(lengths: &[usize]) -> Vec<Range<usize>> {
        lengths.iter().map(|&n| 3..3 + n).collect()
    }

    #[test]
    fn targets_split_into_edits_and_join_back_in_order() {
        let t = Targets {
            z: Mat::from_fn(3, 4, |i, j| (10 * i + j) as f64),
            v_init: Mat::from_fn(3, 4, |i, j| -((10 * i + j) as f64)),
            steps: vec![1, 2, 3, 4],
            loss: vec![0.1, 0.2, 0.3, 0.4],
        };
        let found: Vec<Found> = [2, 0].iter().map(|&j| t.found(j)).collect();
        let joined = Targets::from_found(&found.iter().collect::<Vec<_>>(), 3);
        assert_eq!(joined.z, Mat::from_fn(3, 2, |i, j| (10 * i + [2, 0][j]) as f64));
        assert_eq!(joined.v_init, Mat::from_fn(3, 2, |i, j| -((10 * i + [2, 0][j]) as f64)));
        assert_eq!((joined.steps, joined.loss), (vec![3, 1], vec![0.3, 0.1]));
    }

    #[test]
    fn chunks_hold_at_most_size_edits_and_stay_within_the_budget() {
        assert_eq!(chunks_within(&[1; 7], 3, 100), [3, 3, 1]);
        assert_eq!(chunks_within(&[4, 4, 4, 9, 1, 1], 8, 10), [2, 1, 2, 1]);
        // An edit over the budget alone is a chunk of its own.
        assert_eq!(chunks_within(&[3, 20, 3], 8, 10), [1, 1, 1]);
        assert!(chunks_within(&[], 8, 10).is_empty());
    }

    #[test]
    fn the_row_estimate_counts_caches_backward_inputs_and_vocabulary_rows() {
        let dims = ModelDims {
            num_layers: 3,
            hidden_size: 4,
            intermediate_size: 8,
            vocab_size: 10,
            max_positions: 16,
            parameters: 0,
        };
        // K/V 5 tokens × 3 layers × 2 × 4 × 4 B = 480; 2 recomputed tokens × 2 blocks above layer 1
        // × (24 + 24) × 4 B = 768; 4 × 3 scored × 10 × 4 B = 480.
        assert_eq!(search_row_bytes(&dims, 1, 5, 2, 3), 480 + 768 + 480);
    }

    #[test]
    fn mpes_stops_an_edit_after_patience_steps_of_its_target_ranking_first_everywhere() {
        // Edit 0 has labels 0 and 1, edit 1 has label 2.
        let edits = [0, 0, 1];
        let mut counts = vec![0, 0];
        assert_eq!(mpes_stop(&[true, false, true], &edits, &mut counts, 1), [false, false]);
        assert_eq!(counts, [0, 1]);
        assert_eq!(mpes_stop(&[true, true, true], &edits, &mut counts, 1), [false, true]);
        // A label that falls back resets the run.
        assert_eq!(mpes_stop(&[true, true, false], &edits, &mut counts, 1), [true, false]);
        assert_eq!(counts, [2, 0]);
        let mut counts = vec![0, 0];
        assert_eq!(mpes_stop(&[true, true, true], &edits, &mut counts, 0), [true, true]);
    }

    #[test]
    fn rows_are_split_into_parts_of_about_equal_recomputed_tokens_in_layout_order() {
        // One edit: six rewriting rows of 5-7 tokens and a KL row of one.
        let lengths = [6, 5, 7, 6, 6, 5, 1];
        let parts = split_rows(&ranges(&lengths), 2);
        let load = |rows: &Vec<usize>| rows.iter().map(|&r| lengths[r]).sum::<usize>();
        assert_eq!(parts.len(), 2);
        assert!(load(&parts[0]).abs_diff(load(&parts[1])) <= 1, "{parts:?}");
        assert!(parts.iter().all(|rows| rows.windows(2).all(|w| w[0] < w[1])));
        let mut all = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        // One part: every row, in order; never more parts than rows.
        assert_eq!(split_rows(&ranges(&lengths), 1), vec![(0..7).collect::<Vec<_>>()]);
        assert_eq!(split_rows(&ranges(&[3, 2]), 4).len(), 2);
    }

    #[test]
    fn rows_are_grouped_only_where_padding_costs_more_than_a_pass() {
        // Similar lengths: one pass.
        assert_eq!(group_rows(&ranges(&[2, 1, 2, 3])), vec![vec![0, 1, 2, 3]]);
        // 100 rows of 1 token and 100 of 20: padding the short ones would cost 1,900 slots > PASS_COST.
        let mixed: Vec<usize> = (0..200).map(|i| if i % 2 == 0 { 1 } else { 20 }).collect();
        let groups = group_rows(&ranges(&mixed));
        assert_eq!(groups.len(), 2);
        assert!(
            groups[0].iter().all(|&r| mixed[r] == 1) && groups[1].iter().all(|&r| mixed[r] == 20)
        );
        // Every row exactly once, whatever the lengths.
        let lengths: Vec<usize> = (0..300).map(|i| 1 + (i * 7919) % 13).collect();
        let mut all: Vec<usize> = group_rows(&ranges(&lengths)).concat();
        all.sort_unstable();
        assert_eq!(all, (0..300).collect::<Vec<_>>());
    }
}
