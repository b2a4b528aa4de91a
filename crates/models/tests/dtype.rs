//! Half-precision weights (`dtype`): the CPU backend keeps f32 tensors rounded to the dtype, wgpu
//! (lavapipe in CI) stores f16 as such; either way the logits stay near f32's, and an edited layer
//! is kept in f32.

use burn::tensor::backend::Backend;
use editbench_models::{LanguageModel, WeightDType};

mod common;
use common::{fixture, max_abs_diff, values};

type Cpu = editbench_models::backend::Cpu;

fn load<B: Backend>(name: &str, dtype: WeightDType, device: &B::Device) -> LanguageModel<B> {
    LanguageModel::<B>::load_as(&fixture(name), Some(dtype), device).unwrap()
}

const IDS: [u32; 6] = [1, 7, 3, 12, 5, 9];

#[test]
fn half_precision_weights_are_the_f32_weights_rounded_and_the_logits_stay_close() {
    let device = Default::default();
    // Checkpoints stored in f32 (the LLaMA fixtures are stored in half precision already).
    for name in ["tiny-gptj", "tiny-gpt2", "tiny-qwen2", "tiny-mistral"] {
        let full = load::<Cpu>(name, WeightDType::F32, &device);
        let reference = values(full.logits(&IDS).unwrap());
        let mut bounds = Vec::new();
        for dtype in [WeightDType::F16, WeightDType::BF16] {
            let half = load::<Cpu>(name, dtype, &device);
            assert_eq!(half.dtype(), dtype);
            let mut expected = values(full.mlp_out(1).matrix());
            dtype.round(&mut expected);
            assert_eq!(
                values(half.mlp_out(1).matrix()),
                expected,
                "{name} {dtype}: edited projection"
            );
            let mut embeddings = values(full.token_embeddings(&IDS));
            dtype.round(&mut embeddings);
            assert_eq!(
                values(half.token_embeddings(&IDS)),
                embeddings,
                "{name} {dtype}: embeddings"
            );
            let diff = max_abs_diff(&reference, &values(half.logits(&IDS).unwrap()));
            eprintln!("{name} {dtype}: max |Δlogit| = {diff:e}");
            bounds.push(diff);
        }
        // bf16 keeps 8 significant bits, f16 11: its logits move further, and neither far (a few
        // per cent of the largest logit; 2^-8 ≈ 0.4 % per weight, summed over layers).
        let scale = reference.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(
            0.0 < bounds[0] && bounds[0] < bounds[1] && bounds[1] < 0.05 * scale,
            "{name}: max |Δlogit| f16 {} bf16 {} (|logit| ≤ {scale})",
            bounds[0],
            bounds[1]
        );
    }
}

#[test]
fn a_checkpoint_stored_in_half_precision_loses_nothing_in_it() {
    let device = Default::default();
    let full =
        values(load::<Cpu>("tiny-llama-gqa-tied", WeightDType::F32, &device).logits(&IDS).unwrap());
    assert_eq!(
        values(
            load::<Cpu>("tiny-llama-gqa-tied", WeightDType::BF16, &device).logits(&IDS).unwrap()
        ),
        full
    );
}

#[test]
fn an_edit_is_kept_in_f32() {
    let mut model = load::<Cpu>("tiny-llama", WeightDType::BF16, &Default::default());
    let w = model.mlp_out(0).matrix();
    // A change far below bf16's resolution at these weights' size would be rounded away.
    let edited = w.clone() + 1e-5;
    model.mlp_out_mut(0).set_matrix(edited.clone());
    assert_eq!(values(model.mlp_out(0).matrix()), values(edited));
    assert_ne!(values(model.mlp_out(0).matrix()), values(w));
}

#[test]
fn the_default_is_the_stored_dtype_where_the_backend_keeps_it_else_f32() {
    // tiny-llama is stored in f16, tiny-llama-gqa-tied in bf16, tiny-gptj in f32.
    let stored = |name: &str| editbench_models::model::checkpoint_dtype(&fixture(name)).unwrap();
    assert_eq!(stored("tiny-llama"), Some(WeightDType::F16));
    assert_eq!(stored("tiny-llama-gqa-tied"), Some(WeightDType::BF16));
    assert_eq!(stored("tiny-gptj"), Some(WeightDType::F32));
    assert_eq!(
        editbench_models::model::checkpoint_dtype(&fixture("tiny-llama.gguf")).unwrap(),
        None
    );
    // The CPU backend stores neither half type.
    let model = LanguageModel::<Cpu>::load(&fixture("tiny-llama"), &Default::default()).unwrap();
    assert_eq!(model.dtype(), WeightDType::F32);
    assert!(!WeightDType::F16.stored_natively::<Cpu>(&Default::default()));
}

/// On wgpu an f16 model's weights are f16 tensors (where the driver stores f16, as lavapipe does)
/// and give the logits of the CPU backend's rounded model.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_stores_f16_weights_and_matches_the_rounded_cpu_model() {
    type Wgpu = burn::backend::Wgpu<f32>;
    let device = Default::default();
    for name in ["tiny-gptj", "tiny-llama-gqa-tied"] {
        let gpu = load::<Wgpu>(name, WeightDType::F16, &device);
        if WeightDType::F16.stored_natively::<Wgpu>(&device) {
            assert_eq!(gpu.mlp_out(1).weight.val().dtype(), burn::tensor::DType::F16);
        }
        let cpu = load::<Cpu>(name, WeightDType::F16, &Default::default());
        let diff =
            max_abs_diff(&values(cpu.logits(&IDS).unwrap()), &values(gpu.logits(&IDS).unwrap()));
        assert!(diff < 2e-4, "{name}: max |Δlogit| cpu vs wgpu = {diff:e}");
    }
}
