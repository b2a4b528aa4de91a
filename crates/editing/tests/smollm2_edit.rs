//! End to end on the real small model: EMMET and MEMIT write 8 CounterFact facts into
//! SmolLM2-135M (CPU). Needs `scripts/fetch_smollm2.sh` and `scripts/fetch_corpus.sh` (the test
//! command runs both).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use editbench_datasets::{load, DatasetKind, DatasetSource};
use editbench_editing::context::ContextTemplates;
use editbench_editing::hparams::{Samples, StatsHparams, TemplateKind};
use editbench_editing::score::continuation_nll;
use editbench_editing::stats::collect_moments;
use editbench_editing::{Distribution, EditRequest, EditSession, Editor, FamilyHparams, Method};
use editbench_models::{Hooks, LanguageModel, Padding};

type Cpu = editbench_models::backend::Cpu;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The statistics corpus (`scripts/fetch_corpus.sh`).
fn corpus() -> PathBuf {
    let path = root().join("data/corpus/wikipedia_paragraphs.txt");
    assert!(path.exists(), "{} is missing: run scripts/fetch_corpus.sh", path.display());
    path
}

struct Case {
    request: EditRequest,
    neighbor: String,
}

fn counterfact_cases(n: usize) -> Vec<Case> {
    let path = root().join("data/counterfact/counterfact_dev_sample.json");
    let data =
        load(&DatasetSource { kind: DatasetKind::Counterfact, path, format: None, sha256: None })
            .unwrap();
    data.records[..n]
        .iter()
        .map(|r| Case { request: r.into(), neighbor: r.neighborhood[0].prompt.clone() })
        .collect()
}

fn greedy_next(model: &LanguageModel<Cpu>, prompts: &[String]) -> Vec<i64> {
    let tok = model.tokenizer().unwrap();
    let seqs: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    let batch = model.batch(&seqs, Padding::Left).unwrap();
    let t = batch.width();
    let last = (0..seqs.len()).map(|r| r * t + t - 1).collect();
    let logits =
        model.forward(&batch, &Hooks { logits_at: Some(last), ..Hooks::default() }).logits.unwrap();
    logits.argmax(2).into_data().to_vec::<i64>().unwrap()
}

/// Number of cases where the new target is more likely than the true one.
fn efficacy(model: &LanguageModel<Cpu>, cases: &[Case]) -> usize {
    let pairs: Vec<(String, String)> = cases
        .iter()
        .flat_map(|c| {
            let p = c.request.prompt_text();
            [
                (p.clone(), c.request.target()),
                (p, format!(" {}", c.request.target_true.clone().unwrap())),
            ]
        })
        .collect();
    let nll = continuation_nll(model, &pairs).unwrap();
    nll.chunks(2).filter(|pair| pair[0] < pair[1]).count()
}

#[test]
fn emmet_and_memit_edit_eight_counterfact_facts_into_smollm2() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    let mut model = LanguageModel::<Cpu>::load(&path, &Default::default()).unwrap();
    let family = FamilyHparams::load(&root().join("hparams/smollm2.yaml")).unwrap();
    let cases = counterfact_cases(8);
    let requests: Vec<EditRequest> = cases.iter().map(|c| c.request.clone()).collect();
    let neighbors: Vec<String> = cases.iter().map(|c| c.neighbor.clone()).collect();

    let started = Instant::now();
    let corpus = corpus();
    let stats = StatsHparams { samples: Samples::Count(300), ..StatsHparams::default() };
    let layer = family.method(Method::Emmet).unwrap().layer;
    let c = collect_moments(&model, &[layer], &corpus, &stats).unwrap()[&layer].covariance();
    eprintln!("statistics: {:.1} s", started.elapsed().as_secs_f64());

    let pre_efficacy = efficacy(&model, &cases);
    let pre_neighbors = greedy_next(&model, &neighbors);
    let original = model.logits(&[1, 2, 3]).unwrap().into_data();
    for method in [Method::Emmet, Method::Memit] {
        let mut hparams = family.method(method).unwrap().clone();
        hparams.templates = TemplateKind::Fixed;
        let templates =
            ContextTemplates::for_method(&model, method, TemplateKind::Fixed, 0).unwrap();
        let mut editor = Editor::new(
            method,
            Distribution::Single,
            hparams,
            templates,
            [(layer, c.clone())].into(),
        )
        .unwrap();
        let mut session = EditSession::default();
        let t = Instant::now();
        let outcome = editor.apply::<Autodiff<Cpu>>(&mut model, &requests, &mut session).unwrap();
        let post_efficacy = efficacy(&model, &cases);
        let post_neighbors = greedy_next(&model, &neighbors);
        eprintln!(
            "{method}: efficacy {pre_efficacy}/8 → {post_efficacy}/8 in {:.1} s (targets {:.1} s, steps {:?}); neighbourhood next tokens unchanged: {}/8",
            t.elapsed().as_secs_f64(), outcome.seconds_targets, outcome.target_steps,
            pre_neighbors.iter().zip(&post_neighbors).filter(|(a, b)| a == b).count()
        );
        assert!(post_efficacy >= 7, "{method}: efficacy {post_efficacy}/8");
        assert_eq!(
            pre_neighbors[0], post_neighbors[0],
            "{method} changed an unrelated prompt's prediction"
        );
        session.revert(&mut model);
        assert_eq!(
            model.logits(&[1, 2, 3]).unwrap().into_data(),
            original,
            "{method}: revert did not restore the model"
        );
    }
}

#[test]
fn spread_over_one_layer_equals_single() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut model = LanguageModel::<Cpu>::load(&path, &Default::default()).unwrap();
    let family = FamilyHparams::load(&root().join("hparams/smollm2.yaml")).unwrap();
    let request = counterfact_cases(1).remove(0).request;
    let layer = family.method(Method::Emmet).unwrap().layer;
    let corpus = corpus();
    let stats = StatsHparams { samples: Samples::Count(100), ..StatsHparams::default() };
    let c = collect_moments(&model, &[layer], &corpus, &stats).unwrap()[&layer].covariance();
    let templates =
        ContextTemplates::for_method(&model, Method::Emmet, TemplateKind::Fixed, 0).unwrap();
    let mut edited = Vec::new();
    for distribution in [Distribution::Single, Distribution::Spread] {
        let mut hparams = family.method(Method::Emmet).unwrap().clone();
        hparams.spread_layers = vec![layer];
        let mut editor = Editor::new(
            Method::Emmet,
            distribution,
            hparams,
            templates.clone(),
            [(layer, c.clone())].into(),
        )
        .unwrap();
        let mut session = EditSession::default();
        editor
            .apply::<Autodiff<Cpu>>(&mut model, std::slice::from_ref(&request), &mut session)
            .unwrap();
        edited.push(model.mlp_out(layer).matrix().into_data());
        session.revert(&mut model);
    }
    assert_eq!(edited[0], edited[1]);
}

/// Each edit's `δ` gets only its own gradient, so searching a batch of edits together gives the
/// targets of searching each alone (up to float summation order). Alone, an edit's rows are split
/// into two parts run side by side (a pool of two threads, whatever the machine), whose losses and
/// gradients are summed.
#[test]
fn a_batched_target_search_equals_searching_each_edit_alone() {
    use editbench_editing::keys::Activation;
    use editbench_editing::targets::target_values;
    let model = LanguageModel::<Cpu>::load(
        &root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Default::default(),
    )
    .unwrap();
    let mut h = FamilyHparams::load(&root().join("hparams/smollm2.yaml"))
        .unwrap()
        .method(Method::Emmet)
        .unwrap()
        .clone();
    h.v_num_grad_steps = 5;
    let requests: Vec<EditRequest> = counterfact_cases(3).into_iter().map(|c| c.request).collect();
    let templates =
        ContextTemplates::for_method(&model, Method::Emmet, TemplateKind::Fixed, 0).unwrap();
    let search = |requests: &[EditRequest]| {
        target_values::<Autodiff<Cpu>>(
            &model,
            requests,
            &templates,
            h.layer,
            Activation::Hidden,
            &h,
        )
        .unwrap()
    };
    let together = search(&requests);
    let two_threads = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (i, request) in requests.iter().enumerate() {
        let alone = two_threads.install(|| search(std::slice::from_ref(request)));
        let delta = (0..model.dims.hidden_size)
            .map(|r| (together.z[(r, i)] - alone.z[(r, 0)]).abs())
            .fold(0.0, f64::max);
        let moved = (0..model.dims.hidden_size)
            .map(|r| (alone.z[(r, 0)] - alone.v_init[(r, 0)]).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "edit {i}: max |Δz| = {delta:e}, max |z − v_init| = {moved:e}, loss {:.4} vs {:.4}",
            together.loss[i], alone.loss[0]
        );
        assert!(moved > 0.1, "the search did not move z");
        assert!(delta < 1e-3 * moved, "edit {i}: batched z differs by {delta:e}");
        assert_eq!(together.steps[i], alone.steps[0]);
        assert!((together.loss[i] - alone.loss[0]).abs() < 1e-3);
    }
}

/// The official ROME is exact on the bare prompt's key, r-ROME on the template-averaged key: from
/// the same target `v*`, `W_rome k_p = v* = W_r-rome k̄`.
#[test]
fn rome_writes_the_target_on_the_bare_key_and_r_rome_on_the_averaged_key() {
    use editbench_editing::keys::keys;
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut model = LanguageModel::<Cpu>::load(&path, &Default::default()).unwrap();
    let family = FamilyHparams::load(&root().join("hparams/smollm2.yaml")).unwrap();
    let request = counterfact_cases(1).remove(0).request;
    let layer = family.method(Method::Rome).unwrap().layer;
    let corpus = corpus();
    let c = collect_moments(
        &model,
        &[layer],
        &corpus,
        &StatsHparams { samples: Samples::Count(100), ..StatsHparams::default() },
    )
    .unwrap()[&layer]
        .covariance();
    let templates =
        ContextTemplates::for_method(&model, Method::Rome, TemplateKind::Fixed, 0).unwrap();
    let averaged = keys(&model, std::slice::from_ref(&request), &templates, layer).unwrap();
    let bare =
        keys(&model, std::slice::from_ref(&request), &ContextTemplates::bare(), layer).unwrap();
    let mut written = Vec::new();
    for (method, key) in [(Method::Rome, &bare), (Method::RRome, &averaged)] {
        let mut h = family.method(method).unwrap().clone();
        h.v_num_grad_steps = 6;
        let mut editor = Editor::new(
            method,
            Distribution::Single,
            h,
            templates.clone(),
            [(layer, c.clone())].into(),
        )
        .unwrap();
        let mut session = EditSession::default();
        editor
            .apply::<Autodiff<Cpu>>(&mut model, std::slice::from_ref(&request), &mut session)
            .unwrap();
        let w = model.mlp_out(layer).matrix().into_data().to_vec::<f32>().unwrap();
        let d_in = key.nrows();
        written.push(
            (0..w.len() / d_in)
                .map(|i| (0..d_in).map(|j| w[i * d_in + j] as f64 * key[(j, 0)]).sum::<f64>())
                .collect::<Vec<f64>>(),
        );
        session.revert(&mut model);
    }
    let diff = written[0].iter().zip(&written[1]).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let norm = written[0].iter().map(|a| a * a).sum::<f64>().sqrt();
    let bare_vs_averaged =
        (0..bare.nrows()).map(|j| (bare[(j, 0)] - averaged[(j, 0)]).powi(2)).sum::<f64>().sqrt();
    eprintln!("‖W_rome k_p − W_rrome k̄‖ = {diff:e} of {norm:e}; ‖k_p − k̄‖ = {bare_vs_averaged:e}");
    assert!(bare_vs_averaged > 1e-2, "the templates did not change the key");
    assert!(diff < 1e-4 * norm, "the two forms do not write the same v*");
}

/// Searched chunks are kept on disk and read back bit for bit by a new cache (a resumed run);
/// other search settings do not reuse them.
#[test]
fn a_persisted_target_cache_is_read_back_exactly() {
    use editbench_editing::keys::Activation;
    use editbench_editing::targets::TargetCache;
    let model = LanguageModel::<Cpu>::load(
        &root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Default::default(),
    )
    .unwrap();
    let mut h = FamilyHparams::load(&root().join("hparams/smollm2.yaml"))
        .unwrap()
        .method(Method::Emmet)
        .unwrap()
        .clone();
    h.v_num_grad_steps = 3;
    let requests: Vec<EditRequest> = counterfact_cases(2).into_iter().map(|c| c.request).collect();
    let templates =
        ContextTemplates::for_method(&model, Method::Emmet, TemplateKind::Fixed, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let search = |h: &editbench_editing::MethodHparams| {
        TargetCache::new(requests.clone(), 1)
            .persisted_in(dir.path().to_path_buf())
            .targets::<Autodiff<Cpu>>(&model, &requests, &templates, h.layer, Activation::Hidden, h)
            .unwrap()
    };
    let first = search(&h);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "one file per chunk");
    // Mark the files: a cache that reads them returns the marked values.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file["found"][0]["loss"] = serde_json::json!(123.0);
        std::fs::write(&path, file.to_string()).unwrap();
    }
    let again = search(&h);
    assert_eq!(again.z, first.z, "targets changed on the way through the file");
    assert_eq!(again.v_init, first.v_init);
    assert_eq!(again.loss, vec![123.0, 123.0], "the files were not read");
    h.v_lr = 0.25;
    assert_ne!(search(&h).loss, vec![123.0, 123.0], "other settings reused the files");
}

/// Most-probable early stopping ends an edit's search once its target ranks first on every
/// rewriting prompt: fewer Adam steps than the full search, and the target is then the most probable.
#[test]
fn mpes_stops_the_search_once_the_target_ranks_first() {
    use editbench_editing::keys::Activation;
    use editbench_editing::targets::target_values;
    let model = LanguageModel::<Cpu>::load(
        &root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &Default::default(),
    )
    .unwrap();
    let mut h = FamilyHparams::load(&root().join("hparams/smollm2.yaml"))
        .unwrap()
        .method(Method::Emmet)
        .unwrap()
        .clone();
    let requests: Vec<EditRequest> = counterfact_cases(2).into_iter().map(|c| c.request).collect();
    let templates =
        ContextTemplates::for_method(&model, Method::Emmet, TemplateKind::Fixed, 0).unwrap();
    let full = target_values::<Autodiff<Cpu>>(
        &model,
        &requests,
        &templates,
        h.layer,
        Activation::Hidden,
        &h,
    )
    .unwrap();
    h.mpes_patience = Some(0);
    let early = target_values::<Autodiff<Cpu>>(
        &model,
        &requests,
        &templates,
        h.layer,
        Activation::Hidden,
        &h,
    )
    .unwrap();
    eprintln!(
        "Adam steps: full {:?}, MPES {:?}; loss {:?} vs {:?}",
        full.steps, early.steps, full.loss, early.loss
    );
    assert!(early.steps.iter().zip(&full.steps).all(|(e, f)| e <= f));
    assert!(
        early.steps.iter().sum::<usize>() < full.steps.iter().sum::<usize>(),
        "MPES saved no step"
    );
    // Alone, the edit's rows run as two parts: the most probable tokens are read from both.
    let two_threads = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let alone = two_threads.install(|| {
        target_values::<Autodiff<Cpu>>(
            &model,
            &requests[..1],
            &templates,
            h.layer,
            Activation::Hidden,
            &h,
        )
        .unwrap()
    });
    assert_eq!(alone.steps[0], early.steps[0]);
}

#[test]
fn auto_samples_stop_once_the_statistics_hold_keys_per_dim_times_d_in_keys() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let model = LanguageModel::<Cpu>::load(&path, &Default::default()).unwrap();
    let corpus = corpus();
    let d = model.dims.intermediate_size as u64;
    let auto = |keys_per_dim| StatsHparams {
        samples: Samples::Auto(editbench_editing::hparams::AutoKeyword::Auto),
        keys_per_dim,
        ..StatsHparams::default()
    };
    let one = collect_moments(&model, &[2], &corpus, &auto(1.0)).unwrap()[&2].count;
    let two = collect_moments(&model, &[2], &corpus, &auto(2.0)).unwrap()[&2].count;
    // At least m · d_in keys, and no more than one paragraph (≤ max_length tokens) beyond.
    assert!(one >= d && one < d + 1024, "{one} keys for m = 1, d_in = {d}");
    assert!(two >= 2 * d && two < 2 * d + 1024 && two > one, "{two} keys for m = 2");
    // The cache tells m apart; a count's cache key is what it was before `auto` existed.
    let source = |h| editbench_editing::stats::StatsSource {
        corpus: corpus.clone(),
        hparams: h,
        cache_dir: None,
    };
    let keys = |h| source(h).cache_keys(&model, &[2]).unwrap().remove(0);
    assert_ne!(keys(auto(1.0)), keys(auto(2.0)));
    assert!(
        keys(auto(1.0)).contains("\"samples\":\"auto\"")
            && keys(StatsHparams::default()).contains("\"samples\":2000")
    );
    assert!(
        !keys(StatsHparams::default()).contains("keys_per_dim"),
        "a count's cache key is unchanged"
    );
}
