//! `editbench edit` (one edit, before/after probabilities) and `editbench stats` (precompute key
//! statistics).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use editbench_editing::context::ContextTemplates;
use editbench_editing::hparams::{Sampler, Samples, StatsHparams};
use editbench_editing::score::continuation_nll;
use editbench_editing::stats::StatsSource;
use editbench_editing::{Distribution, EditRequest, EditSession, Editor, FamilyHparams, Method};
use editbench_models::{BackendTask, LanguageModel};
use serde_json::json;

use crate::ModelArgs;

#[derive(clap::Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The method, by its hparams section name (an unknown name lists every one).
    #[arg(long, default_value = "emmet")]
    pub method: Method,
    /// single (the method's layer) or spread (its spread_layers, MEMIT's distribution).
    #[arg(long, default_value = "single")]
    pub distribution: Distribution,
    /// Prompt template with `{}` for the subject.
    #[arg(long)]
    pub prompt: String,
    /// The subject, as it appears in the filled prompt (e.g. "Danielle Darrieux").
    #[arg(long)]
    pub subject: String,
    /// The new target (a leading space is added if missing).
    #[arg(long)]
    pub target: String,
    /// The true answer; defaults to the first word of the unedited model's greedy continuation.
    #[arg(long = "true")]
    pub true_target: Option<String>,
    #[command(flatten)]
    pub setup: EditSetup,
    /// Tokens of the greedy continuation printed after the edit.
    #[arg(long, default_value_t = 20)]
    pub max_new_tokens: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Write the edited model to this (new) directory as a Hugging Face checkpoint.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// Where hyperparameters, statistics and templates come from.
#[derive(clap::Args, Clone)]
pub struct EditSetup {
    /// Hyperparameters of the model family (YAML).
    #[arg(long, default_value = "hparams/smollm2.yaml")]
    pub hparams: PathBuf,
    /// Text corpus for key statistics: one paragraph per line (`scripts/fetch_corpus.sh`), or a
    /// `.jsonl` / `.json` file of `{"text": ...}` records (Hugging Face `datasets` `to_json`).
    #[arg(long, default_value = "data/corpus/wikipedia_paragraphs.txt")]
    pub corpus: PathBuf,
    /// Cache directory of key statistics.
    #[arg(long, default_value = "results/cache/stats")]
    pub stats_cache: PathBuf,
    /// Corpus paragraph sampler: seeded, or reference (the official code's order); default: the
    /// hparams file's `stats.sampler`.
    #[arg(long)]
    pub sampler: Option<Sampler>,
    /// Context templates (JSON, as written by --save-templates) instead of sampling them.
    #[arg(long)]
    pub templates: Option<PathBuf>,
    /// Write the context templates used to this file.
    #[arg(long)]
    pub save_templates: Option<PathBuf>,
}

impl EditSetup {
    fn stats(&self, mut hparams: StatsHparams) -> StatsSource {
        hparams.sampler = self.sampler.unwrap_or(hparams.sampler);
        StatsSource {
            corpus: self.corpus.clone(),
            hparams,
            cache_dir: Some(self.stats_cache.clone()),
        }
    }
}

/// The true answer's default: the first word of the greedy continuation.
fn first_word(continuation: &str) -> String {
    let trimmed = continuation.trim_start();
    let word: String =
        trimmed.chars().take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '\'').collect();
    format!(" {word}")
}

pub struct EditTask(pub EditArgs);

impl BackendTask for EditTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let a = self.0;
        let started = Instant::now();
        // Every file given is read, and --save checked, before the model is loaded.
        let family = FamilyHparams::load(&a.setup.hparams)?;
        let hparams = family.method(a.method)?.clone();
        let given_templates = a
            .setup
            .templates
            .as_ref()
            .map(|path| ContextTemplates::load(path, a.method))
            .transpose()?;
        if let Some(dir) = a
            .save
            .as_ref()
            .filter(|d| d.exists() && std::fs::read_dir(d).map_or(true, |mut e| e.next().is_some()))
        {
            anyhow::bail!(
                "--save {}: the directory exists and is not empty; give a new one",
                dir.display()
            );
        }
        let mut model = a.model.load::<B>(&device)?;
        family.check_layers(model.dims.num_layers)?;
        let request = EditRequest {
            case_id: None,
            prompt: a.prompt.clone(),
            subject: a.subject.clone(),
            target_new: a.target.clone(),
            target_true: a.true_target.clone(),
        };
        request.check()?;
        let prompt = request.prompt_text();
        let true_target = match &a.true_target {
            Some(t) => t.clone(),
            None => first_word(&model.generate(&prompt, 4)?),
        };
        let pairs = [(prompt.clone(), request.target()), (prompt.clone(), true_target.clone())];
        let before = continuation_nll(&model, &pairs)?;

        let layers = hparams.layers(a.distribution);
        let stats_layers = if a.method.needs_statistics() { &layers[..] } else { &[] };
        let moments = a.setup.stats(family.stats.clone()).moments(&model, stats_layers)?;
        let covariances = moments.iter().map(|(&l, m)| (l, m.covariance())).collect();
        let templates =
            load_or_sample_templates(&model, &a.setup, given_templates, a.method, &hparams)?;
        let mut editor = Editor::new(a.method, a.distribution, hparams, templates, covariances)?;
        let mut session = EditSession::default();
        let outcome =
            editor.apply::<B>(&mut model, std::slice::from_ref(&request), &mut session)?;

        let after = continuation_nll(&model, &pairs)?;
        if let Some(dir) = &a.save {
            model
                .save_hf(dir, &session.edited_layers())
                .with_context(|| format!("saving to {}", dir.display()))?;
        }
        let generation = model.generate(&prompt, a.max_new_tokens)?;
        let p = |nll: f64| (-nll).exp();
        let report = json!({
            "prompt": prompt, "target_new": request.target(), "target_true": true_target,
            "method": a.method.to_string(), "distribution": a.distribution.to_string(), "layers": outcome.layers,
            "prob_new_before": p(before[0]), "prob_true_before": p(before[1]),
            "prob_new_after": p(after[0]), "prob_true_after": p(after[1]),
            "generation_after": generation, "seconds": started.elapsed().as_secs_f64(), "outcome": &outcome,
        });
        Ok(if a.json {
            report.to_string()
        } else {
            format!(
                "{} {} at layers {:?}: \"{}\" → \"{}\" (true \"{}\")\n  P(new)  {:.4} → {:.4}\n  P(true) {:.4} → {:.4}\n  after: {}{}\n  {:.1} s",
                a.method, a.distribution, outcome.layers, prompt, request.target(), true_target,
                p(before[0]), p(after[0]), p(before[1]), p(after[1]), prompt, generation, started.elapsed().as_secs_f64()
            )
        })
    }
}

/// `given` (read from `--templates`), or the templates `h` asks for; saved with `--save-templates`.
pub fn load_or_sample_templates<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    setup: &EditSetup,
    given: Option<ContextTemplates>,
    method: Method,
    h: &editbench_editing::MethodHparams,
) -> Result<ContextTemplates> {
    let templates = match given {
        Some(templates) => templates,
        None => ContextTemplates::for_hparams(model, method, h)?,
    };
    tracing::info!("context templates: {:?}", templates.groups);
    if let Some(path) = &setup.save_templates {
        templates.save(path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(templates)
}

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Layers, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub layers: Vec<usize>,
    /// Text corpus: one paragraph per line (`scripts/fetch_corpus.sh`), or `.jsonl` / `.json`
    /// records with a `text` field.
    #[arg(long, default_value = "data/corpus/wikipedia_paragraphs.txt")]
    pub corpus: PathBuf,
    /// Paragraphs sampled from the corpus, or `auto`: paragraphs until the statistics hold
    /// `--keys-per-dim` × d_in keys ("minimal precomputation", arXiv 2506.04226).
    #[arg(long, default_value = "2000")]
    pub samples: Samples,
    /// Keys per key dimension for `--samples auto`.
    #[arg(long, default_value_t = 10.0)]
    pub keys_per_dim: f64,
    /// Each paragraph is truncated to this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Cache directory of key statistics.
    #[arg(long, default_value = "results/cache/stats")]
    pub cache: PathBuf,
    /// Corpus paragraph sampler: seeded (SplitMix64, --seed) or reference (CPython's
    /// random.Random(1).shuffle, the official code's order).
    #[arg(long, default_value = "seeded")]
    pub sampler: Sampler,
    /// Seed of the seeded sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub struct StatsTask(pub StatsArgs);

impl BackendTask for StatsTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let a = self.0;
        let model = a.model.load::<B>(&device)?;
        if let Some(bad) = a.layers.iter().find(|&&l| l >= model.dims.num_layers) {
            anyhow::bail!(
                "layer {bad} is out of range (the model has {} layers)",
                model.dims.num_layers
            );
        }
        let source = StatsSource {
            corpus: a.corpus.clone(),
            hparams: StatsHparams {
                samples: a.samples,
                keys_per_dim: a.keys_per_dim,
                max_length: a.max_length,
                sampler: a.sampler,
                seed: a.seed,
                ..StatsHparams::default()
            },
            cache_dir: Some(a.cache.clone()),
        };
        let started = Instant::now();
        let moments = source.moments(&model, &a.layers)?;
        let layers: Vec<_> = moments
            .iter()
            .map(|(l, m)| {
                let c = m.covariance();
                json!({ "layer": l, "tokens": m.count, "trace_c": (0..c.nrows()).map(|i| c[(i, i)]).sum::<f64>() })
            })
            .collect();
        Ok(json!({ "cache": a.cache.display().to_string(), "seconds": started.elapsed().as_secs_f64(), "layers": layers }).to_string())
    }
}
