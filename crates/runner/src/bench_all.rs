//! `editbench bench all`: every phase benchmark in one command, each in its own process (so each
//! reports its own peak memory), summarised in one JSON next to the official code's figure for the
//! same work (`../shared/reference/BASELINE.md`, SmolLM2-135M on 2 CPU cores) and the performance
//! issue's goal.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// What `bench all` runs and where it writes.
#[derive(clap::Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub model: crate::ModelArgs,
    /// CounterFact records (ROME JSON format) for the target-search and scoring phases.
    #[arg(long, default_value = "data/counterfact/counterfact_dev_sample.json")]
    pub records: PathBuf,
    /// Text corpus for the statistics phase.
    #[arg(long, default_value = "data/corpus/wikipedia_paragraphs.txt")]
    pub corpus: PathBuf,
    /// Paragraphs the statistics phase reads (the reference's figure is for 2,000).
    #[arg(long, default_value_t = 2000)]
    pub stats_samples: usize,
    /// Directory for `all.json`, `all.md` (the table) and each phase's own JSON.
    #[arg(long, default_value = "results/bench/all")]
    pub out: PathBuf,
}

/// One phase: the `bench` subcommand and arguments it runs, and how its figure is read.
pub(crate) struct Phase {
    pub name: &'static str,
    pub args: Vec<String>,
    /// (what is compared, unit, JSON pointer into the phase's result, the reference's figure (same
    /// work, BASELINE.md), goal: at most this many units).
    pub measures: Vec<(&'static str, &'static str, &'static str, Option<f64>, Option<f64>)>,
}

/// The official code's statistics for layers 2–6 over 2,000 paragraphs: 70.7 s (layer 4) + 292.0 s.
const REFERENCE_STATS_SECONDS: f64 = 362.7;
/// The official code's target search, per edit (one at a time; it has no batched search).
const REFERENCE_SECONDS_PER_EDIT: f64 = 12.6;
/// The official code's scoring per CounterFact record: the mean of its five 16-record runs.
const REFERENCE_SECONDS_PER_RECORD: f64 = 1.72;

fn phases(a: &AllArgs) -> Vec<Phase> {
    let model = a.model.to_args();
    let with = |extra: &[&str]| {
        model.iter().cloned().chain(extra.iter().map(|s| s.to_string())).collect::<Vec<_>>()
    };
    let samples = a.stats_samples.to_string();
    let (corpus, records) = (a.corpus.display().to_string(), a.records.display().to_string());
    let stats_goal = (a.stats_samples == 2000).then_some(REFERENCE_STATS_SECONDS / 3.0);
    let stats_reference = (a.stats_samples == 2000).then_some(REFERENCE_STATS_SECONDS);
    vec![
        Phase {
            name: "forward",
            args: with(&["--batch", "8", "--seq-len", "128"]),
            measures: vec![
                ("forward pass, 8 × 128 tokens", "s", "/seconds_per_forward", None, None),
                (
                    "forward pass, 8 × 128 tokens, one pass per thread side by side",
                    "s",
                    "/side_by_side/seconds_per_forward",
                    None,
                    None,
                ),
            ],
        },
        Phase {
            name: "stats",
            args: with(&["--layers", "2,3,4,5,6", "--samples", &samples, "--corpus", &corpus]),
            measures: vec![(
                "key statistics, layers 2–6",
                "s",
                "/seconds",
                stats_reference,
                stats_goal,
            )],
        },
        Phase {
            name: "targets",
            args: with(&["--edits", "16", "--single", "4", "--records", &records]),
            measures: vec![
                (
                    "target search, 16 edits batched",
                    "s/edit",
                    "/batched/seconds_per_edit",
                    Some(REFERENCE_SECONDS_PER_EDIT),
                    Some(3.5),
                ),
                (
                    "target search, one edit at a time",
                    "s/edit",
                    "/one_at_a_time/seconds_per_edit",
                    Some(REFERENCE_SECONDS_PER_EDIT),
                    Some(5.0),
                ),
            ],
        },
        Phase {
            name: "eval",
            args: with(&["--n", "16", "--generation", "0", "--records", &records]),
            measures: vec![(
                "scoring, 16 CounterFact records",
                "s/record",
                "/scoring/seconds_per_record",
                Some(REFERENCE_SECONDS_PER_RECORD),
                Some(0.45),
            )],
        },
    ]
}

/// Runs every phase and writes `all.json` (and `<phase>.json`) under `--out`.
pub fn run(a: AllArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let exe = std::env::current_exe().context("locating the editbench executable")?;
    let mut rows = Vec::new();
    let mut reports = serde_json::Map::new();
    for phase in phases(&a) {
        eprintln!("bench all: {} …", phase.name);
        let report = run_phase(&exe, &phase, &a.out.join(format!("{}.json", phase.name)))?;
        let result = &report["report"]["result"];
        for (what, unit, pointer, reference, goal) in &phase.measures {
            let value = result
                .pointer(pointer)
                .and_then(Value::as_f64)
                .with_context(|| format!("{}: no {pointer} in its report", phase.name))?;
            // The measure's rate sits beside it.
            let scope =
                result.pointer(&pointer[..pointer.rfind('/').unwrap_or(0)]).unwrap_or(result);
            rows.push(json!({
                "phase": phase.name, "measure": what, "value": value, "unit": unit,
                "reference": reference, "speedup_over_reference": reference.map(|r| r / value),
                "goal_at_most": goal, "goal_met": goal.map(|g| value <= g),
                "gflops_per_second": scope.get("gflops_per_second").or(scope.get("model_gflops_per_second")),
                "fraction_of_gemm_peak": scope.get("fraction_of_gemm_peak"),
                "peak_memory_mb": report["peak_memory_mb"],
            }));
        }
        reports.insert(phase.name.into(), report);
    }
    let all = json!({ "model": a.model.model.display().to_string(), "backend": a.model.backend.to_string(), "dtype": a.model.dtype, "machine": machine(), "phases": rows, "reports": reports });
    let text = serde_json::to_string_pretty(&all)? + "\n";
    crate::output::write_atomic(&a.out.join("all.json"), text.as_bytes())?;
    crate::output::write_atomic(&a.out.join("all.md"), markdown(&rows).as_bytes())?;
    print!("{text}");
    Ok(())
}

/// The phases as a Markdown table (the README's performance table).
fn markdown(rows: &[Value]) -> String {
    let mut out = String::from("| phase | editbench | reference | speed-up | goal | met | GFLOP/s (fraction of GEMM peak) | peak memory |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let unit = r["unit"].as_str().unwrap_or("");
        let show = |v: &Value, prefix: &str, suffix: &str| {
            v.as_f64().map_or("—".into(), |x| format!("{prefix}{x:.2}{suffix}"))
        };
        let rate = match (r["gflops_per_second"].as_f64(), r["fraction_of_gemm_peak"].as_f64()) {
            (Some(g), Some(f)) => format!("{g:.0} ({:.0} %)", f * 100.0),
            _ => "—".into(),
        };
        let met = r["goal_met"].as_bool().map_or("—", |m| if m { "yes" } else { "no" });
        let memory = r["peak_memory_mb"].as_f64().map_or("—".into(), |m| format!("{m:.0} MB"));
        out += &format!(
            "| {} | {} | {} | {} | {} | {met} | {rate} | {memory} |\n",
            r["measure"].as_str().unwrap_or(""),
            show(&r["value"], "", &format!(" {unit}")),
            show(&r["reference"], "", &format!(" {unit}")),
            show(&r["speedup_over_reference"], "", "×"),
            show(&r["goal_at_most"], "≤ ", &format!(" {unit}")),
        );
    }
    out
}

/// `editbench bench <phase> …` in a child process; its JSON report.
pub(crate) fn run_phase(exe: &Path, phase: &Phase, out: &Path) -> Result<Value> {
    let status = Command::new(exe)
        .arg("bench")
        .arg(phase.name)
        .args(&phase.args)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running bench {}", phase.name))?;
    if !status.success() {
        bail!("bench {} failed ({status})", phase.name);
    }
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", out.display()))
}

/// The CPU model and thread count, so that numbers from different machines are not compared.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
    });
    let avx512 = cpuinfo.lines().any(|l| l.starts_with("flags") && l.contains(" avx512f"));
    json!({ "cpu": model, "avx512": avx512, "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_missing_figures_as_dashes() {
        let rows = [
            json!({ "measure": "scoring", "value": 0.5, "unit": "s/record", "reference": 1.72, "speedup_over_reference": 3.44,
                    "goal_at_most": 0.45, "goal_met": false, "gflops_per_second": null, "fraction_of_gemm_peak": null, "peak_memory_mb": 1015.2 }),
            json!({ "measure": "forward", "value": 3.5, "unit": "s", "reference": null, "speedup_over_reference": null,
                    "goal_at_most": null, "goal_met": null, "gflops_per_second": 80.4, "fraction_of_gemm_peak": 0.467, "peak_memory_mb": 1097.0 }),
        ];
        let table = markdown(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[2], "| scoring | 0.50 s/record | 1.72 s/record | 3.44× | ≤ 0.45 s/record | no | — | 1015 MB |");
        assert_eq!(lines[3], "| forward | 3.50 s | — | — | — | — | 80 (47 %) | 1097 MB |");
    }
}
