//! `editbench bench scale`: the phases at a model's full width, on a checkpoint with few layers (a
//! synthetic GPT-J 6B or LLaMA-2 7B from `scripts/make_synthetic.py`): load time and peak memory
//! with a forward pass, the key statistics of layer 0, the target search for 4 edits at layer 0
//! (3 Adam steps), and EMMET/MEMIT solves at the model's d_in. Each phase runs in its own process
//! (its own peak memory); `scale.json` holds them all and `scale.md` the table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use editbench_editing::FamilyHparams;
use editbench_models::ModelDims;
use serde_json::{json, Value};

use crate::bench_all::{machine, run_phase, Phase};

#[derive(clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub model: crate::ModelArgs,
    /// Hyperparameters of the model's family; the search runs with them at layer 0 for 3 steps.
    #[arg(long)]
    pub hparams: PathBuf,
    /// CounterFact records for the target search.
    #[arg(long, default_value = "data/counterfact/counterfact_dev_sample.json")]
    pub records: PathBuf,
    /// Text corpus for the statistics.
    #[arg(long, default_value = "data/corpus/wikipedia_paragraphs.txt")]
    pub corpus: PathBuf,
    /// Paragraphs the statistics of layer 0 read.
    #[arg(long, default_value_t = 40)]
    pub stats_samples: usize,
    /// Batch sizes of the solves, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub batches: Vec<usize>,
    /// Directory for `scale.json`, `scale.md` and each phase's JSON.
    #[arg(long, default_value = "results/bench/scale")]
    pub out: PathBuf,
}

/// The family's hyperparameters with every method moved to layer 0 and 3 Adam steps: the search
/// then runs one block and the head, as much as a 2-layer checkpoint allows.
fn layer_zero_hparams(path: &std::path::Path) -> Result<FamilyHparams> {
    let mut family = FamilyHparams::load(path)?;
    for (_, h) in family.sections_mut() {
        (h.layer, h.spread_layers, h.v_num_grad_steps) = (0, vec![0], 3);
    }
    Ok(family)
}

pub fn run(a: ScaleArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let dims = ModelDims::read(&a.model.model)?;
    let hparams = a.out.join("hparams-layer0.yaml");
    crate::output::write_atomic(
        &hparams,
        serde_norway::to_string(&layer_zero_hparams(&a.hparams)?)?.as_bytes(),
    )?;
    let with = |extra: Vec<String>| a.model.to_args().into_iter().chain(extra).collect::<Vec<_>>();
    let strings = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let batches = a.batches.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let phases = [
        Phase {
            name: "forward",
            args: with(strings(&["--batch", "1", "--seq-len", "128", "--repeats", "1"])),
            measures: vec![],
        },
        Phase {
            name: "stats",
            args: with(vec![
                "--layers".into(),
                "0".into(),
                "--samples".into(),
                a.stats_samples.to_string(),
                "--corpus".into(),
                a.corpus.display().to_string(),
            ]),
            measures: vec![],
        },
        Phase {
            name: "targets",
            args: with(vec![
                "--hparams".into(),
                hparams.display().to_string(),
                "--edits".into(),
                "4".into(),
                "--single".into(),
                "0".into(),
                "--fixed-templates".into(),
                "--records".into(),
                a.records.display().to_string(),
            ]),
            measures: vec![],
        },
        Phase {
            name: "solve",
            args: strings(&[
                "--dim",
                &dims.intermediate_size.to_string(),
                "--d-out",
                &dims.hidden_size.to_string(),
                "--batches",
                &batches,
            ]),
            measures: vec![],
        },
    ];
    let exe = std::env::current_exe().context("locating the editbench executable")?;
    let mut reports = serde_json::Map::new();
    for phase in &phases {
        eprintln!("bench scale: {} …", phase.name);
        reports.insert(
            phase.name.into(),
            run_phase(&exe, phase, &a.out.join(format!("{}.json", phase.name)))?,
        );
    }
    let all = json!({
        "model": a.model.model.display().to_string(), "backend": a.model.backend.to_string(), "dtype": a.model.dtype, "machine": machine(),
        "dims": { "layers": dims.num_layers, "d_model": dims.hidden_size, "d_mlp": dims.intermediate_size, "vocab": dims.vocab_size, "parameters": dims.parameters },
        "reports": reports,
    });
    let text = serde_json::to_string_pretty(&all)? + "\n";
    crate::output::write_atomic(&a.out.join("scale.json"), text.as_bytes())?;
    crate::output::write_atomic(&a.out.join("scale.md"), markdown(&all).as_bytes())?;
    print!("{text}");
    Ok(())
}

/// The phases' headline figures and peak memory as a Markdown table.
fn markdown(all: &Value) -> String {
    let r = &all["reports"];
    let at = |phase: &str, pointer: &str| {
        r[phase]["report"]["result"].pointer(pointer).and_then(Value::as_f64)
    };
    let show =
        |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |x| format!("{x:.3} {unit}"));
    let memory = |phase: &str| {
        r[phase]["peak_memory_mb"]
            .as_f64()
            .map_or("—".to_string(), |m| format!("{:.2} GB", m / 1024.0))
    };
    let mut rows = vec![
        ("load".to_string(), show(at("forward", "/load_seconds"), "s"), memory("forward")),
        (
            "forward, 1 × 128 tokens".into(),
            show(at("forward", "/tokens_per_second"), "tokens/s"),
            memory("forward"),
        ),
        (
            "statistics, layer 0".into(),
            show(at("stats", "/tokens_per_second"), "tokens/s"),
            memory("stats"),
        ),
        (
            "target search, 4 edits batched".into(),
            show(at("targets", "/batched/seconds_per_edit"), "s/edit"),
            memory("targets"),
        ),
    ];
    let solves = r["solve"]["report"]["solves"].as_array().cloned().unwrap_or_default();
    for b in &solves {
        let secs =
            |m: &str| b[m]["seconds"].as_f64().map_or("—".to_string(), |s| format!("{s:.2}"));
        rows.push((
            format!("EMMET / MEMIT solve, B = {}", b["batch"]),
            format!("{} / {} s", secs("emmet"), secs("memit")),
            memory("solve"),
        ));
    }
    let mut out = String::from("| phase | time | peak memory of its process |\n|---|---|---|\n");
    rows.iter().for_each(|(p, t, m)| out += &format!("| {p} | {t} | {m} |\n"));
    out
}
