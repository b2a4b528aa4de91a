//! The `editbench` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name)
}

fn editbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_editbench")).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn logits_prints_shape_and_row_major_values_matching_transformers() {
    let model = fixture("tiny-gptj");
    let out =
        editbench(&["logits", "--model", model.to_str().unwrap(), "--ids", "1,5,9,77,3,100,42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["shape"], serde_json::json!([7, 128]));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("golden.json")).unwrap()).unwrap();
    let got: Vec<f32> = serde_json::from_value(json["logits"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(golden["logits"][0].clone()).unwrap();
    let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff <= 1e-4, "max |Δlogit| {diff:e}");
}

#[test]
fn user_errors_exit_nonzero_with_a_message_and_no_panic() {
    let llama = fixture("tiny-llama");
    let llama = llama.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken");
    std::fs::create_dir_all(taken.join("x")).unwrap();
    let (taken, bad_templates) = (taken.to_str().unwrap().to_string(), dir.path().join("t.json"));
    std::fs::write(&bad_templates, r#"{"groups": [["no braces"]]}"#).unwrap();
    let bad_templates = bad_templates.to_str().unwrap().to_string();
    // `edit` checks its files before loading the model: the model path here does not exist, so a
    // message about it would mean the check came too late.
    let edit = [
        "edit",
        "--model",
        "/nonexistent/model",
        "--prompt",
        "{} is in",
        "--subject",
        "Paris",
        "--target",
        "Rome",
    ];
    let e1 = [&edit[..], &["--hparams", "/nonexistent/h.yaml"]].concat();
    let hparams = concat!(env!("CARGO_MANIFEST_DIR"), "/../../hparams/smollm2.yaml");
    let e2 = [&edit[..], &["--hparams", hparams, "--templates", &bad_templates]].concat();
    let e3 = [&edit[..], &["--hparams", hparams, "--save", &taken]].concat();
    let cases: [(&[&str], &str); 9] = [
        (
            &["logits", "--model", "/nonexistent/model", "--ids", "1"],
            "/nonexistent/model: no such file or directory",
        ),
        (&e1[..], "/nonexistent/h.yaml: No such file or directory"),
        (&e2[..], "every template group needs templates, each with exactly one `{}`"),
        (&e3[..], "the directory exists and is not empty; give a new one"),
        (&["logits", "--model", llama, "--ids", "1,999"], "outside the vocabulary"),
        (&["logits", "--model", llama, "--ids", "1", "--backend", "tpu"], "unknown backend `tpu`"),
        (
            &["logits", "--model", llama, "--ids", "1", "--dtype", "f8"],
            "unknown dtype `f8` (expected f32, f16 or bf16)",
        ),
        (&["generate", "--model", llama, "--prompt", "hi"], "no tokenizer.json"),
        (
            &["bench", "rows", "--model", llama, "--rows", "16,0"],
            "--rows: every count must be at least 1",
        ),
    ];
    for (args, message) in cases {
        let out = editbench(args);
        let err = stderr(&out);
        let usage = message.contains("backend") || message.contains("dtype");
        assert_eq!(out.status.code(), Some(if usage { 2 } else { 1 }), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bench_dtype_compares_half_precision_logits_with_f32() {
    let out = editbench(&[
        "bench",
        "dtype",
        "--model",
        fixture("tiny-gptj").to_str().unwrap(),
        "--batch",
        "2",
        "--seq-len",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = json["report"]["result"]["runs"].as_array().unwrap().clone();
    let diff = |i: usize| runs[i]["against_f32"]["max_abs_logit_diff"].as_f64().unwrap();
    assert_eq!(
        runs.iter().map(|r| r["dtype"].as_str().unwrap()).collect::<Vec<_>>(),
        ["f32", "f16", "bf16"]
    );
    assert!(diff(0) == 0.0 && 0.0 < diff(1) && diff(1) < diff(2), "{runs:?}");
    assert_eq!(runs[1]["stored_natively"], false, "the CPU backend rounds half floats into f32");
}

#[test]
fn bench_rows_reports_weight_streaming_against_the_read_bandwidth() {
    let out = editbench(&[
        "bench",
        "rows",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--rows",
        "2,4",
        "--repeats",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &json["report"]["result"];
    // 2 blocks × (2 · 64 × 64 + 3 · 64 × 96) f32 weights.
    assert_eq!(result["weights_mb"].as_f64().unwrap(), 2.0 * 26_624.0 * 4.0 / 1e6);
    let positive = |v: &serde_json::Value| v.as_f64().is_some_and(|x| x.is_finite() && x > 0.0);
    assert!(positive(&result["read_bandwidth_gb_per_second"]["one_thread"]), "{result}");
    let products = result["products"].as_array().unwrap();
    assert_eq!(products.iter().map(|p| p["rows"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 4]);
    for p in products {
        for side in ["forward", "backward"] {
            for mode in ["one_thread", "all_threads", "side_by_side"] {
                assert!(positive(&p[side][mode]["weights_gb_per_second"]), "{side} {mode}: {p}");
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_backend_not_compiled_in_says_which_feature_to_build() {
    let out = editbench(&[
        "logits",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--ids",
        "1",
        "--backend",
        "cuda",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--features cuda"), "{}", stderr(&out));
}

#[test]
fn generate_completes_with_smollm2() {
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "{} is missing: run scripts/fetch_smollm2.sh", model.display());
    let out = editbench(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(" Paris"));
}

#[test]
fn trace_on_smollm2_writes_effects_heat_maps_and_a_suggestion_and_resumes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "{} is missing: run scripts/fetch_smollm2.sh", model.display());
    let data = root.join("data/counterfact/counterfact_dev_sample.json");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("trace");
    let (model, data, out_s) =
        (model.to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "trace",
        "--model",
        model,
        "--dataset",
        data,
        "--n",
        "1",
        "--kind",
        "mlp,hidden",
        "--samples",
        "2",
        "--window",
        "4",
        "--out",
        out_s,
    ];
    let first = editbench(&args);
    assert!(first.status.success(), "{}", stderr(&first));
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    assert_eq!(read("records.jsonl").lines().count(), 2, "1 record × 2 kinds");
    let effects = read("effects.csv");
    assert!(
        effects.starts_with("kind,subset,class,layer,n,mean_restored,mean_effect,sem_effect\n"),
        "{effects}"
    );
    // Every kind has the last subject token's row at each of the 30 layers over all records.
    for kind in ["mlp", "hidden"] {
        let rows = effects
            .lines()
            .filter(|l| l.starts_with(&format!("{kind},all,last subject token,")))
            .count();
        assert_eq!(rows, 30, "{kind}");
    }
    for stem in ["trace-mlp", "trace-hidden"] {
        assert!(std::fs::metadata(out.join(format!("{stem}.png"))).unwrap().len() > 5_000);
        assert!(read(&format!("{stem}.svg")).contains("last subject token"));
    }
    let suggestion: serde_json::Value =
        serde_norway::from_str(&read("suggested-hparams.yaml")).unwrap();
    let layer = suggestion["memit"]["layer"].as_u64().unwrap();
    let spread: Vec<u64> =
        serde_json::from_value(suggestion["memit"]["spread_layers"].clone()).unwrap();
    assert!(
        spread.len() == 5 && spread.contains(&layer) && spread.windows(2).all(|w| w[1] == w[0] + 1),
        "{spread:?} around {layer}"
    );

    // A rerun resumes (nothing traced again, the same effects); other settings are refused.
    let again = editbench(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(read("records.jsonl").lines().count(), 2);
    assert_eq!(read("effects.csv"), effects);
    // Another kind in the same directory adds to it; the outputs cover every kind traced there.
    let attn: Vec<&str> =
        args.iter().map(|&a| if a == "mlp,hidden" { "attn" } else { a }).collect();
    let third = editbench(&attn);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(read("records.jsonl").lines().count(), 3);
    for kind in ["mlp", "hidden", "attn"] {
        assert!(
            read("effects.csv")
                .lines()
                .any(|l| l.starts_with(&format!("{kind},all,last token,29,"))),
            "{kind}"
        );
        assert!(out.join(format!("trace-{kind}.svg")).exists());
    }
    let other_seed = [&args[..], &["--seed", "2"]].concat();
    let refused = editbench(&other_seed);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("holds another trace (seed: 1 there, 2 now)"),
        "{}",
        stderr(&refused)
    );
    let zero =
        editbench(&["trace", "--model", model, "--dataset", data, "--n", "0", "--out", out_s]);
    assert_eq!(zero.status.code(), Some(1));
    assert!(
        stderr(&zero).contains("--n, --samples and --window must be at least 1"),
        "{}",
        stderr(&zero)
    );
}

#[test]
fn bench_scale_runs_every_phase_in_its_own_process_and_writes_the_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "{} is missing: run scripts/fetch_smollm2.sh", model.display());
    let dir = tempfile::tempdir().unwrap();
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    let args = [
        "bench",
        "scale",
        "--model",
        &path(model),
        "--hparams",
        &path(root.join("hparams/smollm2.yaml")),
        "--records",
        &path(root.join("data/counterfact/counterfact_dev_sample.json")),
        "--corpus",
        &path(root.join("data/corpus/wikipedia_paragraphs.txt")),
        "--stats-samples",
        "4",
        "--batches",
        "20,40",
        "--out",
        &path(dir.path().to_path_buf()),
    ];
    let out = editbench(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let scale: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("scale.json")).unwrap())
            .unwrap();
    assert_eq!(scale["dims"]["d_mlp"], 1536);
    for phase in ["forward", "stats", "targets", "solve"] {
        assert!(scale["reports"][phase]["peak_memory_mb"].as_f64().unwrap() > 100.0, "{phase}");
    }
    assert_eq!(scale["reports"]["solve"]["report"]["dim"], 1536);
    // Each model phase reports its counted FLOPs against the same process's GEMM rate.
    for (phase, at) in [("stats", ""), ("targets", "/batched")] {
        let result = scale["reports"][phase]["report"]["result"].pointer(at).unwrap().clone();
        let fraction = result["fraction_of_gemm_peak"].as_f64().unwrap();
        assert!(
            result["gflops"].as_f64().unwrap() > 0.0 && fraction > 0.0 && fraction < 2.0,
            "{phase}: {result}"
        );
    }
    let table = std::fs::read_to_string(dir.path().join("scale.md")).unwrap();
    assert_eq!(table.lines().count(), 2 + 4 + 2, "{table}");
    assert!(!table.contains('—'), "every figure was found: {table}");
    let hparams = std::fs::read_to_string(dir.path().join("hparams-layer0.yaml")).unwrap();
    assert!(hparams.contains("layer: 0") && !hparams.contains("layer: 4"), "{hparams}");
}
