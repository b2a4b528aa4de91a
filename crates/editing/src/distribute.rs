//! Writing a batch of edits into the model (spec §6): targets at the last edited layer, then for
//! each edited layer bottom-up keys on the current model, the residual share `(Z − H)/(n − i)`, the
//! method's closed-form update, written in place at once. `single` distribution is the case n = 1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use editbench_models::LanguageModel;
use faer::Mat;
use serde::Serialize;

use crate::context::ContextTemplates;
use crate::error::{EditError, Result};
use crate::hparams::{Distribution, Method, MethodHparams};
use crate::keys::{keys, prompt_activation, Activation};
use crate::request::EditRequest;
use crate::solver::{null_space_projector, preservation_memorization_update, Memorization};
use crate::targets::{target_values, TargetCache};

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

    pub fn edited_layers(&self) -> Vec<usize> {
        self.originals.keys().copied().collect()
    }
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
    /// AlphaEdit: per layer the null-space projector and `Σ K_p K_pᵀ` of edits already written.
    null_space: BTreeMap<usize, (Mat<f64>, Mat<f64>)>,
    /// Targets on the unedited model shared with other editors, when given.
    target_cache: Option<Arc<Mutex<TargetCache>>>,
}

impl Editor {
    pub fn new(method: Method, distribution: Distribution, hparams: MethodHparams, templates: ContextTemplates, covariances: BTreeMap<usize, Mat<f64>>) -> Result<Self> {
        let layers = hparams.layers(distribution);
        if let Some(l) = layers.iter().find(|l| !covariances.contains_key(l)) {
            return Err(EditError::Input(format!("no key statistics for layer {l}")));
        }
        let mut null_space = BTreeMap::new();
        if method == Method::Alphaedit {
            for &l in &layers {
                let (p, dim) = null_space_projector(covariances[&l].as_ref(), hparams.nullspace_threshold).map_err(|error| EditError::Solve { layer: l, error })?;
                if dim == 0 {
                    return Err(EditError::Input(format!("AlphaEdit: no eigenvalue of C at layer {l} is below nullspace_threshold {}; raise it", hparams.nullspace_threshold)));
                }
                tracing::info!("layer {l}: null space of dimension {dim} (eigenvalues of C below {})", hparams.nullspace_threshold);
                let d = p.nrows();
                null_space.insert(l, (p, Mat::zeros(d, d)));
            }
        }
        Ok(Self { method, distribution, hparams, templates, covariances, null_space, target_cache: None })
    }

    /// Takes targets from (and adds them to) `cache` while the model is unedited.
    pub fn with_target_cache(mut self, cache: Arc<Mutex<TargetCache>>) -> Self {
        self.target_cache = Some(cache);
        self
    }

    pub fn layers(&self) -> Vec<usize> {
        self.hparams.layers(self.distribution)
    }

    /// Writes `requests` into `model` (ROME: one after another; the others: as one batch).
    pub fn apply<B: AutodiffBackend>(&mut self, model: &mut LanguageModel<B::InnerBackend>, requests: &[EditRequest], session: &mut EditSession<B::InnerBackend>) -> Result<EditOutcome> {
        for r in requests {
            r.check()?;
        }
        let mut outcome = EditOutcome { layers: self.layers(), ..Default::default() };
        let batches: Vec<&[EditRequest]> = match self.method {
            Method::Rome => requests.chunks(1).collect(),
            _ => vec![requests],
        };
        for batch in batches {
            self.apply_batch::<B>(model, batch, session, &mut outcome)?;
        }
        Ok(outcome)
    }

    fn apply_batch<B: AutodiffBackend>(&mut self, model: &mut LanguageModel<B::InnerBackend>, requests: &[EditRequest], session: &mut EditSession<B::InnerBackend>, outcome: &mut EditOutcome) -> Result<()> {
        let layers = self.layers();
        let top = *layers.last().expect("at least one layer");
        // ROME's target lives in the MLP output of the edited layer, the others' in the residual stream.
        let space = match self.method {
            Method::Rome => Activation::Value,
            _ => Activation::Hidden,
        };
        let t = Instant::now();
        let targets = match &self.target_cache {
            Some(cache) if session.originals.is_empty() => cache.lock().expect("target cache lock").targets::<B>(model, requests, &self.templates, top, space, &self.hparams)?,
            _ => target_values::<B>(model, requests, &self.templates, top, space, &self.hparams)?,
        };
        outcome.seconds_targets += t.elapsed().as_secs_f64();
        outcome.target_steps.extend(&targets.steps);

        for (i, &layer) in layers.iter().enumerate() {
            let t = Instant::now();
            let k = keys(model, requests, &self.templates, layer)?;
            let current = prompt_activation(model, requests, top, space)?;
            outcome.seconds_keys += t.elapsed().as_secs_f64();

            let t = Instant::now();
            let remaining = &targets.z - &current;
            let residual = &remaining * faer::Scale(1.0 / (layers.len() - i) as f64);
            tracing::debug!("layer {layer}: ‖K‖ {:.3e}, ‖Z − H‖ {:.3e}, ‖R‖ {:.3e}", k.norm_l2(), remaining.norm_l2(), residual.norm_l2());
            let update = self.solve(layer, k.as_ref(), residual.as_ref(), requests.len())?;
            outcome.max_condition_estimate = match (outcome.max_condition_estimate, update.condition_estimate) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            outcome.used_pseudo_inverse |= update.used_pseudo_inverse;
            let w = model.mlp_out(layer).matrix();
            session.originals.entry(layer).or_insert_with(|| w.clone());
            let delta = mat_to_tensor::<B::InnerBackend>(&update.delta, &w.device());
            model.mlp_out_mut(layer).set_matrix(w + delta);
            outcome.seconds_solve += t.elapsed().as_secs_f64();
        }
        if self.method == Method::Alphaedit {
            for &layer in &layers {
                let k = keys(model, requests, &self.templates, layer)?;
                let previous = &mut self.null_space.get_mut(&layer).expect("projector per layer").1;
                *previous += &k * k.transpose();
            }
        }
        Ok(())
    }

    /// The method's closed-form update for one layer (spec §5).
    fn solve(&self, layer: usize, k: faer::MatRef<'_, f64>, r: faer::MatRef<'_, f64>, batch: usize) -> Result<crate::solver::Update> {
        let h = &self.hparams;
        let c = &self.covariances[&layer];
        let scaled = |a: f64| {
            let mut c = c * faer::Scale(a);
            for i in 0..c.nrows() {
                c[(i, i)] += h.update_norm_lambda;
            }
            c
        };
        let result = match self.method {
            Method::Rome => preservation_memorization_update(c.as_ref(), k, r, Memorization::Equality { mu: 0.0 }),
            Method::Emmet => {
                let mu = if batch > 1 { h.emmet_lambda } else { 0.0 };
                preservation_memorization_update(scaled(h.mom2_update_weight).as_ref(), k, r, Memorization::Equality { mu })
            }
            Method::Memit => preservation_memorization_update(scaled(1.0).as_ref(), k, r, Memorization::LeastSquares { lambda: h.mom2_update_weight }),
            Method::Alphaedit => {
                let (p, previous) = &self.null_space[&layer];
                preservation_memorization_update(c.as_ref(), k, r, Memorization::NullSpace { projector: p.as_ref(), previous: previous.as_ref(), alpha: h.alphaedit_l2 })
            }
        };
        result.map_err(|error| EditError::Solve { layer, error })
    }
}

fn mat_to_tensor<B: Backend>(m: &Mat<f64>, device: &B::Device) -> Tensor<B, 2> {
    let (r, c) = (m.nrows(), m.ncols());
    let data: Vec<f32> = (0..r).flat_map(|i| (0..c).map(move |j| m[(i, j)] as f32)).collect();
    Tensor::from_data(TensorData::new(data, [r, c]), device)
}
