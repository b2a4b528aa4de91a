//! Keys (algo §3): the input of the edited projection at the subject's last token, averaged over
//! context templates; and the block outputs at that token (the current values `H` of MEMIT's
//! edit distribution).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use editbench_models::{Hooks, LanguageModel, Padding, Start, TextTokenizer, Trace};
use faer::Mat;

use crate::context::ContextTemplates;
use crate::error::{EditError, Result};
use crate::request::EditRequest;

/// Sequences per forward pass when reading activations.
const CHUNK: usize = 64;

/// A tokenized sentence and the index of its subject's last token.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub ids: Vec<u32>,
    pub lookup: usize,
}

/// `template` with the request prompt in its `{}`, the subject in the prompt's `{}`, then `suffix`;
/// `lookup` is the last token whose text starts before the subject ends (robust to leading spaces,
/// a subject at the start, and a last subject piece merged with what follows).
pub fn locate(
    tokenizer: &TextTokenizer,
    template: &str,
    request: &EditRequest,
    suffix: &str,
) -> Result<Located> {
    let with_prompt = template.replacen("{}", &request.prompt, 1);
    let start = with_prompt.find("{}").ok_or_else(|| {
        EditError::Input(format!("prompt `{}` has no `{{}}` for the subject", request.prompt))
    })?;
    let text = format!("{}{}", with_prompt.replacen("{}", &request.subject, 1), suffix);
    let subject_end = start + request.subject.len();
    let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
    let lookup = offsets.iter().rposition(|&(s, e)| e > s && s < subject_end).ok_or_else(|| {
        EditError::Input(format!(
            "subject `{}` not found in the tokens of `{text}`",
            request.subject
        ))
    })?;
    Ok(Located { ids, lookup })
}

/// What to read at the located token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The input of the edited projection.
    Key,
    /// The output of the edited projection.
    Value,
    /// The block output.
    Hidden,
}

/// `activation` of `layer` at each sentence's located token: a row-major `[n, width]` buffer.
pub fn activations_at<B: Backend>(
    model: &LanguageModel<B>,
    sentences: &[Located],
    layer: usize,
    activation: Activation,
) -> Result<Vec<f32>> {
    BottomUp::new(sentences.to_vec()).read(model, layer, activation, 0)
}

/// Bytes of block inputs a [`BottomUp`] keeps; chunks beyond are rerun from their tokens.
pub const KEPT_BYTES: usize = 1 << 30;

/// Reads activations of one set of sentences at several layers of a model that is edited
/// bottom-up between the reads (algo §6: the keys of layer lᵢ are read after l₀ … lᵢ₋₁ are
/// edited). Each read keeps every chunk's input to the block the caller edits next (up to
/// [`KEPT_BYTES`]), so the next read runs only the blocks from that one up; the activations are
/// those of a full pass (same chunks, same operations on the same inputs).
pub struct BottomUp<B: Backend> {
    sentences: Vec<Located>,
    /// The block whose inputs are kept, and those inputs for the first chunks.
    kept: Option<(usize, Vec<Tensor<B, 3>>)>,
    /// At most this many bytes of inputs are kept.
    budget: usize,
}

impl<B: Backend> BottomUp<B> {
    pub fn new(sentences: Vec<Located>) -> Self {
        Self { sentences, kept: None, budget: KEPT_BYTES }
    }

    /// Keeps at most `bytes` of block inputs (default [`KEPT_BYTES`]).
    pub fn with_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// `activation` of `layer` at each sentence's located token, as [`activations_at`]. Keeps the
    /// input of block `edited` (≤ `layer`): until the next read the caller may change blocks
    /// `edited` and above only.
    pub fn read(
        &mut self,
        model: &LanguageModel<B>,
        layer: usize,
        activation: Activation,
        edited: usize,
    ) -> Result<Vec<f32>> {
        assert!(
            edited <= layer,
            "the kept input (block {edited}) must lie at or below the layer read ({layer})"
        );
        let (from, kept) = match self.kept.take() {
            Some((from, kept)) if from <= edited => (from, kept),
            _ => (0, Vec::new()),
        };
        let mut out = Vec::new();
        let mut keep = Vec::new();
        let mut bytes = 0;
        for (c, chunk) in self.sentences.chunks(CHUNK).enumerate() {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|s| s.ids.clone()).collect();
            let batch = model.batch(&ids, Padding::Right)?;
            let (first, start) = match kept.get(c) {
                Some(input) if from > 0 => {
                    (from, Start::After { layer: from - 1, hidden: input.clone() })
                }
                _ => (0, Start::Tokens),
            };
            let below = (edited > first).then(|| edited - 1);
            let hooks = Hooks::capture_only(&below.into_iter().chain([layer]).collect::<Vec<_>>());
            let trace = model.forward_from(start, &batch, &hooks, None);
            let columns: Vec<usize> = chunk.iter().map(|s| s.lookup).collect();
            out.extend(host(rows_at(&trace, layer, activation, &columns))?);
            let input = match below {
                Some(l) => Some(trace.layers[&l].hidden.clone()),
                None if edited > 0 => kept.get(c).cloned(),
                None => None,
            };
            if let Some(input) = input {
                bytes += input.shape().num_elements() * std::mem::size_of::<f32>();
                if bytes <= self.budget {
                    keep.push(input);
                }
            }
        }
        self.kept = (edited > 0).then_some((edited, keep));
        Ok(out)
    }
}

/// Rows `[n, width]` of a captured activation at `(row r, columns[r])`.
pub fn rows_at<B: Backend>(
    trace: &Trace<B>,
    layer: usize,
    activation: Activation,
    columns: &[usize],
) -> Tensor<B, 2> {
    let captured = &trace.layers[&layer];
    let x = match activation {
        Activation::Key => captured.key.clone(),
        Activation::Value => captured.value.clone(),
        Activation::Hidden => captured.hidden.clone(),
    };
    let [b, t, d] = x.dims();
    let flat: Vec<i64> = columns.iter().enumerate().map(|(row, &c)| (row * t + c) as i64).collect();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [columns.len()]), &x.device());
    x.reshape([b * t, d]).select(0, index)
}

pub(crate) fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .to_vec::<f32>()
        .map_err(|e| EditError::Input(format!("reading a tensor back: {e:?}")))
}

/// The keys `K ∈ R^{d_in×n}` of `requests` at `layer` (algo §3.3): for each request the mean over
/// template groups of the mean over the group's templates.
pub fn keys<B: Backend>(
    model: &LanguageModel<B>,
    requests: &[EditRequest],
    templates: &ContextTemplates,
    layer: usize,
) -> Result<Mat<f64>> {
    LayerKeys::new(model, requests, templates)?.at(model, layer, 0)
}

/// The keys of a batch of requests at the layers of a bottom-up edit ([`BottomUp`]).
pub struct LayerKeys<B: Backend> {
    reader: BottomUp<B>,
    /// The size of each template group (a key averages within a group, then over groups).
    groups: Vec<usize>,
    requests: usize,
}

impl<B: Backend> LayerKeys<B> {
    pub fn new(
        model: &LanguageModel<B>,
        requests: &[EditRequest],
        templates: &ContextTemplates,
    ) -> Result<Self> {
        let tokenizer = model.tokenizer()?;
        let mut sentences = Vec::new();
        for request in requests {
            for template in templates.groups.iter().flatten() {
                sentences.push(locate(tokenizer, template, request, "")?);
            }
        }
        let groups = templates.groups.iter().map(Vec::len).collect();
        Ok(Self { reader: BottomUp::new(sentences), groups, requests: requests.len() })
    }

    /// [`keys`] at `layer`, keeping the input of block `edited` ([`BottomUp::read`]).
    pub fn at(
        &mut self,
        model: &LanguageModel<B>,
        layer: usize,
        edited: usize,
    ) -> Result<Mat<f64>> {
        let d = model.dims.intermediate_size;
        let flat = self.reader.read(model, layer, Activation::Key, edited)?;
        let per_request: usize = self.groups.iter().sum();
        Ok(Mat::from_fn(d, self.requests, |i, r| {
            let mut offset = r * per_request;
            let mut total = 0.0;
            for &size in &self.groups {
                let sum: f64 = (offset..offset + size).map(|s| flat[s * d + i] as f64).sum();
                total += sum / size as f64;
                offset += size;
            }
            total / self.groups.len() as f64
        }))
    }
}

/// `activation` at a layer at the subject's last token of each bare request prompt, `d × n`, read
/// bottom-up ([`BottomUp`]).
pub struct PromptActivation<B: Backend> {
    reader: BottomUp<B>,
    requests: usize,
}

impl<B: Backend> PromptActivation<B> {
    pub fn new(model: &LanguageModel<B>, requests: &[EditRequest]) -> Result<Self> {
        let tokenizer = model.tokenizer()?;
        let sentences =
            requests.iter().map(|r| locate(tokenizer, "{}", r, "")).collect::<Result<Vec<_>>>()?;
        Ok(Self { reader: BottomUp::new(sentences), requests: requests.len() })
    }

    /// `activation` at `layer`, keeping the input of block `edited` ([`BottomUp::read`]).
    pub fn at(
        &mut self,
        model: &LanguageModel<B>,
        layer: usize,
        activation: Activation,
        edited: usize,
    ) -> Result<Mat<f64>> {
        let flat = self.reader.read(model, layer, activation, edited)?;
        Ok(to_columns(&flat, self.requests, flat.len() / self.requests))
    }
}

/// Row-major `[n, d]` → the column matrix `d × n`.
pub(crate) fn to_columns(flat: &[f32], n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(d, n, |i, j| flat[j * d + i] as f64)
}
