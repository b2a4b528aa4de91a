//! Causal tracing (ROME, Meng et al. 2022, §2.1; its `experiments/causal_trace.py`): which states carry a fact. The
//! subject's token embeddings are corrupted with Gaussian noise; one clean state — a block output,
//! or the MLP or attention outputs of a window of layers around it — is restored at one token, and
//! the probability of the answer that comes back is that state's effect. Layers whose MLPs restore
//! the most at the subject's last token are where ROME and MEMIT edit.

use std::ops::Range;
use std::str::FromStr;

use burn::tensor::{activation, backend::Backend, Tensor, TensorData};
use editbench_datasets::rng::SplitMix64;
use editbench_models::backend::{concurrent_passes, side_by_side};
use editbench_models::{
    Hooks, LanguageModel, Padding, Patch, PromptBatch, Site, Start, TextTokenizer, Trace, Write,
};

use crate::error::{EditError, Result};
use crate::keys::host;
use crate::score::target_ids;

/// What is restored at a (token, layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TraceKind {
    /// The block output of that layer.
    Hidden,
    /// The MLP outputs of a window of layers centred on that layer.
    Mlp,
    /// The attention outputs of a window of layers centred on that layer.
    Attn,
}

impl TraceKind {
    pub const ALL: [Self; 3] = [Self::Hidden, Self::Mlp, Self::Attn];

    pub fn name(self) -> &'static str {
        match self {
            Self::Hidden => "hidden",
            Self::Mlp => "mlp",
            Self::Attn => "attn",
        }
    }

    fn site(self) -> Site {
        match self {
            Self::Hidden => Site::Hidden,
            Self::Mlp => Site::Mlp,
            Self::Attn => Site::Attention,
        }
    }

    /// The layers restored for the state centred on `layer`: that layer for hidden states; ROME's
    /// window `[layer − ⌊w/2⌋, layer + ⌈w/2⌉)`, clipped to the model, for MLP and attention outputs.
    pub fn layers(self, layer: usize, window: usize, num_layers: usize) -> Range<usize> {
        match self {
            Self::Hidden => layer..layer + 1,
            Self::Mlp | Self::Attn => {
                layer.saturating_sub(window / 2)..(layer + window.div_ceil(2)).min(num_layers)
            }
        }
    }
}

impl FromStr for TraceKind {
    type Err = EditError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            EditError::Input(format!("unknown trace kind `{s}`: expected hidden, mlp or attn"))
        })
    }
}

/// One prompt to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TracePrompt {
    pub ids: Vec<u32>,
    /// The subject's tokens (those whose text overlaps the subject).
    pub subject: Range<usize>,
    /// The first token of the answer as it follows the prompt.
    pub answer: u32,
}

impl TracePrompt {
    /// `prompt` (with `{}` where `subject` goes) and the first token of `answer` after it.
    pub fn new(
        tokenizer: &TextTokenizer,
        prompt: &str,
        subject: &str,
        answer: &str,
    ) -> Result<Self> {
        let start = prompt.find("{}").ok_or_else(|| {
            EditError::Input(format!("prompt `{prompt}` has no `{{}}` for the subject"))
        })?;
        let (text, end) = (prompt.replacen("{}", subject, 1), start + subject.len());
        let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
        let overlapping = || {
            offsets
                .iter()
                .enumerate()
                .filter(|(_, &(s, e))| e > s && s < end && e > start)
                .map(|(i, _)| i)
        };
        let subject_tokens = match (overlapping().next(), overlapping().next_back()) {
            (Some(first), Some(last)) => first..last + 1,
            _ => {
                return Err(EditError::Input(format!(
                    "subject `{subject}` not found in the tokens of `{text}`"
                )))
            }
        };
        let answer = *target_ids(tokenizer, &text, answer)?
            .first()
            .ok_or_else(|| EditError::Input(format!("answer `{answer}` has no tokens")))?;
        Ok(Self { ids, subject: subject_tokens, answer })
    }
}

/// ROME's unit of noise (`collect_embedding_std`): the standard deviation of all elements of the
/// token embeddings of `subjects`, each tokenized alone.
pub fn embedding_std<B: Backend>(model: &LanguageModel<B>, subjects: &[String]) -> Result<f64> {
    let tokenizer = model.tokenizer()?;
    let mut values = Vec::new();
    for subject in subjects {
        values.extend(host(model.token_embeddings(&tokenizer.encode_plain(subject)?))?);
    }
    if values.len() < 2 {
        return Err(EditError::Input(
            "no subject tokens to measure the embeddings' spread on".into(),
        ));
    }
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
    let var =
        values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    Ok(var.sqrt())
}

/// How the subject is corrupted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Corruption {
    /// Standard deviation of the Gaussian noise added to each subject embedding element.
    pub noise: f64,
    /// Corrupted runs averaged (ROME: 10).
    pub samples: usize,
    /// Seed of the noise; every prompt draws from a fresh generator with it (as ROME reuses
    /// `RandomState(1)`), so a prompt's numbers do not depend on which prompts came before.
    pub seed: u64,
}

/// A prompt's clean and corrupted runs, from which every restoration starts.
pub struct Tracer<'m, B: Backend> {
    model: &'m LanguageModel<B>,
    prompt: TracePrompt,
    samples: usize,
    /// Token embeddings with the noise on the subject's tokens, `[samples, t, d]`.
    corrupted_embeddings: Tensor<B, 3>,
    clean: Trace<B>,
    corrupted: Trace<B>,
    /// The answer's probability in the clean run.
    pub clean_probability: f64,
    /// Its mean probability over the corrupted runs (nothing restored).
    pub corrupted_probability: f64,
    /// Whether the answer is the clean run's most likely next token.
    pub known: bool,
}

impl<'m, B: Backend> Tracer<'m, B> {
    pub fn new(
        model: &'m LanguageModel<B>,
        prompt: TracePrompt,
        corruption: &Corruption,
    ) -> Result<Self> {
        let (t, d, samples) = (prompt.ids.len(), model.dims.hidden_size, corruption.samples.max(1));
        if prompt.answer as usize >= model.dims.vocab_size {
            return Err(EditError::Input(format!(
                "answer token {} is outside the vocabulary (size {})",
                prompt.answer, model.dims.vocab_size
            )));
        }
        let capture: Vec<usize> = (0..model.dims.num_layers).collect();
        let hooks = Hooks { capture, logits_at: Some(vec![t - 1]), ..Hooks::default() };
        let clean =
            model.forward(&model.batch(std::slice::from_ref(&prompt.ids), Padding::Right)?, &hooks);
        let clean_logits = host(clean.logits.clone().expect("full pass"))?;
        let known = clean_logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            == Some(prompt.answer);

        let mut rng = SplitMix64::new(corruption.seed);
        let noise: Vec<f32> = (0..samples * t * d)
            .map(|i| {
                if prompt.subject.contains(&(i / d % t)) {
                    (corruption.noise * rng.next_gaussian()) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let noise =
            Tensor::<B, 3>::from_data(TensorData::new(noise, [samples, t, d]), &model.device());
        let corrupted_embeddings =
            model.token_embeddings(&prompt.ids).unsqueeze_dim::<3>(0) + noise;
        let rows =
            Rows { model, prompt: &prompt, samples, corrupted_embeddings: &corrupted_embeddings };
        let (batch, patches) = rows.corrupted(1)?;
        let corrupted = model.forward_patched(
            Start::Tokens,
            &batch,
            &Hooks { logits_at: Some(rows.last_columns(1)), ..hooks },
            &patches,
        );
        let mean = |p: Vec<f64>| p.iter().sum::<f64>() / p.len() as f64;
        Ok(Self {
            clean_probability: answer_probabilities(
                clean.logits.clone().expect("full pass"),
                prompt.answer,
            )?[0],
            corrupted_probability: mean(answer_probabilities(
                corrupted.logits.clone().expect("full pass"),
                prompt.answer,
            )?),
            model,
            prompt,
            samples,
            corrupted_embeddings,
            clean,
            corrupted,
            known,
        })
    }

    pub fn prompt(&self) -> &TracePrompt {
        &self.prompt
    }

    fn rows(&self) -> Rows<'_, B> {
        Rows {
            model: self.model,
            prompt: &self.prompt,
            samples: self.samples,
            corrupted_embeddings: &self.corrupted_embeddings,
        }
    }

    /// The answer's probability (mean over the corrupted runs) with the clean `kind` states of each
    /// set restored — `(token, layer)` pairs; every set is one group of rows of a single pass that
    /// starts at the lowest restored layer (the corrupted runs are the same below it).
    pub fn restored(&self, kind: TraceKind, sets: &[Vec<(usize, usize)>]) -> Result<Vec<f64>> {
        let (t, groups, num_layers) =
            (self.prompt.ids.len(), sets.len(), self.model.dims.num_layers);
        let mut layers: Vec<usize> = sets.iter().flatten().map(|&(_, layer)| layer).collect();
        layers.sort_unstable();
        layers.dedup();
        let first = layers.first().copied().unwrap_or(num_layers);
        let rows = self.rows();
        let (batch, mut patches) = rows.corrupted(groups)?;
        let start = match first {
            0 => Start::Tokens,
            _ => {
                patches.clear();
                Start::After {
                    layer: first - 1,
                    hidden: self.corrupted.layers[&(first - 1)]
                        .hidden
                        .clone()
                        .repeat_dim(0, groups),
                }
            }
        };
        for layer in layers {
            let mut mask = vec![0f32; groups * self.samples * t];
            for (group, set) in sets.iter().enumerate() {
                for &(token, _) in set.iter().filter(|&&(_, l)| l == layer) {
                    (0..self.samples)
                        .for_each(|s| mask[((group * self.samples) + s) * t + token] = 1.0);
                }
            }
            let mask = Tensor::from_data(
                TensorData::new(mask, [groups * self.samples, t, 1]),
                &self.model.device(),
            );
            patches.push(Patch {
                site: kind.site(),
                layer,
                mask,
                value: self.clean_state(kind, layer),
                write: Write::Replace,
            });
        }
        let hooks = Hooks { logits_at: Some(rows.last_columns(groups)), ..Hooks::default() };
        let logits =
            self.model.forward_patched(start, &batch, &hooks, &patches).logits.expect("full pass");
        let probabilities = answer_probabilities(logits, self.prompt.answer)?;
        Ok(probabilities
            .chunks(self.samples)
            .map(|group| group.iter().sum::<f64>() / self.samples as f64)
            .collect())
    }

    /// The clean run's `kind` activations of `layer`, `[1, t, d]`.
    fn clean_state(&self, kind: TraceKind, layer: usize) -> Tensor<B, 3> {
        let trace = &self.clean.layers[&layer];
        match kind {
            TraceKind::Hidden => trace.hidden.clone(),
            TraceKind::Mlp => trace.value.clone(),
            TraceKind::Attn => trace.attention.clone(),
        }
    }

    /// `restored[token][layer]`: the answer's probability with the `kind` state of (token, layer)
    /// restored (for MLP and attention outputs, the `window` of layers centred on it). One pass
    /// per layer over the tokens from the subject on; passes run side by side where the backend
    /// gains from it. States before the subject are the same in the clean and corrupted runs
    /// (attention is causal), so restoring them gives the corrupted probability without a pass.
    pub fn grid(&self, kind: TraceKind, window: usize) -> Result<Vec<Vec<f64>>> {
        let (t, num_layers, first) =
            (self.prompt.ids.len(), self.model.dims.num_layers, self.prompt.subject.start);
        let mut restored = vec![vec![self.corrupted_probability; num_layers]; t];
        let layers: Vec<usize> = (0..num_layers).collect();
        let sets = |layer: usize| -> Vec<Vec<(usize, usize)>> {
            (first..t)
                .map(|token| kind.layers(layer, window, num_layers).map(|l| (token, l)).collect())
                .collect()
        };
        side_by_side(
            &layers,
            concurrent_passes::<B>(&self.model.device()),
            |&layer| self.restored(kind, &sets(layer)),
            |&layer, column| {
                column.into_iter().enumerate().for_each(|(i, p)| restored[first + i][layer] = p);
            },
        )?;
        Ok(restored)
    }
}

/// Batches of `groups` copies of a prompt's corrupted runs.
struct Rows<'a, B: Backend> {
    model: &'a LanguageModel<B>,
    prompt: &'a TracePrompt,
    samples: usize,
    corrupted_embeddings: &'a Tensor<B, 3>,
}

impl<B: Backend> Rows<'_, B> {
    /// The batch of `groups × samples` rows and the patch that corrupts their subject embeddings.
    fn corrupted(&self, groups: usize) -> Result<(PromptBatch<B>, Vec<Patch<B>>)> {
        let rows = groups * self.samples;
        let batch = self.model.batch(&vec![self.prompt.ids.clone(); rows], Padding::Right)?;
        let mask = Tensor::ones([rows, self.prompt.ids.len(), 1], &self.model.device());
        Ok((
            batch,
            vec![Patch {
                site: Site::Embedding,
                layer: 0,
                mask,
                value: self.corrupted_embeddings.clone().repeat_dim(0, groups),
                write: Write::Replace,
            }],
        ))
    }

    /// Flat positions of the last column of each of the `groups × samples` rows.
    fn last_columns(&self, groups: usize) -> Vec<usize> {
        let t = self.prompt.ids.len();
        (0..groups * self.samples).map(|row| row * t + t - 1).collect()
    }
}

/// Softmax probability of `answer` at each scored position of `logits: [1, n, vocab]`.
fn answer_probabilities<B: Backend>(logits: Tensor<B, 3>, answer: u32) -> Result<Vec<f64>> {
    let [_, n, _] = logits.dims();
    let probabilities =
        activation::softmax(logits, 2).slice([0..1, 0..n, answer as usize..answer as usize + 1]);
    Ok(host(probabilities)?.into_iter().map(f64::from).collect())
}

/// ROME's token classes for averaging traces over prompts (`average_causal_effects` in its
/// notebooks): a token may belong to two (a one-token subject is its first and last token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TokenClass {
    FirstSubject,
    MiddleSubject,
    LastSubject,
    FirstSubsequent,
    FurtherTokens,
    LastToken,
}

impl TokenClass {
    pub const ALL: [Self; 6] = [
        Self::FirstSubject,
        Self::MiddleSubject,
        Self::LastSubject,
        Self::FirstSubsequent,
        Self::FurtherTokens,
        Self::LastToken,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::FirstSubject => "first subject token",
            Self::MiddleSubject => "middle subject tokens",
            Self::LastSubject => "last subject token",
            Self::FirstSubsequent => "first subsequent token",
            Self::FurtherTokens => "further tokens",
            Self::LastToken => "last token",
        }
    }

    /// This class's token positions in a prompt of `len` tokens whose subject is `subject`
    /// (empty where the prompt has none, e.g. no token after a subject that ends the prompt).
    pub fn positions(self, subject: &Range<usize>, len: usize) -> Range<usize> {
        let (first_subject, after) = (subject.start, subject.end);
        match self {
            Self::FirstSubject => first_subject..first_subject + 1,
            Self::MiddleSubject => {
                first_subject + 1..after.saturating_sub(1).max(first_subject + 1)
            }
            Self::LastSubject => after - 1..after,
            Self::FirstSubsequent => after..(after + 1).min(len),
            Self::FurtherTokens => (after + 1).min(len)..(len - 1).max((after + 1).min(len)),
            Self::LastToken => len - 1..len,
        }
    }
}

/// One traced prompt's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct TracedPrompt {
    pub subject: Range<usize>,
    pub clean: f64,
    pub corrupted: f64,
    pub known: bool,
    /// `restored[token][layer]`.
    pub restored: Vec<Vec<f64>>,
}

/// The mean over prompts of one token class at one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassEffect {
    pub class: TokenClass,
    pub layer: usize,
    /// (token, prompt) pairs averaged.
    pub n: usize,
    pub mean_restored: f64,
    /// Mean indirect effect: restored minus the prompt's corrupted probability.
    pub mean_effect: f64,
    /// Standard error of the mean effect.
    pub sem_effect: f64,
}

/// The mean restored probability and indirect effect of every token class at every layer, each
/// token of a class in each prompt one observation (as ROME's notebooks average).
pub fn class_effects(traces: &[&TracedPrompt], num_layers: usize) -> Vec<ClassEffect> {
    let mut out = Vec::new();
    for class in TokenClass::ALL {
        for layer in 0..num_layers {
            let observations: Vec<(f64, f64)> = traces
                .iter()
                .flat_map(|p| {
                    class
                        .positions(&p.subject, p.restored.len())
                        .map(move |t| (p.restored[t][layer], p.restored[t][layer] - p.corrupted))
                })
                .collect();
            let n = observations.len();
            if n == 0 {
                continue;
            }
            let mean_effect = observations.iter().map(|o| o.1).sum::<f64>() / n as f64;
            let var = observations.iter().map(|o| (o.1 - mean_effect).powi(2)).sum::<f64>()
                / (n.max(2) - 1) as f64;
            let mean_restored = observations.iter().map(|o| o.0).sum::<f64>() / n as f64;
            out.push(ClassEffect {
                class,
                layer,
                n,
                mean_restored,
                mean_effect,
                sem_effect: (var / n as f64).sqrt(),
            });
        }
    }
    out
}

/// The layer whose mean effect for `class` is largest (ROME's and MEMIT's edit layer is where the
/// MLP effect at the last subject token peaks).
pub fn peak_layer(effects: &[ClassEffect], class: TokenClass) -> Option<usize> {
    effects
        .iter()
        .filter(|e| e.class == class)
        .max_by(|a, b| a.mean_effect.total_cmp(&b.mean_effect))
        .map(|e| e.layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_romes() {
        // range(max(0, l - w // 2), min(L, l - (-w // 2))) in ROME's causal_trace.py.
        assert_eq!(TraceKind::Mlp.layers(0, 10, 30), 0..5);
        assert_eq!(TraceKind::Mlp.layers(7, 10, 30), 2..12);
        assert_eq!(TraceKind::Attn.layers(29, 10, 30), 24..30);
        assert_eq!(TraceKind::Mlp.layers(4, 3, 30), 3..6);
        assert_eq!(TraceKind::Hidden.layers(4, 10, 30), 4..5);
        assert!("mlp".parse::<TraceKind>().is_ok() && "ffn".parse::<TraceKind>().is_err());
    }

    fn positions(subject: Range<usize>, len: usize) -> Vec<Vec<usize>> {
        TokenClass::ALL.iter().map(|c| c.positions(&subject, len).collect()).collect()
    }

    #[test]
    fn token_classes_follow_romes_notebook() {
        // "The | Space | Need | le | is | in | downtown": subject 1..4.
        assert_eq!(positions(1..4, 7), [vec![1], vec![2], vec![3], vec![4], vec![5], vec![6]]);
        // A one-token subject at the start: first and last subject token coincide, no middle.
        assert_eq!(positions(0..1, 4), [vec![0], vec![], vec![0], vec![1], vec![2], vec![3]]);
        // The subject ends the prompt: no subsequent tokens; its last token is the last token.
        assert_eq!(positions(2..5, 5), [vec![2], vec![3], vec![4], vec![], vec![], vec![4]]);
        // One token after the subject: it is both the first subsequent and the last token.
        assert_eq!(positions(0..2, 3), [vec![0], vec![], vec![1], vec![2], vec![], vec![2]]);
    }

    #[test]
    fn class_effects_average_every_token_of_a_class() {
        let trace = |restored: Vec<Vec<f64>>, corrupted| TracedPrompt {
            subject: 0..3,
            clean: 1.0,
            corrupted,
            known: true,
            restored,
        };
        let a = trace(vec![vec![0.5, 0.1], vec![0.3, 0.2], vec![0.4, 0.9], vec![0.2, 0.2]], 0.1);
        let b = trace(vec![vec![0.7, 0.1], vec![0.5, 0.6], vec![0.2, 0.5], vec![0.1, 0.1]], 0.0);
        let effects = class_effects(&[&a, &b], 2);
        let get =
            |class, layer| effects.iter().find(|e| e.class == class && e.layer == layer).unwrap();
        let first = get(TokenClass::FirstSubject, 0);
        assert_eq!(first.n, 2);
        assert!(
            (first.mean_restored - 0.6).abs() < 1e-12 && (first.mean_effect - 0.55).abs() < 1e-12
        );
        // Effects 0.4 and 0.7: sample variance 0.045, standard error √(0.045 / 2) = 0.15.
        assert!((first.sem_effect - 0.15).abs() < 1e-12);
        assert!((get(TokenClass::LastSubject, 1).mean_effect - 0.65).abs() < 1e-12);
        assert_eq!(peak_layer(&effects, TokenClass::LastSubject), Some(1));
        assert_eq!(peak_layer(&effects, TokenClass::FirstSubject), Some(0));
    }
}
