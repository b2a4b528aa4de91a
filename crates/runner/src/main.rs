//! `editbench`: the command line of the knowledge-editing benchmark.

mod allocator;
mod bench;
mod bench_all;
mod bench_dtype;
mod bench_rows;
mod bench_scale;
mod docs;
mod downstream;
mod edit;
mod memory;
mod output;
mod provenance;
mod resume;
mod run;
mod slurm;
mod sweep;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, Subcommand};
use editbench_models::{BackendKind, BackendTask, LanguageModel, WeightDType};

#[derive(Parser)]
#[command(name = "editbench", version, about = "Knowledge editing (ROME, MEMIT, EMMET) benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// A Hugging Face checkpoint directory or a .gguf file.
    #[arg(long)]
    model: PathBuf,
    /// Where the model runs: cpu, wgpu or cuda (the last two need the cargo feature of that name).
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// The dtype of the weight matrices on the device: f32, f16 or bf16 (default: the checkpoint's
    /// own where the backend stores it, else f32; the cpu backend rounds f16/bf16 weights, in f32).
    #[arg(long)]
    dtype: Option<WeightDType>,
}

impl ModelArgs {
    /// Loads the inference (non-autodiff) model of a task's backend.
    fn load<B: AutodiffBackend>(
        &self,
        device: &B::Device,
    ) -> Result<LanguageModel<B::InnerBackend>> {
        LanguageModel::load_as(&self.model, self.dtype, device)
            .with_context(|| format!("loading {}", self.model.display()))
    }

    /// The arguments that select this model again in a subprocess.
    fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--model".into(),
            self.model.display().to_string(),
            "--backend".into(),
            self.backend.to_string(),
        ];
        args.extend(self.dtype.iter().flat_map(|d| ["--dtype".to_string(), d.to_string()]));
        args
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the logits of every position of a token sequence as JSON {"shape":[T,V],"logits":[...]}.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
    },
    /// Greedily continue a prompt.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 20)]
        max_new_tokens: usize,
    },
    /// Edit one fact and show the target's and the true answer's probabilities before and after.
    Edit(edit::EditArgs),
    /// Precompute (and cache) the key statistics C of some layers.
    Stats(edit::StatsArgs),
    /// Run a sweep file: the grid of models × methods × distributions × layers × batch sizes ×
    /// seeds, resumable and shardable, results under --out (default results/<name>/).
    Run {
        /// The sweep file (YAML; see experiments/).
        sweep: PathBuf,
        /// Results directory (default: results/<the sweep's name>/); a rerun with the same --out
        /// resumes, another sweep's directory is refused.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override a field of the sweep file: dotted.key=value (value in YAML), repeatable.
        #[arg(long = "set")]
        sets: Vec<String>,
        /// Run only the cells with grid index ≡ I (mod N), e.g. 0/4.
        #[arg(long)]
        shard: Option<String>,
        /// Run only these cells (ids as `--dry-run` and the results list them), comma-separated
        /// or repeated; with --shard, the cells in both.
        #[arg(long, value_delimiter = ',')]
        cells: Vec<String>,
        /// Print the grid and each model's memory plan, and stop.
        #[arg(long)]
        dry_run: bool,
        /// Memory available in GB (device and host): the dry run warns about phases that need more.
        #[arg(long)]
        memory: Option<f64>,
        /// Stop at the first failing cell instead of recording it and going on.
        #[arg(long)]
        fail_fast: bool,
        /// Cells run at a time on the cpu backend, each on one thread with its own copy of the
        /// model (memory × N): more work done where one cell cannot keep every core busy (one edit
        /// searched at a time, ROME's batches). Scores may differ from a run with 1 in float rounding.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Sequential cells: run at most N rounds of each in this invocation, then pause it at its
        /// checkpoint (`checkpoints/` in the output directory; every round saves one), so that a
        /// cell longer than a job's time limit runs in pieces. A rerun continues every paused or
        /// interrupted cell from its last finished round, with the rows of an unbroken run.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_rounds: Option<u64>,
        /// Write into results/committed/ although this binary was built from uncommitted code
        /// changes (recorded in the manifest and every cell's provenance).
        #[arg(long)]
        allow_dirty: bool,
    },
    /// Run a sweep as a Slurm array job (one `run --shard i/N` per task, requeue-safe) with a merge
    /// job that runs when every task finished; the scripts are kept in OUT/slurm/.
    Slurm(slurm::SlurmArgs),
    /// Combine the results directories of the shards of one sweep.
    Merge {
        /// The merged results directory.
        #[arg(long)]
        out: PathBuf,
        /// Shard results directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Write into results/committed/ from a binary built from uncommitted code (recorded).
        #[arg(long)]
        allow_dirty: bool,
    },
    /// Tables (Markdown, LaTeX), figures (PNG, SVG), report.md and the results page report.html;
    /// first rebuilds each directory's summary.csv, curves.csv and timings.csv from its raw rows.
    Report {
        /// Results directories of `editbench run` (several are compared side by side).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Numbers typed from a paper (CSV: model,method,distribution,batch_size,stage,metric,value).
        #[arg(long)]
        paper: Option<PathBuf>,
        /// Name of the paper's numbers in tables and legends.
        #[arg(long, default_value = "paper")]
        paper_label: String,
        /// Where to write (default: the first results directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The paired comparisons behind the paper's claims (EMMET − MEMIT, spread − single), from a
    /// batch run's raw rows: claims.md and claims.json in the directory (or --out).
    Claims {
        /// A results directory with raw rows (cells/<id>.csv.gz); several: one per record draw
        /// of the same sweep (`--set dataset.selection.sample.seed=…`), compared draw by draw and
        /// across draws (the unedited scores are the first's).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Bootstrap resamples of each ΔS.
        #[arg(long, default_value_t = 1000)]
        bootstrap: usize,
        /// Base seed; each comparison's bootstrap is seeded by it and the comparison's label.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write claims.md and claims.json (default: the first results directory).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fill the generated blocks of the documentation (`<!-- editbench:include FILE -->` …
    /// `<!-- editbench:end -->`) from the result files they name.
    Docs {
        /// Only report the documents whose blocks differ from their files (exit 1 if any).
        #[arg(long)]
        check: bool,
        /// Documents (default: README.md and docs/*.md).
        files: Vec<PathBuf>,
    },
    /// List the editing methods: name, what each needs, and the hyperparameters its section may set.
    Methods,
    /// Print the raw rows of a results directory (every cell's cells/<id>.csv.gz, in grid order)
    /// as one CSV on stdout, e.g. for pandas.
    Rows {
        /// A results directory of `editbench run` or `editbench merge`.
        dir: PathBuf,
    },
    /// Score a model on the official code's downstream tasks (few-shot SST-2, MRPC, CoLA, RTE,
    /// NLI, MMLU, sentiment, dialogue): accuracy, F1 and MCC beside chance, as a Markdown table.
    Downstream(downstream::DownstreamArgs),
    /// Causal tracing (ROME): which layers' states carry the facts of a CounterFact file, as
    /// heat maps, a CSV of effects per token class and layer, and the edit layers they suggest.
    Trace(trace::TraceArgs),
    /// Benchmarks (JSON on stdout).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text in files and batch-system logs; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Logits { model, ids } => {
            let json = model.backend.run(LogitsTask { model: model.clone(), ids })??;
            println!("{json}");
        }
        Command::Generate { model, prompt, max_new_tokens } => {
            let text = model.backend.run(GenerateTask {
                model: model.clone(),
                prompt,
                max_new_tokens,
            })??;
            println!("{text}");
        }
        Command::Edit(args) => {
            let backend = args.model.backend;
            println!("{}", backend.run(edit::EditTask(args))??);
        }
        Command::Stats(args) => {
            let backend = args.model.backend;
            println!("{}", backend.run(edit::StatsTask(args))??);
        }
        Command::Run {
            sweep,
            out,
            sets,
            shard,
            cells,
            dry_run,
            memory,
            fail_fast,
            jobs,
            max_rounds,
            allow_dirty,
        } => {
            let shard = shard.as_deref().map(run::parse_shard).transpose()?;
            let plan = sweep::plan(&sweep, &sets)?;
            if dry_run {
                // Everything the real run reads before its first write is read here too.
                run::records(&plan)?;
                print!("{}", sweep::describe(&plan, shard));
                print!("{}", memory_plans(&plan, memory)?);
                return Ok(());
            }
            let out = out.unwrap_or_else(|| PathBuf::from("results").join(&plan.sweep.name));
            run::run(
                plan,
                &sets,
                run::RunOptions {
                    out,
                    shard,
                    cells,
                    fail_fast,
                    jobs,
                    max_rounds: max_rounds.map(|n| n as usize),
                    allow_dirty,
                },
            )?;
        }
        Command::Slurm(args) => slurm::slurm(args)?,
        Command::Merge { out, dirs, allow_dirty } => run::merge(&out, &dirs, allow_dirty)?,
        Command::Report { dirs, paper, paper_label, out } => {
            for dir in &dirs {
                run::rebuild_from_rows(dir)?;
            }
            let mut runs =
                dirs.iter().map(|d| editbench_report::load_run(d)).collect::<Result<Vec<_>>>()?;
            if let Some(paper) = paper {
                runs.push(editbench_report::load_paper(&paper, &paper_label)?);
            }
            let out = out.unwrap_or_else(|| dirs[0].clone());
            print!("{}", editbench_report::write_report(&runs, &out)?);
            eprintln!("report: {}", out.join("report.md").display());
        }
        Command::Claims { dirs, bootstrap, seed, out } => {
            let claims = editbench_report::claims::claims(&dirs, bootstrap, seed)?;
            let out = out.unwrap_or_else(|| dirs[0].clone());
            let markdown = editbench_report::claims::markdown(&claims);
            output::write_atomic(&out.join("claims.md"), markdown.as_bytes())?;
            output::write_atomic(
                &out.join("claims.json"),
                serde_json::to_string_pretty(&claims)?.as_bytes(),
            )?;
            print!("{markdown}");
        }
        Command::Docs { check, files } => {
            let root = PathBuf::from(".");
            let files = if files.is_empty() { docs::default_documents(&root) } else { files };
            let differ = docs::run(&files, &root, check)?;
            for doc in &differ {
                eprintln!(
                    "{}: {}",
                    doc.display(),
                    if check {
                        "generated blocks differ from their files (run `editbench docs`)"
                    } else {
                        "updated"
                    }
                );
            }
            if check && !differ.is_empty() {
                anyhow::bail!("{} document(s) out of date", differ.len());
            }
        }
        Command::Methods => print!("{}", editbench_editing::methods::listing()),
        Command::Rows { dir } => {
            use std::io::Write;
            std::io::stdout().write_all(editbench_report::rows::all_rows_csv(&dir)?.as_bytes())?;
        }
        Command::Downstream(args) => {
            let backend = args.model.backend;
            print!("{}", backend.run(downstream::DownstreamTask(args))??);
        }
        Command::Trace(args) => {
            let backend = args.model.backend;
            print!("{}", backend.run(trace::TraceTask(args))??);
        }
        Command::Bench(cmd) => bench::run(cmd)?,
    }
    Ok(())
}

/// The memory plan of every model of a sweep, for the dry run.
fn memory_plans(plan: &sweep::Plan, limit_gb: Option<f64>) -> Result<String> {
    let on_cpu = plan.backend == BackendKind::Cpu;
    let mut out = String::new();
    for (m, spec) in plan.sweep.models.iter().enumerate() {
        let cells: Vec<&sweep::Cell> = plan.cells.iter().filter(|c| c.model == m).collect();
        let mut layers: Vec<usize> = cells.iter().flat_map(|c| c.layers.clone()).collect();
        layers.sort_unstable();
        layers.dedup();
        let (wanted, stored) = weight_dtype(spec, plan.backend)?;
        let workload = memory::Workload {
            dims: editbench_models::ModelDims::read(&spec.path)?,
            edited_layers: layers.len() as u64,
            max_batch: cells.iter().map(|c| c.batch_size).max().unwrap_or(1) as u64,
            stats_tokens: plan.stats_hparams(m).batch_tokens as u64,
            on_cpu,
            weight_bytes: stored.bytes(),
        };
        let dtype = if wanted == stored {
            wanted.to_string()
        } else {
            format!("{wanted} rounded, stored as {stored}")
        };
        out += &memory::describe(
            &format!("{} ({dtype})", spec.label()),
            &memory::plan(&workload),
            on_cpu,
            limit_gb,
        );
    }
    Ok(out)
}

/// The dtype a sweep's model asks for (the one given, else the checkpoint's own) and the one its
/// weights will be stored in on `backend`: the same where the backend stores it, else f32.
fn weight_dtype(
    spec: &sweep::ModelSpec,
    backend: BackendKind,
) -> Result<(WeightDType, WeightDType)> {
    let wanted = match spec.dtype {
        Some(d) => d,
        None => editbench_models::model::checkpoint_dtype(&spec.path)?.unwrap_or_default(),
    };
    Ok((wanted, if wanted.stored_on(backend) { wanted } else { WeightDType::F32 }))
}

struct LogitsTask {
    model: ModelArgs,
    ids: Vec<u32>,
}

impl BackendTask for LogitsTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let model = self.model.load::<B>(&device)?;
        let logits = model.logits(&self.ids)?;
        let shape = logits.dims();
        let values = logits.into_data().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(serde_json::json!({ "shape": shape, "logits": values }).to_string())
    }
}

struct GenerateTask {
    model: ModelArgs,
    prompt: String,
    max_new_tokens: usize,
}

impl BackendTask for GenerateTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let model = self.model.load::<B>(&device)?;
        Ok(model.generate(&self.prompt, self.max_new_tokens)?)
    }
}
