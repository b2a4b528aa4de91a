//! Writing a batch of edits into the model (algo §6): targets at the last edited layer, then for
//! each edited layer bottom-up keys on the current model, the residual share `(Z − H)/(n − i)`, the
//! method's closed-form update, written in place at once. `single` distribution is the case n = 1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use editbench_models::LanguageModel;
use faer::{Mat, MatRef};
use serde::Serialize;

use crate::context::ContextTemplates;
use crate::error::{EditError, Result};
use crate::hparams::{Distribution, MethodHparams};
use crate::keys::{Activation, LayerKeys, PromptActivation};
use crate::methods::{Method, Restrain, Search, Solve};
use crate::request::EditRequest;
use crate::solver::null_space_projector;
use crate::targets::{target_values, TargetCache};
use crate::ultraedit::{edit_round, RunningMeanStd};

/// The original weights of every layer touched, for [`EditSession::revert`].
pub struct EditSession<B: Backend> {
    originals: BTreeMap<usize, Tensor<B, 2>>,
}

impl<B: Backend> Default for EditSession<B> {
    fn default() -> Self {
        Self { originals: BTreeMap::new() }
    }
}

impl<B: Backend> EditSession<B> {
    /// Restores every edited layer's original weight.
    pub fn revert(&mut self, model: &mut LanguageModel<B>) {
        for (layer, w) in std::mem::take(&mut self.originals) {
            model.mlp_out_mut(layer).set_matrix(w);
        }
    }

    /// Records `original` as `layer`'s weight before any edit, unless one is recorded already.
    pub fn record_original(&mut self, layer: usize, original: Tensor<B, 2>) {
        self.originals.entry(layer).or_insert(original);
    }

    /// Adds `delta` to `layer`'s weight, recording the original first.
    pub fn write(&mut self, model: &mut LanguageModel<B>, layer: usize, delta: &Mat<f64>) {
        let w = model.mlp_out(layer).matrix();
        self.record_original(layer, w.clone());
        let delta = mat_to_tensor::<B>(delta, &w.device());
        model.mlp_out_mut(layer).set_matrix(w + delta);
    }

    pub fn edited_layers(&self) -> Vec<usize> {
        self.originals.keys().copied().collect()
    }

    /// Per edited layer `(layer, ‖W − W₀‖_F, ‖W₀‖_F)`: how far the accumulated update has moved
    /// the weight, in f64.
    pub fn update_norms(&self, model: &LanguageModel<B>) -> Result<Vec<(usize, f64, f64)>> {
        self.originals
            .iter()
            .map(|(&layer, original)| {
                let now = read_weights(model.mlp_out(layer).matrix())?;
                let before = read_weights(original.clone())?;
                let (change, norm) = frobenius_change(&now, &before);
                Ok((layer, change, norm))
            })
            .collect()
    }
}

/// `(‖a − b‖_F, ‖b‖_F)` of two equally shaped matrices, accumulated in f64.
pub fn frobenius_change(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut change, mut norm) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        change += (x as f64 - y as f64).powi(2);
        norm += (y as f64).powi(2);
    }
    (change.sqrt(), norm.sqrt())
}

/// Seconds spent per phase, and what the solves reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EditOutcome {
    pub layers: Vec<usize>,
    pub seconds_targets: f64,
    pub seconds_keys: f64,
    pub seconds_solve: f64,
    /// Adam steps per edit.
    pub target_steps: Vec<usize>,
    /// Largest condition estimate of the systems solved.
    pub max_condition_estimate: Option<f64>,
    pub used_pseudo_inverse: bool,
}

/// A method with its hyperparameters, layer statistics and state across batches.
pub struct Editor {
    pub method: Method,
    pub distribution: Distribution,
    pub hparams: MethodHparams,
    pub templates: ContextTemplates,
    /// `C` per edited layer (normalised second moment).
    covariances: BTreeMap<usize, Mat<f64>>,
    /// AlphaEdit: the null-space projector per layer.
    projectors: BTreeMap<usize, Mat<f64>>,
    /// AlphaEdit and ENCORE: per layer `Σ K_p K_pᵀ` of the keys this editor already wrote.
    previous: BTreeMap<usize, Mat<f64>>,
    /// Targets on the unedited model shared with other editors, when given.
    target_cache: Option<Arc<Mutex<TargetCache>>>,
    /// UltraEdit: the running statistics of its features (made at its first round).
    normalizer: Option<RunningMeanStd>,
}

impl Editor {
    pub fn new(
        method: Method,
        distribution: Distribution,
        hparams: MethodHparams,
        templates: ContextTemplates,
        covariances: BTreeMap<usize, Mat<f64>>,
    ) -> Result<Self> {
        let layers = hparams.layers(distribution);
        let missing = layers.iter().find(|l| !covariances.contains_key(l));
        if let Some(l) = missing.filter(|_| method.needs_statistics()) {
            return Err(EditError::Input(format!("no key statistics for layer {l}")));
        }
        let mut projectors = BTreeMap::new();
        if method == Method::Alphaedit {
            for &l in &layers {
                let (p, dim) =
                    null_space_projector(covariances[&l].as_ref(), hparams.nullspace_threshold)
                        .map_err(|error| EditError::Solve { layer: l, error })?;
                if dim == 0 {
                    return Err(EditError::Input(format!("AlphaEdit: no eigenvalue of C at layer {l} is below nullspace_threshold {}; raise it", hparams.nullspace_threshold)));
                }
                tracing::info!(
                    "layer {l}: null space of dimension {dim} (eigenvalues of C below {})",
                    hparams.nullspace_threshold
                );
                projectors.insert(l, p);
            }
        }
        let zeros = |l: usize| Mat::zeros(covariances[&l].nrows(), covariances[&l].nrows());
        let previous = if method.keeps_previous_keys() {
            layers.iter().map(|&l| (l, zeros(l))).collect()
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            method,
            distribution,
            hparams,
            templates,
            covariances,
            projectors,
            previous,
            target_cache: None,
            normalizer: None,
        })
    }

    /// Forgets every earlier round (their keys, UltraEdit's statistics), as a new editor would,
    /// keeping what depends only on the statistics (AlphaEdit's projectors: an eigendecomposition
    /// of `C` per layer, ~0.5 s for SmolLM2's layer 4).
    pub fn reset(&mut self) {
        for previous in self.previous.values_mut() {
            previous.fill(0.0);
        }
        self.normalizer = None;
    }

    /// Takes targets from (and adds them to) `cache` while the model is unedited.
    pub fn with_target_cache(mut self, cache: Arc<Mutex<TargetCache>>) -> Self {
        self.target_cache = Some(cache);
        self
    }

    pub fn layers(&self) -> Vec<usize> {
        self.hparams.layers(self.distribution)
    }

    /// AlphaEdit and ENCORE: per layer `Σ K_p K_pᵀ` of the keys written so far (empty for the
    /// other methods).
    pub fn previous_keys(&self) -> &BTreeMap<usize, Mat<f64>> {
        &self.previous
    }

    /// Replaces the keys written so far (a [`crate::checkpoint::Checkpoint`]'s); refused unless
    /// `previous` holds exactly this editor's layers at its key width.
    pub fn set_previous_keys(&mut self, previous: BTreeMap<usize, Mat<f64>>) -> Result<()> {
        let fits = previous.len() == self.previous.len()
            && previous.iter().all(|(l, m)| {
                self.previous
                    .get(l)
                    .is_some_and(|own| (own.nrows(), own.ncols()) == (m.nrows(), m.ncols()))
            });
        if !fits {
            let shapes = |p: &BTreeMap<usize, Mat<f64>>| {
                p.iter()
                    .map(|(l, m)| format!("{l}: {}×{}", m.nrows(), m.ncols()))
                    .collect::<Vec<_>>()
            };
            return Err(EditError::Input(format!(
                "earlier keys for layers {:?}; this {:?} editor keeps {:?}",
                shapes(&previous),
                self.method,
                shapes(&self.previous)
            )));
        }
        self.previous = previous;
        Ok(())
    }

    /// UltraEdit: its features' running statistics so far (none before its first round).
    pub fn normalizer(&self) -> Option<&RunningMeanStd> {
        self.normalizer.as_ref()
    }

    /// Replaces UltraEdit's running statistics (a [`crate::checkpoint::Checkpoint`]'s).
    pub fn set_normalizer(&mut self, normalizer: Option<RunningMeanStd>) {
        self.normalizer = normalizer;
    }

    /// Writes `requests` into `model` (ROME: one after another; UltraEdit: one round; the others:
    /// as one batch).
    pub fn apply<B: AutodiffBackend>(
        &mut self,
        model: &mut LanguageModel<B::InnerBackend>,
        requests: &[EditRequest],
        session: &mut EditSession<B::InnerBackend>,
    ) -> Result<EditOutcome> {
        for r in requests {
            r.check()?;
        }
        let mut outcome = EditOutcome { layers: self.layers(), ..Default::default() };
        if self.method == Method::Ultraedit {
            let width = model.dims.intermediate_size + model.dims.hidden_size;
            let normalizer = self.normalizer.get_or_insert_with(|| RunningMeanStd::new(width));
            let t = Instant::now();
            let (lr, layers) = (self.hparams.ultraedit_lr, &outcome.layers);
            edit_round::<B>(model, requests, layers, normalizer, lr, session)?;
            outcome.seconds_solve = t.elapsed().as_secs_f64();
            return Ok(outcome);
        }
        let batches: Vec<&[EditRequest]> =
            if self.method.is_rank_one() { requests.chunks(1).collect() } else { vec![requests] };
        for batch in batches {
            self.apply_batch::<B>(model, batch, session, &mut outcome)?;
        }
        Ok(outcome)
    }

    fn apply_batch<B: AutodiffBackend>(
        &mut self,
        model: &mut LanguageModel<B::InnerBackend>,
        requests: &[EditRequest],
        session: &mut EditSession<B::InnerBackend>,
        outcome: &mut EditOutcome,
    ) -> Result<()> {
        let layers = self.layers();
        let top = *layers.last().expect("at least one layer");
        // ROME's target lives in the MLP output of the edited layer, the others' in the residual stream.
        let space = match self.method.spec().search {
            Search::MlpOutput => Activation::Value,
            Search::Residual | Search::None => Activation::Hidden,
        };
        let t = Instant::now();
        let targets = match &self.target_cache {
            Some(cache) if session.originals.is_empty() => cache
                .lock()
                .expect("target cache lock")
                .targets::<B>(model, requests, &self.templates, top, space, &self.hparams)?,
            _ => target_values::<B>(model, requests, &self.templates, top, space, &self.hparams)?,
        };
        outcome.seconds_targets += t.elapsed().as_secs_f64();
        outcome.target_steps.extend(&targets.steps);

        // Each layer's keys are read after the layers below are edited; the readers rerun only the
        // blocks from the layer edited last.
        let t = Instant::now();
        let mut averaged = LayerKeys::new(model, requests, &self.templates)?;
        let mut bare = if self.method.is_rank_one() {
            Some(LayerKeys::new(model, requests, &ContextTemplates::bare())?)
        } else {
            None
        };
        let mut at_top = PromptActivation::new(model, requests)?;
        outcome.seconds_keys += t.elapsed().as_secs_f64();
        let mut written = Vec::new();
        for (i, &layer) in layers.iter().enumerate() {
            let t = Instant::now();
            let k = averaged.at(model, layer, layer)?;
            let bare_keys = bare.as_mut().map(|b| b.at(model, layer, layer)).transpose()?;
            let current = at_top.at(model, top, space, layer)?;
            outcome.seconds_keys += t.elapsed().as_secs_f64();

            let t = Instant::now();
            let remaining = &targets.z - &current;
            let mut residual = &remaining * faer::Scale(1.0 / (layers.len() - i) as f64);
            if let (Method::RRome, Some(k_p), true) = (self.method, &bare_keys, layer == top) {
                // r-ROME memorises v* on the averaged key: R = v* − W k̄ = (v* − W k_p) + W (k_p − k̄).
                residual += weight_times(model, layer, &(k_p - &k));
            }
            tracing::debug!(
                "layer {layer}: ‖K‖ {:.3e}, ‖Z − H‖ {:.3e}, ‖R‖ {:.3e}",
                k.norm_l2(),
                remaining.norm_l2(),
                residual.norm_l2()
            );
            let mut update =
                self.solve(layer, k.as_ref(), bare_keys.as_ref(), residual.as_ref())?;
            update.delta = self.restrain(model, session, layer, update.delta)?;
            outcome.max_condition_estimate =
                match (outcome.max_condition_estimate, update.condition_estimate) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            outcome.used_pseudo_inverse |= update.used_pseudo_inverse;
            session.write(model, layer, &update.delta);
            outcome.seconds_solve += t.elapsed().as_secs_f64();
            written.push((layer, k));
        }
        if self.method.keeps_previous_keys() {
            // A layer's keys depend only on the blocks below it and its own input side, which the
            // later edits of this batch (at higher layers' output projections) leave as they were.
            for (layer, k) in written {
                *self.previous.get_mut(&layer).expect("previous keys per layer") +=
                    &k * k.transpose();
            }
        }
        Ok(())
    }

    /// The method's closed-form update for one layer (algo §5); `bare_keys` are the rank-one
    /// methods' bare-prompt keys `k_p`.
    fn solve(
        &self,
        layer: usize,
        k: MatRef<'_, f64>,
        bare_keys: Option<&Mat<f64>>,
        r: MatRef<'_, f64>,
    ) -> Result<crate::solver::Update> {
        let update = self.method.spec().update.expect("a method with a target search solves");
        let input = Solve {
            hparams: &self.hparams,
            c: self.covariances[&layer].as_ref(),
            keys: k,
            bare_keys: bare_keys.map(|b| b.as_ref()),
            residuals: r,
            previous: self.previous.get(&layer).map(|p| p.as_ref()),
            projector: self.projectors.get(&layer).map(|p| p.as_ref()),
        };
        update(&input).map_err(|error| EditError::Solve { layer, error })
    }

    /// The method's restraint of a solved update (PRUNE, RECT), given the layer's weights.
    fn restrain<B: Backend>(
        &self,
        model: &LanguageModel<B>,
        session: &EditSession<B>,
        layer: usize,
        update: Mat<f64>,
    ) -> Result<Mat<f64>> {
        let Some(restrain) = self.method.spec().restrain else { return Ok(update) };
        let current = model.mlp_out(layer).matrix();
        let original = session.originals.get(&layer).cloned().unwrap_or_else(|| current.clone());
        let (current, original) = (tensor_to_mat(current)?, tensor_to_mat(original)?);
        let input = Restrain {
            hparams: &self.hparams,
            original: original.as_ref(),
            current: current.as_ref(),
            update,
        };
        restrain(&input)
    }
}

/// A weight matrix's values, row-major.
fn read_weights<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<f32>> {
    t.into_data().to_vec::<f32>().map_err(|e| EditError::Input(format!("reading weights: {e:?}")))
}

/// A weight matrix in f64.
fn tensor_to_mat<B: Backend>(t: Tensor<B, 2>) -> Result<Mat<f64>> {
    let [rows, cols] = t.dims();
    let values = read_weights(t)?;
    Ok(Mat::from_fn(rows, cols, |i, j| values[i * cols + j] as f64))
}

/// `W x` for the edited projection `W` of `layer` (`d_out × d_in`) and columns `x` (`d_in × n`).
fn weight_times<B: Backend>(model: &LanguageModel<B>, layer: usize, x: &Mat<f64>) -> Mat<f64> {
    let w = model.mlp_out(layer).matrix();
    let [d_out, _] = w.dims();
    let product = w.matmul(mat_to_tensor::<B>(x, &model.device()));
    let values = product.into_data().to_vec::<f32>().expect("f32 weights");
    Mat::from_fn(d_out, x.ncols(), |i, j| values[i * x.ncols() + j] as f64)
}

fn mat_to_tensor<B: Backend>(m: &Mat<f64>, device: &B::Device) -> Tensor<B, 2> {
    let (r, c) = (m.nrows(), m.ncols());
    let data: Vec<f32> = (0..r).flat_map(|i| (0..c).map(move |j| m[(i, j)] as f32)).collect();
    Tensor::from_data(TensorData::new(data, [r, c]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frobenius_norms_of_known_updates() {
        // W₀ = [[3, 0], [0, 4]] (‖W₀‖ = 5), ΔW = [[1, 2], [2, 0]] (‖ΔW‖ = 3).
        let before = [3.0, 0.0, 0.0, 4.0];
        let after = [4.0, 2.0, 2.0, 4.0];
        assert_eq!(frobenius_change(&after, &before), (3.0, 5.0));
        assert_eq!(frobenius_change(&before, &before), (0.0, 5.0));
    }

    /// MEMIT with a norm term ν solves `(λC + νI + KKᵀ) X = K` as the official code does, not
    /// `(λ(C + νI) + KKᵀ) X = K`; EMMET's preserved moment is the same `λC + νI`.
    #[test]
    fn the_norm_term_is_added_after_scaling_c() {
        let d = 6;
        let c = Mat::from_fn(d, d, |i, j| if i == j { 1.0 + i as f64 } else { 0.1 });
        let k = Mat::from_fn(d, 2, |i, j| ((i + 2 * j) as f64).sin());
        let r = Mat::from_fn(3, 2, |i, j| (i as f64 - j as f64) * 0.5);
        let yaml =
            "layer: 0\nspread_layers: [0]\nmom2_update_weight: 3.0\nupdate_norm_lambda: 2.0\n";
        let h: MethodHparams = serde_norway::from_str(yaml).unwrap();
        let editor = Editor::new(
            Method::Memit,
            Distribution::Single,
            h,
            ContextTemplates::bare(),
            [(0, c.clone())].into(),
        )
        .unwrap();
        let update = editor.solve(0, k.as_ref(), None, r.as_ref()).unwrap();
        let system = &c * faer::Scale(3.0)
            + Mat::<f64>::identity(d, d) * faer::Scale(2.0)
            + &k * k.transpose();
        let lhs = &update.delta * system;
        assert!((lhs - &r * k.transpose()).norm_l2() < 1e-10);
    }

    /// An editor of `method` on one layer with `C`, mass `weight` and norm term `nu`.
    fn editor(method: Method, c: &Mat<f64>, weight: f64, nu: f64) -> Editor {
        let yaml = format!("layer: 0\nspread_layers: [0]\nmom2_update_weight: {weight}\nupdate_norm_lambda: {nu}\n");
        let h: MethodHparams = serde_norway::from_str(&yaml).unwrap();
        Editor::new(
            method,
            Distribution::Single,
            h,
            ContextTemplates::bare(),
            [(0, c.clone())].into(),
        )
        .unwrap()
    }

    /// A checkpoint's earlier keys replace an editor's only when they name its layers at its width.
    #[test]
    fn earlier_keys_of_other_layers_or_widths_are_refused() {
        let c = Mat::<f64>::identity(4, 4);
        let mut encore = editor(Method::Encore, &c, 1.0, 0.0);
        for wrong in [
            BTreeMap::from([(1, Mat::zeros(4, 4))]),
            BTreeMap::from([(0, Mat::zeros(3, 3))]),
            BTreeMap::new(),
        ] {
            let error = encore.set_previous_keys(wrong).unwrap_err().to_string();
            assert!(error.contains("this Encore editor keeps [\"0: 4×4\"]"), "{error}");
        }
        let keys = Mat::from_fn(4, 4, |i, j| (i * 4 + j) as f64);
        encore.set_previous_keys(BTreeMap::from([(0, keys.clone())])).unwrap();
        assert_eq!(encore.previous_keys()[&0], keys);
        // Reset for the next independent batch: the earlier keys are forgotten, their shape kept.
        encore.reset();
        assert_eq!(encore.previous_keys()[&0], Mat::<f64>::zeros(4, 4));
        let mut memit = editor(Method::Memit, &c, 1.0, 0.0);
        assert!(memit.set_previous_keys(BTreeMap::new()).is_ok(), "MEMIT keeps no earlier keys");
    }

    /// A seeded random `C` (SPD), keys and residuals.
    fn problem(d: usize, b: usize, seed: u64) -> (Mat<f64>, Mat<f64>, Mat<f64>) {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let x = Mat::from_fn(d, 3 * d, |_, _| next());
        let c = &x * x.transpose() * faer::Scale(1.0 / (3 * d) as f64);
        (c, Mat::from_fn(d, b, |_, _| next()), Mat::from_fn(4, b, |_, _| next()))
    }

    /// ENCORE without the norm term and without earlier rounds is MEMIT; its update shrinks as
    /// the norm term ν grows.
    #[test]
    fn encore_is_memit_at_nu_zero_and_its_update_shrinks_with_nu() {
        for seed in 0..5 {
            let (c, k, r) = problem(8, 3, seed);
            let memit = editor(Method::Memit, &c, 2.0, 0.0)
                .solve(0, k.as_ref(), None, r.as_ref())
                .unwrap()
                .delta;
            let encore = editor(Method::Encore, &c, 2.0, 0.0)
                .solve(0, k.as_ref(), None, r.as_ref())
                .unwrap()
                .delta;
            assert!((&memit - &encore).norm_l2() < 1e-12 * memit.norm_l2(), "seed {seed}");
            let norms: Vec<f64> = [0.0, 0.1, 1.0, 10.0, 100.0]
                .iter()
                .map(|&nu| {
                    editor(Method::Encore, &c, 2.0, nu)
                        .solve(0, k.as_ref(), None, r.as_ref())
                        .unwrap()
                        .delta
                        .norm_l2()
                })
                .collect();
            assert!(norms.windows(2).all(|w| w[1] < w[0]), "seed {seed}: {norms:?}");
        }
    }

    /// ENCORE keeps earlier rounds' keys among the preserved ones: after one round, a second
    /// round's update moves the first round's keys less than MEMIT's does (which forgets them).
    #[test]
    fn encore_preserves_the_keys_of_earlier_rounds() {
        for seed in 0..5 {
            let (c, k1, _) = problem(8, 3, seed);
            let (_, k2, r2) = problem(8, 3, seed + 100);
            let mut encore = editor(Method::Encore, &c, 1.0, 0.0);
            *encore.previous.get_mut(&0).unwrap() += &k1 * k1.transpose();
            let with = encore.solve(0, k2.as_ref(), None, r2.as_ref()).unwrap().delta;
            let without = editor(Method::Memit, &c, 1.0, 0.0)
                .solve(0, k2.as_ref(), None, r2.as_ref())
                .unwrap()
                .delta;
            let (moved_with, moved_without) = ((&with * &k1).norm_l2(), (&without * &k1).norm_l2());
            assert!(
                moved_with < moved_without,
                "seed {seed}: ‖ΔW K₁‖ {moved_with:e} vs MEMIT {moved_without:e}"
            );
            // The system solved is (C + K₁K₁ᵀ + K₂K₂ᵀ) as in encore_main.py.
            let system = &c + &k1 * k1.transpose() + &k2 * k2.transpose();
            assert!((&with * system - &r2 * k2.transpose()).norm_l2() < 1e-9, "seed {seed}");
        }
    }
}
