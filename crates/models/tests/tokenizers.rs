//! `tokenizer.json` loading, against the ids stated in the shared data's PROVENANCE.md.

use std::path::{Path, PathBuf};

use editbench_datasets::shared::shared_data;
use editbench_models::TextTokenizer;

/// A tokenizer of the shared data; `None` (the test recorded as skipped) without it.
fn shared_tokenizer(name: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    shared_data(&root, &format!("tokenizers/{name}/tokenizer.json"))
}

const SENTENCE: &str = "The mother tongue of Danielle Darrieux is";

#[test]
fn gpt2_tokenizer_adds_no_bos() {
    let Some(path) = shared_tokenizer("gpt2") else { return };
    let tok = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(
        tok.encode(SENTENCE).unwrap(),
        [464, 2802, 11880, 286, 39808, 7491, 5034, 2821, 318]
    );
    assert_eq!(tok.eos, Some(50256));
    assert_eq!(tok.decode(&tok.encode(SENTENCE).unwrap()).unwrap(), SENTENCE);
}

#[test]
fn llama2_tokenizer_prepends_bos_and_reports_offsets() {
    let Some(path) = shared_tokenizer("llama2") else { return };
    let tok = TextTokenizer::from_file(&path).unwrap();
    assert_eq!(
        tok.encode(SENTENCE).unwrap(),
        [1, 450, 5637, 26820, 310, 8432, 280, 7335, 2546, 1314, 338]
    );
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    let (ids, offsets) = tok.encode_with_offsets(SENTENCE).unwrap();
    assert_eq!(ids.len(), offsets.len());
    // The subject's last piece ("ux", id 1314) is the last token that starts before the subject ends.
    let subject_end = SENTENCE.find("Darrieux").unwrap() + "Darrieux".len();
    let last = offsets.iter().rposition(|&(s, e)| e > s && s < subject_end).unwrap();
    assert_eq!(ids[last], 1314);
}
