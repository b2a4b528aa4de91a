//! `editbench run` end to end on SmolLM2 (a tiny sweep), and the sweep file's checks. Needs
//! `scripts/fetch_smollm2.sh` and `scripts/fetch_corpus.sh` (the test command runs both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn editbench(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_editbench"));
    cmd.args(args).current_dir(root()).env("RUST_LOG", "warn");
    cmd
}

fn run(args: &[&str]) -> Output {
    editbench(args).output().unwrap()
}

/// The corpus `scripts/fetch_corpus.sh` downloads (the test command runs it), named explicitly.
const CORPUS: &str = "stats.corpus=data/corpus/wikipedia_paragraphs.txt";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The tiny sweep with its statistics cache in `dir`.
fn tiny_sweep(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("crates/runner/tests/fixtures/tiny-sweep.yaml"))
        .unwrap();
    let path = dir.join("tiny.yaml");
    std::fs::write(&path, text.replace("STATS_CACHE", &dir.join("stats").display().to_string()))
        .unwrap();
    path
}

/// Every raw row of a results directory as one CSV (`editbench rows`).
fn raw_rows(dir: &Path) -> String {
    let o = run(&["rows", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_quick_experiment_expands_to_sixteen_cells() {
    let o = run(&["run", "experiments/smollm2-quick.yaml", "--dry-run", "--set", CORPUS]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("16 cells"), "{text}");
    for method in ["rome", "r-rome", "memit", "emmet"] {
        assert_eq!(text.matches(&format!(" {method} ")).count(), 4, "{text}");
    }
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        "batch_sizes=[1, 2, 4]",
        "--set",
        "methods=[emmet]",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("6 cells"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn sweep_files_are_checked_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&root().join("experiments/smollm2-quick.yaml"));
    let cases: [(&str, &str, &str); 15] = [
        ("seeds: [0]", "seeds: [0]\nbatch_size: [2]", "bad.yaml:33:1: unknown field `batch_size`, expected one of `name`, `models`, `backend`, `dataset`, `stats`, `methods`, `batch_sizes`, `distribution`, `layers`, `seeds`, `protocol`, `eval_every_round`, `eval_every`, `generation`, `overrides`, `eval`\n"),
        ("batch_sizes: [1, 16]", "batch_sizes: [1, 64]", "bad.yaml:31:1: batch size 64 is impossible with dataset.n_edits = 16 (allowed: 1..=16)\n"),
        ("batch_sizes: [1, 16]", "batch_sizes: one", "bad.yaml:31:14: batch_sizes: invalid type: string \"one\", expected a sequence\n"),
        ("methods: [rome, r-rome, memit, emmet]", "methods: [rome, memitt]", "bad.yaml:29:17: methods[1]: unknown variant `memitt`, expected one of `rome`, `r-rome`, `memit`, "),
        ("seeds: [0]", "seeds: [0]\nlayers: {single: [30]}", "bad.yaml:33:1: layer 30 is out of range for models[0] (allowed: 0..=29)\n"),
        ("data/counterfact/counterfact_dev_sample.json", "data/counterfact/missing.json", "bad.yaml:22:3: dataset.path: no such file data/counterfact/missing.json\n"),
        ("{first: 16}", "{first: 16, last: 2}", "dataset: selection must be `all`, {first: N}, {sample: {n: N, seed: S}} or {ids: [ID, ...]}, found {\"first\":16,\"last\":2}\n"),
        ("methods: [rome, r-rome, memit, emmet]", "methods: [rome, emmet, rome]", "bad.yaml:29:1: methods lists rome twice (each value makes cells; list it once)\n"),
        ("seeds: [0]", "seeds: [0]\nlayers: {single: []}", "bad.yaml:33:1: layers.single must list at least one value (or be left out for the hparams file's)\n"),
        ("{first: 16}", "{first: 8}", "dataset: the selection holds 8 records but n_edits is 16\n"),
        ("rome: {templates: fixed}", "rome: {templates: fixed, emmet_lambda: 0.2}", "overrides.rome: rome: `emmet_lambda` is not one of its hyperparameters (layer, spread_layers,"),
        ("backend: cpu", "backend: tpu", "bad.yaml:19:1: backend: unknown backend `tpu` (cpu, wgpu, cuda)\n"),
        ("    hparams: hparams/smollm2.yaml ", "    dtype: f8\n    hparams: hparams/smollm2.yaml ", "bad.yaml:18:12: models[0].dtype: unknown variant `f8`, expected one of `f32`, `f16`, `bf16`\n"),
        ("protocol: independent", "protocol: independent\neval_every: 256", "bad.yaml:36:1: eval_every needs protocol: sequential\n"),
        ("protocol: independent", "protocol: sequential\neval_every: 0", "bad.yaml:36:1: eval_every must be at least 1 (edits between scored rounds)\n"),
    ];
    for (from, to, expected) in cases {
        assert!(base.contains(from), "{from}");
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, base.replacen(from, to, 1)).unwrap();
        let o = run(&["run", path.to_str().unwrap(), "--dry-run"]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains(expected), "expected `{expected}` in:\n{err}");
    }
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        "dataset.n_edits=0",
    ]);
    assert!(stderr(&o).contains("experiments/smollm2-quick.yaml (--set dataset.n_edits=0): dataset.n_edits must be at least 1"), "{}", stderr(&o));
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        "batch_sizes=[1, 64]",
    ]);
    assert!(
        stderr(&o).contains("(--set batch_sizes=[1, 64]): batch size 64 is impossible"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        "dataset.n_edits=-3",
    ]);
    assert!(
        stderr(&o).contains("expected a whole number ≥ 0") && !stderr(&o).contains("usize"),
        "{}",
        stderr(&o)
    );
    let o = run(&["run", "experiments/smollm2-quick.yaml", "--set", "nonsense"]);
    assert!(stderr(&o).contains("--set nonsense: expected dotted.key=value"), "{}", stderr(&o));
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        "eval={sample: {n: 4, seed: 3, first: true}}",
    ]);
    assert!(
        stderr(&o).contains("eval.sample.seed = 3 has no effect with first: true"),
        "{}",
        stderr(&o)
    );
    let o = run(&["run", "experiments/smollm2-quick.yaml", "--shard", "2/2"]);
    assert!(stderr(&o).contains("--shard 2/2: expected I/N with 0 ≤ I < N"), "{}", stderr(&o));
    // The dry run lists exactly the cells of its shard.
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--shard",
        "1/4",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("4 of 16 cells in shard 1/4"), "{text}");
    let listed: Vec<&str> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("memory plan"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(listed, ["1", "5", "9", "13"]);
    // The dry run ends with the memory plan (estimates per phase; arithmetic unit-tested).
    assert!(text.contains("memory plan for smollm2-135m") && text.contains("peak"), "{text}");
    // Half precision on the cpu backend is rounded and stored in f32, so planned at 4 bytes a weight.
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        "models.0.dtype=bf16",
    ]);
    let half = String::from_utf8_lossy(&o.stdout);
    assert!(half.contains("memory plan for smollm2-135m (bf16 rounded, stored as f32)"), "{half}");
    let weights = |plan: &str| {
        plan.lines().find(|l| l.trim_start().starts_with("weights")).unwrap().to_string()
    };
    assert_eq!(weights(&half), weights(&text));
    // A checkpoint directory without its weights is refused before any work.
    let no_weights = dir.path().join("no-weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    std::fs::copy(
        root().join("crates/models/tests/fixtures/tiny-llama/config.json"),
        no_weights.join("config.json"),
    )
    .unwrap();
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        &format!("models.0.path={}", no_weights.display()),
    ]);
    assert!(stderr(&o).contains("model.safetensors: no such file or directory"), "{}", stderr(&o));
    // A case_id that repeats among the edited records is refused (it keys the results).
    let mut records: Vec<serde_json::Value> =
        serde_json::from_str(&read(&root().join("data/counterfact/counterfact_dev_sample.json")))
            .unwrap();
    records[1]["case_id"] = records[0]["case_id"].clone();
    let data = dir.path().join("dup.json");
    std::fs::write(&data, serde_json::to_string(&records).unwrap()).unwrap();
    let o = run(&[
        "run",
        "experiments/smollm2-quick.yaml",
        "--dry-run",
        "--set",
        CORPUS,
        "--set",
        &format!("dataset.path={}", data.display()),
    ]);
    assert!(
        stderr(&o).contains("case_id 13 occurs more than once among the edited records"),
        "{}",
        stderr(&o)
    );
}

/// Files with extension `ext` in `dir` (0 when it does not exist).
fn count(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == ext)).count())
        .unwrap_or(0)
}

/// The cell records (`cells/*.json`) of a results directory.
fn cell_records(out: &Path) -> Vec<serde_json::Value> {
    let files = std::fs::read_dir(out.join("cells")).unwrap().flatten().map(|e| e.path());
    files
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| serde_json::from_str(&read(&p)).unwrap())
        .collect()
}

/// Runs the tiny sweep into `out` to its end, or kills it (SIGKILL) as soon as `kill_when(out)`.
fn tiny_run(sweep: &Path, out: &Path, extra: &[&str], kill_when: Option<&dyn Fn(&Path) -> bool>) {
    let mut args = vec!["run", sweep.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(extra);
    let mut child = editbench(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(kill_when) = kill_when {
        let started = Instant::now();
        while !kill_when(out) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the sweep ended before it could be killed"
            );
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "the kill point was never reached"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        return;
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_tiny_sweep_runs_resumes_after_a_kill_and_merges_shards_identically() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    // The manifest of a run that failed before finishing anything (e.g. a wrong model path, then
    // corrected) does not block the directory.
    let full = dir.path().join("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("manifest.json"), r#"{"sweep_sha256": "0", "cells": []}"#).unwrap();
    tiny_run(&sweep, &full, &[], None);

    let results = raw_rows(&full);
    let mut lines = results.lines();
    assert_eq!(lines.next(), Some("cell_id,model,method,distribution,layers,batch_size,n_edits,seed,round,case_id,stage,metric,value"));
    // 4 cells × 2 records × 9 metrics × (pre + post).
    assert_eq!(lines.count(), 4 * 2 * 9 * 2);
    let summary = read(&full.join("summary.csv"));
    assert!(summary.lines().any(|l| l.contains(",emmet,single,4,1,2,0,post,ES,")), "{summary}");
    assert!(summary.lines().any(|l| l.contains(",pre,S,")), "{summary}");
    // The edits were written: every cell moved P(new) − P(true) on the rewrite prompts.
    let em = |stage: &str| -> Vec<f64> {
        summary
            .lines()
            .filter(|l| l.contains(&format!(",{stage},EM,")))
            .map(|l| l.split(',').nth(10).unwrap().parse().unwrap())
            .collect()
    };
    assert_eq!(em("pre").len(), 4);
    assert!(
        em("pre").iter().zip(em("post")).all(|(pre, post)| post > *pre + 1.0),
        "pre {:?} post {:?}",
        em("pre"),
        em("post")
    );
    let timings = read(&full.join("timings.csv"));
    for phase in ["targets", "keys", "solve", "eval", "stats", "eval_pre"] {
        assert!(timings.contains(&format!(",{phase},")), "{phase} missing in {timings}");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&full.join("manifest.json"))).unwrap();
    assert_eq!(manifest["cells"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["models"][0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["stats_cache_keys"].as_array().unwrap().len(), 1);
    assert!(manifest["git_revision"].as_str().is_some());
    // Every cell names the build and machine that ran it.
    for record in cell_records(&full) {
        let segments = record["provenance"].as_array().expect("provenance");
        assert_eq!(segments.len(), 1, "{record}");
        let s = &segments[0];
        assert_eq!(s["commit"].as_str().unwrap().len(), 40, "{s}");
        assert_eq!(s["dirty"].as_bool().unwrap(), s["diff_sha256"].is_string(), "{s}");
        assert_eq!(s["backend"].as_str(), Some("cpu"), "{s}");
        assert!(s["started"].as_str().unwrap() <= s["ended"].as_str().unwrap(), "{s}");
        assert!(
            !s["cpu"].as_str().unwrap().is_empty() && s["threads"].as_u64().unwrap() >= 1,
            "{s}"
        );
    }
    // The report rebuilds the aggregates from the raw rows: damaged aggregates come back exact.
    std::fs::write(full.join("summary.csv"), "damaged").unwrap();
    let o = run(&["report", full.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&full.join("summary.csv")), summary, "summary rebuilt from raw rows");

    // Killed right after the unedited scores were written, then after the first target vectors,
    // then after the first cell, each time rerun: nothing lost, nothing duplicated, same bytes.
    let resumed = dir.path().join("resumed");
    let kill_points: [(&str, &dyn Fn(&Path) -> bool); 3] = [
        ("unedited scores", &|o: &Path| count(&o.join("pre"), "json") > 0),
        ("target vectors", &|o: &Path| count(&o.join("targets"), "json") > 0),
        ("first cell", &|o: &Path| count(&o.join("cells"), "json") > 0),
    ];
    for (point, kill_when) in kill_points {
        assert!(!kill_when(&resumed), "{point}: already reached before the run");
        tiny_run(&sweep, &resumed, &[], Some(kill_when));
        assert!(count(&resumed.join("cells"), "json") < 4, "{point}: the sweep had finished");
    }
    tiny_run(&sweep, &resumed, &[], None);
    assert_eq!(raw_rows(&resumed), results, "resumed run differs");
    assert_eq!(read(&resumed.join("summary.csv")), summary, "resumed summary differs");
    // A rerun of a finished sweep does no work and changes nothing.
    tiny_run(&sweep, &resumed, &[], None);
    assert_eq!(raw_rows(&resumed), results);

    // Two shards merged equal the unsharded run.
    let shards = [dir.path().join("s0"), dir.path().join("s1")];
    tiny_run(&sweep, &shards[0], &["--shard", "0/2"], None);
    tiny_run(&sweep, &shards[1], &["--shard", "1/2"], None);
    let merged = dir.path().join("merged");
    let o = run(&[
        "merge",
        "--out",
        merged.to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(raw_rows(&merged), results, "merged shards differ from the full run");
    assert_eq!(read(&merged.join("summary.csv")), summary);

    // Results committed before raw rows were kept hold only cells/*.json and the aggregates: such
    // a directory merges with a shard into every cell's summaries, and a run into the merged
    // directory has nothing to do.
    let committed = dir.path().join("committed");
    std::fs::create_dir_all(committed.join("cells")).unwrap();
    for file in ["manifest.json", "summary.csv", "timings.csv"] {
        std::fs::copy(shards[0].join(file), committed.join(file)).unwrap();
    }
    for entry in std::fs::read_dir(shards[0].join("cells")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|x| x == "json") {
            std::fs::copy(entry.path(), committed.join("cells").join(entry.file_name())).unwrap();
        }
    }
    let combined = dir.path().join("combined");
    let o = run(&[
        "merge",
        "--out",
        combined.to_str().unwrap(),
        committed.to_str().unwrap(),
        shards[1].to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sorted = |text: String| -> Vec<String> {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(
        sorted(read(&combined.join("summary.csv"))),
        sorted(summary.clone()),
        "merged committed results differ"
    );
    assert!(!combined.join("results.csv").exists());
    let o = run(&["run", sweep.to_str().unwrap(), "--out", combined.to_str().unwrap()]);
    assert!(stderr(&o).contains("0 to run (4 already finished)"), "{}", stderr(&o));
    assert_eq!(
        sorted(read(&combined.join("summary.csv"))),
        sorted(summary.clone()),
        "a rerun changed committed results"
    );
    let o = run(&["report", combined.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // `--cells` runs only the named cells; a later run without it does the rest, same bytes.
    let ids: Vec<&str> =
        manifest["cells"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    let picked = dir.path().join("picked");
    tiny_run(&sweep, &picked, &["--cells", ids[3]], None);
    assert_eq!(count(&picked.join("cells"), "json"), 1);
    let o = run(&[
        "run",
        sweep.to_str().unwrap(),
        "--out",
        picked.to_str().unwrap(),
        "--cells",
        "nosuchcell",
    ]);
    assert!(stderr(&o).contains("--cells nosuchcell: no such cell"), "{}", stderr(&o));
    tiny_run(&sweep, &picked, &[], None);
    assert_eq!(raw_rows(&picked), results, "a run in two selections differs");

    // Two cells at a time, each on one thread: the same scores up to float rounding (a lone pass
    // instead of two side by side), every cell recorded as run on one thread.
    let paired = dir.path().join("paired");
    tiny_run(&sweep, &paired, &["--jobs", "2"], None);
    let means = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .skip(1)
            .map(|l| {
                (
                    l.rsplitn(4, ',').nth(3).unwrap().to_string(),
                    l.split(',').nth(10).unwrap().parse().unwrap(),
                )
            })
            .collect()
    };
    for ((key, a), (other, b)) in
        means(&summary).into_iter().zip(means(&read(&paired.join("summary.csv"))))
    {
        assert_eq!(key, other);
        assert!((a - b).abs() <= 1e-4, "{key}: {a} alone, {b} side by side (points ×100)");
    }
    for record in cell_records(&paired) {
        assert_eq!(record["outcome"]["threads"], 1, "{}", record["cell"]);
    }
    let o =
        run(&["run", sweep.to_str().unwrap(), "--out", paired.to_str().unwrap(), "--jobs", "0"]);
    assert!(stderr(&o).contains("--jobs 0: at least one cell"), "{}", stderr(&o));
    let o = run(&[
        "run",
        sweep.to_str().unwrap(),
        "--out",
        paired.to_str().unwrap(),
        "--jobs",
        "2",
        "--set",
        "backend=wgpu",
    ]);
    // (A build without the wgpu feature refuses the backend itself.)
    assert!(
        stderr(&o).contains("cells run side by side on the cpu backend only")
            || stderr(&o).contains("wgpu"),
        "{}",
        stderr(&o)
    );

    // Shards of different sweeps are refused.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, read(&sweep).replace("batch_sizes: [1, 2]", "batch_sizes: [2]"))
        .unwrap();
    let o = run(&["run", other.to_str().unwrap(), "--out", full.to_str().unwrap()]);
    assert!(stderr(&o).contains("holds results of another sweep"), "{}", stderr(&o));
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let mut m = manifest.clone();
    m["sweep_sha256"] = serde_json::json!("0");
    std::fs::write(foreign.join("manifest.json"), m.to_string()).unwrap();
    let o = run(&[
        "merge",
        "--out",
        dir.path().join("m2").to_str().unwrap(),
        full.to_str().unwrap(),
        foreign.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("is from another sweep"), "{}", stderr(&o));
    // Merging into a directory that holds another sweep's results is refused, and changes nothing.
    let before = read(&foreign.join("manifest.json"));
    let o = run(&[
        "merge",
        "--out",
        foreign.to_str().unwrap(),
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
    ]);
    assert!(
        stderr(&o).contains("is not empty and holds no results of this sweep"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read(&foreign.join("manifest.json")), before);
}

#[test]
fn a_failing_cell_is_recorded_and_the_sweep_goes_on_unless_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    // AlphaEdit with a null-space threshold below every eigenvalue of C cannot edit: each cell fails.
    let text = read(&tiny_sweep(dir.path()))
        .replace("methods: [emmet, memit]", "methods: [alphaedit]")
        .replace(
            "  emmet: {v_num_grad_steps: 4, templates: fixed}",
            "  alphaedit: {nullspace_threshold: 1.0e-30, templates: fixed}",
        )
        .replace("  memit: {v_num_grad_steps: 4, templates: fixed}\n", "");
    let sweep = dir.path().join("failing.yaml");
    std::fs::write(&sweep, text).unwrap();
    let out = dir.path().join("out");
    let o = run(&["run", sweep.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("2 cell(s) failed"), "{}", stderr(&o));
    let failed = cell_records(&out);
    assert_eq!(failed.len(), 2, "both cells ran");
    assert!(
        failed.iter().all(|r| r["error"]
            .as_str()
            .unwrap()
            .contains("no eigenvalue of C at layer 4 is below nullspace_threshold")),
        "{failed:?}"
    );
    assert_eq!(raw_rows(&out), "", "no rows from failed cells");

    let out = dir.path().join("paired");
    let o = run(&["run", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--jobs", "2"]);
    assert!(stderr(&o).contains("2 cell(s) failed"), "{}", stderr(&o));
    assert_eq!(cell_records(&out).len(), 2, "both cells ran side by side");

    let out = dir.path().join("fast");
    let o = run(&["run", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--fail-fast"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("failed (--fail-fast)"), "{}", stderr(&o));
    assert_eq!(cell_records(&out).len(), 1, "stopped after the first failure");
}

/// `eval.sample` scores the same seeded subset (or the first records) in every cell;
/// `eval.degradation` adds the unedited and edited perplexity (PPL) and per edited layer the update
/// norms (DWNORM, DWREL), measured after at most `batches` sampled scored batches in the independent
/// protocol.
#[test]
fn a_sampled_sweep_scores_its_subset_and_measures_degradation() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    let out = dir.path().join("sampled");
    let sets = [
        "--set",
        "methods=[emmet]",
        "--set",
        "batch_sizes=[1]",
        "--set",
        "protocol=independent",
        "--set",
        "eval={sample: {n: 1, seed: 3}, degradation: {texts: 3, max_length: 16, batches: 1}}",
    ];
    tiny_run(&sweep, &out, &sets, None);
    let results = raw_rows(&out);
    let rows: Vec<Vec<&str>> = results.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let cases: std::collections::BTreeSet<&str> =
        rows.iter().filter(|r| r[11] != "PPL" && !r[11].starts_with("DW")).map(|r| r[9]).collect();
    assert_eq!(cases.len(), 1, "one sampled record scored: {cases:?}");
    let metric = |stage: &str, code: &str| {
        rows.iter()
            .filter(|r| r[10] == stage && r[11] == code)
            .map(|r| r[12].parse::<f64>().unwrap())
            .collect::<Vec<f64>>()
    };
    let (pre, post) = (metric("pre", "PPL"), metric("post", "PPL"));
    assert_eq!(
        (pre.len(), post.len()),
        (1, 1),
        "PPL once unedited, once after the one sampled batch"
    );
    assert!(pre[0] > 1.0 && post[0] > 1.0 && post[0] != pre[0], "pre {pre:?} post {post:?}");
    let (norm, rel) = (metric("post", "DWNORM"), metric("post", "DWREL"));
    assert_eq!((norm.len(), rel.len()), (1, 1), "one edited layer");
    assert!(norm[0] > 0.0 && rel[0] > 0.0 && rel[0] < 1.0, "{norm:?} {rel:?}");
    assert!(
        rows.iter().filter(|r| r[11] == "DWNORM").all(|r| r[9] == "4"),
        "the layer is the case_id"
    );
    let held_out: serde_json::Value =
        serde_json::from_str(&read(&out.join("held-out/smollm2.json"))).unwrap();
    assert_eq!(held_out["paragraph_indices"].as_array().unwrap().len(), 3);
    assert_eq!(held_out["excluded_statistics_paragraphs"], 40);
    // Without degradation, the batch whose record is not sampled is not edited at all.
    let only_sample = dir.path().join("only-sample");
    let sets = [
        "--set",
        "methods=[emmet]",
        "--set",
        "batch_sizes=[1]",
        "--set",
        "protocol=independent",
        "--set",
        "eval={sample: {n: 1, seed: 3}}",
    ];
    tiny_run(&sweep, &only_sample, &sets, None);
    let cells = cell_records(&only_sample);
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0]["outcome"]["skipped_batches"], 1, "{}", cells[0]["outcome"]);
    assert_eq!(cells[0]["outcome"]["adam_steps"].as_array().unwrap().len(), 1, "one edit searched");
    let post = |dir: &Path| {
        raw_rows(dir)
            .lines()
            .filter(|l| l.contains(",post,") && !l.contains("PPL") && !l.contains(",DW"))
            .map(|l| l.split(',').skip(9).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(post(&only_sample), post(&out), "the sampled record scores the same");
    // `first: true` scores the first record; degradation is measured after its batch only, and
    // the other batch is not edited.
    let first = dir.path().join("first");
    let sets = [
        "--set",
        "methods=[emmet]",
        "--set",
        "batch_sizes=[1]",
        "--set",
        "protocol=independent",
        "--set",
        "eval={sample: {n: 1, first: true}, degradation: {texts: 3, max_length: 16, batches: 2}}",
    ];
    tiny_run(&sweep, &first, &sets, None);
    let dataset: serde_json::Value =
        serde_json::from_str(&read(&root().join("data/counterfact/counterfact_dev_sample.json")))
            .unwrap();
    let first_case = dataset[0]["case_id"].to_string();
    let results = raw_rows(&first);
    let scored: std::collections::BTreeSet<&str> = results
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|r| r[11] == "ES")
        .map(|r| r[9])
        .collect();
    assert_eq!(scored, [first_case.as_str()].into(), "{results}");
    assert_eq!(
        results.lines().filter(|l| l.contains(",post,PPL,")).count(),
        1,
        "PPL after the one scored batch"
    );
    let cell = cell_records(&first).remove(0);
    assert_eq!(cell["outcome"]["skipped_batches"], 1, "{}", cell["outcome"]);
    // Without raw rows (runs committed before they were kept), the report reads the same tables
    // from summary.csv.
    let summaries = dir.path().join("summaries-only");
    std::fs::create_dir(&summaries).unwrap();
    for file in ["manifest.json", "summary.csv", "timings.csv"] {
        std::fs::copy(first.join(file), summaries.join(file)).unwrap();
    }
    let (rows, sums) = (
        editbench_report::load_run(&first).unwrap(),
        editbench_report::load_run(&summaries).unwrap(),
    );
    assert_eq!(
        (rows.post.len(), rows.pre.len(), rows.sample),
        (sums.post.len(), sums.pre.len(), sums.sample)
    );
    for (a, b) in [
        (&rows.post.values().next().unwrap(), &sums.post.values().next().unwrap()),
        (&&rows.pre["smollm2"], &&sums.pre["smollm2"]),
    ] {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (metric, x) in a.iter() {
            let y = b[metric];
            assert!(
                (x.mean - y.mean).abs() < 1e-9
                    && x.n == y.n
                    && x.stderr.is_some() == y.stderr.is_some(),
                "{metric:?}: {x:?} vs {y:?}"
            );
        }
    }
}

/// A task file of 12 hand-made SST-2 items (10 few-shot examples, 2 test items) in `dir`.
fn tiny_sst2(dir: &Path) -> PathBuf {
    let tasks = dir.join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    let items: Vec<String> = (0..12)
        .map(|i| {
            let (text, label) = [("a warm , funny film", 1), ("dull and far too long", 0)][i % 2];
            format!(r#"{{"sentence": "{text} ({i})", "label": {label}, "idx": {i}}}"#)
        })
        .collect();
    std::fs::write(tasks.join("sst2.json"), format!("[{}]", items.join(","))).unwrap();
    tasks
}

/// `(round, case_id, stage)` of each `ds_sst2` row, and every value in {0, 1}.
fn downstream_rows(dir: &Path) -> Vec<(String, String, String)> {
    let rows = raw_rows(dir);
    let rows: Vec<Vec<&str>> = rows.lines().skip(1).map(|l| l.split(',').collect()).collect();
    let ds: Vec<&Vec<&str>> = rows.iter().filter(|r| r[11] == "ds_sst2").collect();
    assert!(ds.iter().all(|r| [0.0, 1.0].contains(&r[12].parse::<f64>().unwrap())), "{ds:?}");
    ds.iter().map(|r| (r[8].to_string(), r[9].to_string(), r[10].to_string())).collect()
}

#[test]
fn downstream_tasks_are_measured_unedited_and_after_the_chosen_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    let tasks = tiny_sst2(dir.path()).display().to_string();
    let downstream = format!("downstream: {{path: {tasks}, tasks: [sst2], few_shot: 2, n: 2}}");
    let independent = dir.path().join("independent");
    let eval = format!("eval={{sample: {{n: 1, first: true}}, {downstream}}}");
    let sets = ["--set", "methods=[emmet]", "--set", "batch_sizes=[1]", "--set", &eval];
    tiny_run(&sweep, &independent, &[&sets[..], &["--set", "protocol=independent"]].concat(), None);
    let row = |round: &str, case: &str, stage: &str| (round.into(), case.into(), stage.into());
    assert_eq!(
        downstream_rows(&independent),
        [row("0", "0", "pre"), row("0", "1", "pre"), row("1", "0", "post"), row("1", "1", "post")],
        "both items unedited and after the one scored batch"
    );
    // Sequential: after every round that completes another `every` edits, and after the last.
    let sequential = dir.path().join("sequential");
    let eval = format!("eval={{downstream: {{path: {tasks}, tasks: [sst2], n: 1, every: 1}}}}");
    let sets = ["--set", "methods=[emmet]", "--set", "batch_sizes=[1]", "--set", &eval];
    tiny_run(&sweep, &sequential, &[&sets[..], &["--set", "protocol=sequential"]].concat(), None);
    let rounds: Vec<String> = downstream_rows(&sequential).into_iter().map(|r| r.0).collect();
    assert_eq!(rounds, ["0", "1", "2"]);
    let summary = read(&sequential.join("summary.csv"));
    assert!(summary.lines().any(|l| l.contains(",ds_sst2,")), "{summary}");
}

/// QAEdit questions put in SmolLM2's chat template: the searched targets are those of the
/// templated questions, and the answers (teacher-forced and generated) follow the assistant's
/// opening directly.
#[test]
fn chat_prompts_put_each_question_in_the_model_s_template() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    let out = dir.path().join("chat");
    let dataset = "dataset={kind: qaedit, path: data/qaedit/QAEdit_inter_first16.json, \
                   selection: {first: 2}, n_edits: 2, prompts: chat}";
    let sets = [
        "--set",
        dataset,
        "--set",
        "methods=[emmet]",
        "--set",
        "batch_sizes=[2]",
        "--set",
        "eval={answers: {max_new_tokens: 8}}",
    ];
    tiny_run(&sweep, &out, &sets, None);
    let targets: Vec<PathBuf> =
        std::fs::read_dir(out.join("targets")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(targets.len(), 1);
    let chunk = read(&targets[0]);
    assert!(chunk.contains(r#""prompt":"<|im_start|>system\n"#), "{chunk}");
    assert!(
        chunk.contains(r#"<|im_start|>user\nwho has the {}?<|im_end|>\n<|im_start|>assistant\n""#)
    );
    let rows = raw_rows(&out);
    for code in ["rewrite_acc", "gen_ES", "gen_NA"] {
        assert!(rows.lines().any(|l| l.contains(&format!(",post,{code},"))), "{code}: {rows}");
    }
}

/// A sequential cell saves a checkpoint after every round (edited weights, AlphaEdit's earlier
/// keys, rows so far): paused by `--max-rounds`, killed mid-cell, or with its checkpoint damaged,
/// a rerun ends with the rows of an unbroken run, byte for byte.
#[test]
fn a_sequential_cell_continues_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    let sets = [
        "--set",
        "methods=[alphaedit]",
        "--set",
        "batch_sizes=[1]",
        "--set",
        "protocol=sequential",
        "--set",
        "eval_every_round=true",
        "--set",
        "dataset.selection={first: 3}",
        "--set",
        "dataset.n_edits=3",
        "--set",
        "overrides={alphaedit: {v_num_grad_steps: 4, templates: fixed}}",
        "--set",
        "eval={degradation: {texts: 2, max_length: 16}}",
    ];
    let unbroken = dir.path().join("unbroken");
    tiny_run(&sweep, &unbroken, &sets, None);
    let results = raw_rows(&unbroken);
    assert_eq!(
        results.lines().filter(|l| l.contains(",post,PPL,")).count(),
        3,
        "PPL after every round: {results}"
    );
    let checkpoints = |out: &Path| count(&out.join("checkpoints"), "safetensors");
    assert_eq!(checkpoints(&unbroken), 0, "a finished cell leaves no checkpoint");
    // curves.csv has each round's summaries; with summary.csv alone (as committed before raw rows
    // were kept) the report draws the curves the raw rows give.
    let curves = read(&unbroken.join("curves.csv"));
    assert_eq!(curves.lines().filter(|l| l.contains(",PPL,")).count(), 3, "{curves}");
    let summaries = dir.path().join("summaries-only");
    std::fs::create_dir(&summaries).unwrap();
    for file in ["manifest.json", "summary.csv", "timings.csv", "curves.csv"] {
        std::fs::copy(unbroken.join(file), summaries.join(file)).unwrap();
    }
    let (rows, sums) = (
        editbench_report::load_run(&unbroken).unwrap(),
        editbench_report::load_run(&summaries).unwrap(),
    );
    let curve = |run: &editbench_report::Run| run.curves.values().next().cloned().expect("a curve");
    let (a, b) = (curve(&rows), curve(&sums));
    assert_eq!(a.keys().collect::<Vec<_>>(), [&1, &2, &3]);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (edits, point) in &a {
        assert_eq!(
            point.keys().collect::<Vec<_>>(),
            b[edits].keys().collect::<Vec<_>>(),
            "after {edits} edits"
        );
        assert!(
            point
                .iter()
                .all(|(m, x)| (x.mean - b[edits][m].mean).abs() < 1e-9 && x.n == b[edits][m].n),
            "after {edits} edits: {point:?} vs {:?}",
            b[edits]
        );
    }

    // Paused after one round, then after another, then run to the end.
    let paused = dir.path().join("paused");
    for round in 1..=2 {
        let mut args = vec![
            "run",
            sweep.to_str().unwrap(),
            "--out",
            paused.to_str().unwrap(),
            "--max-rounds",
            "1",
        ];
        args.extend(sets);
        let o = run(&args);
        assert!(
            o.status.success()
                && stderr(&o).contains("1 sequential cell(s) paused by --max-rounds"),
            "{}",
            stderr(&o)
        );
        assert_eq!(
            (count(&paused.join("cells"), "json"), checkpoints(&paused)),
            (0, 1),
            "after round {round}"
        );
    }
    tiny_run(&sweep, &paused, &sets, None);
    assert_eq!(raw_rows(&paused), results, "paused and resumed run differs");
    assert_eq!(
        cell_records(&paused)[0]["outcome"]["resumed_after_rounds"],
        serde_json::json!([1, 2])
    );
    // One provenance segment per invocation, with the rounds each ran.
    let segments = cell_records(&paused)[0]["provenance"].clone();
    let rounds: Vec<serde_json::Value> =
        segments.as_array().unwrap().iter().map(|s| s["rounds"].clone()).collect();
    assert_eq!(
        rounds,
        [serde_json::json!([0, 1]), serde_json::json!([1, 2]), serde_json::json!([2, 3])],
        "{segments}"
    );
    assert_eq!(checkpoints(&paused), 0);

    // Killed as soon as the first checkpoint is written.
    let killed = dir.path().join("killed");
    tiny_run(&sweep, &killed, &sets, Some(&|o: &Path| checkpoints(o) > 0));
    tiny_run(&sweep, &killed, &sets, None);
    assert_eq!(raw_rows(&killed), results, "killed and resumed run differs");

    // A damaged checkpoint is set aside and the cell starts over.
    let damaged = dir.path().join("damaged");
    tiny_run(&sweep, &damaged, &[&sets[..], &["--max-rounds", "1"]].concat(), None);
    let file =
        std::fs::read_dir(damaged.join("checkpoints")).unwrap().flatten().next().unwrap().path();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 8]).unwrap();
    tiny_run(&sweep, &damaged, &sets, None);
    assert_eq!(raw_rows(&damaged), results, "restarted run differs");
    assert_eq!(count(&damaged.join("checkpoints"), "unusable"), 1);
    assert_eq!(cell_records(&damaged)[0]["outcome"]["resumed_after_rounds"], serde_json::json!([]));
}

#[test]
fn slurm_dry_run_writes_an_array_a_merge_and_a_failure_report_and_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    let out = dir.path().join("out dir");
    let args = ["slurm", sweep.to_str().unwrap(), "--shards", "2", "--gres", "gpu:1"];
    let o = run(&[&args[..], &["--out", out.to_str().unwrap(), "--dry-run"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("2 of 4 cells in shard 0/2") && text.contains("shard 1/2"), "{text}");
    let shards = read(&out.join("slurm/shards.sbatch"));
    for line in ["#SBATCH --array=0-1", "#SBATCH --requeue", "#SBATCH --gres=gpu:1"] {
        assert!(shards.contains(line), "{shards}");
    }
    assert!(shards.contains("--shard \"$SLURM_ARRAY_TASK_ID/2\""), "{shards}");
    assert!(shards.contains(&format!("--out '{}'/shard-", out.display())), "{shards}");
    let merge = read(&out.join("slurm/merge.sbatch"));
    assert!(merge.contains(" merge --out ") && merge.contains("shard-1'"), "{merge}");
    assert!(out.join("slurm/failed.sbatch").exists());
    assert!(!out.join("slurm/jobs.json").exists(), "a dry run submits nothing");
    for (shards, why) in [("0", "at least 1"), ("5", "only 4 cells")] {
        let o = run(&["slurm", sweep.to_str().unwrap(), "--shards", shards, "--dry-run"]);
        assert!(!o.status.success() && stderr(&o).contains(why), "{}", stderr(&o));
    }
}

/// UltraEdit in a sequential sweep: no key statistics are collected for it, and paused after its
/// first round (its running feature statistics kept in the checkpoint), a rerun ends with the rows
/// of an unbroken run, byte for byte.
#[test]
fn an_ultraedit_cell_resumes_with_its_running_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = tiny_sweep(dir.path());
    let sets = [
        "--set",
        "methods=[ultraedit]",
        "--set",
        "distribution=[spread]",
        "--set",
        "batch_sizes=[1]",
        "--set",
        "protocol=sequential",
        "--set",
        "eval_every_round=true",
        // A step size that moves SmolLM2, so that a lost normalizer would change the rows.
        "--set",
        "overrides={ultraedit: {ultraedit_lr: 1.0e-3}}",
    ];
    let unbroken = dir.path().join("unbroken");
    tiny_run(&sweep, &unbroken, &sets, None);
    assert_eq!(count(&dir.path().join("stats"), "safetensors"), 0, "UltraEdit needs no statistics");
    let paused = dir.path().join("paused");
    tiny_run(&sweep, &paused, &[&sets[..], &["--max-rounds", "1"]].concat(), None);
    assert_eq!(count(&paused.join("checkpoints"), "safetensors"), 1);
    tiny_run(&sweep, &paused, &sets, None);
    assert_eq!(raw_rows(&paused), raw_rows(&unbroken), "paused and resumed run differs");
}
