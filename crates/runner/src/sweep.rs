//! Sweep files: one YAML document names the models, the dataset, the statistics and the lists to
//! sweep; every list is an axis of the grid of cells. Everything is checked before any work, with
//! the file, line and column of the offending key.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use editbench_datasets::{DatasetKind, Format, Selection};
use editbench_editing::context::ContextTemplates;
use editbench_editing::hparams::{Sampler, Samples, StatsHparams};
use editbench_editing::{Distribution, FamilyHparams, Method, MethodHparams};
use editbench_models::{BackendKind, ModelDims, WeightDType};
use serde::{Deserialize, Serialize};
use serde_norway::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// Names the output directory `results/<name>/` unless `--out` is given.
    pub name: String,
    pub models: Vec<ModelSpec>,
    /// cpu, wgpu or cuda.
    #[serde(default = "default_backend")]
    pub backend: String,
    pub dataset: DatasetSpec,
    pub stats: StatsSpec,
    pub methods: Vec<Method>,
    pub batch_sizes: Vec<usize>,
    pub distribution: Vec<Distribution>,
    /// Layer choices to sweep per distribution; the model's hparams file gives the default.
    #[serde(default)]
    pub layers: LayerAxes,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Sequential protocol: also score the records edited so far after every round.
    #[serde(default)]
    pub eval_every_round: bool,
    /// Sequential protocol: also score the records edited so far (and measure degradation) after
    /// each round that completes another `eval_every` edits, e.g. every 256 edits in rounds of 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// CounterFact generation tests (GE, and RS with reference files); off when absent.
    #[serde(default)]
    pub generation: Option<GenerationSpec>,
    /// Per-method hyperparameter overrides (fields of the hparams file's method section).
    #[serde(default)]
    pub overrides: BTreeMap<Method, Value>,
    /// Which records are scored, and the model-degradation measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<EvalSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Score a subset of `n` of each cell's edited records — the same records in every cell —
    /// instead of all of them (every batch holding a scored record is still edited whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<EvalSample>,
    /// Perplexity on held-out text (PPL) and the norms of the accumulated updates (DWNORM,
    /// DWREL), measured after the edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degradation: Option<DegradationSpec>,
    /// Generated-answer scores (`gen_*`): each prompt answered greedily by the model, beside the
    /// teacher-forced ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<editbench_metrics::answers::AnswerOptions>,
    /// Downstream abilities (`ds_<task>`): the official code's few-shot tasks, measured on the
    /// unedited model and after edits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<crate::downstream::DownstreamSpec>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSample {
    pub n: usize,
    #[serde(default)]
    pub seed: u64,
    /// The first `n` records in selection order instead of a seeded draw: with a seeded
    /// `selection: {sample: …}` as random, and in the independent protocol only the batches that
    /// hold them are edited, so a cell with B ≤ n searches the targets of `n` records, not all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradationSpec {
    /// Held-out text: one text per line, or `.jsonl` / `.json` records with a `text` field (e.g.
    /// WikiText-2). Default: the statistics corpus without the paragraphs the statistics sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Texts drawn (seeded) from the held-out text.
    #[serde(default = "default_ppl_texts")]
    pub texts: usize,
    /// Each text is truncated to this many tokens.
    #[serde(default = "default_ppl_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub seed: u64,
    /// Independent protocol: measured after this many batches per cell at most (a seeded
    /// sample of the batches); sequential protocol: after every scored round.
    #[serde(default = "default_ppl_batches")]
    pub batches: usize,
}

fn default_ppl_texts() -> usize {
    100
}
fn default_ppl_max_length() -> usize {
    256
}
fn default_ppl_batches() -> usize {
    4
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name used in results (defaults to the file or directory name).
    #[serde(default)]
    pub name: Option<String>,
    /// A Hugging Face checkpoint directory or a .gguf file.
    pub path: PathBuf,
    /// The model family's hyperparameters (YAML).
    pub hparams: PathBuf,
    /// The weights' dtype on the device (`f32`, `f16`, `bf16`; default: the checkpoint's own where
    /// the backend stores it, else f32). Left out of the cell ids when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<WeightDType>,
}

impl ModelSpec {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    pub kind: DatasetKind,
    pub path: PathBuf,
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Which records, in which order (all, {first: N}, {sample: {n, seed}}, {ids: [...]}).
    #[serde(default = "default_selection")]
    pub selection: Selection,
    /// Edits per cell: the first `n_edits` selected records.
    pub n_edits: usize,
    /// How prompts are put to each model: as in the file (`bare`), or each as the user's turn of
    /// the model's own chat template (`chat`), which the answer then follows.
    #[serde(default, skip_serializing_if = "PromptForm::is_bare")]
    pub prompts: PromptForm,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptForm {
    #[default]
    Bare,
    Chat,
}

impl PromptForm {
    pub fn is_bare(&self) -> bool {
        *self == Self::Bare
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsSpec {
    /// Text corpus: one paragraph per line, or `.jsonl` / `.json` records with a `text` field.
    pub corpus: PathBuf,
    /// Paragraphs, or `auto` (until `keys_per_dim × d_in` keys); the hparams file's if absent.
    #[serde(default)]
    pub samples: Option<Samples>,
    /// Keys per key dimension for `samples: auto`; the hparams file's if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_per_dim: Option<f64>,
    #[serde(default)]
    pub max_length: Option<usize>,
    /// seeded | reference (the official code's paragraph order); the hparams file's if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<Sampler>,
    #[serde(default = "default_stats_cache")]
    pub cache: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerAxes {
    #[serde(default)]
    pub single: Option<Vec<usize>>,
    #[serde(default)]
    pub spread: Option<Vec<Vec<usize>>>,
}

/// How the N edits of a cell are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// N/B batches applied one after another to the same model, all N records scored at the end.
    #[default]
    Sequential,
    /// Each batch written into the unedited model, its records scored, the weights restored (the
    /// reference implementations' batch editing).
    Independent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationSpec {
    /// Only records with `case_id % interval == 0` (1: all).
    #[serde(default = "default_interval")]
    pub interval: u64,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default)]
    pub reference: Option<editbench_metrics::ReferenceFiles>,
}

fn default_backend() -> String {
    "cpu".into()
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_selection() -> Selection {
    Selection::All
}
fn default_stats_cache() -> PathBuf {
    "results/cache/stats".into()
}
fn default_interval() -> u64 {
    1
}
fn default_max_len() -> usize {
    100
}

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Hash of everything the cell's results depend on (resume and merge key).
    pub id: String,
    /// Index into `models`.
    pub model: usize,
    pub model_name: String,
    pub method: Method,
    pub distribution: Distribution,
    pub layers: Vec<usize>,
    pub batch_size: usize,
    pub n_edits: usize,
    pub seed: u64,
    /// The method's hyperparameters after overrides, layers and seed applied.
    pub hparams: MethodHparams,
}

impl Sweep {
    /// Whether the records edited so far are scored after round `round` (0-based) of `rounds`
    /// rounds of `batch_size` edits: the last round always; in the sequential protocol also every
    /// round with `eval_every_round`, or each round that completes another `eval_every` edits.
    pub fn scores_after(&self, round: usize, rounds: usize, batch_size: usize) -> bool {
        let crossed = |every: usize| (round + 1) * batch_size / every > round * batch_size / every;
        round + 1 == rounds
            || (self.protocol == Protocol::Sequential
                && (self.eval_every_round || self.eval_every.is_some_and(crossed)))
    }
}

/// A parsed, checked sweep with its grid.
pub struct Plan {
    pub sweep: Sweep,
    pub path: PathBuf,
    pub text: String,
    pub sha256: String,
    pub backend: BackendKind,
    pub families: Vec<FamilyHparams>,
    pub cells: Vec<Cell>,
}

impl Plan {
    pub fn stats_hparams(&self, model: usize) -> StatsHparams {
        let mut h = self.families[model].stats.clone();
        h.samples = self.sweep.stats.samples.unwrap_or(h.samples);
        h.keys_per_dim = self.sweep.stats.keys_per_dim.unwrap_or(h.keys_per_dim);
        h.max_length = self.sweep.stats.max_length.unwrap_or(h.max_length);
        h.sampler = self.sweep.stats.sampler.unwrap_or(h.sampler);
        h
    }
}

/// Reads, overrides (`--set key=value`), checks and expands `path`.
pub fn plan(path: &Path, sets: &[String]) -> Result<Plan> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let located = |e: serde_norway::Error| match e.location() {
        Some(l) => {
            let message = plain(&e.to_string());
            let message = message
                .strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
                .unwrap_or(&message);
            anyhow::anyhow!("{}:{}:{}: {message}", path.display(), l.line(), l.column())
        }
        None => anyhow::anyhow!("{}: {}", path.display(), plain(&e.to_string())),
    };
    let mut sweep: Sweep = serde_norway::from_str(&text).map_err(located)?;
    if !sets.is_empty() {
        let mut value: Value = serde_norway::from_str(&text).map_err(located)?;
        for set in sets {
            apply_set(&mut value, set)?;
        }
        sweep = serde_norway::from_value(value).map_err(|e| {
            anyhow::anyhow!(
                "{} with --set {}: {}",
                path.display(),
                sets.join(" --set "),
                plain(&e.to_string())
            )
        })?;
    }
    let at = |key: &str| match set_of(sets, key) {
        Some(set) => format!("{} (--set {set})", path.display()),
        None => format!(
            "{}:{}",
            path.display(),
            locate(&text, key).map(|(l, c)| format!("{l}:{c}")).unwrap_or_else(|| "1:1".into())
        ),
    };
    let backend: BackendKind =
        sweep.backend.parse().map_err(|e| anyhow::anyhow!("{}: backend: {e}", at("backend")))?;
    backend.compiled().map_err(|e| anyhow::anyhow!("{}: backend: {e}", at("backend")))?;
    check(&sweep, &at)?;
    let mut families = Vec::new();
    for (i, m) in sweep.models.iter().enumerate() {
        let dims = ModelDims::read(&m.path)
            .map_err(|e| anyhow::anyhow!("{}: models[{i}].path: {e}", at("models")))?;
        let family = FamilyHparams::load(&m.hparams)
            .map_err(|e| anyhow::anyhow!("{}: models[{i}].hparams: {e}", at("models")))?;
        family
            .check_layers(dims.num_layers)
            .map_err(|e| anyhow::anyhow!("{}: models[{i}].hparams: {e}", at("models")))?;
        let mut listed: Vec<usize> = sweep.layers.single.iter().flatten().copied().collect();
        listed.extend(sweep.layers.spread.iter().flatten().flatten());
        if let Some(bad) = listed.iter().find(|&&l| l >= dims.num_layers) {
            bail!(
                "{}: layer {bad} is out of range for models[{i}] (allowed: 0..={})",
                at("layers"),
                dims.num_layers - 1
            );
        }
        families.push(family);
    }
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let cells = expand(&sweep, &families, &sets.join("\n"), &at)?;
    Ok(Plan { sweep, path: path.to_path_buf(), text, sha256, backend, families, cells })
}

/// The `--set` that gave `key` (or a field inside it, or the mapping holding it) its value.
fn set_of<'a>(sets: &'a [String], key: &str) -> Option<&'a String> {
    sets.iter().rev().find(|set| {
        set.split_once('=').is_some_and(|(k, _)| {
            k == key || k.starts_with(&format!("{key}.")) || key.starts_with(&format!("{k}."))
        })
    })
}

/// A serde message in a user's words: Rust type names become what they mean.
fn plain(message: &str) -> String {
    [
        ("usize", "a whole number ≥ 0"),
        ("u64", "a whole number ≥ 0"),
        ("u32", "a whole number ≥ 0"),
        ("u128", "a whole number ≥ 0"),
        ("f64", "a number"),
        ("f32", "a number"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, words)| {
        m.replace(&format!("expected {rust}"), &format!("expected {words}"))
            .replace(&format!("as {rust}"), &format!("as {words}"))
    })
}

/// Value checks serde cannot do.
fn check(s: &Sweep, at: &dyn Fn(&str) -> String) -> Result<()> {
    let nonempty = [
        ("models", s.models.is_empty()),
        ("methods", s.methods.is_empty()),
        ("batch_sizes", s.batch_sizes.is_empty()),
        ("distribution", s.distribution.is_empty()),
        ("seeds", s.seeds.is_empty()),
    ];
    if let Some((key, _)) = nonempty.iter().find(|(_, empty)| *empty) {
        bail!("{}: {key} must list at least one value", at(key));
    }
    let duplicated = |values: Vec<String>| {
        values.iter().enumerate().find(|(i, v)| values[..*i].contains(v)).map(|(_, v)| v.clone())
    };
    let axes = [
        ("methods", s.methods.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
        ("distribution", s.distribution.iter().map(|d| d.to_string()).collect()),
        ("batch_sizes", s.batch_sizes.iter().map(|b| b.to_string()).collect()),
        ("seeds", s.seeds.iter().map(|b| b.to_string()).collect()),
        ("layers.single", s.layers.single.iter().flatten().map(|l| l.to_string()).collect()),
        ("layers.spread", s.layers.spread.iter().flatten().map(|l| format!("{l:?}")).collect()),
    ];
    for (key, values) in axes {
        if let Some(v) = duplicated(values) {
            bail!(
                "{}: {key} lists {v} twice (each value makes cells; list it once)",
                at(key.split('.').next().unwrap_or(key))
            );
        }
    }
    for (key, empty) in [
        ("layers.single", s.layers.single.as_ref().is_some_and(Vec::is_empty)),
        ("layers.spread", s.layers.spread.as_ref().is_some_and(Vec::is_empty)),
    ] {
        if empty {
            bail!(
                "{}: {key} must list at least one value (or be left out for the hparams file's)",
                at("layers")
            );
        }
    }
    if s.dataset.n_edits == 0 {
        bail!("{}: dataset.n_edits must be at least 1", at("dataset.n_edits"));
    }
    if let Some(&b) = s.batch_sizes.iter().find(|&&b| b == 0 || b > s.dataset.n_edits) {
        bail!(
            "{}: batch size {b} is impossible with dataset.n_edits = {} (allowed: 1..={})",
            at("batch_sizes"),
            s.dataset.n_edits,
            s.dataset.n_edits
        );
    }
    for (key, file) in [("dataset.path", &s.dataset.path), ("stats.corpus", &s.stats.corpus)] {
        if !file.is_file() {
            bail!("{}: {key}: no such file {}", at(key), file.display());
        }
    }
    for (i, m) in s.models.iter().enumerate() {
        for (what, file) in [("path", &m.path), ("hparams", &m.hparams)] {
            if !file.exists() {
                bail!(
                    "{}: models[{i}].{what}: no such file or directory {}",
                    at("models"),
                    file.display()
                );
            }
        }
    }
    if let Some(spread) = &s.layers.spread {
        if let Some(bad) =
            spread.iter().find(|l| l.is_empty() || l.windows(2).any(|w| w[0] >= w[1]))
        {
            bail!(
                "{}: every spread layer list must be non-empty and ascending, found {bad:?}",
                at("layers.spread")
            );
        }
    }
    if s.eval_every_round && s.protocol == Protocol::Independent {
        bail!("{}: eval_every_round needs protocol: sequential", at("eval_every_round"));
    }
    match s.eval_every {
        Some(0) => bail!(
            "{}: eval_every must be at least 1 (edits between scored rounds)",
            at("eval_every")
        ),
        Some(_) if s.protocol == Protocol::Independent => {
            bail!("{}: eval_every needs protocol: sequential", at("eval_every"))
        }
        _ => {}
    }
    if let Some(sample) = s.eval.as_ref().and_then(|e| e.sample) {
        if sample.n == 0 || sample.n > s.dataset.n_edits {
            bail!(
                "{}: eval.sample.n = {} is impossible with dataset.n_edits = {} (allowed: 1..={})",
                at("eval.sample"),
                sample.n,
                s.dataset.n_edits,
                s.dataset.n_edits
            );
        }
        if sample.first && sample.seed != 0 {
            bail!("{}: eval.sample.seed = {} has no effect with first: true (the first n records are scored)", at("eval.sample"), sample.seed);
        }
    }
    if let Some(d) = s.eval.as_ref().and_then(|e| e.degradation.as_ref()) {
        if d.texts == 0 || d.max_length < 2 || d.batches == 0 {
            bail!(
                "{}: eval.degradation needs texts ≥ 1, max_length ≥ 2 and batches ≥ 1",
                at("eval.degradation")
            );
        }
        if let Some(path) = d.path.as_ref().filter(|p| !p.is_file()) {
            bail!(
                "{}: eval.degradation.path: no such file {}",
                at("eval.degradation"),
                path.display()
            );
        }
    }
    if s.generation.is_some() && matches!(s.dataset.kind, DatasetKind::Zsre | DatasetKind::Qaedit) {
        bail!(
            "{}: generation tests are CounterFact's; {} has no generation prompts",
            at("generation"),
            s.dataset.kind.name()
        );
    }
    Ok(())
}

/// Every combination of model × method × distribution × layers × batch size × seed, in that order.
fn expand(
    s: &Sweep,
    families: &[FamilyHparams],
    sets: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<Vec<Cell>> {
    let mut cells = Vec::new();
    for (m, family) in families.iter().enumerate() {
        for &method in &s.methods {
            let mut base = family.method(method)?.clone();
            if let Some(over) = s.overrides.get(&method) {
                base = merge(method, &base, over)
                    .map_err(|e| anyhow::anyhow!("{}: overrides.{method}: {e}", at("overrides")))?;
            }
            if let Some(file) = &base.template_file {
                ContextTemplates::load(file, method).map_err(|e| {
                    anyhow::anyhow!("{}: {method}: template_file: {e}", at("overrides"))
                })?;
            }
            for &distribution in &s.distribution {
                let choices: Vec<Vec<usize>> = match distribution {
                    Distribution::Single => s
                        .layers
                        .single
                        .clone()
                        .map(|l| l.into_iter().map(|x| vec![x]).collect())
                        .unwrap_or_else(|| vec![vec![base.layer]]),
                    Distribution::Spread => {
                        s.layers.spread.clone().unwrap_or_else(|| vec![base.spread_layers.clone()])
                    }
                };
                for layers in choices {
                    for &batch_size in &s.batch_sizes {
                        for &seed in &s.seeds {
                            let mut hparams = base.clone();
                            match distribution {
                                Distribution::Single => hparams.layer = layers[0],
                                Distribution::Spread => hparams.spread_layers = layers.clone(),
                            }
                            hparams.template_seed = seed;
                            let mut cell = Cell {
                                id: String::new(),
                                model: m,
                                model_name: s.models[m].label(),
                                method,
                                distribution,
                                layers: layers.clone(),
                                batch_size,
                                n_edits: s.dataset.n_edits,
                                seed,
                                hparams,
                            };
                            cell.id = cell_id(s, &cell, sets);
                            cells.push(cell);
                        }
                    }
                }
            }
        }
    }
    Ok(cells)
}

/// The method section `base` with the fields of `over` replaced (a field the method does not use
/// is an error).
fn merge(method: Method, base: &MethodHparams, over: &Value) -> Result<MethodHparams> {
    let mut value = serde_norway::to_value(base)?;
    let (Value::Mapping(target), Value::Mapping(fields)) = (&mut value, over) else {
        bail!("must be a mapping of hyperparameters")
    };
    for (k, v) in fields {
        method.check_field(k.as_str().unwrap_or_default())?;
        target.insert(k.clone(), v.clone());
    }
    Ok(serde_norway::from_value(value)?)
}

/// A short hash of everything a cell's results depend on: the cell, the dataset, statistics,
/// protocol and generation settings, the models' paths and the `--set` overrides.
fn cell_id(s: &Sweep, cell: &Cell, sets: &str) -> String {
    let mut key = serde_json::json!({
        "model": s.models[cell.model], "method": cell.method, "distribution": cell.distribution, "layers": cell.layers,
        "batch_size": cell.batch_size, "seed": cell.seed, "hparams": cell.hparams, "dataset": s.dataset, "stats": s.stats,
        "protocol": s.protocol, "eval_every_round": s.eval_every_round, "generation": s.generation, "backend": s.backend, "sets": sets,
    });
    // Only when given, so the ids of sweeps written before `eval` and `eval_every` existed stay valid.
    if let Some(every) = s.eval_every {
        key["eval_every"] = serde_json::json!(every);
    }
    if let Some(eval) = &s.eval {
        key["eval"] = serde_json::json!(eval);
    }
    hex::encode(Sha256::digest(key.to_string().as_bytes()))[..12].to_string()
}

/// `dotted.key=value`: sets the key (creating mappings on the way; a number indexes a list, as in
/// `models.0.path`); the value is parsed as YAML.
fn apply_set(root: &mut Value, set: &str) -> Result<()> {
    let Some((key, raw)) = set.split_once('=') else {
        bail!("--set {set}: expected dotted.key=value")
    };
    let value: Value =
        serde_norway::from_str(raw).map_err(|e| anyhow::anyhow!("--set {set}: value: {e}"))?;
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        node = child(node, part, &parts[..i].join("."), set)?;
    }
    *node = value;
    Ok(())
}

/// The entry `part` of `node` (at dotted path `at`): a mapping's key, inserted as an empty mapping
/// when missing, or a sequence's index.
fn child<'a>(node: &'a mut Value, part: &str, at: &str, set: &str) -> Result<&'a mut Value> {
    match node {
        Value::Mapping(map) => Ok(map
            .entry(Value::String(part.to_string()))
            .or_insert_with(|| Value::Mapping(Default::default()))),
        Value::Sequence(items) => {
            let len = items.len();
            part.parse::<usize>().ok().and_then(|n| items.get_mut(n)).ok_or_else(|| {
                anyhow::anyhow!("--set {set}: `{part}` is not an index of `{at}` (0..{len})")
            })
        }
        _ => bail!("--set {set}: `{at}` is not a mapping"),
    }
}

/// Line and column (1-based) of a dotted key in the YAML text: each part searched as `part:` below
/// the previous one.
fn locate(text: &str, dotted: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for part in dotted.split('.') {
        let (i, col) = lines.iter().enumerate().skip(from).find_map(|(i, line)| {
            let trimmed = line.trim_start_matches([' ', '-']);
            (trimmed.starts_with(&format!("{part}:")) && !line.trim_start().starts_with('#'))
                .then(|| (i, line.len() - trimmed.len()))
        })?;
        found = Some((i + 1, col + 1));
        from = i + 1;
    }
    found
}

/// The grid as a table for `--dry-run`: the cells `shard` runs (all without one).
pub fn describe(plan: &Plan, shard: Option<(usize, usize)>) -> String {
    let in_shard = |i: &usize| shard.is_none_or(|(s, n)| i % n == s);
    let count = (0..plan.cells.len()).filter(in_shard).count();
    let mut out = match shard {
        Some((s, n)) => format!(
            "{count} of {} cells in shard {s}/{n} ({}):\n",
            plan.cells.len(),
            plan.path.display()
        ),
        None => format!("{count} cells ({}):\n", plan.path.display()),
    };
    for (i, c) in plan.cells.iter().enumerate().filter(|(i, _)| in_shard(i)) {
        let _ = writeln!(
            out,
            "{i:>4} {} {:<12} {:<9} {:<6} layers {:<14} B={:<5} N={} seed {}",
            c.id,
            c.model_name,
            c.method.to_string(),
            c.distribution.to_string(),
            format!("{:?}", c.layers),
            c.batch_size,
            c.n_edits,
            c.seed
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_nested_keys() {
        let text = "name: x\ndataset:\n  kind: counterfact\n  n_edits: 3\nbatch_sizes: [1]\n";
        assert_eq!(locate(text, "dataset.n_edits"), Some((4, 3)));
        assert_eq!(locate(text, "batch_sizes"), Some((5, 1)));
        assert_eq!(locate(text, "missing"), None);
    }

    #[test]
    fn set_overrides_nested_values() {
        let mut v: Value = serde_norway::from_str("a:\n  b: 1\n").unwrap();
        apply_set(&mut v, "a.b=[2, 3]").unwrap();
        apply_set(&mut v, "c.d=x").unwrap();
        assert_eq!(serde_norway::to_string(&v).unwrap(), "a:\n  b:\n  - 2\n  - 3\nc:\n  d: x\n");
        assert!(apply_set(&mut v, "novalue").is_err());
        apply_set(&mut v, "a.b.1=7").unwrap();
        assert_eq!(serde_norway::to_string(&v).unwrap(), "a:\n  b:\n  - 2\n  - 7\nc:\n  d: x\n");
        assert!(apply_set(&mut v, "a.b.5=1")
            .unwrap_err()
            .to_string()
            .contains("`5` is not an index of `a.b` (0..2)"));
        assert!(apply_set(&mut v, "a.b.c=1")
            .unwrap_err()
            .to_string()
            .contains("`c` is not an index of `a.b` (0..2)"));
        assert!(apply_set(&mut v, "c.d.e=1")
            .unwrap_err()
            .to_string()
            .contains("`c.d` is not a mapping"));
    }

    /// Rounds of 64 scored every 256 edits: rounds 3, 7, 11, … and always the last; every round
    /// with `eval_every_round`; without either, only the last.
    #[test]
    fn scored_rounds_follow_eval_every() {
        let yaml = "name: x\nmodels: []\ndataset: {kind: counterfact, path: d.json, n_edits: 600}\nstats: {corpus: c.txt}\n\
                    methods: [memit]\nbatch_sizes: [64]\ndistribution: [spread]\nprotocol: sequential\n";
        let mut sweep: Sweep = serde_norway::from_str(yaml).unwrap();
        let scored = |s: &Sweep| (0..10).filter(|&r| s.scores_after(r, 10, 64)).collect::<Vec<_>>();
        assert_eq!(scored(&sweep), [9]);
        sweep.eval_every = Some(256);
        assert_eq!(scored(&sweep), [3, 7, 9]);
        sweep.eval_every = Some(100); // 64 edits a round: 128 ≥ 100, 256 ≥ 200, 320 ≥ 300, …
        assert_eq!(scored(&sweep), [1, 3, 4, 6, 7, 9]);
        sweep.eval_every = None;
        sweep.eval_every_round = true;
        assert_eq!(scored(&sweep), (0..10).collect::<Vec<_>>());
    }
}
