//! `editbench bench rows`: matrix products with few rows against the memory bandwidth. One edit's
//! target search multiplies ~10–30 activation rows by every weight matrix above the edited layer at
//! each Adam step (forward `x · W`, backward `dy · Wᵀ`), so its speed is set by how fast a product
//! streams a weight matrix that is not in cache: reported as GB/s of weights beside the bandwidth
//! of a plain read of host memory, on one thread and on all.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Tensor};
use editbench_models::backend::concurrent_passes;
use editbench_models::BackendTask;
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::bench::{best_seconds, passes_beside, Out};
use crate::ModelArgs;

#[derive(clap::Args)]
pub struct RowsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Rows of the activations multiplied by each weight matrix, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64")]
    rows: Vec<usize>,
    /// Timed repetitions of each sweep over the weights (best is reported, after one warm-up).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[command(flatten)]
    pub out: Out,
}

impl RowsArgs {
    pub fn task(&self) -> RowsBench {
        RowsBench {
            model: self.model.clone(),
            rows: self.rows.clone(),
            repeats: self.repeats.max(1),
        }
    }
}

pub struct RowsBench {
    model: ModelArgs,
    rows: Vec<usize>,
    repeats: usize,
}

impl BackendTask for RowsBench {
    type Output = Result<Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Value> {
        let cpu = B::name(&device).contains("ndarray");
        anyhow::ensure!(
            cpu,
            "bench rows measures the cpu backend (elsewhere products run asynchronously)"
        );
        anyhow::ensure!(self.rows.iter().all(|&m| m > 0), "--rows: every count must be at least 1");
        let dims = self.model.load::<B>(&device)?.dims;
        let (d, f) = (dims.hidden_size, dims.intermediate_size);
        // Per block the query and output projections and the three MLP matrices, `[d_in, d_out]`
        // (the key/value projections are left out: small under grouped-query attention).
        let block = [[d, d], [d, d], [d, f], [d, f], [f, d]];
        let shapes: Vec<[usize; 2]> = (0..dims.num_layers).flat_map(|_| block).collect();
        let random = |shape: [usize; 2]| {
            Tensor::<B::InnerBackend, 2>::random(shape, Distribution::Default, &device)
        };
        let weights: Vec<_> = shapes.iter().map(|&s| random(s)).collect();
        let bytes = shapes.iter().map(|[i, o]| (4 * i * o) as f64).sum::<f64>();
        let concurrent = concurrent_passes::<B::InnerBackend>(&device);
        let rows = self.rows.iter().map(|&m| {
            // Activations of width d and f: x enters a product by its input side, dy by its output.
            let (x, dy) = ([random([m, d]), random([m, f])], [random([m, d]), random([m, f])]);
            let at = |w: usize| if w == d { 0 } else { 1 };
            let forward = || {
                weights
                    .iter()
                    .zip(&shapes)
                    .for_each(|(w, [i, _])| drop(x[at(*i)].clone().matmul(w.clone())))
            };
            let backward = || {
                weights
                    .iter()
                    .zip(&shapes)
                    .for_each(|(w, [_, o])| drop(dy[at(*o)].clone().matmul(w.clone().transpose())))
            };
            let time = |sweep: &(dyn Fn() + Sync)| self.modes(sweep, concurrent, bytes);
            json!({ "rows": m, "forward": time(&forward), "backward": time(&backward) })
        });
        let rows: Vec<Value> = rows.collect();
        let host: Vec<u64> = (0..64 << 20).collect();
        let threads = rayon::current_num_threads();
        let bandwidth = json!({ "one_thread": read_bandwidth(&host, 1), "all_threads": read_bandwidth(&host, threads) });
        Ok(json!({
            "model": self.model.model.display().to_string(),
            "weights_mb": bytes / 1e6,
            "read_bandwidth_gb_per_second": bandwidth,
            "products": rows,
        }))
    }
}

impl RowsBench {
    /// One sweep over the weights timed as one pass on one thread, as one pass whose products may
    /// use every thread, and as `concurrent` passes side by side (how a lone target search runs).
    fn modes(&self, sweep: &(dyn Fn() + Sync), concurrent: usize, bytes: f64) -> Value {
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a thread");
        let passes = vec![(); concurrent.max(1)];
        let rate = |seconds: f64, sweeps: usize| json!({ "seconds": seconds, "weights_gb_per_second": sweeps as f64 * bytes / seconds / 1e9 });
        let beside = || passes_beside(&passes, concurrent, |_| sweep());
        json!({
            "one_thread": rate(best_seconds(self.repeats, || one.install(sweep)), 1),
            "all_threads": rate(best_seconds(self.repeats, sweep), 1),
            "side_by_side": rate(best_seconds(self.repeats, beside), passes.len()),
        })
    }
}

/// GB/s of a plain sum over `data` (512 MB of host memory) split between `threads` threads (best
/// of 3).
fn read_bandwidth(data: &[u64], threads: usize) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("threads");
    let chunk = data.len().div_ceil(threads);
    let seconds = best_seconds(3, || {
        let part = |c: &[u64]| c.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        std::hint::black_box(
            pool.install(|| data.par_chunks(chunk).map(part).reduce(|| 0, u64::wrapping_add)),
        );
    });
    (data.len() * 8) as f64 / seconds / 1e9
}
