//! `editbench bench …`: throughput benchmarks writing JSON. Each reports, where it applies, the f32
//! GEMM throughput of the same backend measured in the same run, and the process's peak memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use clap::Subcommand;
use editbench_datasets::{load as load_dataset, DatasetKind, DatasetSource, Record, Selection};
use editbench_editing::context::ContextTemplates;
use editbench_editing::hparams::{Samples, StatsHparams, TemplateKind};
use editbench_editing::keys::Activation;
use editbench_editing::solver::{preservation_memorization_update, Memorization};
use editbench_editing::stats::{collect_moments, gram_flops_per_key};
use editbench_editing::targets::target_values;
use editbench_editing::{EditRequest, FamilyHparams, Method};
use editbench_metrics::answers::AnswerOptions;
use editbench_metrics::{counterfact_rows, generation_rows, summarize, GenerationOptions, Stage};
use editbench_models::backend::{concurrent_passes, side_by_side};
use editbench_models::{BackendTask, Hooks, Padding, PromptBatch};
use faer::Mat;
use serde_json::{json, Value};

use crate::ModelArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward-pass tokens/s on a batch of random prompts.
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompts per forward pass.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Tokens per prompt.
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        #[command(flatten)]
        out: Out,
    },
    /// Key-statistics collection: tokens/s and fraction of the backend's GEMM peak.
    Stats {
        #[command(flatten)]
        model: ModelArgs,
        /// Layers whose statistics are collected (one pass), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "4")]
        layers: Vec<usize>,
        /// Text corpus, one paragraph per line (`scripts/fetch_corpus.sh`).
        #[arg(long, default_value = "data/corpus/wikipedia_paragraphs.txt")]
        corpus: PathBuf,
        /// Paragraphs read, or `auto` (until `--keys-per-dim` × d_in keys).
        #[arg(long, default_value = "500")]
        samples: Samples,
        /// Keys per key dimension for `--samples auto`.
        #[arg(long, default_value_t = 10.0)]
        keys_per_dim: f64,
        #[command(flatten)]
        out: Out,
    },
    /// Target (z) search: seconds per edit one edit at a time vs all edits in one batch.
    Targets {
        #[command(flatten)]
        model: ModelArgs,
        /// CounterFact records (ROME JSON format); the first `--edits` are used.
        #[arg(long, default_value = "data/counterfact/counterfact_dev_sample.json")]
        records: PathBuf,
        /// Edits searched together.
        #[arg(long, default_value_t = 16)]
        edits: usize,
        /// How many of them to also run one at a time.
        #[arg(long, default_value_t = 4)]
        single: usize,
        /// Hyperparameters of the model family (YAML): EMMET's search settings are used.
        #[arg(long, default_value = "hparams/smollm2.yaml")]
        hparams: PathBuf,
        /// The fixed context templates instead of the hparams file's (sampled, as the reference).
        #[arg(long)]
        fixed_templates: bool,
        /// Most-probable early stopping with this patience (off by default).
        #[arg(long)]
        mpes: Option<usize>,
        #[command(flatten)]
        out: Out,
    },
    /// One downstream checkpoint on the unedited model: seconds per task and in all (goal: 60 s
    /// for the tasks a run measures, n = 200 each, on 2 cores).
    Downstream {
        #[command(flatten)]
        args: crate::downstream::DownstreamArgs,
        #[command(flatten)]
        out: Out,
    },
    /// CounterFact evaluation of the unedited model: seconds to score `--records` records (all
    /// probability metrics, batched), and to run the generation tests on `--generation` of them.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// CounterFact records (ROME JSON format); the first `--n` are scored.
        #[arg(long, default_value = "data/counterfact/counterfact_dev_sample.json")]
        records: PathBuf,
        /// Records scored.
        #[arg(long, default_value_t = 256)]
        n: usize,
        /// Records whose generation prompts are also sampled (0: none).
        #[arg(long, default_value_t = 2)]
        generation: usize,
        /// Generated answers: prompts continued together.
        #[arg(long, default_value_t = AnswerOptions::default().batch)]
        answer_batch: usize,
        /// Generated answers: token budget of an answer.
        #[arg(long, default_value_t = AnswerOptions::default().max_new_tokens)]
        answer_tokens: usize,
        #[command(flatten)]
        out: Out,
    },
    /// What half-precision weights change: the logits of f16 and bf16 weights against f32 on a fixed
    /// random batch (max and mean |Δ|, top-1 agreement, KL), and whether the backend stores them.
    Dtype(crate::bench_dtype::DtypeArgs),
    /// Every phase (forward, statistics, target search, scoring), each in its own process, in one
    /// JSON beside the official code's figures for the same work (BASELINE.md) and the goals.
    All(crate::bench_all::AllArgs),
    /// The phases at a model's full width on a checkpoint with few layers (synthetic GPT-J 6B /
    /// LLaMA-2 7B, `scripts/make_synthetic.py`): load, forward, statistics, target search, solves.
    Scale(crate::bench_scale::ScaleArgs),
    /// Products with few rows (one edit's target search) against the memory bandwidth: GB/s of
    /// weights streamed, on one thread, on all, and as passes side by side (cpu backend).
    Rows(crate::bench_rows::RowsArgs),
    /// Closed-form solves in f64 on synthetic data: seconds vs batch size.
    Solve {
        /// Key dimension d_in.
        #[arg(long, default_value_t = 4096)]
        dim: usize,
        /// Output dimension d_out (rows of the update; default: d_in).
        #[arg(long)]
        d_out: Option<usize>,
        /// Batch sizes B (edits per solve), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024,4096,10000")]
        batches: Vec<usize>,
        #[command(flatten)]
        out: Out,
    },
}

#[derive(clap::Args)]
pub struct Out {
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    let (report, out) = match cmd {
        BenchCommand::Forward { model, batch, seq_len, repeats, out } => (
            with_backend(
                &model,
                ForwardBench { model: model.clone(), batch, seq_len, repeats: repeats.max(1) },
            )?,
            out,
        ),
        BenchCommand::Stats { model, layers, corpus, samples, keys_per_dim, out } => (
            with_backend(
                &model,
                StatsBench {
                    model: model.clone(),
                    layers,
                    corpus,
                    hparams: StatsHparams { samples, keys_per_dim, ..StatsHparams::default() },
                },
            )?,
            out,
        ),
        BenchCommand::Targets {
            model,
            records,
            edits,
            single,
            hparams,
            fixed_templates,
            mpes,
            out,
        } => (
            with_backend(
                &model,
                TargetsBench {
                    model: model.clone(),
                    records,
                    edits,
                    single,
                    hparams,
                    fixed_templates,
                    mpes,
                },
            )?,
            out,
        ),
        BenchCommand::Eval { model, records, n, generation, answer_batch, answer_tokens, out } => {
            let answers = AnswerOptions { batch: answer_batch, max_new_tokens: answer_tokens };
            (
                with_backend(
                    &model,
                    EvalBench { model: model.clone(), records, n, generation, answers },
                )?,
                out,
            )
        }
        BenchCommand::Downstream { args, out } => {
            let model = args.model.clone();
            (with_backend(&model, crate::downstream::DownstreamBench(args))?, out)
        }
        BenchCommand::Solve { dim, d_out, batches, out } => {
            (solve_bench(dim, d_out.unwrap_or(dim), &batches)?, out)
        }
        BenchCommand::Dtype(args) => (with_backend(&args.model, args.task())?, args.out),
        BenchCommand::Rows(args) => (with_backend(&args.model, args.task())?, args.out),
        BenchCommand::All(args) => return crate::bench_all::run(args),
        BenchCommand::Scale(args) => return crate::bench_scale::run(args),
    };
    let text = serde_json::to_string_pretty(
        &json!({ "revision": crate::provenance::revision(), "date": crate::provenance::utc_now(),
                 "threads": threads(), "peak_memory_mb": peak_memory_mb(), "report": report }),
    )?;
    println!("{text}");
    if let Some(path) = out.out {
        std::fs::write(&path, text + "\n")?;
    }
    Ok(())
}

fn with_backend<T: BackendTask<Output = Result<Value>>>(
    model: &ModelArgs,
    task: T,
) -> Result<Value> {
    let report = model.backend.run(task)??;
    Ok(json!({ "backend": model.backend.to_string(), "result": report }))
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Peak resident memory of this process (Linux `VmHWM`), in MB.
fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb / 1024.0)
}

/// `pass` on every item, `concurrent` at a time side by side, as the phases run their passes.
pub(crate) fn passes_beside<T: Sync>(items: &[T], concurrent: usize, pass: impl Fn(&T) + Sync) {
    let ran = side_by_side(
        items,
        concurrent,
        |item| {
            pass(item);
            Ok::<_, std::convert::Infallible>(())
        },
        |_, ()| (),
    );
    ran.unwrap_or_else(|never| match never {});
}

/// Seconds per call of `f`, best of `repeats` after one warm-up.
pub(crate) fn best_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// f32 GEMM `[m, k] × [k, n]` on the backend: GFLOP/s.
fn gemm_gflops<B: Backend>(m: usize, k: usize, n: usize, device: &B::Device) -> Value {
    let a = Tensor::<B, 2>::random([m, k], Distribution::Default, device);
    let b = Tensor::<B, 2>::random([k, n], Distribution::Default, device);
    let seconds = best_seconds(5, || {
        let c = a.clone().matmul(b.clone());
        let _ = c.slice([0..1, 0..1]).into_data();
    });
    json!({ "m": m, "k": k, "n": n, "seconds": seconds, "gflops_per_second": 2.0 * (m * k * n) as f64 / seconds / 1e9 })
}

/// Adds to the object `out` the phase's place under the roofline: `flops` matrix-product FLOPs in
/// `seconds` against the backend's GEMM rate `gemm` (from [`gemm_gflops`]).
fn add_roofline(out: &mut Value, flops: f64, seconds: f64, gemm: &Value) {
    let gflops = flops / seconds / 1e9;
    out["gflops"] = json!(flops / 1e9);
    out["gflops_per_second"] = json!(gflops);
    out["fraction_of_gemm_peak"] =
        json!(gflops / gemm["gflops_per_second"].as_f64().unwrap_or(f64::NAN));
}

/// `f()`, its wall time and the matrix-product FLOPs it executed ([`editbench_models::flops`]).
fn measured<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (flops, t) = (editbench_models::flops::executed(), Instant::now());
    let out = f();
    (out, t.elapsed().as_secs_f64(), editbench_models::flops::executed() - flops)
}

/// The backend's f32 GEMM rate at the MLP's shape for 1,024 tokens, `[1024, d_model] × [d_model,
/// d_mlp]`: the peak the phases are compared with.
fn mlp_gemm<B: Backend>(dims: &editbench_models::ModelDims, device: &B::Device) -> Value {
    gemm_gflops::<B>(1024, dims.hidden_size, dims.intermediate_size, device)
}

/// A fixed pseudo-random batch of `batch` prompts of `seq_len` tokens (LCG, seed 0).
pub(crate) fn random_prompts(batch: usize, seq_len: usize, vocab_size: usize) -> Vec<Vec<u32>> {
    let mut state = 0u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % vocab_size as u64) as u32
    };
    (0..batch).map(|_| (0..seq_len).map(|_| next()).collect()).collect()
}

struct ForwardBench {
    model: ModelArgs,
    batch: usize,
    seq_len: usize,
    repeats: usize,
}

impl BackendTask for ForwardBench {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let started = Instant::now();
        let model = self.model.load::<B>(&device)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let dims = model.dims;
        let prompts = random_prompts(self.batch, self.seq_len, dims.vocab_size);
        let batch = model.batch(&prompts, Padding::Right)?;
        let run = |batch: &PromptBatch<B::InnerBackend>| {
            let logits = model.forward(batch, &Hooks::default()).logits.expect("full pass");
            let _ = logits.slice([0..1, 0..1, 0..1]).into_data();
        };
        let forward = best_seconds(self.repeats, || run(&batch));
        // As the phases run their passes (statistics, scoring, target search): the prompts split
        // into as many passes as `concurrent_passes`, side by side.
        let concurrent = concurrent_passes::<B::InnerBackend>(&device);
        let per_pass = self.batch.div_ceil(concurrent);
        let parts = prompts
            .chunks(per_pass)
            .map(|p| model.batch(p, Padding::Right))
            .collect::<Result<Vec<_>, _>>()?;
        let beside = best_seconds(self.repeats, || passes_beside(&parts, concurrent, run));
        let tokens = (self.batch * self.seq_len) as f64;
        let flops = tokens * model.matmul_flops_per_token(self.seq_len);
        let model_gflops = flops / forward / 1e9;
        // The GEMM the MLP does at this batch size: [tokens, d_model] × [d_model, d_mlp].
        let gemm = gemm_gflops::<B::InnerBackend>(
            self.batch * self.seq_len,
            dims.hidden_size,
            dims.intermediate_size,
            &device,
        );
        let mut split = json!({ "passes": parts.len(), "seconds_per_forward": beside, "tokens_per_second": tokens / beside });
        add_roofline(&mut split, flops, beside, &gemm);
        Ok(json!({
            "model": self.model.model.display().to_string(), "dtype": self.model.dtype,
            "device": <B::InnerBackend as Backend>::name(&device),
            "parameters": dims.parameters,
            "load_seconds": load_seconds,
            "batch": self.batch,
            "seq_len": self.seq_len,
            "seconds_per_forward": forward,
            "tokens_per_second": tokens / forward,
            "model_gflops_per_second": model_gflops,
            "fraction_of_gemm_peak": model_gflops / gemm["gflops_per_second"].as_f64().unwrap_or(f64::NAN),
            "side_by_side": split,
            "gemm": gemm,
        }))
    }
}

struct StatsBench {
    model: ModelArgs,
    layers: Vec<usize>,
    corpus: PathBuf,
    hparams: StatsHparams,
}

impl BackendTask for StatsBench {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let model = self.model.load::<B>(&device)?;
        let (moments, seconds, passes) =
            measured(|| collect_moments(&model, &self.layers, &self.corpus, &self.hparams));
        let tokens = moments?.values().next().map_or(0, |m| m.count) as f64;
        let d = model.dims;
        // The passes (up to the highest layer, padding included) plus the Gram products per key and layer.
        let flops =
            passes + tokens * self.layers.len() as f64 * gram_flops_per_key(d.intermediate_size);
        let gemm =
            gemm_gflops::<B::InnerBackend>(4096, d.hidden_size, d.intermediate_size, &device);
        let mut out = json!({ "layers": self.layers, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds });
        add_roofline(&mut out, flops, seconds, &gemm);
        out["gemm"] = gemm;
        Ok(out)
    }
}

struct TargetsBench {
    model: ModelArgs,
    records: PathBuf,
    edits: usize,
    single: usize,
    hparams: PathBuf,
    fixed_templates: bool,
    mpes: Option<usize>,
}

/// The first `n` records of a CounterFact file (any supported format).
fn counterfact_records(path: &std::path::Path, n: usize) -> Result<Vec<Record>> {
    let data = load_dataset(&DatasetSource {
        kind: DatasetKind::Counterfact,
        path: path.to_path_buf(),
        format: None,
        sha256: None,
    })?;
    Ok(Selection::First(n.min(data.records.len())).apply(&data.records)?)
}

impl BackendTask for TargetsBench {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let model = self.model.load::<B>(&device)?;
        let mut h = FamilyHparams::load(&self.hparams)?.method(Method::Emmet)?.clone();
        h.mpes_patience = self.mpes.or(h.mpes_patience);
        let requests: Vec<EditRequest> =
            counterfact_records(&self.records, self.edits)?.iter().map(EditRequest::from).collect();
        let kind = if self.fixed_templates { TemplateKind::Fixed } else { h.templates };
        let templates = ContextTemplates::for_method(&model, Method::Emmet, kind, h.template_seed)?;
        // (seconds, Adam steps, FLOPs: forward passes counted, backward ones as their forward's).
        let time = |batch: &[EditRequest]| -> Result<(f64, usize, f64)> {
            let (targets, seconds, flops) = measured(|| {
                target_values::<B>(&model, batch, &templates, h.layer, Activation::Hidden, &h)
            });
            Ok((seconds, targets?.steps.iter().sum(), flops))
        };
        let mut single = (0.0, 0, 0.0);
        for request in requests.iter().take(self.single) {
            let (s, steps, flops) = time(std::slice::from_ref(request))?;
            single = (single.0 + s, single.1 + steps, single.2 + flops);
        }
        let batched = time(&requests)?;
        let gemm = mlp_gemm::<B::InnerBackend>(&model.dims, &device);
        let summary = |(seconds, steps, flops): (f64, usize, f64), edits: f64| {
            let mut out = json!({ "edits": edits, "seconds_per_edit": seconds / edits, "adam_steps_per_edit": steps as f64 / edits });
            add_roofline(&mut out, flops, seconds, &gemm);
            out
        };
        let n_single = self.single.min(requests.len()).max(1) as f64;
        Ok(json!({
            "edits": requests.len(),
            "mpes_patience": h.mpes_patience,
            "templates": templates.groups,
            "one_at_a_time": summary(single, n_single),
            "batched": summary(batched, requests.len() as f64),
            "speedup_per_edit": (single.0 / n_single) / (batched.0 / requests.len() as f64),
            "gemm": gemm,
        }))
    }
}

struct EvalBench {
    model: ModelArgs,
    records: PathBuf,
    n: usize,
    generation: usize,
    answers: AnswerOptions,
}

impl BackendTask for EvalBench {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let model = self.model.load::<B>(&device)?;
        let records = counterfact_records(&self.records, self.n)?;
        let sequences: usize = records
            .iter()
            .map(|r| 2 * (1 + r.paraphrase_prompts.len() + r.neighborhood.len()))
            .sum();
        let (rows, scoring, flops) = measured(|| counterfact_rows(&model, &records, Stage::Pre));
        let rows = rows?;
        let gemm = mlp_gemm::<B::InnerBackend>(&model.dims, &device);
        let mut scored = json!({ "sequences": sequences, "seconds": scoring, "seconds_per_record": scoring / records.len() as f64, "sequences_per_second": sequences as f64 / scoring });
        add_roofline(&mut scored, flops, scoring, &gemm);
        let summary: serde_json::Map<String, Value> =
            summarize(&rows).iter().map(|s| (s.metric.code().to_string(), json!(s.mean))).collect();
        let tested = &records[..self.generation.min(records.len())];
        let t = Instant::now();
        let generation =
            generation_rows(&model, tested, Stage::Pre, &GenerationOptions::default())?;
        let generation_seconds = t.elapsed().as_secs_f64();
        let texts: usize = tested.iter().map(|r| r.generation_prompts.len()).sum();
        let options = self.answers.clone();
        let (answered, answering, answer_flops) = measured(|| {
            editbench_metrics::answers::answer_rows(&model, &records, Stage::Pre, &options, None)
        });
        let (answer_rows, _) = answered?;
        let answers: serde_json::Map<String, Value> = summarize(&answer_rows)
            .iter()
            .map(|s| (s.metric.code().to_string(), json!(s.mean)))
            .collect();
        let mut answered = json!({
            "options": options, "seconds": answering,
            "seconds_per_record": answering / records.len() as f64,
            "ratio_to_teacher_forced": answering / scoring, "pre_metrics": answers,
        });
        add_roofline(&mut answered, answer_flops, answering, &gemm);
        Ok(json!({
            "records": records.len(),
            "scoring": scored,
            "answers": answered,
            "gemm": gemm,
            "pre_metrics": summary,
            "generation": { "records": tested.len(), "texts": texts, "tokens_per_text": GenerationOptions::default().max_len, "seconds": generation_seconds,
                            "seconds_per_record": generation_seconds / tested.len().max(1) as f64, "mean_GE": generation.iter().map(|r| r.value).sum::<f64>() / generation.len().max(1) as f64 * 100.0 },
        }))
    }
}

/// EMMET (equality, μ = 0.1) and MEMIT (least squares, λ = 1) solves on a random SPD `C` with
/// random keys and residuals, `d_in = dim`: `C = X Xᵀ / m + 10⁻³ I` with `X` of `m = min(2 dim,
/// 1024)` random columns (building `C` is not what is timed).
fn solve_bench(dim: usize, d_out: usize, batches: &[usize]) -> Result<Value> {
    let mut state = 1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let m = (2 * dim).min(1024);
    let x = Mat::from_fn(dim, m, |_, _| next());
    let mut c = &x * x.transpose() * faer::Scale(1.0 / m as f64);
    for i in 0..dim {
        c[(i, i)] += 1e-3;
    }
    let mut rows = Vec::new();
    for &b in batches {
        let k = Mat::from_fn(dim, b, |_, _| next());
        let r = Mat::from_fn(d_out, b, |_, _| next());
        let mut row = json!({ "batch": b });
        for (name, memorization) in [
            ("emmet", Memorization::Equality { mu: 0.1 }),
            ("memit", Memorization::LeastSquares { lambda: 1.0 }),
        ] {
            let t = Instant::now();
            let update =
                preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), memorization)?;
            row[name] = json!({ "seconds": t.elapsed().as_secs_f64(), "condition_estimate": update.condition_estimate });
        }
        eprintln!("{row}");
        rows.push(row);
    }
    Ok(json!({ "dim": dim, "d_out": d_out, "dtype": "f64", "solves": rows }))
}
