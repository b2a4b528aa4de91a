//! The downstream tasks on the real small model against the official procedure run with
//! transformers (fixtures/downstream.json, made by scripts/make_downstream_fixture.py): the
//! prompts editbench builds, each label word's mean NLL and the answer it picks. Needs
//! `scripts/fetch_smollm2.sh`; the prompt check also needs the task files of ../shared.

use std::path::{Path, PathBuf};

use editbench_datasets::downstream::{load_task, task_path, Task, TaskItem, TaskSet};
use editbench_datasets::shared::shared_data;
use editbench_metrics::downstream::{predict, task_score};
use editbench_metrics::Scorer;
use editbench_models::LanguageModel;
use serde::Deserialize;

type Cpu = editbench_models::backend::Cpu;

#[derive(Deserialize)]
struct Fixture {
    few_shot: usize,
    tasks: std::collections::BTreeMap<String, Vec<Item>>,
}

#[derive(Deserialize)]
struct Item {
    prompt: String,
    label: usize,
    nll: Vec<f64>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/downstream.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn model() -> LanguageModel<Cpu> {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    LanguageModel::load(&path, &Default::default()).unwrap()
}

#[test]
fn label_word_nlls_and_answers_equal_the_official_procedure_in_transformers() {
    let (model, fixture) = (model(), fixture());
    assert_eq!(fixture.tasks.len(), Task::ALL.len());
    for (name, items) in &fixture.tasks {
        let task = Task::from_name(name).unwrap();
        let words = task.label_words();
        let pairs: Vec<(String, String)> = items
            .iter()
            .flat_map(|i| words.iter().map(|w| (i.prompt.clone(), format!(" {w}"))))
            .collect();
        let scored = model.score(&pairs).unwrap();
        for (item, scored) in items.iter().zip(scored.chunks(words.len())) {
            let nll: Vec<f64> = scored.iter().map(|c| c.mean_nll()).collect();
            for (ours, theirs) in nll.iter().zip(&item.nll) {
                assert!((ours - theirs).abs() < 2e-3, "{name}: NLL {nll:?} vs {:?}", item.nll);
            }
            assert_eq!(predict(&nll), predict(&item.nll), "{name}: {nll:?} vs {:?}", item.nll);
        }
        let set = TaskSet {
            task,
            few_shot: fixture.few_shot,
            items: items
                .iter()
                .map(|i| TaskItem { prompt: i.prompt.clone(), label: i.label })
                .collect(),
            sha256: String::new(),
        };
        let score = task_score(&model, &set).unwrap();
        let expected: Vec<_> = items.iter().map(|i| predict(&i.nll)).collect();
        assert_eq!(score.predictions, expected, "{name}");
    }
}

#[test]
fn prompts_are_built_as_the_official_code_builds_them() {
    let Some(data) = shared_data(&root(), "downstream") else { return };
    let fixture = fixture();
    for (name, items) in &fixture.tasks {
        let task = Task::from_name(name).unwrap();
        let set = load_task(task, &task_path(&data, task), fixture.few_shot, items.len()).unwrap();
        for (ours, theirs) in set.items.iter().zip(items) {
            assert_eq!(ours.prompt, theirs.prompt, "{name}");
            assert_eq!(ours.label, theirs.label, "{name}");
        }
    }
}
