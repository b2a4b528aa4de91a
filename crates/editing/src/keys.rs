//! Keys (spec §3): the input of the edited projection at the subject's last token, averaged over
//! context templates; and the block outputs at that token (the current values `H` of MEMIT's
//! edit distribution).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use editbench_models::{Hooks, LanguageModel, Padding, TextTokenizer, Trace};
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
pub fn locate(tokenizer: &TextTokenizer, template: &str, request: &EditRequest, suffix: &str) -> Result<Located> {
    let with_prompt = template.replacen("{}", &request.prompt, 1);
    let start = with_prompt
        .find("{}")
        .ok_or_else(|| EditError::Input(format!("prompt `{}` has no `{{}}` for the subject", request.prompt)))?;
    let text = format!("{}{}", with_prompt.replacen("{}", &request.subject, 1), suffix);
    let subject_end = start + request.subject.len();
    let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
    let lookup = offsets
        .iter()
        .rposition(|&(s, e)| e > s && s < subject_end)
        .ok_or_else(|| EditError::Input(format!("subject `{}` not found in the tokens of `{text}`", request.subject)))?;
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
pub fn activations_at<B: Backend>(model: &LanguageModel<B>, sentences: &[Located], layer: usize, activation: Activation) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for chunk in sentences.chunks(CHUNK) {
        let ids: Vec<Vec<u32>> = chunk.iter().map(|s| s.ids.clone()).collect();
        let batch = model.batch(&ids, Padding::Right)?;
        let trace = model.forward(&batch, &Hooks::capture_only(&[layer]));
        let columns: Vec<usize> = chunk.iter().map(|s| s.lookup).collect();
        out.extend(host(rows_at(&trace, layer, activation, &columns))?);
    }
    Ok(out)
}

/// Rows `[n, width]` of a captured activation at `(row r, columns[r])`.
pub fn rows_at<B: Backend>(trace: &Trace<B>, layer: usize, activation: Activation, columns: &[usize]) -> Tensor<B, 2> {
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
    t.into_data().to_vec::<f32>().map_err(|e| EditError::Input(format!("reading a tensor back: {e:?}")))
}

/// The keys `K ∈ R^{d_in×n}` of `requests` at `layer` (spec §3.3): for each request the mean over
/// template groups of the mean over the group's templates.
pub fn keys<B: Backend>(model: &LanguageModel<B>, requests: &[EditRequest], templates: &ContextTemplates, layer: usize) -> Result<Mat<f64>> {
    let tokenizer = model.tokenizer()?;
    let mut sentences = Vec::new();
    for request in requests {
        for template in templates.groups.iter().flatten() {
            sentences.push(locate(tokenizer, template, request, "")?);
        }
    }
    let d = model.dims.intermediate_size;
    let flat = activations_at(model, &sentences, layer, Activation::Key)?;
    let per_request = templates.count();
    Ok(Mat::from_fn(d, requests.len(), |i, r| {
        let mut offset = r * per_request;
        let mut total = 0.0;
        for group in &templates.groups {
            let sum: f64 = (offset..offset + group.len()).map(|s| flat[s * d + i] as f64).sum();
            total += sum / group.len() as f64;
            offset += group.len();
        }
        total / templates.groups.len() as f64
    }))
}

/// `activation` at `layer` at the subject's last token of each bare request prompt, `d × n`.
pub fn prompt_activation<B: Backend>(model: &LanguageModel<B>, requests: &[EditRequest], layer: usize, activation: Activation) -> Result<Mat<f64>> {
    let tokenizer = model.tokenizer()?;
    let sentences = requests.iter().map(|r| locate(tokenizer, "{}", r, "")).collect::<Result<Vec<_>>>()?;
    let d = model.dims.hidden_size;
    Ok(to_columns(&activations_at(model, &sentences, layer, activation)?, requests.len(), d))
}

/// Row-major `[n, d]` → the column matrix `d × n`.
pub(crate) fn to_columns(flat: &[f32], n: usize, d: usize) -> Mat<f64> {
    Mat::from_fn(d, n, |i, j| flat[j * d + i] as f64)
}
