//! Hyperparameters: typed structs with serde defaults, one YAML file per model family
//! (`hparams/*.yaml` at the repository root) holding every method's values.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// ROME as the official code writes it (algo §5.2; ROME-ref and UME `rome/compute_u.py`,
    /// `compute_v.py`): rank one, direction `C⁻¹k̄` from the template-averaged key, exact on the
    /// bare prompt's key `k_p` — `ΔW = (v* − W k_p)(C⁻¹k̄)ᵀ / (k_pᵀC⁻¹k̄)`. Reproduces the paper's
    /// ROME rows; edits applied one after another.
    Rome,
    /// r-ROME ("Rebuilding ROME", arXiv 2403.07175; rROME `compute_u.py`/`compute_v.py`): the
    /// averaged key everywhere, `ΔW = (v* − W k̄)(C⁻¹k̄)ᵀ / (k̄ᵀC⁻¹k̄)`, so `Ŵ k̄ = v*` exactly.
    #[serde(rename = "r-rome")]
    RRome,
    /// Least-squares memorization (algo §5.3).
    Memit,
    /// Batched equality constraint (algo §5.4).
    Emmet,
    /// Null-space-projected least squares (algo §5.5).
    Alphaedit,
    /// ENCORE (arXiv 2502.01636; knowledge-editing-regularization `encore/encore_main.py`): MEMIT's
    /// least squares with a norm term and the keys of earlier rounds among the preserved ones,
    /// `ΔW = R Kᵀ (λ C + ν I + Σ K_p K_pᵀ + K Kᵀ)⁻¹`, and most-probable early stopping of the
    /// target search.
    Encore,
    /// UltraEdit (arXiv 2505.14679; XiaojieGu/UltraEdit `editor/ultraedit.py`): per round, keys and
    /// loss gradients at the answer positions, normalized by their running statistics, solved
    /// with identity preservation at every edited layer at once (`crate::ultraedit`). No key
    /// statistics, no target search.
    Ultraedit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// The whole update at one layer.
    Single,
    /// MEMIT's edit-distribution algorithm: the residual is spread over several layers (algo §6).
    Spread,
}

macro_rules! string_enum {
    ($ty:ty, $what:literal, $($variant:path => $name:literal),+) => {
        impl FromStr for $ty {
            type Err = EditError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($name => Ok($variant),)+
                    other => Err(EditError::Input(format!(concat!("unknown ", $what, " `{}` (", $($name, " ",)+ ")"), other))),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($variant => $name,)+ })
            }
        }
    };
}
string_enum!(Method, "method", Method::Rome => "rome", Method::RRome => "r-rome", Method::Memit => "memit", Method::Emmet => "emmet", Method::Alphaedit => "alphaedit", Method::Encore => "encore", Method::Ultraedit => "ultraedit");
string_enum!(Distribution, "distribution", Distribution::Single => "single", Distribution::Spread => "spread");

/// How context templates are made (algo §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// Sampled from the model with top-k 5, seeded (the reference's behaviour, made reproducible).
    #[default]
    Sampled,
    /// The seed words themselves ("The. {}", ...): deterministic and model-independent.
    Fixed,
}

/// Hyperparameters of one method for one model family. Field names follow the reference code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodHparams {
    /// The layer edited with `distribution: single`.
    pub layer: usize,
    /// The layers edited with `distribution: spread`, ascending; targets live at the last.
    pub spread_layers: Vec<usize>,
    /// Adam steps of the target search (at most `v_num_grad_steps − 1` are taken).
    #[serde(default = "d::steps")]
    pub v_num_grad_steps: usize,
    #[serde(default = "d::lr")]
    pub v_lr: f64,
    /// Norm penalty `v_weight_decay · ‖δ‖ / ‖v_init‖²`.
    #[serde(default = "d::weight_decay")]
    pub v_weight_decay: f64,
    /// `‖δ‖` is clamped to `clamp_norm_factor · ‖v_init‖`.
    #[serde(default = "d::clamp")]
    pub clamp_norm_factor: f64,
    #[serde(default = "d::kl")]
    pub kl_factor: f64,
    /// MEMIT's λ; EMMET scales C by it (`C' = a·C`).
    #[serde(default = "d::one")]
    pub mom2_update_weight: f64,
    /// EMMET's regulariser μ on `KᵀC⁻¹K`, added for batches larger than one.
    #[serde(default = "d::emmet_lambda")]
    pub emmet_lambda: f64,
    /// Added to the diagonal of C (`C' + ν I`), EMMET, MEMIT and ENCORE (its `λ_n`).
    #[serde(default)]
    pub update_norm_lambda: f64,
    /// AlphaEdit's L2 weight α.
    #[serde(default = "d::alpha")]
    pub alphaedit_l2: f64,
    /// AlphaEdit: eigenvalues of C below this span the null space.
    #[serde(default = "d::nullspace")]
    pub nullspace_threshold: f64,
    #[serde(default)]
    pub templates: TemplateKind,
    #[serde(default)]
    pub template_seed: u64,
    /// UltraEdit's step size η (`v = −η ‖k̂‖² ĝ`; the public code's 1e-6 for every model). Left
    /// out of the serialised form at that value, so the cell ids of the other methods stay as
    /// they were before it existed.
    #[serde(default = "d::ultraedit_lr", skip_serializing_if = "d::is_ultraedit_lr")]
    pub ultraedit_lr: f64,
    /// Most-probable early stopping (MPES, arXiv 2502.01636) of the target search: an edit stops
    /// once every rewriting prompt ranks each target token first, after this many further steps.
    /// Off when absent (the reference runs every step until the loss falls below 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpes_patience: Option<usize>,
    /// Context templates from this JSON file instead of `templates` (see
    /// `ContextTemplates::load`; e.g. the official run's `data/reference/context_templates.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_file: Option<std::path::PathBuf>,
}

mod d {
    pub fn steps() -> usize {
        25
    }
    pub fn lr() -> f64 {
        0.5
    }
    pub fn weight_decay() -> f64 {
        1e-3
    }
    pub fn clamp() -> f64 {
        4.0
    }
    pub fn kl() -> f64 {
        0.0625
    }
    pub fn one() -> f64 {
        1.0
    }
    pub fn emmet_lambda() -> f64 {
        0.1
    }
    pub fn alpha() -> f64 {
        10.0
    }
    pub fn nullspace() -> f64 {
        2e-2
    }
    pub fn ultraedit_lr() -> f64 {
        1e-6
    }
    pub fn is_ultraedit_lr(lr: &f64) -> bool {
        *lr == ultraedit_lr()
    }
    pub fn keys_per_dim() -> f64 {
        10.0
    }
    pub fn max_length() -> usize {
        1024
    }
    pub fn batch_tokens() -> usize {
        4096
    }
}

impl Method {
    /// ROME and r-ROME: rank-one edits written one after another, targets in the MLP's output
    /// space, ROME's 21 context templates.
    pub fn is_rank_one(self) -> bool {
        matches!(self, Self::Rome | Self::RRome)
    }

    /// Whether the method keeps the keys of its earlier rounds among the preserved ones.
    pub fn keeps_previous_keys(self) -> bool {
        matches!(self, Self::Alphaedit | Self::Encore)
    }

    /// Whether the method solves against the keys' second moment `C` (all but UltraEdit), and
    /// so needs key statistics and a target search.
    pub fn needs_statistics(self) -> bool {
        self != Self::Ultraedit
    }
}

impl MethodHparams {
    /// The edited layers for `distribution`, ascending.
    pub fn layers(&self, distribution: Distribution) -> Vec<usize> {
        match distribution {
            Distribution::Single => vec![self.layer],
            Distribution::Spread => self.spread_layers.clone(),
        }
    }
}

/// Statistics of the keys' second moment (algo §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsHparams {
    /// Corpus paragraphs (lines) sampled, or `auto`.
    #[serde(default)]
    pub samples: Samples,
    /// With `samples: auto`, keys collected per key dimension `d_in` (`m`).
    #[serde(default = "d::keys_per_dim")]
    pub keys_per_dim: f64,
    /// Each paragraph is truncated to this many tokens.
    #[serde(default = "d::max_length")]
    pub max_length: usize,
    /// Padded tokens per forward pass.
    #[serde(default = "d::batch_tokens")]
    pub batch_tokens: usize,
    /// Seed of the `seeded` sampler (the `reference` sampler always uses the official seed, 1).
    #[serde(default)]
    pub seed: u64,
    /// Which paragraphs are sampled, in which order.
    #[serde(default)]
    pub sampler: Sampler,
}

impl Default for StatsHparams {
    fn default() -> Self {
        Self {
            samples: Samples::default(),
            keys_per_dim: d::keys_per_dim(),
            max_length: d::max_length(),
            batch_tokens: d::batch_tokens(),
            seed: 0,
            sampler: Sampler::default(),
        }
    }
}

/// How much of the corpus the key statistics read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Samples {
    /// The first `n` paragraphs of the sampler's order (the reference: 2,000, algo §2).
    Count(usize),
    /// "Minimal precomputation" (arXiv 2506.04226): paragraphs in the sampler's order until the
    /// statistics hold `keys_per_dim × d_in` keys (tokens), every layer the same.
    Auto(AutoKeyword),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoKeyword {
    Auto,
}

impl Default for Samples {
    fn default() -> Self {
        Self::Count(2000)
    }
}

impl FromStr for Samples {
    type Err = EditError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto(AutoKeyword::Auto)),
            n => n.parse().map(Self::Count).map_err(|_| {
                EditError::Input(format!(
                    "samples `{n}`: expected a number of paragraphs or `auto`"
                ))
            }),
        }
    }
}

impl fmt::Display for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Auto(_) => f.write_str("auto"),
        }
    }
}

/// How the statistics' corpus paragraphs (its non-empty texts) are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sampler {
    /// A SplitMix64 shuffle seeded by `seed`: any seed, so the statistics' sampling variance can
    /// be measured.
    #[default]
    Seeded,
    /// The official code's `FixedRandomSubsetSampler`: CPython's `random.Random(1).shuffle` of the
    /// paragraph indices, the first `samples` taken (algo §2), reproduced bit for bit.
    Reference,
}
string_enum!(Sampler, "sampler", Sampler::Seeded => "seeded", Sampler::Reference => "reference");

/// Everything for one model family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyHparams {
    #[serde(default)]
    pub stats: StatsHparams,
    pub rome: MethodHparams,
    /// r-ROME; ROME's values when absent.
    #[serde(default, rename = "r-rome", skip_serializing_if = "Option::is_none")]
    pub r_rome: Option<MethodHparams>,
    pub memit: MethodHparams,
    pub emmet: MethodHparams,
    pub alphaedit: MethodHparams,
    /// ENCORE; when absent, MEMIT's values with the reference's ENCORE additions (ν = 10, MPES
    /// patience 2: `update_norm_lambda: 10`, `prob_cutoff: -3` in every ENCORE hparams file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encore: Option<MethodHparams>,
    /// UltraEdit: its layers (`spread_layers`, all edited at once) and `ultraedit_lr`; no default,
    /// since its layers follow the model's depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ultraedit: Option<MethodHparams>,
}

impl FamilyHparams {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EditError::file(path, e))?;
        let mut family: Self =
            serde_norway::from_str(&text).map_err(|e| EditError::file(path, e))?;
        if family.encore.is_none() {
            family.encore = Some(MethodHparams {
                update_norm_lambda: 10.0,
                mpes_patience: Some(2),
                ..family.memit.clone()
            });
        }
        Ok(family)
    }

    pub fn method(&self, method: Method) -> Result<&MethodHparams> {
        Ok(match method {
            Method::Rome => &self.rome,
            Method::RRome => self.r_rome.as_ref().unwrap_or(&self.rome),
            Method::Memit => &self.memit,
            Method::Emmet => &self.emmet,
            Method::Alphaedit => &self.alphaedit,
            Method::Encore => self.encore.as_ref().expect("FamilyHparams::load fills in encore"),
            Method::Ultraedit => self.ultraedit.as_ref().ok_or_else(|| {
                EditError::Input(
                    "ultraedit: the hparams file has no `ultraedit:` section (its layers follow \
                     the model's depth: e.g. `spread_layers` at 64-93 % of it, as GPT-J's 18-26)"
                        .into(),
                )
            })?,
        })
    }

    /// Checks every layer against the model's depth.
    pub fn check_layers(&self, num_layers: usize) -> Result<()> {
        for method in [
            Method::Rome,
            Method::RRome,
            Method::Memit,
            Method::Emmet,
            Method::Alphaedit,
            Method::Encore,
            Method::Ultraedit,
        ] {
            let Ok(h) = self.method(method) else { continue };
            let name = method.to_string();
            let mut all = h.spread_layers.clone();
            all.push(h.layer);
            if let Some(bad) = all.iter().find(|&&l| l >= num_layers) {
                return Err(EditError::Input(format!(
                    "{name}: layer {bad} is out of range (the model has {num_layers} layers)"
                )));
            }
            if h.spread_layers.is_empty() || h.spread_layers.windows(2).any(|w| w[0] >= w[1]) {
                return Err(EditError::Input(format!(
                    "{name}: spread_layers must be non-empty and ascending"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_a_count_or_auto_and_a_count_keeps_its_old_spelling() {
        // A count serialises as the bare number it always was, so existing statistics caches stay valid.
        assert_eq!(serde_json::to_value(Samples::Count(2000)).unwrap(), serde_json::json!(2000));
        assert_eq!(
            serde_json::to_value(Samples::Auto(AutoKeyword::Auto)).unwrap(),
            serde_json::json!("auto")
        );
        let h: StatsHparams = serde_norway::from_str("samples: auto\nkeys_per_dim: 4").unwrap();
        assert_eq!((h.samples, h.keys_per_dim), (Samples::Auto(AutoKeyword::Auto), 4.0));
        let h: StatsHparams = serde_norway::from_str("samples: 300").unwrap();
        assert_eq!((h.samples, h.keys_per_dim), (Samples::Count(300), 10.0));
        assert!(serde_norway::from_str::<StatsHparams>("samples: all").is_err());
        assert_eq!("auto".parse::<Samples>().unwrap().to_string(), "auto");
        assert_eq!("64".parse::<Samples>().unwrap(), Samples::Count(64));
        assert!("-3"
            .parse::<Samples>()
            .unwrap_err()
            .to_string()
            .contains("expected a number of paragraphs or `auto`"));
    }

    /// Every hyperparameter file the project ships parses, and its layers fit its model's depth.
    #[test]
    fn every_shipped_hparams_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hparams");
        let depth = [
            ("smollm2.yaml", 30),
            ("gpt-j-6b.yaml", 28),
            ("llama-2-7b.yaml", 32),
            ("gpt2-xl.yaml", 48),
        ];
        for (file, layers) in depth {
            let family =
                FamilyHparams::load(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            family.check_layers(layers).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        let shipped = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml"))
            .count();
        assert_eq!(shipped, depth.len(), "a new hparams file needs a line here");
    }
}
