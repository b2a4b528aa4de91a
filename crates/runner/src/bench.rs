//! `editbench bench forward`: prompt throughput of a model and, in the same run, the f32 GEMM
//! throughput of the same backend, so the model's fraction of matmul peak is visible.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use clap::Subcommand;
use editbench_models::{BackendTask, Hooks, Padding};
use serde_json::json;

use crate::{load, ModelArgs};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Forward-pass tokens/s on a batch of random prompts, and GEMM GFLOP/s.
    Forward {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Also write the JSON report to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    let BenchCommand::Forward { model, batch, seq_len, repeats, out } = cmd;
    let backend = model.backend;
    let report = backend.run(ForwardBench { path: model.model, batch, seq_len, repeats: repeats.max(1) })??;
    let report = json!({ "backend": backend.to_string(), "threads": rayon_threads(), "forward": report });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = out {
        std::fs::write(&path, text + "\n")?;
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

struct ForwardBench {
    path: PathBuf,
    batch: usize,
    seq_len: usize,
    repeats: usize,
}

/// Seconds per call of `f`, best of `repeats` after one warm-up.
fn best_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

impl BackendTask for ForwardBench {
    type Output = Result<serde_json::Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<serde_json::Value> {
        let model = load::<B>(&self.path, &device)?;
        let dims = model.dims;
        // A fixed pseudo-random prompt batch (LCG, seed 0): the timing does not depend on content.
        let mut state = 0u64;
        let prompts: Vec<Vec<u32>> = (0..self.batch)
            .map(|_| {
                (0..self.seq_len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((state >> 33) % dims.vocab_size as u64) as u32
                    })
                    .collect()
            })
            .collect();
        let batch = model.batch(&prompts, Padding::Right)?;
        let forward = best_seconds(self.repeats, || {
            let logits = model.forward(&batch, &Hooks::default()).logits.expect("full pass");
            let _ = logits.slice([0..1, 0..1, 0..1]).into_data();
        });
        let tokens = (self.batch * self.seq_len) as f64;
        let model_flops = tokens * model.matmul_flops_per_token(self.seq_len);

        // The GEMM the MLP does at this batch size: [tokens, d_model] × [d_model, d_mlp].
        let (m, k, n) = (self.batch * self.seq_len, dims.hidden_size, dims.intermediate_size);
        let a = Tensor::<B::InnerBackend, 2>::random([m, k], Distribution::Default, &device);
        let b = Tensor::<B::InnerBackend, 2>::random([k, n], Distribution::Default, &device);
        let gemm = best_seconds(self.repeats.max(5), || {
            let c = a.clone().matmul(b.clone());
            let _ = c.slice([0..1, 0..1]).into_data();
        });
        let gemm_flops = 2.0 * (m * k * n) as f64;
        let model_gflops = model_flops / forward / 1e9;
        let gemm_gflops = gemm_flops / gemm / 1e9;
        Ok(json!({
            "model": self.path.display().to_string(),
            "batch": self.batch,
            "seq_len": self.seq_len,
            "seconds_per_forward": forward,
            "tokens_per_second": tokens / forward,
            "model_gflops_per_second": model_gflops,
            "gemm": { "m": m, "k": k, "n": n, "seconds": gemm, "gflops_per_second": gemm_gflops },
            "fraction_of_gemm_peak": model_gflops / gemm_gflops,
            "device": <B::InnerBackend as Backend>::name(&device),
        }))
    }
}
