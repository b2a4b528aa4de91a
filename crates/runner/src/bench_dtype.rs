//! `editbench bench dtype`: what half-precision weights change. The model is loaded in f32, f16 and
//! bf16 in turn and run on the same random batch; each half-precision run's logits are compared
//! with the f32 run's.

use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::{AutodiffBackend, Backend};
use editbench_models::{BackendTask, Hooks, Padding, WeightDType};
use serde_json::{json, Value};

use crate::bench::{random_prompts, Out};
use crate::ModelArgs;

#[derive(clap::Args)]
pub struct DtypeArgs {
    /// The model and backend (`--dtype` is ignored: every dtype is run).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts in the batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per prompt.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    #[command(flatten)]
    pub out: Out,
}

impl DtypeArgs {
    pub fn task(&self) -> DtypeBench {
        DtypeBench { model: self.model.clone(), batch: self.batch, seq_len: self.seq_len }
    }
}

pub struct DtypeBench {
    model: ModelArgs,
    batch: usize,
    seq_len: usize,
}

impl BackendTask for DtypeBench {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let (mut runs, mut vocab) = (Vec::new(), 0);
        for dtype in [WeightDType::F32, WeightDType::F16, WeightDType::BF16] {
            let model =
                ModelArgs { dtype: Some(dtype), ..self.model.clone() }.load::<B>(&device)?;
            vocab = model.dims.vocab_size;
            let batch = model.batch(
                &random_prompts(self.batch, self.seq_len, model.dims.vocab_size),
                Padding::Right,
            )?;
            let started = Instant::now();
            let logits = model.forward(&batch, &Hooks::default()).logits.expect("full pass");
            let values = logits
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
            let stored = dtype.stored_natively::<B::InnerBackend>(&device);
            runs.push((dtype, stored, started.elapsed().as_secs_f64(), values));
        }
        let reference = &runs[0].3;
        let rows: Vec<Value> = runs
            .iter()
            .map(|(dtype, stored, seconds, values)| {
                json!({ "dtype": dtype, "stored_natively": stored, "forward_seconds": seconds, "against_f32": compare(reference, values, vocab) })
            })
            .collect();
        Ok(json!({
            "model": self.model.model.display().to_string(), "device": <B::InnerBackend as Backend>::name(&device),
            "batch": self.batch, "seq_len": self.seq_len, "runs": rows,
        }))
    }
}

/// `values` against `reference` (both `[positions, vocab]` logits): max and mean |Δ|, the share of
/// positions with the same top token, and KL(reference ‖ values) per position (mean, max).
fn compare(reference: &[f32], values: &[f32], vocab: usize) -> Value {
    let diff = reference.iter().zip(values).map(|(a, b)| f64::from((a - b).abs()));
    let (max_abs, sum_abs) = diff.fold((0.0f64, 0.0), |(m, s), d| (m.max(d), s + d));
    let positions: Vec<(f64, bool)> = reference
        .chunks(vocab)
        .zip(values.chunks(vocab))
        .map(|(p, q)| (kl(p, q), argmax(p) == argmax(q)))
        .collect();
    let n = positions.len().max(1) as f64;
    json!({
        "max_abs_logit_diff": max_abs, "mean_abs_logit_diff": sum_abs / reference.len().max(1) as f64,
        "top1_agreement": positions.iter().filter(|p| p.1).count() as f64 / n,
        "kl_mean": positions.iter().map(|p| p.0).sum::<f64>() / n, "kl_max": positions.iter().map(|p| p.0).fold(0.0, f64::max),
    })
}

/// KL(softmax(p) ‖ softmax(q)) in f64.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - log_sum).collect()
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_compare_equal_and_a_shifted_top_token_is_seen() {
        let p = [1.0, 2.0, 0.5, 0.0, 3.0, 1.0];
        let same = compare(&p, &p, 3);
        assert_eq!(same["max_abs_logit_diff"], 0.0);
        assert_eq!(same["top1_agreement"], 1.0);
        assert!(same["kl_max"].as_f64().unwrap() < 1e-12);
        let q = [1.0, 2.0, 2.5, 0.0, 3.0, 1.0];
        let moved = compare(&p, &q, 3);
        assert_eq!(moved["max_abs_logit_diff"], 2.0);
        assert_eq!(moved["top1_agreement"], 0.5);
        assert!(moved["kl_mean"].as_f64().unwrap() > 0.0);
    }
}
