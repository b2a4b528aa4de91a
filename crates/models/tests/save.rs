//! Saving an edited model as a Hugging Face directory and loading it back.

use std::path::{Path, PathBuf};

use editbench_models::LanguageModel;

mod common;
use common::{fixture, values};

type Cpu = editbench_models::backend::Cpu;

/// Doubles layer `layer`'s edited projection, saves, reloads: the reloaded logits equal the
/// edited model's.
fn edited_round_trip(source: &Path, layer: usize) -> (tempfile::TempDir, PathBuf) {
    let mut model = LanguageModel::<Cpu>::load(source, &Default::default()).unwrap();
    let w = model.mlp_out(layer).matrix();
    model.mlp_out_mut(layer).set_matrix(w * 2.0);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("edited");
    model.save_hf(&out, &[layer]).unwrap();
    let back = LanguageModel::<Cpu>::load(&out, &Default::default()).unwrap();
    let ids = [1, 5, 9, 77, 3];
    assert_eq!(
        values(model.logits(&ids).unwrap()),
        values(back.logits(&ids).unwrap()),
        "{}",
        source.display()
    );
    (tmp, out)
}

#[test]
fn sharded_checkpoint_rewrites_only_the_edited_shard() {
    let source = fixture("tiny-llama-gqa-tied");
    let (_tmp, out) = edited_round_trip(&source, 1);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let edited_shard = index["weight_map"]["model.layers.1.mlp.down_proj.weight"].as_str().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let name = entry.unwrap().file_name();
        let same =
            std::fs::read(source.join(&name)).unwrap() == std::fs::read(out.join(&name)).unwrap();
        assert_eq!(same, name != edited_shard, "{name:?}");
    }
}

/// GPT-2 stores the edited `mlp.c_proj` as a `Conv1D` (`[d_in, d_out]`): written back in that
/// orientation (the paper's `[64, 256]` would not fit the file's `[256, 64]`).
#[test]
fn gpt2_saves_its_conv1d_projection_back() {
    edited_round_trip(&fixture("tiny-gpt2"), 1);
}

#[test]
fn gguf_model_saves_as_a_full_hf_directory() {
    let (_tmp, out) = edited_round_trip(&fixture("tiny-llama.gguf"), 0);
    assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());
}

#[test]
fn saving_refuses_a_non_empty_directory() {
    let model = LanguageModel::<Cpu>::load(&fixture("tiny-gptj"), &Default::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "x").unwrap();
    assert!(model.save_hf(tmp.path(), &[0]).unwrap_err().to_string().contains("non-empty"));
}
