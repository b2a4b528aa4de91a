//! The real small model, SmolLM2-135M-Instruct (Q4_1 GGUF), fetched by `scripts/fetch_smollm2.sh`.

use std::path::{Path, PathBuf};

use editbench_models::LanguageModel;

type Cpu = editbench_models::backend::Cpu;

fn smollm2() -> LanguageModel<Cpu> {
    let path: PathBuf =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    LanguageModel::load(&path, &Default::default()).unwrap()
}

#[test]
fn smollm2_knows_the_capital_of_france_and_darrieux_mother_tongue() {
    let model = smollm2();
    assert_eq!(model.dims.num_layers, 30);
    assert_eq!((model.dims.hidden_size, model.dims.intermediate_size), (576, 1536));
    let paris = model.generate("The capital of France is", 2).unwrap();
    assert!(paris.starts_with(" Paris"), "got {paris:?}");
    let french = model.generate("The mother tongue of Danielle Darrieux is", 2).unwrap();
    assert!(french.starts_with(" French"), "got {french:?}");
}

#[test]
fn smollm2_tokenizer_from_gguf_metadata_round_trips() {
    let model = smollm2();
    let tok = model.tokenizer().unwrap();
    let text = "The mother tongue of Danielle Darrieux is French; 2024 <|im_end|>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "The mother tongue of Danielle Darrieux is French; 2024 "
    );
    // SmolLM2 splits digits one by one and matches control tokens whole; it adds no BOS.
    let digits = tok.encode_plain("2024").unwrap();
    assert_eq!(digits.len(), 4);
    assert_eq!(Some(*ids.last().unwrap()), tok.eos);
    assert_ne!(ids[0], tok.bos.unwrap_or(u32::MAX));
}
