//! Seeded top-k sampling (k = 5, as the reference's `generate_fast`): context templates (algo §3.1)
//! and the generation tests (algo §8.1) draw their texts this way.

use burn::tensor::backend::Backend;
use editbench_datasets::rng::SplitMix64;
use editbench_models::{LanguageModel, Next};

use crate::error::Result;

/// Sampling keeps the `TOP_K` most likely next tokens.
const TOP_K: usize = 5;

/// Extends every sequence of `seqs` to `max_len` tokens in total (prompt included), all rows in
/// one KV-cached batch per step (shorter prompts left-padded); row `r` draws from `rngs[r]`, so a row's
/// sample does not depend on which other rows share its batch.
pub fn sample_top_k<B: Backend>(
    model: &LanguageModel<B>,
    seqs: Vec<Vec<u32>>,
    max_len: usize,
    rngs: &mut [SplitMix64],
) -> Result<Vec<Vec<u32>>> {
    assert_eq!(seqs.len(), rngs.len(), "one generator per row");
    let rows = seqs.len();
    Ok(model.extend(seqs, max_len, rows, |row, logits| {
        Next::Token(top_k_sample(logits, &mut rngs[row]))
    })?)
}

/// Draws from the softmax restricted to the `TOP_K` largest logits.
fn top_k_sample(logits: &[f32], rng: &mut SplitMix64) -> u32 {
    let mut best: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    best.select_nth_unstable_by(TOP_K - 1, |a, b| b.1.total_cmp(&a.1));
    best.truncate(TOP_K);
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    let max = best[0].1;
    let weights: Vec<f64> = best.iter().map(|&(_, l)| ((l - max) as f64).exp()).collect();
    let mut u = rng.next_f64() * weights.iter().sum::<f64>();
    for (&(id, _), w) in best.iter().zip(&weights) {
        if u < *w {
            return id as u32;
        }
        u -= w;
    }
    best[TOP_K - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_sampling_only_draws_the_k_most_likely() {
        let logits: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
        let mut rng = SplitMix64::new(3);
        for _ in 0..200 {
            assert!(top_k_sample(&logits, &mut rng) >= 95);
        }
    }
}
