//! Target values (spec §4): for each edit, the vector `z = v_init + δ` at one layer that makes the
//! model predict the new target, found by gradient descent on `δ`.
//!
//! All edits of a batch are optimised together: one forward/backward pass over every edit's
//! prompts per step, each edit with its own `δ` (the reference runs them one at a time). The loss is
//! the sum of the edits' losses, so each `δ` receives exactly its own gradient, and Adam is
//! per coordinate: the result equals independent optimisations.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{activation, Int, Tensor, TensorData};
use editbench_models::{Hooks, Intervention, LanguageModel, Padding, Site};
use faer::Mat;

use crate::context::ContextTemplates;
use crate::error::{EditError, Result};
use crate::hparams::MethodHparams;
use crate::keys::{host, locate, rows_at, to_columns, Activation};
use crate::request::EditRequest;
use crate::score::target_ids;

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
    /// Flat positions (`row · t + col`) whose logits are scored: labels first, then KL rows.
    label_positions: Vec<(usize, usize, u32)>,
    kl_rows: Vec<(usize, usize)>,
    /// Weight of each label in its edit's NLL: `1 / (T · prompts)`.
    label_weight: Vec<f32>,
    /// Row of each edit's bare-prompt rewriting sentence (template `{}`), for `v_init`.
    bare_row: Vec<usize>,
}

fn layout<B: Backend>(model: &LanguageModel<B>, requests: &[EditRequest], templates: &ContextTemplates) -> Result<Layout> {
    let tokenizer = model.tokenizer()?;
    let mut l = Layout { sequences: vec![], edit_of_row: vec![], lookup: vec![], label_positions: vec![], kl_rows: vec![], label_weight: vec![], bare_row: vec![] };
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
            l.sequences.push(ids);
            l.edit_of_row.push(e);
            l.lookup.push(sentence.lookup);
        }
        let kl_request = EditRequest { prompt: "{} is a".into(), ..request.clone() };
        let kl = locate(tokenizer, "{}", &kl_request, "")?;
        l.kl_rows.push((l.sequences.len(), kl.lookup));
        l.sequences.push(kl.ids);
        l.edit_of_row.push(e);
        l.lookup.push(kl.lookup);
    }
    Ok(l)
}

fn int_tensor<B: Backend, const D: usize>(values: Vec<i64>, shape: [usize; D], device: &B::Device) -> Tensor<B, D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Finds `z` for every request at `layer`, adding `δ` at `site` (spec §4).
pub fn target_values<B: AutodiffBackend>(
    model: &LanguageModel<B::InnerBackend>,
    requests: &[EditRequest],
    templates: &ContextTemplates,
    layer: usize,
    site: Site,
    h: &MethodHparams,
) -> Result<Targets> {
    let device = model.device();
    let grad_model = LanguageModel::<B>::from_inner(model);
    let l = layout(model, requests, templates)?;
    let (e, d) = (requests.len(), model.dims.hidden_size);
    let batch = grad_model.batch(&l.sequences, Padding::Right)?;
    let t = batch.width();
    let vocab = model.dims.vocab_size;

    let mut logits_at: Vec<usize> = l.label_positions.iter().map(|&(row, col, _)| row * t + col).collect();
    logits_at.extend(l.kl_rows.iter().map(|&(row, col)| row * t + col));
    let n_labels = l.label_positions.len();
    let labels = int_tensor::<B, 2>(l.label_positions.iter().map(|p| p.2 as i64).collect(), [n_labels, 1], &device);
    // A[e, j] = weight of label j in edit e's NLL.
    let mut assign = vec![0.0f32; e * n_labels];
    for (j, &(row, _, _)) in l.label_positions.iter().enumerate() {
        assign[l.edit_of_row[row] * n_labels + j] = l.label_weight[j];
    }
    let assign = Tensor::<B, 2>::from_data(TensorData::new(assign, [e, n_labels]), &device);
    let row_edit = int_tensor::<B, 1>(l.edit_of_row.iter().map(|&x| x as i64).collect(), [l.edit_of_row.len()], &device);

    let mut delta = Tensor::<B::InnerBackend, 2>::zeros([e, d], &device);
    let (mut m, mut v) = (delta.clone(), delta.clone());
    let mut active = vec![true; e];
    let mut steps = vec![0usize; e];
    let mut v_init: Option<Tensor<B::InnerBackend, 2>> = None;
    let mut kl_reference: Option<Tensor<B, 2>> = None;
    let mut losses = vec![0.0; e];
    let bar = indicatif::ProgressBar::new(h.v_num_grad_steps as u64).with_message(format!("target search, {e} edit(s) at layer {layer}"));
    bar.set_style(indicatif::ProgressStyle::with_template("{msg} {bar:30} step {pos}/{len} [{elapsed}]").expect("valid template"));

    for it in 0..h.v_num_grad_steps {
        bar.set_position(it as u64);
        let delta_ad = Tensor::<B, 2>::from_inner(delta.clone()).require_grad();
        let rows_delta = delta_ad.clone().select(0, row_edit.clone());
        let hooks = Hooks {
            capture: if v_init.is_none() { vec![layer] } else { vec![] },
            intervention: Some(Intervention::at_columns(layer, site, &batch, &l.lookup, rows_delta)),
            logits_at: Some(logits_at.clone()),
            ..Hooks::default()
        };
        let trace = grad_model.forward(&batch, &hooks);
        let init = v_init.get_or_insert_with(|| {
            let activation = if site == Site::MlpOutput { Activation::Value } else { Activation::Hidden };
            rows_at(&trace, layer, activation, &l.lookup).inner().select(0, int_tensor(l.bare_row.iter().map(|&r| r as i64).collect(), [e], &device))
        });
        let log_probs = activation::log_softmax(trace.logits.expect("full pass").reshape([logits_at.len(), vocab]), 1);
        let label_lp = log_probs.clone().slice([0..n_labels, 0..vocab]).gather(1, labels.clone());
        let nll = assign.clone().matmul(label_lp.neg()).reshape([e]);
        let kl_lp = log_probs.slice([n_labels..n_labels + e, 0..vocab]);
        let reference = kl_reference.get_or_insert_with(|| kl_lp.clone().detach()).clone();
        let kl = (kl_lp.clone().exp() * (kl_lp - reference)).sum_dim(1).reshape([e]) * h.kl_factor;
        let init_sq = Tensor::<B, 1>::from_inner(init.clone().powi_scalar(2).sum_dim(1).reshape([e]));
        // ‖δ‖, with a tiny offset so its gradient at δ = 0 is 0 rather than NaN (as torch.norm's).
        let delta_norm = (delta_ad.clone().powi_scalar(2).sum_dim(1).reshape([e]) + 1e-24).sqrt();
        let loss = nll + kl + delta_norm / init_sq * h.v_weight_decay;
        losses = host(loss.clone().inner())?.into_iter().map(f64::from).collect();
        tracing::debug!("target search step {it}: losses {losses:.4?}");
        if let Some(bad) = losses.iter().position(|l| !l.is_finite()) {
            return Err(EditError::Input(format!("target search diverged at step {it} for `{}` (loss {})", requests[bad].prompt_text(), losses[bad])));
        }
        for (a, &loss) in active.iter_mut().zip(&losses) {
            *a &= loss >= LOSS_TARGET;
        }
        bar.set_message(format!("target search at layer {layer}: {} of {e} edit(s) still above loss {LOSS_TARGET}", active.iter().filter(|&&a| a).count()));
        if it + 1 == h.v_num_grad_steps || !active.iter().any(|&a| a) {
            break;
        }
        let grads = loss.sum().backward();
        let grad = delta_ad.grad(&grads).expect("δ requires a gradient");
        for (s, &a) in steps.iter_mut().zip(&active) {
            *s += a as usize;
        }
        let mask = Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(active.iter().map(|&a| a as u8 as f32).collect::<Vec<_>>(), [e, 1]), &device).expand([e, d]);
        (delta, m, v) = adam_step(delta, m, v, grad, mask, h.v_lr, it + 1);
        delta = clamp_rows(delta, init.clone(), h.clamp_norm_factor);
    }
    bar.finish_and_clear();
    let v_init = to_columns(&host(v_init.expect("first pass records v_init"))?, e, d);
    let delta = to_columns(&host(delta)?, e, d);
    Ok(Targets { z: &v_init + &delta, v_init, steps, loss: losses })
}

/// One Adam step (β = (0.9, 0.999), ε = 1e-8, no weight decay) on the rows where `mask` is 1.
fn adam_step<B: Backend>(x: Tensor<B, 2>, m: Tensor<B, 2>, v: Tensor<B, 2>, grad: Tensor<B, 2>, mask: Tensor<B, 2>, lr: f64, step: usize) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
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
/// model, the request, the templates, the layer, the site and the search's hyperparameters — not on
/// the batch it is edited in — so cells that differ only in batch size or solver reuse them.
/// Requests are searched in fixed chunks of a canonical list, so a target's value never depends on
/// which cell asked first.
#[derive(Debug)]
pub struct TargetCache {
    requests: Vec<EditRequest>,
    chunk: usize,
    /// (settings key, request index) → that request's column of the search's result.
    found: std::collections::HashMap<(String, usize), Found>,
}

/// One request's share of a [`Targets`].
#[derive(Debug, Clone)]
struct Found {
    z: Vec<f64>,
    v_init: Vec<f64>,
    steps: usize,
    loss: f64,
}

impl TargetCache {
    /// Caches targets of `requests` (the canonical order), searched `chunk` at a time.
    pub fn new(requests: Vec<EditRequest>, chunk: usize) -> Self {
        Self { requests, chunk: chunk.max(1), found: Default::default() }
    }

    /// [`target_values`] of `requests` on the unedited `model`, from the cache where present.
    /// Requests outside the canonical list are searched directly.
    pub fn targets<B: AutodiffBackend>(&mut self, model: &LanguageModel<B::InnerBackend>, requests: &[EditRequest], templates: &ContextTemplates, layer: usize, site: Site, h: &MethodHparams) -> Result<Targets> {
        let Some(indices) = requests.iter().map(|r| self.requests.iter().position(|c| c == r)).collect::<Option<Vec<usize>>>() else {
            return target_values::<B>(model, requests, templates, layer, site, h);
        };
        let key = serde_json::json!({
            "model": model.path, "layer": layer, "site": format!("{site:?}"), "templates": templates,
            "search": [h.v_num_grad_steps as f64, h.v_lr, h.v_weight_decay, h.clamp_norm_factor, h.kl_factor],
        })
        .to_string();
        let mut chunks: Vec<usize> = indices.iter().filter(|&&i| !self.found.contains_key(&(key.clone(), i))).map(|i| i / self.chunk).collect();
        chunks.dedup();
        for c in chunks {
            let range = c * self.chunk..((c + 1) * self.chunk).min(self.requests.len());
            let found = target_values::<B>(model, &self.requests[range.clone()], templates, layer, site, h)?;
            for (j, i) in range.enumerate() {
                let column = |m: &Mat<f64>| m.col(j).iter().copied().collect();
                self.found.insert((key.clone(), i), Found { z: column(&found.z), v_init: column(&found.v_init), steps: found.steps[j], loss: found.loss[j] });
            }
        }
        let cached: Vec<&Found> = indices.iter().map(|&i| &self.found[&(key.clone(), i)]).collect();
        let matrix = |f: fn(&Found) -> &Vec<f64>| Mat::from_fn(model.dims.hidden_size, requests.len(), |r, c| f(cached[c])[r]);
        Ok(Targets { z: matrix(|f| &f.z), v_init: matrix(|f| &f.v_init), steps: cached.iter().map(|f| f.steps).collect(), loss: cached.iter().map(|f| f.loss).collect() })
    }
}
