//! Checkpoint loading: quantised GGUF tensors against gguf-py, and clear errors (naming the file and
//! the tensor or field) for broken checkpoints.

use std::fs;
use std::path::Path;

use editbench_models::gguf::GgufFile;
use editbench_models::{LanguageModel, ModelError};

mod common;
use common::fixture;

type Cpu = editbench_models::backend::Cpu;

/// A writable copy of a fixture directory.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn load_error(path: &Path) -> String {
    match LanguageModel::<Cpu>::load(path, &Default::default()) {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn quantised_tensors_dequantise_like_gguf_py() {
    let file = GgufFile::open(&fixture("quant.gguf")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(fixture("quant.json")).unwrap()).unwrap();
    for name in ["q8_0", "q4_0", "q4_1"] {
        let t = file.tensor(name).unwrap().unwrap();
        let want: Vec<f32> = serde_json::from_value(expected[name]["values"].clone()).unwrap();
        assert_eq!(t.shape, vec![2, 64], "{name}");
        let diff = t.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-6, "{name}: max diff {diff:e}");
    }
}

#[test]
fn missing_shard_is_named() {
    let dir = copy_fixture("tiny-llama-gqa-tied");
    fs::remove_file(dir.path().join("model-00003-of-00006.safetensors")).unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("model-00003-of-00006.safetensors"), "{msg}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = copy_fixture("tiny-gptj");
    let file = dir.path().join("model.safetensors");
    let bytes = fs::read(&file).unwrap();
    fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a complete safetensors file"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let dir = copy_fixture("tiny-llama");
    let config = dir.path().join("config.json");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    fs::write(&config, text).unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[96, 64]"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = copy_fixture("tiny-llama");
    let config = dir.path().join("config.json");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"bert\"");
    fs::write(&config, text).unwrap();
    let msg = load_error(dir.path());
    assert!(msg.contains("config.json") && msg.contains("unknown architecture `bert`"), "{msg}");
}

#[test]
fn missing_config_field_names_field_and_line() {
    let dir = copy_fixture("tiny-gptj");
    let config = dir.path().join("config.json");
    let text = fs::read_to_string(&config).unwrap().replace("\"n_embd\": 64,", "");
    fs::write(&config, text).unwrap();
    let msg = load_error(dir.path());
    assert!(
        msg.contains("config.json")
            && msg.contains("missing field `n_embd`")
            && msg.contains("line"),
        "{msg}"
    );
}

#[test]
fn truncated_gguf_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = fs::read(fixture("tiny-llama.gguf")).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_error(&path);
    assert!(msg.contains("cut.gguf") && msg.contains("truncated"), "{msg}");
}

#[test]
fn unknown_quantisation_type_names_the_tensor() {
    // The first tensor record follows the header; its type id is the u32 before its u64 offset.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.gguf");
    let mut bytes = fs::read(fixture("quant.gguf")).unwrap();
    let name = b"q8_0";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    bytes[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let err = GgufFile::open(&path).err().expect("type 99 must be rejected");
    assert!(
        matches!(err, ModelError::UnsupportedDtype { ref tensor, .. } if tensor == "q8_0"),
        "{err}"
    );
    assert!(err.to_string().contains("ggml type 99"), "{err}");
}

#[test]
fn bad_token_ids_are_an_error_not_a_panic() {
    let model = LanguageModel::<Cpu>::load(&fixture("tiny-llama"), &Default::default()).unwrap();
    let err = model.logits(&[1, 2, 500]).unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("vocabulary"), "{err}");
    let too_long = vec![1u32; model.dims.max_positions + 1];
    assert!(model.logits(&too_long).unwrap_err().to_string().contains("context length"));
    assert!(model.logits(&[]).is_err());
}

/// A missing path, or a directory without config.json, is named once, in plain words (not "entity
/// not found", not the same cause twice, not a missing model.safetensors).
#[test]
fn missing_files_are_named_once_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    // The message with its chain of causes, as `editbench` prints it.
    let chain = |path: &Path| {
        let e = LanguageModel::<Cpu>::load(path, &Default::default())
            .err()
            .expect("a broken path loaded");
        let (mut text, mut cause) = (e.to_string(), std::error::Error::source(&e));
        while let Some(c) = cause {
            text += &format!(": {c}");
            cause = c.source();
        }
        text
    };
    let err = chain(&dir.path().join("nope"));
    assert!(err.ends_with("nope: no such file or directory"), "{err}");
    let err = chain(dir.path());
    assert!(err.ends_with("config.json: no such file or directory"), "{err}");
    assert_eq!(err.matches("no such file").count(), 1, "{err}");
}

/// The parameter count read from a configuration (for memory plans) equals the loaded model's,
/// where a head tied to the embeddings is the embedding tensor itself (burn counts it twice).
#[test]
fn parameters_from_the_config_equal_the_loaded_weights() {
    use burn::module::Module;
    use editbench_models::{Architecture, ModelDims};
    let tied = ["tiny-llama-gqa-tied", "tiny-gpt2", "tiny-qwen2"];
    for name in [
        "tiny-llama",
        "tiny-gptj",
        "tiny-llama-gqa-tied",
        "tiny-gpt2",
        "tiny-llama3",
        "tiny-mistral",
        "tiny-qwen2",
    ] {
        let model = LanguageModel::<Cpu>::load(&fixture(name), &Default::default()).unwrap();
        let counted = match &model.arch {
            Architecture::Llama(m) => m.num_params(),
            Architecture::GptJ(m) => m.num_params(),
            Architecture::Gpt2(m) => m.num_params(),
        };
        let shared =
            if tied.contains(&name) { model.dims.vocab_size * model.dims.hidden_size } else { 0 };
        assert_eq!(
            ModelDims::read(&fixture(name)).unwrap().parameters,
            (counted - shared) as u64,
            "{name}"
        );
    }
}
