//! Reading activations bottom-up while the layers below are edited (MEMIT's distribution): each
//! read equals a full pass on the model as it is, to the bit, with every chunk's block input kept,
//! with only some kept or none (small budgets), and for a read above the edited layer.

use std::path::{Path, PathBuf};

use editbench_editing::keys::{activations_at, Activation, BottomUp, Located};
use editbench_models::LanguageModel;

type Cpu = editbench_models::backend::Cpu;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name)
}

/// 70 sentences (two chunks of the reader's 64) of 3 to 9 seeded token ids, located at a middle
/// token.
fn sentences(vocab: usize) -> Vec<Located> {
    let mut state = 7u64;
    let mut next = move |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as usize % n
    };
    (0..70)
        .map(|_| {
            let len = 3 + next(7);
            let ids: Vec<u32> = (0..len).map(|_| next(vocab) as u32).collect();
            Located { lookup: 1 + next(len - 1), ids }
        })
        .collect()
}

/// Scales layer `layer`'s edited projection, as an edit would change it.
fn edit(model: &mut LanguageModel<Cpu>, layer: usize) {
    let w = model.mlp_out(layer).matrix();
    model.mlp_out_mut(layer).set_matrix(w.clone() + w * 0.5);
}

#[test]
fn reads_after_edits_below_equal_full_passes() {
    for name in ["tiny-llama-gqa-tied", "tiny-gptj", "tiny-gpt2"] {
        let d = LanguageModel::<Cpu>::load(&fixture(name), &Default::default())
            .unwrap()
            .dims
            .hidden_size;
        // Every chunk's input kept; the first chunk's only (its 64 sentences of at most 9 tokens); none.
        for budget in [usize::MAX, 64 * 9 * d * 4, 0] {
            let mut model =
                LanguageModel::<Cpu>::load(&fixture(name), &Default::default()).unwrap();
            let all = sentences(model.dims.vocab_size);
            let top = model.dims.num_layers - 1;
            let mut keys = BottomUp::new(all.clone()).with_budget(budget);
            let mut hidden = BottomUp::new(all.clone()).with_budget(budget);
            for layer in 0..=top {
                let got = keys.read(&model, layer, Activation::Key, layer).unwrap();
                assert_eq!(
                    got,
                    activations_at(&model, &all, layer, Activation::Key).unwrap(),
                    "{name}, budget {budget}: keys at {layer}"
                );
                let got = hidden.read(&model, top, Activation::Hidden, layer).unwrap();
                assert_eq!(
                    got,
                    activations_at(&model, &all, top, Activation::Hidden).unwrap(),
                    "{name}, budget {budget}: block {top} output, edits below {layer}"
                );
                edit(&mut model, layer);
            }
        }
    }
}
