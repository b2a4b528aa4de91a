//! Target continuations under teacher forcing (algo §8.1): per target token, its log-probability
//! after the prompt and the tokens before it, and whether it was the model's top prediction.
//! `P(target) = exp(−mean NLL)`.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use burn::tensor::{activation, Int, Tensor, TensorData};

use editbench_models::backend::{concurrent_passes, side_by_side};
use editbench_models::{Hooks, KvCache, LanguageModel, Padding, PromptTree, TextTokenizer};

use crate::error::Result;
use crate::keys::host;

/// Tokens per forward pass (padded width × rows) when scoring.
const TOKENS_PER_PASS: usize = 4096;

/// Prompts that all begin with at least this many equal tokens (a few-shot context) have that
/// prefix computed once and cached for every row.
const SHARED_PREFIX_MIN: usize = 32;

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

/// How a model scores one target continuation, token by token.
#[derive(Debug, Clone, PartialEq)]
pub struct Continuation {
    /// `log p(t_i | prompt, t_<i)`.
    pub logprobs: Vec<f64>,
    /// Whether `t_i` was the most likely next token.
    pub argmax: Vec<bool>,
}

impl Continuation {
    /// Mean token NLL: the spec's comparison quantity.
    pub fn mean_nll(&self) -> f64 {
        -self.logprobs.iter().sum::<f64>() / self.logprobs.len() as f64
    }

    /// Whether every target token was the top prediction (CounterFact's `*_correct`).
    pub fn all_argmax(&self) -> bool {
        self.argmax.iter().all(|&c| c)
    }

    /// Fraction of target tokens that were the top prediction (zsRE's token accuracy).
    pub fn token_accuracy(&self) -> f64 {
        self.argmax.iter().filter(|&&c| c).count() as f64 / self.argmax.len() as f64
    }
}

/// Teacher-forced scores of each `(prompt, target)` pair. Sequences are sorted by length and
/// packed into passes of about [`TOKENS_PER_PASS`] tokens; results come back in input order.
pub fn teacher_forced<B: Backend>(
    model: &LanguageModel<B>,
    pairs: &[(String, String)],
) -> Result<Vec<Continuation>> {
    let tokenizer = model.tokenizer()?;
    let encoded = pairs
        .iter()
        .map(|(prompt, target)| {
            Ok((tokenizer.encode(prompt)?, target_ids(tokenizer, prompt, target)?))
        })
        .collect::<Result<Vec<_>>>()?;
    teacher_forced_ids(model, &encoded)
}

/// [`teacher_forced`] of tokenized `(prompt, target)` pairs (both non-empty). Pairs with the same
/// prompt share one row when the targets are no longer than it: the prompt is computed once and
/// each target continues it on its own branch ([`PromptTree`]). When every prompt begins with the
/// same [`SHARED_PREFIX_MIN`] tokens or more, that prefix is computed once into a [`KvCache`]
/// that each row continues. Rows are sorted by length and packed into passes of about
/// [`TOKENS_PER_PASS`] tokens, run side by side on the CPU ([`concurrent_passes`]); results come
/// back in input order.
pub fn teacher_forced_ids<B: Backend>(
    model: &LanguageModel<B>,
    encoded: &[(Vec<u32>, Vec<u32>)],
) -> Result<Vec<Continuation>> {
    let prefix = shared_prefix(encoded);
    let cache = if prefix.len() >= SHARED_PREFIX_MIN {
        let mut cache = KvCache::default();
        let hooks = Hooks { stop_after: Some(model.dims.num_layers - 1), ..Hooks::default() };
        let batch = model.batch(&[prefix.to_vec()], Padding::Right)?;
        model.forward_cached(&batch, &hooks, Some(&mut cache));
        Some(cache)
    } else {
        None
    };
    let past = cache.as_ref().map_or(0, |_| prefix.len());
    let encoded: Vec<(&[u32], &[u32])> =
        encoded.iter().map(|(p, t)| (&p[past..], t.as_slice())).collect();
    let encoded = encoded.as_slice();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prompt: HashMap<&[u32], usize> = HashMap::new();
    for (i, (prompt, target)) in encoded.iter().enumerate() {
        // Sharing saves a prompt's columns and widens its row by the branch: worth it for short
        // targets after a prompt (CounterFact, zsRE), not for long texts after one token.
        if target.len() > prompt.len() {
            groups.push(vec![i]);
            continue;
        }
        let group = *by_prompt.entry(*prompt).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(i);
    }
    let columns = |group: &[usize]| {
        encoded[group[0]].0.len() + group.iter().map(|&i| encoded[i].1.len() - 1).sum::<usize>()
    };
    groups.sort_by_key(|g| columns(g));
    // Small jobs are split so that every concurrent pass has work.
    let concurrent = concurrent_passes::<B>(&model.device());
    let budget =
        TOKENS_PER_PASS.min(groups.iter().map(|g| columns(g)).sum::<usize>().div_ceil(concurrent));
    let mut passes = Vec::new();
    let mut start = 0;
    while start < groups.len() {
        let mut end = start + 1;
        while end < groups.len() && (end + 1 - start) * columns(&groups[end]) <= budget {
            end += 1;
        }
        passes.push(&groups[start..end]);
        start = end;
    }
    let mut out = vec![None; encoded.len()];
    side_by_side(
        &passes,
        concurrent,
        |pass| score_pass(model, encoded, pass, cache.as_ref().map(|c| (past, c))),
        |_, scored| {
            for (i, scored) in scored {
                out[i] = Some(scored);
            }
        },
    )?;
    Ok(out.into_iter().map(|c| c.expect("every pair scored")).collect())
}

/// Perplexity of `texts` (token ids): `exp` of the mean NLL of every token after each text's
/// first, predicted from the tokens before it. Texts shorter than two tokens are skipped.
pub fn perplexity<B: Backend>(model: &LanguageModel<B>, texts: &[Vec<u32>]) -> Result<f64> {
    let pairs: Vec<(Vec<u32>, Vec<u32>)> =
        texts.iter().filter(|t| t.len() > 1).map(|t| (t[..1].to_vec(), t[1..].to_vec())).collect();
    Ok(perplexity_of(&teacher_forced_ids(model, &pairs)?))
}

/// `exp(−Σ log p / tokens)` over every token of `scored`: the perplexity of the texts together
/// (not the mean of per-text perplexities).
pub fn perplexity_of(scored: &[Continuation]) -> f64 {
    let tokens: usize = scored.iter().map(|c| c.logprobs.len()).sum();
    let nll: f64 = -scored.iter().flat_map(|c| &c.logprobs).sum::<f64>();
    (nll / tokens.max(1) as f64).exp()
}

/// Mean token NLL of each `(prompt, target)` pair.
pub fn continuation_nll<B: Backend>(
    model: &LanguageModel<B>,
    pairs: &[(String, String)],
) -> Result<Vec<f64>> {
    Ok(teacher_forced(model, pairs)?.iter().map(Continuation::mean_nll).collect())
}

/// The longest run of tokens that every prompt of `encoded` begins with, short of the shortest
/// prompt's last token (each row keeps a token of its own to predict the target from).
fn shared_prefix(encoded: &[(Vec<u32>, Vec<u32>)]) -> &[u32] {
    let Some((first, _)) = encoded.first() else { return &[] };
    let shortest = encoded.iter().map(|(p, _)| p.len()).min().unwrap_or(0);
    let equal = |i: usize| encoded.iter().all(|(p, _)| p[i] == first[i]);
    &first[..(0..shortest.saturating_sub(1)).take_while(|&i| equal(i)).count()]
}

/// One forward pass over the pairs of `groups` (indices into `encoded`; one prompt per group):
/// each pair's index and scores. With `prefix = (past, cache)` every prompt continues the
/// `past` tokens held in the one-row `cache`.
fn score_pass<B: Backend>(
    model: &LanguageModel<B>,
    encoded: &[(&[u32], &[u32])],
    groups: &[Vec<usize>],
    prefix: Option<(usize, &KvCache<B>)>,
) -> Result<Vec<(usize, Continuation)>> {
    let trees: Vec<PromptTree> = groups
        .iter()
        .map(|g| {
            let branches = g.iter().map(|&i| &encoded[i].1[..encoded[i].1.len() - 1]).collect();
            PromptTree { prompt: encoded[g[0]].0, branches }
        })
        .collect();
    let batch = model.tree_batch(&trees, prefix.map_or(0, |(past, _)| past))?;
    let t = batch.width();
    // (slot of the pair in `groups` flattened, column whose logits predict the token, token): a
    // target's first token is predicted at the prompt's last column, its later ones at the
    // branch's previous token.
    let mut labels = Vec::new();
    let slots = groups.iter().scan(0, |first, g| Some(std::mem::replace(first, *first + g.len())));
    for (row, ((tree, group), first)) in trees.iter().zip(groups).zip(slots).enumerate() {
        for (b, &pair) in group.iter().enumerate() {
            let start = tree.branch_start(b);
            let before = |j: usize| if j == 0 { tree.prompt.len() - 1 } else { start + j - 1 };
            labels.extend(
                encoded[pair]
                    .1
                    .iter()
                    .enumerate()
                    .map(|(j, &tok)| (first + b, row * t + before(j), tok)),
            );
        }
    }
    let at: Vec<usize> = labels.iter().map(|l| l.1).collect();
    let mut cache = prefix.map(|(_, cache)| cache.repeat(trees.len()));
    let hooks = Hooks { logits_at: Some(at), ..Hooks::default() };
    let logits = model.forward_cached(&batch, &hooks, cache.as_mut()).logits.expect("full pass");
    let logits = logits.reshape([labels.len(), model.dims.vocab_size]);
    let index = Tensor::<B, 2, Int>::from_data(
        TensorData::new(labels.iter().map(|l| l.2 as i64).collect::<Vec<_>>(), [labels.len(), 1]),
        &model.device(),
    );
    let best: Vec<i64> = logits.clone().argmax(1).into_data().iter::<i64>().collect();
    let logprobs = host(activation::log_softmax(logits, 1).gather(1, index))?;
    let empty = || Continuation { logprobs: Vec::new(), argmax: Vec::new() };
    let mut out: Vec<(usize, Continuation)> =
        groups.iter().flatten().map(|&i| (i, empty())).collect();
    for (((slot, _, tok), lp), best) in labels.iter().zip(logprobs).zip(best) {
        let scored = &mut out[*slot].1;
        scored.logprobs.push(lp as f64);
        scored.argmax.push(best == *tok as i64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(logprobs: &[f64]) -> Continuation {
        Continuation { logprobs: logprobs.to_vec(), argmax: vec![false; logprobs.len()] }
    }

    /// A model uniform over 4 tokens has perplexity 4; texts are pooled by token, not averaged.
    #[test]
    fn perplexity_of_known_distributions() {
        let quarter = (0.25f64).ln();
        assert!((perplexity_of(&[scored(&[quarter; 3]), scored(&[quarter])]) - 4.0).abs() < 1e-12);
        // p = 1/2 on one token and 1/8 on three: exp(−(ln ½ + 3 ln ⅛)/4) = 2^(10/4).
        let mixed = [scored(&[(0.5f64).ln()]), scored(&[(0.125f64).ln(); 3])];
        assert!((perplexity_of(&mixed) - 2f64.powf(2.5)).abs() < 1e-12);
        assert_eq!(perplexity_of(&[scored(&[0.0, 0.0])]), 1.0);
    }
}
