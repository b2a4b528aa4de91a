//! Hyperparameters: typed structs with serde defaults, one YAML file per model family
//! (`hparams/*.yaml` at the repository root) holding every method's values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::methods::{Method, Section, METHODS};

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
    /// PRUNE's logarithm base `b` (`σ ↦ log_b σ − log_b σ_max(W₀) + σ_max(W₀)`; the reference's
    /// `log1_2`). Left out of the serialised form at that value, as `ultraedit_lr`.
    #[serde(default = "d::prune_log_base", skip_serializing_if = "d::is_prune_log_base")]
    pub prune_log_base: f64,
    /// RECT: the share of each update's entries kept, by relative change (the paper's 20 %).
    #[serde(default = "d::rect_keep_percent", skip_serializing_if = "d::is_rect_keep_percent")]
    pub rect_keep_percent: f64,
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
    pub fn prune_log_base() -> f64 {
        1.2
    }
    pub fn is_prune_log_base(b: &f64) -> bool {
        *b == prune_log_base()
    }
    pub fn rect_keep_percent() -> f64 {
        20.0
    }
    pub fn is_rect_keep_percent(k: &f64) -> bool {
        *k == rect_keep_percent()
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

/// Everything for one model family: the key statistics and one section per method, named as the
/// method ([`crate::methods::METHODS`]). A method without a section takes the one its row derives
/// it from, or is unavailable for the family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyHparams {
    pub stats: StatsHparams,
    sections: BTreeMap<Method, MethodHparams>,
}

/// As an hparams file: each section with only the fields its method uses, so it loads again.
impl Serialize for FamilyHparams {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let mut map = serializer.serialize_map(Some(1 + self.sections.len()))?;
        map.serialize_entry("stats", &self.stats)?;
        for (method, h) in &self.sections {
            let serde_norway::Value::Mapping(mut fields) =
                serde_norway::to_value(h).map_err(S::Error::custom)?
            else {
                return Err(S::Error::custom("a method's hyperparameters are a mapping"));
            };
            fields.retain(|k, _| k.as_str().is_some_and(|k| method.check_field(k).is_ok()));
            map.serialize_entry(method, &fields)?;
        }
        map.end()
    }
}

impl FamilyHparams {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EditError::file(path, e))?;
        Self::parse(&text).map_err(|e| match e {
            EditError::Input(m) => EditError::file(path, m),
            other => other,
        })
    }

    /// An hparams file's text: every section's fields checked against its method's.
    pub fn parse(text: &str) -> Result<Self> {
        let yaml = |e: serde_norway::Error| EditError::Input(e.to_string());
        let root: serde_norway::Mapping = serde_norway::from_str(text).map_err(yaml)?;
        let mut stats = StatsHparams::default();
        let mut sections = BTreeMap::new();
        for (key, value) in root {
            let key = key.as_str().unwrap_or_default().to_string();
            if key == "stats" {
                stats = serde_norway::from_value(value).map_err(|e| section_error("stats", e))?;
                continue;
            }
            let method: Method = key.parse().map_err(|e: EditError| {
                EditError::Input(format!("section `{key}`: not `stats` and {e}"))
            })?;
            let serde_norway::Value::Mapping(fields) = &value else {
                return Err(EditError::Input(format!("{key}: expected a mapping of fields")));
            };
            for field in fields.keys().filter_map(|f| f.as_str()) {
                method
                    .check_field(field)
                    .map_err(|e| EditError::Input(format!("{}{e}", line_of(text, &key, field))))?;
            }
            let h: MethodHparams =
                serde_norway::from_value(value).map_err(|e| section_error(&key, e))?;
            sections.insert(method, h);
        }
        for spec in METHODS {
            if let (false, Section::Derived { from, with }) =
                (sections.contains_key(&spec.method), spec.section)
            {
                if let Some(h) = sections.get(&from) {
                    sections.insert(spec.method, with(h.clone()));
                }
            }
        }
        let missing = METHODS
            .iter()
            .find(|s| matches!(s.section, Section::Required) && !sections.contains_key(&s.method));
        if let Some(spec) = missing {
            return Err(EditError::Input(format!("no `{}:` section", spec.name)));
        }
        Ok(Self { stats, sections })
    }

    pub fn method(&self, method: Method) -> Result<&MethodHparams> {
        self.sections.get(&method).ok_or_else(|| match method.spec().section {
            Section::Own(how) => EditError::Input(format!("{method}: {how}")),
            _ => EditError::Input(format!("{method}: the hparams file has no section for it")),
        })
    }

    /// Every method's section this family has, to change in place.
    pub fn sections_mut(&mut self) -> impl Iterator<Item = (&Method, &mut MethodHparams)> {
        self.sections.iter_mut()
    }

    /// Checks every layer against the model's depth.
    pub fn check_layers(&self, num_layers: usize) -> Result<()> {
        for (method, h) in &self.sections {
            let mut all = h.spread_layers.clone();
            all.push(h.layer);
            if let Some(bad) = all.iter().find(|&&l| l >= num_layers) {
                return Err(EditError::Input(format!(
                    "{method}: layer {bad} is out of range (the model has {num_layers} layers)"
                )));
            }
            if h.spread_layers.is_empty() || h.spread_layers.windows(2).any(|w| w[0] >= w[1]) {
                return Err(EditError::Input(format!(
                    "{method}: spread_layers must be non-empty and ascending"
                )));
            }
        }
        Ok(())
    }
}

/// `line N: ` of `field` inside the top-level `section` of an hparams file's text.
fn line_of(text: &str, section: &str, field: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.starts_with(&format!("{section}:")));
    let found = start.and_then(|s| {
        lines[s + 1..]
            .iter()
            .take_while(|l| l.is_empty() || l.starts_with([' ', '#']))
            .position(|l| l.trim_start().starts_with(&format!("{field}:")))
            .map(|i| s + 2 + i)
    });
    found.map(|n| format!("line {n}: ")).unwrap_or_default()
}

fn section_error(section: &str, e: serde_norway::Error) -> EditError {
    EditError::Input(format!("{section}: {e}"))
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

    /// A section may set only its method's fields; the error names the method, the field and
    /// its line. Absent sections derive as the registry says.
    #[test]
    fn a_section_refuses_another_method_s_field_by_name_and_line() {
        let base =
            "memit:\n  layer: 4\n  spread_layers: [4]\nrome:\n  layer: 4\n  spread_layers: [4]\n\
                    emmet:\n  layer: 4\n  spread_layers: [4]\n\
                    alphaedit:\n  layer: 4\n  spread_layers: [4]\n";
        let family = FamilyHparams::parse(base).unwrap();
        assert_eq!(family.method(Method::Encore).unwrap().update_norm_lambda, 10.0);
        assert_eq!(family.method(Method::Rect).unwrap(), family.method(Method::Memit).unwrap());
        let err = family.method(Method::Ultraedit).unwrap_err().to_string();
        assert!(err.contains("no `ultraedit:` section"), "{err}");
        let bad =
            base.replace("memit:\n  layer: 4\n", "memit:\n  layer: 4\n  # λ\n  alphaedit_l2: 3\n");
        let err = FamilyHparams::parse(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("line 4: memit: `alphaedit_l2` is not one of its hyperparameters"),
            "{err}"
        );
        let err = FamilyHparams::parse(&format!("{base}memitt:\n  layer: 1\n")).unwrap_err();
        assert!(err.to_string().contains("section `memitt`: not `stats` and unknown method"));
        let err = FamilyHparams::parse(&base.replace("rome:", "romeo:")).unwrap_err();
        assert!(err.to_string().contains("section `romeo`"), "{err}");
        let written = serde_norway::to_string(&family).unwrap();
        assert_eq!(FamilyHparams::parse(&written).unwrap(), family);
        let missing = "memit:\n  layer: 4\n  spread_layers: [4]\n";
        assert_eq!(FamilyHparams::parse(missing).unwrap_err().to_string(), "no `rome:` section");
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
