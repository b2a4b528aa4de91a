//! Causal tracing on the tiny random checkpoints of every architecture: restoring every clean state
//! of a layer gives back the clean probability, restoring none the corrupted one, the batched grid
//! equals one restoration at a time, and the noise is reproducible from its seed.

use std::path::{Path, PathBuf};

use editbench_editing::causal_trace::{Corruption, TraceKind, TracePrompt, Tracer};
use editbench_models::{Hooks, LanguageModel, Padding};

type Cpu = editbench_models::backend::Cpu;

const FIXTURES: [&str; 3] = ["tiny-gptj", "tiny-llama-gqa-tied", "tiny-gpt2"];
const IDS: [u32; 7] = [5, 17, 42, 8, 99, 3, 61];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name)
}

/// The prompt `IDS` with subject tokens 1..3 and the clean run's most likely next token as answer.
fn prompt(model: &LanguageModel<Cpu>) -> TracePrompt {
    let batch = model.batch(&[IDS.to_vec()], Padding::Right).unwrap();
    let logits = model
        .forward(&batch, &Hooks { logits_at: Some(vec![IDS.len() - 1]), ..Hooks::default() })
        .logits
        .unwrap();
    let answer = logits.argmax(2).into_data().to_vec::<i64>().unwrap()[0] as u32;
    TracePrompt { ids: IDS.to_vec(), subject: 1..3, answer }
}

fn corruption(seed: u64) -> Corruption {
    Corruption { noise: 3.0, samples: 4, seed }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1e-3)
}

#[test]
fn restoring_every_token_of_a_layer_gives_the_clean_probability_and_none_the_corrupted() {
    for name in FIXTURES {
        let model = LanguageModel::<Cpu>::load(&fixture(name), &Default::default()).unwrap();
        let tracer = Tracer::new(&model, prompt(&model), &corruption(1)).unwrap();
        assert!(tracer.known, "{name}: the answer is the clean run's top token");
        assert!(
            (tracer.clean_probability - tracer.corrupted_probability).abs() > 1e-3,
            "{name}: the noise changes the answer's probability"
        );
        let last = model.dims.num_layers - 1;
        let all_tokens = |layer: usize| (0..IDS.len()).map(|t| (t, layer)).collect::<Vec<_>>();
        // One pass: every token at the first layer, every token at the last, nothing.
        let got =
            tracer.restored(TraceKind::Hidden, &[all_tokens(0), all_tokens(last), vec![]]).unwrap();
        assert!(
            close(got[0], tracer.clean_probability),
            "{name}: layer 0 restored: {} vs clean {}",
            got[0],
            tracer.clean_probability
        );
        assert!(
            close(got[1], tracer.clean_probability),
            "{name}: layer {last} restored: {} vs clean {}",
            got[1],
            tracer.clean_probability
        );
        assert!(
            close(got[2], tracer.corrupted_probability),
            "{name}: nothing restored: {} vs corrupted {}",
            got[2],
            tracer.corrupted_probability
        );
        // Restoring only tokens the noise never touched, below the subject, changes nothing either.
        let before_subject = tracer.restored(TraceKind::Hidden, &[vec![(0, 0)]]).unwrap()[0];
        assert!(
            close(before_subject, tracer.corrupted_probability),
            "{name}: a token before the subject: {before_subject}"
        );
    }
}

#[test]
fn without_noise_every_restoration_gives_the_clean_probability() {
    let model =
        LanguageModel::<Cpu>::load(&fixture("tiny-llama-gqa-tied"), &Default::default()).unwrap();
    let tracer =
        Tracer::new(&model, prompt(&model), &Corruption { noise: 0.0, ..corruption(1) }).unwrap();
    assert!(close(tracer.corrupted_probability, tracer.clean_probability));
    for kind in TraceKind::ALL {
        for row in tracer.grid(kind, 2).unwrap() {
            row.iter().for_each(|&p| {
                assert!(
                    close(p, tracer.clean_probability),
                    "{kind:?}: {p} vs {}",
                    tracer.clean_probability
                )
            });
        }
    }
}

#[test]
fn the_batched_grid_equals_one_restoration_at_a_time() {
    for name in FIXTURES {
        let model = LanguageModel::<Cpu>::load(&fixture(name), &Default::default()).unwrap();
        let tracer = Tracer::new(&model, prompt(&model), &corruption(2)).unwrap();
        let num_layers = model.dims.num_layers;
        for kind in TraceKind::ALL {
            let grid = tracer.grid(kind, 2).unwrap();
            assert_eq!((grid.len(), grid[0].len()), (IDS.len(), num_layers));
            for (token, row) in grid.iter().enumerate() {
                for (layer, &p) in row.iter().enumerate() {
                    let set: Vec<(usize, usize)> =
                        kind.layers(layer, 2, num_layers).map(|l| (token, l)).collect();
                    let alone = tracer.restored(kind, &[set]).unwrap()[0];
                    assert!(close(p, alone), "{name} {kind:?} token {token} layer {layer}: {p} in the grid, {alone} alone");
                }
            }
            // Tokens before the subject carry no corruption: restoring them does nothing.
            grid[0].iter().for_each(|&p| {
                assert!(close(p, tracer.corrupted_probability), "{name} {kind:?}: {p}")
            });
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_numbers_and_another_seed_others() {
    let model = LanguageModel::<Cpu>::load(&fixture("tiny-gptj"), &Default::default()).unwrap();
    let grid = |seed| {
        Tracer::new(&model, prompt(&model), &corruption(seed))
            .unwrap()
            .grid(TraceKind::Mlp, 2)
            .unwrap()
    };
    assert_eq!(grid(7), grid(7));
    assert_ne!(grid(7), grid(8));
}
