//! UltraEdit (Gu et al., arXiv 2505.14679; public code XiaojieGu/UltraEdit `editor/ultraedit.py`):
//! lifelong editing in one closed-form step per round, without covariance statistics or a target
//! search.
//!
//! Per round, one forward and backward pass of the edits' prompts followed by their answers gives,
//! at every edited layer and at every position that predicts an answer token, the key `k` (the
//! input of the MLP's output projection) and the gradient `g` of the round's mean answer
//! cross-entropy at that projection's output. "Lifelong normalization": the running mean and
//! standard deviation of the stacked features `[k; g]` over every round so far normalize them to
//! `[k̂; ĝ]`; each position's pseudo-value is `v = −η ‖k̂‖² ĝ`, and each layer's update solves
//! the preservation–memorization objective with identity preservation (`C = I`, `λ = 1`):
//! `ΔW = V Kᵀ (K Kᵀ + I)⁻¹` ([`Memorization::LeastSquares`]). All layers are updated at once from
//! the features of the unedited-this-round model.
//!
//! Where editbench differs from the public code: the running variance is the exact merge of the
//! rows seen so far (Chan et al.; the code adds `m · var_unbiased` of a batch of `m` rows, i.e.
//! `m/(m − 1)` times its sum of squares), and statistics accumulate in f64. As in the code, one
//! normalizer serves every edited layer of the same shape, updated with each layer's rows in turn.

use std::collections::BTreeMap;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{activation, Int, Tensor, TensorData};
use editbench_models::{Hooks, LanguageModel, Padding, Patch, Site, Start, Write};
use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use crate::distribute::EditSession;
use crate::error::{EditError, Result};
use crate::keys::{host, locate, to_columns};
use crate::request::EditRequest;
use crate::score::target_ids;
use crate::solver::{preservation_memorization_update, Memorization, SolveError, Update};

/// Sequences per forward/backward pass (the round's loss is still the mean over all of them).
const ROWS_PER_PASS: usize = 16;

/// Added to the standard deviation before dividing, as the public code (float32's machine epsilon).
const STD_EPS: f64 = f32::EPSILON as f64;

/// Running mean and variance of feature columns, merged batch by batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningMeanStd {
    /// Columns seen.
    pub n: f64,
    pub mean: Vec<f64>,
    /// Sum of squared deviations from the mean, per feature.
    pub m2: Vec<f64>,
}

impl RunningMeanStd {
    pub fn new(width: usize) -> Self {
        Self { n: 0.0, mean: vec![0.0; width], m2: vec![0.0; width] }
    }

    /// Adds the columns of `x` (`width × m`): `M2 += M2_x + δ² n m / (n + m)`, `δ` the difference
    /// of the means.
    pub fn update(&mut self, x: MatRef<'_, f64>) {
        let m = x.ncols() as f64;
        if m == 0.0 {
            return;
        }
        let total = self.n + m;
        for i in 0..x.nrows() {
            let row = x.row(i);
            let mean_x = row.iter().sum::<f64>() / m;
            let m2_x: f64 = row.iter().map(|v| (v - mean_x).powi(2)).sum();
            let delta = mean_x - self.mean[i];
            self.mean[i] += delta * m / total;
            self.m2[i] += m2_x + delta * delta * self.n * m / total;
        }
        self.n = total;
    }

    /// The unbiased standard deviation per feature (0 before two columns were seen).
    pub fn std(&self) -> Vec<f64> {
        let denominator = (self.n - 1.0).max(0.0) + STD_EPS;
        self.m2.iter().map(|m2| (m2 / denominator).sqrt()).collect()
    }

    /// `(x − mean) / (std + ε)` column by column.
    pub fn normalize(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let std = self.std();
        Mat::from_fn(x.nrows(), x.ncols(), |i, j| (x[(i, j)] - self.mean[i]) / (std[i] + STD_EPS))
    }
}

/// One edited layer's features of a round: keys `K` (`d_in × n`) and output gradients `G`
/// (`d_out × n`), one column per answer-predicting position.
#[derive(Debug, Clone)]
pub struct Features {
    pub keys: Mat<f64>,
    pub grads: Mat<f64>,
}

impl Features {
    /// `[K; G]`, `(d_in + d_out) × n`.
    fn stacked(&self) -> Mat<f64> {
        let d_in = self.keys.nrows();
        Mat::from_fn(d_in + self.grads.nrows(), self.keys.ncols(), |i, j| {
            if i < d_in {
                self.keys[(i, j)]
            } else {
                self.grads[(i - d_in, j)]
            }
        })
    }
}

/// The pseudo-values `v_j = −lr ‖k̂_j‖² ĝ_j` of normalized keys and gradients.
pub fn pseudo_values(keys_hat: MatRef<'_, f64>, grads_hat: MatRef<'_, f64>, lr: f64) -> Mat<f64> {
    let coefficient: Vec<f64> =
        (0..keys_hat.ncols()).map(|j| -lr * keys_hat.col(j).squared_norm_l2()).collect();
    Mat::from_fn(grads_hat.nrows(), grads_hat.ncols(), |i, j| coefficient[j] * grads_hat[(i, j)])
}

/// Every layer's update of one round: the normalizer takes each layer's `[K; G]` (in layer
/// order), then each layer's features are normalized with the updated statistics and solved.
pub fn round_updates(
    features: &BTreeMap<usize, Features>,
    normalizer: &mut RunningMeanStd,
    lr: f64,
) -> std::result::Result<BTreeMap<usize, Update>, (usize, SolveError)> {
    let stacked: BTreeMap<usize, Mat<f64>> =
        features.iter().map(|(&l, f)| (l, f.stacked())).collect();
    stacked.values().for_each(|z| normalizer.update(z.as_ref()));
    features
        .iter()
        .map(|(&layer, f)| {
            let d_in = f.keys.nrows();
            let z = normalizer.normalize(stacked[&layer].as_ref());
            let v = pseudo_values(z.subrows(0, d_in), z.subrows(d_in, f.grads.nrows()), lr);
            let identity = Mat::<f64>::identity(d_in, d_in);
            preservation_memorization_update(
                identity.as_ref(),
                f.keys.as_ref(),
                v.as_ref(),
                Memorization::LeastSquares { lambda: 1.0 },
            )
            .map(|update| (layer, update))
            .map_err(|error| (layer, error))
        })
        .collect()
}

/// The rows of one round: each request's prompt followed by its answer but the last token, and
/// `(row, column, label)` of every position that predicts an answer token.
struct AnswerRows {
    sequences: Vec<Vec<u32>>,
    labels: Vec<(usize, usize, u32)>,
}

fn answer_rows<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    requests: &[EditRequest],
) -> Result<AnswerRows> {
    let tokenizer = model.tokenizer()?;
    let mut rows = AnswerRows { sequences: vec![], labels: vec![] };
    for (row, request) in requests.iter().enumerate() {
        let mut ids = locate(tokenizer, "{}", request, "")?.ids;
        let answer = target_ids(tokenizer, &request.prompt_text(), &request.target())?;
        let start = ids.len() - 1;
        rows.labels.extend(answer.iter().enumerate().map(|(j, &a)| (row, start + j, a)));
        ids.extend_from_slice(&answer[..answer.len() - 1]);
        rows.sequences.push(ids);
    }
    Ok(rows)
}

/// The round's [`Features`] at `layers` on `model`: the gradient of the mean cross-entropy of all
/// the requests' answer tokens, read by a zero additive patch at each layer's MLP output.
pub fn answer_features<B: AutodiffBackend>(
    model: &LanguageModel<B::InnerBackend>,
    requests: &[EditRequest],
    layers: &[usize],
) -> Result<BTreeMap<usize, Features>> {
    let rows = answer_rows(model, requests)?;
    let total = rows.labels.len();
    let grad_model = LanguageModel::<B>::from_inner(model);
    let (d, d_ff) = (model.dims.hidden_size, model.dims.intermediate_size);
    let mut flat: BTreeMap<usize, (Vec<f32>, Vec<f32>)> =
        layers.iter().map(|&l| (l, (vec![], vec![]))).collect();
    for first in (0..rows.sequences.len()).step_by(ROWS_PER_PASS) {
        let end = (first + ROWS_PER_PASS).min(rows.sequences.len());
        let batch = grad_model.batch(&rows.sequences[first..end], Padding::Right)?;
        let (b, t) = (end - first, batch.width());
        let here: Vec<&(usize, usize, u32)> =
            rows.labels.iter().filter(|(r, _, _)| (first..end).contains(r)).collect();
        let at: Vec<i64> = here.iter().map(|&&(r, c, _)| ((r - first) * t + c) as i64).collect();
        let n = at.len();
        let device = grad_model.device();
        let mask = Tensor::ones([b, t, 1], &device);
        let leaves: Vec<Tensor<B, 3>> =
            layers.iter().map(|_| Tensor::zeros([b, t, d], &device).require_grad()).collect();
        let patches: Vec<Patch<B>> = layers
            .iter()
            .zip(&leaves)
            .map(|(&layer, leaf)| Patch {
                site: Site::Mlp,
                layer,
                mask: mask.clone(),
                value: leaf.clone(),
                write: Write::Add,
            })
            .collect();
        let hooks = Hooks {
            capture: layers.to_vec(),
            logits_at: Some(at.iter().map(|&i| i as usize).collect()),
            ..Hooks::default()
        };
        let trace = grad_model.forward_patched(Start::Tokens, &batch, &hooks, &patches);
        let logits = trace.logits.as_ref().expect("full pass").clone().squeeze_dim::<2>(0);
        let labels: Vec<i64> = here.iter().map(|&&(_, _, a)| a as i64).collect();
        let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), &device);
        // This pass's share of the round's mean: its answer tokens' summed NLL over all of them.
        let loss = activation::log_softmax(logits, 1).gather(1, labels).sum().neg() / total as f64;
        let grads = loss.backward();
        let index = Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(at, [n]), &device);
        for (&layer, leaf) in layers.iter().zip(&leaves) {
            let g = leaf.grad(&grads).ok_or_else(|| {
                EditError::Input(format!("layer {layer}: no gradient reached the MLP output"))
            })?;
            let key = trace.layers[&layer].key.clone().inner();
            let entry = flat.get_mut(&layer).expect("one entry per layer");
            entry.0.extend(host(key.reshape([b * t, d_ff]).select(0, index.clone()))?);
            entry.1.extend(host(g.reshape([b * t, d]).select(0, index.clone()))?);
        }
    }
    Ok(flat
        .into_iter()
        .map(|(l, (k, g))| {
            (l, Features { keys: to_columns(&k, total, d_ff), grads: to_columns(&g, total, d) })
        })
        .collect())
}

/// One UltraEdit round on `model`: the [`answer_features`] of `requests` at `layers`, the
/// normalizer updated with them, every layer's update ([`round_updates`]) written at once, the
/// original weights kept in `session`.
pub fn edit_round<B: AutodiffBackend>(
    model: &mut LanguageModel<B::InnerBackend>,
    requests: &[EditRequest],
    layers: &[usize],
    normalizer: &mut RunningMeanStd,
    lr: f64,
    session: &mut EditSession<B::InnerBackend>,
) -> Result<()> {
    let features = answer_features::<B>(model, requests, layers)?;
    let updates = round_updates(&features, normalizer, lr)
        .map_err(|(layer, error)| EditError::Solve { layer, error })?;
    for (layer, update) in updates {
        session.write(model, layer, &update.delta);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix (no RNG dependency in the math tests).
    fn matrix(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
        Mat::from_fn(rows, cols, |i, j| {
            let x = (i as u64 * 7919 + j as u64 * 104_729 + seed * 1_000_003) % 10_007;
            (x as f64 / 10_007.0 - 0.5) * (1.0 + i as f64)
        })
    }

    fn columns(m: &Mat<f64>, range: std::ops::Range<usize>) -> Mat<f64> {
        m.subcols(range.start, range.len()).to_owned()
    }

    #[test]
    fn running_statistics_equal_those_of_all_columns_for_any_split() {
        let x = matrix(5, 23, 1);
        let (mut whole, mut parts) = (RunningMeanStd::new(5), RunningMeanStd::new(5));
        whole.update(x.as_ref());
        for range in [0..1, 1..8, 8..8, 8..20, 20..23] {
            parts.update(columns(&x, range).as_ref());
        }
        for i in 0..5 {
            let row: Vec<f64> = x.row(i).iter().copied().collect();
            let mean = row.iter().sum::<f64>() / 23.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 22.0;
            for s in [&whole, &parts] {
                assert!((s.mean[i] - mean).abs() < 1e-12);
                // The ε in the denominator (as the public code's) moves it by ~3e-9 relative.
                assert!((s.std()[i] / var.sqrt() - 1.0).abs() < 1e-8);
            }
        }
        assert_eq!(parts.n, 23.0);
    }

    #[test]
    fn normalized_columns_have_zero_mean_and_unit_variance() {
        let x = matrix(4, 30, 2);
        let mut s = RunningMeanStd::new(4);
        s.update(x.as_ref());
        let z = s.normalize(x.as_ref());
        for i in 0..4 {
            let mean = z.row(i).iter().sum::<f64>() / 30.0;
            let var = z.row(i).iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 29.0;
            assert!(mean.abs() < 1e-9 && (var - 1.0).abs() < 1e-6, "row {i}: {mean} {var}");
        }
    }

    #[test]
    fn pseudo_values_scale_each_gradient_by_minus_lr_times_its_key_norm() {
        let k = Mat::from_fn(2, 2, |i, j| [[3.0, 0.0], [4.0, 1.0]][i][j]);
        let g = Mat::from_fn(3, 2, |i, j| (i + 3 * j) as f64);
        let v = pseudo_values(k.as_ref(), g.as_ref(), 0.5);
        // ‖k_0‖² = 25, ‖k_1‖² = 1.
        assert_eq!(v, Mat::from_fn(3, 2, |i, j| [-12.5, -0.5][j] * (i + 3 * j) as f64));
    }

    /// The update meets the normal equations of `min ‖ΔW K − V‖² + ‖ΔW‖²`:
    /// `ΔW (K Kᵀ + I) = V Kᵀ`, at every layer of the round.
    #[test]
    fn each_layer_update_meets_the_ridge_normal_equations() {
        let features: BTreeMap<usize, Features> = [3usize, 5]
            .iter()
            .map(|&l| {
                let seed = l as u64;
                (l, Features { keys: matrix(6, 9, seed), grads: matrix(4, 9, seed + 10) })
            })
            .collect();
        let mut normalizer = RunningMeanStd::new(10);
        let updates = round_updates(&features, &mut normalizer, 1e-2).expect("solvable");
        assert_eq!(normalizer.n, 18.0);
        for (l, f) in &features {
            let z = normalizer.normalize(f.stacked().as_ref());
            let v = pseudo_values(z.subrows(0, 6), z.subrows(6, 4), 1e-2);
            let kkt = &f.keys * f.keys.transpose() + Mat::<f64>::identity(6, 6);
            let residual = &updates[l].delta * &kkt - &v * f.keys.transpose();
            assert!(residual.norm_max() < 1e-10, "layer {l}: {}", residual.norm_max());
        }
    }
}
