//! UltraEdit on the real small model (CPU): the features it reads are the loss's gradient, and one
//! round writes CounterFact facts into SmolLM2-135M. Needs `scripts/fetch_smollm2.sh` (the test
//! command runs it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::tensor::{activation, Tensor, TensorData};
use editbench_datasets::{load, DatasetKind, DatasetSource};
use editbench_editing::keys::locate;
use editbench_editing::score::{target_ids, teacher_forced};
use editbench_editing::ultraedit::{answer_features, edit_round, RunningMeanStd};
use editbench_editing::{EditRequest, EditSession};
use editbench_models::{Hooks, LanguageModel, Padding, Patch, Site, Start, Write};

type Cpu = editbench_models::backend::Cpu;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn smollm2() -> LanguageModel<Cpu> {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    LanguageModel::<Cpu>::load(&path, &Default::default()).unwrap()
}

fn requests(n: usize) -> Vec<EditRequest> {
    let path = root().join("data/counterfact/counterfact_dev_sample.json");
    let source = DatasetSource { kind: DatasetKind::Counterfact, path, format: None, sha256: None };
    load(&source).unwrap().records[..n].iter().map(EditRequest::from).collect()
}

/// The answers' mean log-probability per request.
fn answer_logprobs(model: &LanguageModel<Cpu>, requests: &[EditRequest]) -> Vec<f64> {
    let pairs: Vec<(String, String)> =
        requests.iter().map(|r| (r.prompt_text(), r.target())).collect();
    let scored = teacher_forced(model, &pairs).unwrap();
    scored.iter().map(|c| c.logprobs.iter().sum::<f64>() / c.logprobs.len() as f64).collect()
}

/// The mean NLL of `request`'s answer tokens with `shift` added to `layer`'s MLP output at
/// column `at` of its row.
fn patched_loss(
    model: &LanguageModel<Cpu>,
    request: &EditRequest,
    layer: usize,
    at: usize,
    shift: &[f32],
) -> f64 {
    let tokenizer = model.tokenizer().unwrap();
    let mut ids = locate(tokenizer, "{}", request, "").unwrap().ids;
    let answer = target_ids(tokenizer, &request.prompt_text(), &request.target()).unwrap();
    let start = ids.len() - 1;
    ids.extend_from_slice(&answer[..answer.len() - 1]);
    let t = ids.len();
    let batch = model.batch(&[ids], Padding::Right).unwrap();
    let device = model.device();
    let mut value = vec![0f32; t * shift.len()];
    value[at * shift.len()..(at + 1) * shift.len()].copy_from_slice(shift);
    let patch = Patch {
        site: Site::Mlp,
        layer,
        mask: Tensor::ones([1, t, 1], &device),
        value: Tensor::from_data(TensorData::new(value, [1, t, shift.len()]), &device),
        write: Write::Add,
    };
    let positions: Vec<usize> = (start..start + answer.len()).collect();
    let hooks = Hooks { logits_at: Some(positions), ..Hooks::default() };
    let logits = model.forward_patched(Start::Tokens, &batch, &hooks, &[patch]).logits.unwrap();
    let lp = activation::log_softmax(logits.squeeze_dim::<2>(0), 1);
    let lp: Vec<f32> = lp.into_data().to_vec().unwrap();
    let vocab = model.dims.vocab_size;
    let nll: f64 =
        answer.iter().enumerate().map(|(j, &a)| -lp[j * vocab + a as usize] as f64).sum();
    nll / answer.len() as f64
}

/// The features' gradient column of an answer position is `∂L/∂v` there: the loss's change when
/// the MLP output at that position moves along it, by central differences, is its norm. (The
/// public code reads the answer positions only, so `G Kᵀ` is not the weight's full gradient.)
#[test]
fn the_features_hold_the_loss_gradient_at_each_answer_position() {
    let model = smollm2();
    let request = &requests(1)[0];
    let layer = 20;
    let features =
        answer_features::<Autodiff<Cpu>>(&model, std::slice::from_ref(request), &[layer]).unwrap();
    let f = &features[&layer];
    let tokenizer = model.tokenizer().unwrap();
    let start = locate(tokenizer, "{}", request, "").unwrap().ids.len() - 1;
    for j in 0..f.grads.ncols() {
        let g: Vec<f64> = f.grads.col(j).iter().copied().collect();
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let eps = 1e-2 / norm;
        let step = |s: f64| g.iter().map(|x| (s * eps * x / norm) as f32).collect::<Vec<_>>();
        let plus = patched_loss(&model, request, layer, start + j, &step(1.0));
        let minus = patched_loss(&model, request, layer, start + j, &step(-1.0));
        let slope = (plus - minus) / (2.0 * eps);
        assert!((slope / norm - 1.0).abs() < 0.02, "position {j}: {slope:.4e} vs ‖g‖ {norm:.4e}");
    }
}

/// One round of 8 edits at layers 19–27 with the public code's step size raises every answer's
/// log-probability, and a second round updates the same normalizer.
#[test]
fn a_round_of_ultraedit_raises_each_new_answer() {
    let mut model = smollm2();
    let requests = requests(16);
    let layers: Vec<usize> = (19..=27).collect();
    let before = answer_logprobs(&model, &requests);
    let width = model.dims.intermediate_size + model.dims.hidden_size;
    let mut normalizer = RunningMeanStd::new(width);
    let mut session = EditSession::default();
    for round in requests.chunks(8) {
        edit_round::<Autodiff<Cpu>>(
            &mut model,
            round,
            &layers,
            &mut normalizer,
            1e-6,
            &mut session,
        )
        .unwrap();
    }
    let after = answer_logprobs(&model, &requests);
    let raised: BTreeMap<usize, (f64, f64)> =
        (0..16).filter(|&i| after[i] > before[i]).map(|i| (i, (before[i], after[i]))).collect();
    eprintln!("mean log p before {before:.3?}\n after {after:.3?}");
    assert_eq!(session.edited_layers(), layers);
    assert!(normalizer.n > 16.0);
    assert!(raised.len() >= 14, "{} of 16 answers more likely: {raised:?}", raised.len());
}
