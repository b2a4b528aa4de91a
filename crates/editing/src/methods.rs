//! Every editing method in one place: its name, how tables and figures show it, what it needs (key
//! statistics, a target search), which hyperparameters its section may set, where its section
//! comes from when the hparams file has none, and its update. The CLI, the runner, the report and
//! the tracer read this table. A new method is a variant and a row here, its module under
//! `methods/`, and its hyperparameter fields in `hparams.rs`.

pub mod prune;
pub mod rect;

use std::fmt;
use std::str::FromStr;

use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::hparams::MethodHparams;
use crate::solver::{preservation_memorization_update, Memorization, SolveError, Update};

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
    /// PRUNE (arXiv 2405.16821): MEMIT, then the accumulated update's singular values above the
    /// original weight's largest are restrained logarithmically (`prune`).
    Prune,
    /// RECT (arXiv 2401.04700): MEMIT, then only the top-k % of each update's entries by relative
    /// change `|ΔW|/|W|` are kept (`rect`).
    Rect,
}

/// Where a method's target values live, if it searches for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// No target search (UltraEdit: the loss gradient at the answer).
    None,
    /// In the edited MLP's output (ROME, r-ROME).
    MlpOutput,
    /// In the residual stream after the last edited layer (the MEMIT family).
    Residual,
}

/// Where a method's hyperparameters come from when the hparams file has no section for it.
#[derive(Clone, Copy)]
pub enum Section {
    /// The file must have one.
    Required,
    /// Another method's section, changed by `with`.
    Derived { from: Method, with: fn(MethodHparams) -> MethodHparams },
    /// The method is unavailable without one; the text says how to write it.
    Own(&'static str),
}

/// What one layer's update is computed from (algo §5).
pub struct Solve<'a> {
    pub hparams: &'a MethodHparams,
    /// `C` of the layer (normalised second moment of its keys).
    pub c: MatRef<'a, f64>,
    pub keys: MatRef<'a, f64>,
    /// ROME's bare-prompt keys `k_p`.
    pub bare_keys: Option<MatRef<'a, f64>>,
    pub residuals: MatRef<'a, f64>,
    /// `Σ K_p K_pᵀ` of earlier rounds (AlphaEdit, ENCORE).
    pub previous: Option<MatRef<'a, f64>>,
    /// AlphaEdit's null-space projector.
    pub projector: Option<MatRef<'a, f64>>,
}

/// A solved update about to be written, with the layer's weights (`d_out × d_in`).
pub struct Restrain<'a> {
    pub hparams: &'a MethodHparams,
    /// The weight before any edit of this session (the pre-edit model's).
    pub original: MatRef<'a, f64>,
    /// The weight now, before this update.
    pub current: MatRef<'a, f64>,
    pub update: Mat<f64>,
}

pub struct MethodSpec {
    pub method: Method,
    /// The name in sweeps, hparams files, the CLI and result files.
    pub name: &'static str,
    /// The name in tables and figures.
    pub display: &'static str,
    /// Its colour in figures (RGB).
    pub colour: (u8, u8, u8),
    /// Needs the keys' second moment `C` per edited layer.
    pub statistics: bool,
    pub search: Search,
    /// Keeps `Σ K_p K_pᵀ` of its earlier rounds (saved in sequential checkpoints).
    pub keeps_previous_keys: bool,
    /// Built for long sequences: carries state across rounds or restrains what accumulates.
    pub sequential_aware: bool,
    /// The hyperparameters its section may set (beyond these it is refused, by name).
    pub fields: &'static [&'static [&'static str]],
    pub section: Section,
    /// The layer's update; `None` for UltraEdit, whose rounds solve every layer at once.
    pub update: Option<fn(&Solve<'_>) -> std::result::Result<Update, SolveError>>,
    /// Applied to each solved update before it is written.
    pub restrain: Option<fn(&Restrain<'_>) -> Result<Mat<f64>>>,
}

const LAYERS: &[&str] = &["layer", "spread_layers"];
const TEMPLATES: &[&str] = &["templates", "template_seed", "template_file"];
const SEARCH: &[&str] = &[
    "v_num_grad_steps",
    "v_lr",
    "v_weight_decay",
    "clamp_norm_factor",
    "kl_factor",
    "mpes_patience",
];
const LEAST_SQUARES: &[&str] = &["mom2_update_weight", "update_norm_lambda"];

/// Every method, in the order tables list them.
pub const METHODS: &[MethodSpec] = &[
    MethodSpec {
        method: Method::Rome,
        name: "rome",
        display: "ROME",
        colour: (214, 39, 40),
        statistics: true,
        search: Search::MlpOutput,
        keeps_previous_keys: false,
        sequential_aware: false,
        fields: &[LAYERS, TEMPLATES, SEARCH],
        section: Section::Required,
        update: Some(rome),
        restrain: None,
    },
    MethodSpec {
        method: Method::RRome,
        name: "r-rome",
        display: "r-ROME",
        colour: (255, 127, 14),
        statistics: true,
        search: Search::MlpOutput,
        keeps_previous_keys: false,
        sequential_aware: false,
        fields: &[LAYERS, TEMPLATES, SEARCH],
        section: Section::Derived { from: Method::Rome, with: same },
        update: Some(r_rome),
        restrain: None,
    },
    MethodSpec {
        method: Method::Memit,
        name: "memit",
        display: "MEMIT",
        colour: (31, 119, 180),
        statistics: true,
        search: Search::Residual,
        keeps_previous_keys: false,
        sequential_aware: false,
        fields: &[LAYERS, TEMPLATES, SEARCH, LEAST_SQUARES],
        section: Section::Required,
        update: Some(memit),
        restrain: None,
    },
    MethodSpec {
        method: Method::Emmet,
        name: "emmet",
        display: "EMMET",
        colour: (44, 160, 44),
        statistics: true,
        search: Search::Residual,
        keeps_previous_keys: false,
        sequential_aware: false,
        fields: &[LAYERS, TEMPLATES, SEARCH, LEAST_SQUARES, &["emmet_lambda"]],
        section: Section::Required,
        update: Some(emmet),
        restrain: None,
    },
    MethodSpec {
        method: Method::Alphaedit,
        name: "alphaedit",
        display: "AlphaEdit",
        colour: (148, 103, 189),
        statistics: true,
        search: Search::Residual,
        keeps_previous_keys: true,
        sequential_aware: true,
        fields: &[LAYERS, TEMPLATES, SEARCH, &["alphaedit_l2", "nullspace_threshold"]],
        section: Section::Required,
        update: Some(alphaedit),
        restrain: None,
    },
    MethodSpec {
        method: Method::Encore,
        name: "encore",
        display: "ENCORE",
        colour: (140, 86, 75),
        statistics: true,
        search: Search::Residual,
        keeps_previous_keys: true,
        sequential_aware: true,
        fields: &[LAYERS, TEMPLATES, SEARCH, LEAST_SQUARES],
        // The reference's ENCORE additions (every ENCORE hparams file): ν = 10, MPES patience 2.
        section: Section::Derived { from: Method::Memit, with: encore_defaults },
        update: Some(encore),
        restrain: None,
    },
    MethodSpec {
        method: Method::Ultraedit,
        name: "ultraedit",
        display: "UltraEdit",
        colour: (23, 190, 207),
        statistics: false,
        search: Search::None,
        keeps_previous_keys: false,
        sequential_aware: true,
        fields: &[LAYERS, &["ultraedit_lr"]],
        section: Section::Own(
            "the hparams file has no `ultraedit:` section (its layers follow the model's depth: \
             e.g. `spread_layers` at 64-93 % of it, as GPT-J's 18-26)",
        ),
        update: None,
        restrain: None,
    },
    MethodSpec {
        method: Method::Prune,
        name: "prune",
        display: "PRUNE",
        colour: (227, 119, 194),
        statistics: true,
        search: Search::Residual,
        keeps_previous_keys: false,
        sequential_aware: true,
        fields: &[LAYERS, TEMPLATES, SEARCH, LEAST_SQUARES, &["prune_log_base"]],
        section: Section::Derived { from: Method::Memit, with: same },
        update: Some(memit),
        restrain: Some(prune::restrain),
    },
    MethodSpec {
        method: Method::Rect,
        name: "rect",
        display: "RECT",
        colour: (188, 189, 34),
        statistics: true,
        search: Search::Residual,
        keeps_previous_keys: false,
        sequential_aware: false,
        fields: &[LAYERS, TEMPLATES, SEARCH, LEAST_SQUARES, &["rect_keep_percent"]],
        section: Section::Derived { from: Method::Memit, with: same },
        update: Some(memit),
        restrain: Some(rect::restrain),
    },
];

impl Method {
    pub fn spec(self) -> &'static MethodSpec {
        METHODS.iter().find(|s| s.method == self).expect("every method has a row in METHODS")
    }

    /// ROME and r-ROME: rank-one edits written one after another, targets in the MLP's output
    /// space, ROME's 21 context templates.
    pub fn is_rank_one(self) -> bool {
        self.spec().search == Search::MlpOutput
    }

    /// Whether the method keeps the keys of its earlier rounds among the preserved ones.
    pub fn keeps_previous_keys(self) -> bool {
        self.spec().keeps_previous_keys
    }

    /// Whether the method solves against the keys' second moment `C`, and so needs key
    /// statistics and a target search.
    pub fn needs_statistics(self) -> bool {
        self.spec().statistics
    }

    /// Refuses a hyperparameter this method does not use, by name.
    pub fn check_field(self, field: &str) -> Result<()> {
        let spec = self.spec();
        if spec.fields.iter().any(|group| group.contains(&field)) {
            return Ok(());
        }
        let allowed: Vec<&str> = spec.fields.iter().flat_map(|g| g.iter().copied()).collect();
        Err(EditError::Input(format!(
            "{}: `{field}` is not one of its hyperparameters ({})",
            spec.name,
            allowed.join(", ")
        )))
    }
}

/// Every method as a Markdown table: what `editbench methods` prints.
pub fn listing() -> String {
    let mut out = String::from(
        "| method | shown as | key statistics | target search | sequential-aware | \
         hparams section | its fields |\n|---|---|---|---|---|---|---|\n",
    );
    for s in METHODS {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let search = match s.search {
            Search::None => "none",
            Search::MlpOutput => "MLP output",
            Search::Residual => "residual stream",
        };
        let section = match s.section {
            Section::Required => "required".to_string(),
            Section::Derived { from, .. } => format!("{from}'s when absent"),
            Section::Own(_) => "its own, no default".to_string(),
        };
        let fields: Vec<&str> = s.fields.iter().flat_map(|g| g.iter().copied()).collect();
        let (stats, aware) = (yes(s.statistics), yes(s.sequential_aware));
        out += &format!(
            "| {} | {} | {stats} | {search} | {aware} | {section} | {} |\n",
            s.name,
            s.display,
            fields.join(", ")
        );
    }
    out
}

/// The method named `name` in tables and figures (`name` itself when it is none of them).
pub fn display_name(name: &str) -> &str {
    METHODS.iter().find(|s| s.name == name).map_or(name, |s| s.display)
}

impl FromStr for Method {
    type Err = EditError;
    fn from_str(s: &str) -> Result<Self> {
        METHODS.iter().find(|spec| spec.name == s).map(|spec| spec.method).ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(|spec| spec.name).collect();
            EditError::Input(format!("unknown method `{s}` ({})", names.join(" ")))
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().name)
    }
}

fn same(h: MethodHparams) -> MethodHparams {
    h
}

fn encore_defaults(h: MethodHparams) -> MethodHparams {
    MethodHparams { update_norm_lambda: 10.0, mpes_patience: Some(2), ..h }
}

/// The preservation term of EMMET and MEMIT as the official code builds it (UME
/// `emmet_main.py`/`memit_main.py`): `a·C + ν I`, with `a = mom2_update_weight` and
/// `ν = update_norm_lambda` (MEMIT then solves `(a·C + νI + KKᵀ) X = K`).
pub fn preserved_moment(c: MatRef<'_, f64>, weight: f64, nu: f64) -> Mat<f64> {
    let mut scaled = c * faer::Scale(weight);
    for i in 0..scaled.nrows() {
        scaled[(i, i)] += nu;
    }
    scaled
}

type Solved = std::result::Result<Update, SolveError>;

fn rome(s: &Solve<'_>) -> Solved {
    let constraint_keys = s.bare_keys.expect("ROME reads the bare-prompt keys");
    let memorization = Memorization::Asymmetric { constraint_keys };
    preservation_memorization_update(s.c, s.keys, s.residuals, memorization)
}

fn r_rome(s: &Solve<'_>) -> Solved {
    preservation_memorization_update(s.c, s.keys, s.residuals, Memorization::Equality { mu: 0.0 })
}

fn least_squares_preserving(s: &Solve<'_>, preserved: Mat<f64>) -> Solved {
    let memorization = Memorization::LeastSquares { lambda: 1.0 };
    preservation_memorization_update(preserved.as_ref(), s.keys, s.residuals, memorization)
}

fn memit(s: &Solve<'_>) -> Solved {
    let h = s.hparams;
    least_squares_preserving(s, preserved_moment(s.c, h.mom2_update_weight, h.update_norm_lambda))
}

fn emmet(s: &Solve<'_>) -> Solved {
    let h = s.hparams;
    let mu = if s.keys.ncols() > 1 { h.emmet_lambda } else { 0.0 };
    let preserved = preserved_moment(s.c, h.mom2_update_weight, h.update_norm_lambda);
    let memorization = Memorization::Equality { mu };
    preservation_memorization_update(preserved.as_ref(), s.keys, s.residuals, memorization)
}

fn encore(s: &Solve<'_>) -> Solved {
    let h = s.hparams;
    let previous = s.previous.expect("ENCORE keeps its earlier keys");
    least_squares_preserving(
        s,
        preserved_moment(s.c, h.mom2_update_weight, h.update_norm_lambda) + previous,
    )
}

fn alphaedit(s: &Solve<'_>) -> Solved {
    let memorization = Memorization::NullSpace {
        projector: s.projector.expect("AlphaEdit has a projector per layer"),
        previous: s.previous.expect("AlphaEdit keeps its earlier keys"),
        alpha: s.hparams.alphaedit_l2,
    };
    preservation_memorization_update(s.c, s.keys, s.residuals, memorization)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_row_and_its_name_is_its_serde_name() {
        for spec in METHODS {
            assert_eq!(METHODS.iter().filter(|s| s.method == spec.method).count(), 1);
            assert_eq!(serde_json::to_value(spec.method).unwrap(), spec.name);
            assert_eq!(spec.name.parse::<Method>().unwrap(), spec.method);
            assert_eq!(spec.update.is_none(), spec.search == Search::None, "{}", spec.name);
        }
        let listing = listing();
        assert_eq!(listing.lines().count(), 2 + METHODS.len());
        assert!(listing
            .contains("| encore | ENCORE | yes | residual stream | yes | memit's when absent |"));
        let err = "memitt".parse::<Method>().unwrap_err().to_string();
        assert!(err.contains("unknown method `memitt` (rome r-rome memit"), "{err}");
    }

    #[test]
    fn a_field_another_method_uses_is_refused_by_name() {
        assert!(Method::Emmet.check_field("emmet_lambda").is_ok());
        let err = Method::Memit.check_field("emmet_lambda").unwrap_err().to_string();
        assert!(
            err.starts_with("memit: `emmet_lambda` is not one of its hyperparameters"),
            "{err}"
        );
        assert!(Method::Ultraedit.check_field("v_lr").is_err());
        assert!(Method::Rect.check_field("rect_keep_percent").is_ok());
        assert!(Method::Prune.check_field("rect_keep_percent").is_err());
    }
}
