//! `editbench trace`: ROME's causal tracing over the first N records of a CounterFact file, averaged
//! per token class and layer, with heat maps and the edit layers it suggests.
//!
//! Writes under `--out`: `manifest.json` (settings, hashes, the noise level), `records.jsonl` (one
//! traced grid per record and kind, appended as they finish, so a rerun resumes), and at the end
//! `effects.csv`, `trace-<kind>.{png,svg}`, `suggested-hparams.yaml` and `summary.md`.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use editbench_datasets::{load, DatasetKind, DatasetSource};
use editbench_editing::causal_trace::{
    class_effects, embedding_std, peak_layer, ClassEffect, Corruption, TokenClass, TraceKind,
    TracePrompt, TracedPrompt, Tracer,
};
use editbench_editing::methods::{Section, METHODS};
use editbench_editing::stats::model_sha256;
use editbench_editing::EditRequest;
use editbench_models::{BackendTask, LanguageModel};
use editbench_report::{write_heatmap, HeatMap};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::output::write_atomic;
use crate::ModelArgs;

#[derive(clap::Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// CounterFact records (ROME's JSON or EasyEdit's): each record's prompt, subject and true answer.
    #[arg(long)]
    pub dataset: PathBuf,
    /// How many records to trace (the first N).
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    /// What is restored: hidden (block outputs), mlp, attn; comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "hidden,mlp,attn")]
    pub kind: Vec<TraceKind>,
    /// Layers restored together for mlp and attn, centred on each layer (ROME: 10).
    #[arg(long, default_value_t = 10)]
    pub window: usize,
    /// Noise as a multiple of the standard deviation of the subjects' token embeddings (ROME: 3).
    #[arg(long, default_value_t = 3.0)]
    pub noise: f64,
    /// Corrupted runs averaged for every state (ROME: 10).
    #[arg(long, default_value_t = 10)]
    pub samples: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output directory (a rerun with the same settings resumes).
    #[arg(long, default_value = "results/trace")]
    pub out: PathBuf,
}

/// One line of `records.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
struct RecordLine {
    case_id: u64,
    kind: String,
    tokens: Vec<String>,
    subject: [usize; 2],
    answer: String,
    clean: f64,
    corrupted: f64,
    known: bool,
    /// `restored[token][layer]`.
    restored: Vec<Vec<f64>>,
}

impl RecordLine {
    fn traced(&self) -> TracedPrompt {
        TracedPrompt {
            subject: self.subject[0]..self.subject[1],
            clean: self.clean,
            corrupted: self.corrupted,
            known: self.known,
            restored: self.restored.clone(),
        }
    }
}

pub struct TraceTask(pub TraceArgs);

impl BackendTask for TraceTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let a = self.0;
        ensure!(
            a.n > 0 && a.samples > 0 && a.window > 0,
            "--n, --samples and --window must be at least 1"
        );
        ensure!(
            a.noise.is_finite() && a.noise >= 0.0,
            "--noise must be a finite multiple ≥ 0 (got {})",
            a.noise
        );
        let data = load(&DatasetSource {
            kind: DatasetKind::Counterfact,
            path: a.dataset.clone(),
            format: None,
            sha256: None,
        })?;
        ensure!(
            data.records.len() >= a.n,
            "{}: {} records, fewer than --n {}",
            a.dataset.display(),
            data.records.len(),
            a.n
        );
        let requests: Vec<EditRequest> =
            data.records[..a.n].iter().map(EditRequest::from).collect();
        let model = a.model.load::<B>(&device)?;
        let tokenizer = model.tokenizer()?;
        let prompts = requests
            .iter()
            .map(|r| {
                TracePrompt::new(
                    tokenizer,
                    &r.prompt,
                    &r.subject,
                    &format!(" {}", r.target_true.as_deref().unwrap_or_default().trim_start()),
                )
            })
            .collect::<editbench_editing::Result<Vec<_>>>()?;
        let subjects: Vec<String> = requests.iter().map(|r| r.subject.clone()).collect();
        let unit = embedding_std(&model, &subjects)?;
        let corruption = Corruption { noise: a.noise * unit, samples: a.samples, seed: a.seed };
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        claim(&a.out, &manifest(&a, &data.sha256, &model_sha256(&a.model.model)?, unit, &model))?;
        let lines = trace_all(&model, &a, &requests, &prompts, &corruption)?;
        write_outputs(&a, &lines, model.dims.num_layers)
    }
}

/// The settings a resumed run must share with the run that began the directory.
fn manifest<B: burn::tensor::backend::Backend>(
    a: &TraceArgs,
    dataset_sha256: &str,
    model_sha256: &str,
    unit: f64,
    model: &LanguageModel<B>,
) -> serde_json::Value {
    json!({
        "command": "trace",
        "model": a.model.model, "model_sha256": model_sha256,
        "backend": a.model.backend.to_string(), "layers": model.dims.num_layers,
        "dataset": a.dataset, "dataset_sha256": dataset_sha256, "records": a.n,
        "window": a.window, "noise_multiple": a.noise, "embedding_std": unit, "noise_std": a.noise * unit,
        "samples": a.samples, "seed": a.seed,
        "git_revision": crate::provenance::revision(),
    })
}

/// Writes `manifest.json`, or checks that the one there describes the same trace (kinds may differ:
/// each record line names its kind).
fn claim(out: &Path, manifest: &serde_json::Value) -> Result<()> {
    let path = out.join("manifest.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let old: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let same = |k: &str| old.get(k) == manifest.get(k) || k == "git_revision";
        if let Some(k) = manifest.as_object().into_iter().flat_map(|m| m.keys()).find(|k| !same(k))
        {
            bail!(
                "{} holds another trace ({k}: {} there, {} now); choose another --out",
                out.display(),
                old[k.as_str()],
                manifest[k.as_str()]
            );
        }
        return Ok(());
    }
    write_atomic(&path, serde_json::to_string_pretty(manifest)?.as_bytes())
}

/// Traces every (record, kind) not yet in `records.jsonl`, appending each as it finishes; returns all lines.
fn trace_all<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    a: &TraceArgs,
    requests: &[EditRequest],
    prompts: &[TracePrompt],
    corruption: &Corruption,
) -> Result<Vec<RecordLine>> {
    let path = a.out.join("records.jsonl");
    let mut lines = read_lines(&path)?;
    let done: HashSet<(u64, String)> = lines.iter().map(|l| (l.case_id, l.kind.clone())).collect();
    let todo = requests
        .iter()
        .flat_map(|r| a.kind.iter().map(|k| (r.case_id.unwrap_or_default(), k.name().to_string())))
        .filter(|p| !done.contains(p))
        .count();
    let bar = indicatif::ProgressBar::new(todo as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "trace {pos}/{len} [{elapsed_precise}, eta {eta}] {msg}",
        )
        .expect("valid template"),
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let tokenizer = model.tokenizer()?;
    for (request, prompt) in requests.iter().zip(prompts) {
        let case_id = request.case_id.unwrap_or_default();
        let kinds: Vec<TraceKind> = a
            .kind
            .iter()
            .copied()
            .filter(|k| !done.contains(&(case_id, k.name().to_string())))
            .collect();
        if kinds.is_empty() {
            continue;
        }
        let tracer = Tracer::new(model, prompt.clone(), corruption)?;
        let tokens = prompt
            .ids
            .iter()
            .map(|&id| tokenizer.decode(&[id]))
            .collect::<editbench_models::Result<Vec<_>>>()?;
        for kind in kinds {
            bar.set_message(format!("case {case_id} {}", kind.name()));
            let line = RecordLine {
                case_id,
                kind: kind.name().into(),
                tokens: tokens.clone(),
                subject: [prompt.subject.start, prompt.subject.end],
                answer: tokenizer.decode(&[prompt.answer])?,
                clean: tracer.clean_probability,
                corrupted: tracer.corrupted_probability,
                known: tracer.known,
                restored: tracer.grid(kind, a.window)?,
            };
            writeln!(file, "{}", serde_json::to_string(&line)?)?;
            file.flush()?;
            lines.push(line);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(lines)
}

/// The complete lines of `records.jsonl` (a line cut short by an interruption is dropped).
fn read_lines(path: &Path) -> Result<Vec<RecordLine>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    let mut lines: Vec<RecordLine> =
        text.lines().map_while(|l| serde_json::from_str(l).ok()).collect();
    let complete = lines.len();
    if text.lines().count() > complete {
        tracing::warn!(
            "{}: dropping {} incomplete line(s) after line {complete}",
            path.display(),
            text.lines().count() - complete
        );
        let kept: String = text.lines().take(complete).map(|l| format!("{l}\n")).collect();
        write_atomic(path, kept.as_bytes())?;
    }
    lines.dedup_by(|a, b| a.case_id == b.case_id && a.kind == b.kind);
    Ok(lines)
}

const EFFECT_COLUMNS: [&str; 8] =
    ["kind", "subset", "class", "layer", "n", "mean_restored", "mean_effect", "sem_effect"];

/// One row of `effects.csv`.
#[derive(Debug, Serialize)]
struct EffectRow {
    kind: String,
    /// `all` records, or the `known` ones (the answer is the clean run's top token), as ROME averages.
    subset: &'static str,
    class: &'static str,
    layer: usize,
    n: usize,
    mean_restored: f64,
    mean_effect: f64,
    sem_effect: f64,
}

/// Writes the outputs of every kind traced so far in the directory (earlier runs' kinds too).
fn write_outputs(a: &TraceArgs, lines: &[RecordLine], num_layers: usize) -> Result<String> {
    let kinds: Vec<TraceKind> =
        TraceKind::ALL.into_iter().filter(|k| lines.iter().any(|l| l.kind == k.name())).collect();
    let mut effects: BTreeMap<(TraceKind, &'static str), Vec<ClassEffect>> = BTreeMap::new();
    let mut rows = Vec::new();
    for &kind in &kinds {
        for (subset, only_known) in [("all", false), ("known", true)] {
            let traced: Vec<TracedPrompt> = lines
                .iter()
                .filter(|l| l.kind == kind.name() && (!only_known || l.known))
                .map(RecordLine::traced)
                .collect();
            let e = class_effects(&traced.iter().collect::<Vec<_>>(), num_layers);
            rows.extend(e.iter().map(|e| EffectRow {
                kind: kind.name().into(),
                subset,
                class: e.class.label(),
                layer: e.layer,
                n: e.n,
                mean_restored: e.mean_restored,
                mean_effect: e.mean_effect,
                sem_effect: e.sem_effect,
            }));
            effects.insert((kind, subset), e);
        }
    }
    write_atomic(
        &a.out.join("effects.csv"),
        &crate::output::csv_bytes(&rows, Some(&EFFECT_COLUMNS))?,
    )?;
    for &kind in &kinds {
        heatmap(a, kind, &effects[&(kind, "all")], lines, num_layers)?;
    }
    let summary = summary(a, lines, &effects);
    write_atomic(&a.out.join("summary.md"), summary.as_bytes())?;
    if let Some(snippet) = suggestion(a, lines, &effects, num_layers) {
        write_atomic(&a.out.join("suggested-hparams.yaml"), snippet.as_bytes())?;
    }
    Ok(summary)
}

fn heatmap(
    a: &TraceArgs,
    kind: TraceKind,
    effects: &[ClassEffect],
    lines: &[RecordLine],
    num_layers: usize,
) -> Result<()> {
    let n = lines.iter().filter(|l| l.kind == kind.name()).count();
    let (what, color) = match kind {
        TraceKind::Hidden => ("single restored layer", (84, 39, 143)),
        TraceKind::Mlp => ("center of the window of restored MLP layers", (0, 109, 44)),
        TraceKind::Attn => ("center of the window of restored attention layers", (165, 15, 21)),
    };
    let window =
        if kind == TraceKind::Hidden { String::new() } else { format!(" (window {})", a.window) };
    let map = HeatMap {
        title: format!("Restoring {} after corrupting the subject: {n} records", kind.name()),
        rows: TokenClass::ALL.iter().map(|c| c.label().to_string()).collect(),
        values: TokenClass::ALL
            .iter()
            .map(|&c| {
                (0..num_layers)
                    .map(|l| {
                        effects
                            .iter()
                            .find(|e| e.class == c && e.layer == l)
                            .map_or(f64::NAN, |e| e.mean_effect)
                    })
                    .collect()
            })
            .collect(),
        color,
        x_label: format!("{what}{window}"),
        scale_label: "mean indirect effect".into(),
    };
    write_heatmap(&map, &a.out, &format!("trace-{}", kind.name()))?;
    Ok(())
}

/// The largest mean effect of `class` in `effects` and its layer.
fn peak(effects: &[ClassEffect], class: TokenClass) -> Option<(usize, f64)> {
    let layer = peak_layer(effects, class)?;
    effects.iter().find(|e| e.class == class && e.layer == layer).map(|e| (layer, e.mean_effect))
}

fn summary(
    a: &TraceArgs,
    lines: &[RecordLine],
    effects: &BTreeMap<(TraceKind, &'static str), Vec<ClassEffect>>,
) -> String {
    let mut out = format!(
        "# Causal trace: {} over {} records of {}\n\n",
        a.model.model.display(),
        a.n,
        a.dataset.display()
    );
    let first_kind: Vec<&RecordLine> = lines
        .iter()
        .filter(|l| Some(l.kind.as_str()) == lines.first().map(|f| f.kind.as_str()))
        .collect();
    let mean = |f: &dyn Fn(&RecordLine) -> f64| {
        first_kind.iter().map(|l| f(l)).sum::<f64>() / first_kind.len().max(1) as f64
    };
    let known = first_kind.iter().filter(|l| l.known).count();
    out += &format!(
        "Noise {} × the subject embeddings' std, {} samples, seed {}; window {}. The true answer's first token: mean probability {:.4} clean, {:.4} with the subject corrupted; the model's top token in {known} of {} records (`known`).\n\n",
        a.noise, a.samples, a.seed, a.window, mean(&|l| l.clean), mean(&|l| l.corrupted), first_kind.len()
    );
    out += "| kind | records | peak at the last subject token (layer: effect) | peak at the last token |\n|---|---|---|---|\n";
    for ((kind, subset), e) in effects {
        let cell =
            |class| peak(e, class).map_or("—".to_string(), |(l, v)| format!("{l}: {v:.4}"));
        let n =
            lines.iter().filter(|l| l.kind == kind.name() && (*subset == "all" || l.known)).count();
        out += &format!(
            "| {} ({subset}) | {n} | {} | {} |\n",
            kind.name(),
            cell(TokenClass::LastSubject),
            cell(TokenClass::LastToken)
        );
    }
    out
}

/// An hparams snippet: the single edit layer where the MLP effect at the last subject token peaks,
/// and five layers centred on it for the spread distribution (clipped to the model).
fn suggestion(
    a: &TraceArgs,
    lines: &[RecordLine],
    effects: &BTreeMap<(TraceKind, &'static str), Vec<ClassEffect>>,
    num_layers: usize,
) -> Option<String> {
    let (layer, effect) = peak(effects.get(&(TraceKind::Mlp, "all"))?, TokenClass::LastSubject)?;
    let first = layer.saturating_sub(2).min(num_layers.saturating_sub(5));
    let spread: Vec<usize> = (first..(first + 5).min(num_layers)).collect();
    let n = lines.iter().filter(|l| l.kind == "mlp").count();
    let mut out = format!(
        "# From `editbench trace` over {n} records of {}: the MLP effect (window {}) at the last subject\n# token peaks at layer {layer} (mean indirect effect {effect:.4}); spread: the five layers around it.\n",
        a.dataset.display(),
        a.window
    );
    // The sections a file must have; the others derive from them, except UltraEdit's, whose
    // layers follow the depth, not the trace.
    for method in METHODS.iter().filter(|s| matches!(s.section, Section::Required)) {
        out += &format!("{}:\n  layer: {layer}\n  spread_layers: {spread:?}\n", method.name);
    }
    Some(out)
}
