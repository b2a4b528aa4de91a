//! Generated answers on the real small model (the 256 CounterFact records shipped in data/):
//! batched answering equals answering one prompt at a time, and where the unedited model's
//! teacher-forced top-1 is the true object, its greedy answer starts with it. Needs
//! `scripts/fetch_smollm2.sh`.

use std::path::{Path, PathBuf};

use editbench_datasets::{load, DatasetKind, DatasetSource, Record};
use editbench_metrics::answers::{starts_with_answer, AnswerOptions, Answerer};
use editbench_metrics::Scorer;
use editbench_models::LanguageModel;

type Cpu = editbench_models::backend::Cpu;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> LanguageModel<Cpu> {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    LanguageModel::load(&path, &Default::default()).unwrap()
}

fn records(n: usize) -> Vec<Record> {
    let path = root().join("data/counterfact/counterfact_dev_sample.json");
    let mut records =
        load(&DatasetSource { kind: DatasetKind::Counterfact, path, format: None, sha256: None })
            .unwrap()
            .records;
    records.truncate(n);
    records
}

#[test]
fn batched_answers_equal_one_prompt_at_a_time() {
    let model = model();
    let prompts: Vec<String> = records(3)
        .iter()
        .flat_map(|r| {
            std::iter::once(r.rewrite.prompt_text())
                .chain(r.paraphrase_prompts.clone())
                .chain(r.neighborhood.iter().take(3).map(|p| p.prompt.clone()))
        })
        .collect();
    let options = AnswerOptions { max_new_tokens: 12, batch: 64 };
    let batched = model.answer(&prompts, &options).unwrap();
    let alone: Vec<String> = prompts
        .iter()
        .flat_map(|p| model.answer(std::slice::from_ref(p), &options).unwrap())
        .collect();
    assert_eq!(batched, alone);
    assert!(batched.iter().any(|a| !a.is_empty()), "{batched:?}");
}

#[test]
fn greedy_answers_agree_with_the_teacher_forced_top_1() {
    let model = model();
    // Every prompt of the first 64 records whose answer is the true object: the rewrite prompt,
    // its paraphrases and the neighborhood prompts.
    let probes: Vec<(String, String)> = records(64)
        .iter()
        .flat_map(|r| {
            let truth = r.rewrite.target_true.clone();
            let own = std::iter::once(r.rewrite.prompt_text())
                .chain(r.paraphrase_prompts.clone())
                .map(move |p| (p, truth.clone()));
            own.chain(r.neighborhood.iter().map(|p| (p.prompt.clone(), p.answer.clone())))
        })
        .collect();
    let pairs: Vec<(String, String)> =
        probes.iter().map(|(p, a)| (p.clone(), format!(" {a}"))).collect();
    let scored = model.score(&pairs).unwrap();
    let top1: Vec<&(String, String)> =
        probes.iter().zip(&scored).filter(|(_, c)| c.all_argmax()).map(|(p, _)| p).collect();
    assert!(
        top1.len() >= 10,
        "only {} of {} prompts have the true object as top-1",
        top1.len(),
        probes.len()
    );
    let prompts: Vec<String> = top1.iter().map(|(p, _)| p.clone()).collect();
    let answers = model.answer(&prompts, &AnswerOptions::default()).unwrap();
    let agree =
        top1.iter().zip(&answers).filter(|((_, truth), a)| starts_with_answer(a, truth)).count();
    eprintln!("{agree} of {} prompts whose teacher-forced top-1 is the true object answer it ({} prompts)", top1.len(), probes.len());
    let disagree: Vec<_> =
        top1.iter().zip(&answers).filter(|((_, truth), a)| !starts_with_answer(a, truth)).collect();
    assert!(
        agree as f64 >= 0.9 * top1.len() as f64,
        "{agree} of {}; disagreeing: {disagree:?}",
        top1.len()
    );
}
