//! Probabilities of continuations under teacher forcing (spec §8.1): the mean token NLL of a
//! target after a prompt, `P = exp(−mean NLL)`.

use burn::tensor::backend::Backend;
use burn::tensor::{activation, Int, Tensor, TensorData};
use editbench_models::{Hooks, LanguageModel, Padding, TextTokenizer};

use crate::error::Result;
use crate::keys::host;

/// Sequences per forward pass.
const CHUNK: usize = 64;

/// Tokens of `target` as they follow `prompt` (robust to tokenizers that treat a leading space
/// specially, e.g. SentencePiece's lone `▁`).
pub fn target_ids(tokenizer: &TextTokenizer, prompt: &str, target: &str) -> Result<Vec<u32>> {
    let prompt_ids = tokenizer.encode_plain(prompt)?;
    let full = tokenizer.encode_plain(&format!("{prompt}{target}"))?;
    Ok(match full.strip_prefix(prompt_ids.as_slice()) {
        Some(rest) if !rest.is_empty() => rest.to_vec(),
        _ => tokenizer.encode_plain(target)?,
    })
}

/// Mean token NLL of each `(prompt, target)` pair, batched.
pub fn continuation_nll<B: Backend>(model: &LanguageModel<B>, pairs: &[(String, String)]) -> Result<Vec<f64>> {
    let tokenizer = model.tokenizer()?;
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(CHUNK) {
        let mut seqs = Vec::with_capacity(chunk.len());
        let mut labels = Vec::new();
        for (row, (prompt, target)) in chunk.iter().enumerate() {
            let mut ids = tokenizer.encode(prompt)?;
            let target = target_ids(tokenizer, prompt, target)?;
            let start = ids.len() - 1;
            labels.extend(target.iter().enumerate().map(|(j, &tok)| (row, start + j, tok)));
            ids.extend_from_slice(&target[..target.len() - 1]);
            seqs.push(ids);
        }
        let batch = model.batch(&seqs, Padding::Right)?;
        let t = batch.width();
        let at: Vec<usize> = labels.iter().map(|&(row, col, _)| row * t + col).collect();
        let logits = model.forward(&batch, &Hooks { logits_at: Some(at), ..Hooks::default() }).logits.expect("full pass");
        let vocab = model.dims.vocab_size;
        let index = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.iter().map(|l| l.2 as i64).collect::<Vec<_>>(), [labels.len(), 1]), &model.device());
        let lp = host(activation::log_softmax(logits.reshape([labels.len(), vocab]), 1).gather(1, index))?;
        let mut sums = vec![(0.0f64, 0usize); chunk.len()];
        for (&(row, _, _), &l) in labels.iter().zip(&lp) {
            sums[row].0 -= l as f64;
            sums[row].1 += 1;
        }
        out.extend(sums.into_iter().map(|(s, n)| s / n as f64));
    }
    Ok(out)
}
