//! Run-time choice of the burn backend (`--backend cpu|wgpu|cuda`).
//!
//! Code that runs on a backend is written once, generic over it, as a [`BackendTask`]; the task is
//! given the autodiff-wrapped backend so it can use both `B` (gradients) and `B::InnerBackend`.

use std::fmt;
use std::str::FromStr;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;

use crate::error::{ModelError, Result};

/// The CPU backend: burn's ndarray backend in f32.
pub type Cpu = burn::backend::NdArray<f32>;

/// How many independent passes (statistics batches, scoring passes, target-search chunks) to run
/// side by side.
/// On the CPU backend one per rayon thread: a pass runs its element-wise operations on one thread
/// and only its GEMMs on all, so with one pass at a time about half the cores' time is idle; side
/// by side, work stealing hands each pass's GEMM work to whichever thread is free. Elsewhere 1 (a
/// GPU runs each pass's operations in parallel already).
pub fn concurrent_passes<B: burn::tensor::backend::Backend>(device: &B::Device) -> usize {
    if B::name(device).contains("ndarray") {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// Runs `pass` on every item, `concurrent` items at a time side by side, and hands each result to
/// `take` in the items' order, so what `take` accumulates does not depend on which pass finished
/// first. Stops at the first error.
///
/// Side by side, each pass runs alone in a rayon pool of one thread, so its matrix products run on
/// that thread: the passes keep one core each busy, and no pass ever waits for a worker that another
/// pass holds. Passes must not share rayon's global workers: a pass may run an autodiff backward,
/// which holds its graph's lock while its products wait for workers, and every backward ends by
/// locking all graphs to free unused nodes; a global worker that ran a pass could block on that lock
/// (or steal another pass while waiting inside its own product), leaving the products without
/// workers: a deadlock, seen when two threads searched targets at once. A pass alone runs on the
/// caller's thread with the global pool's workers for its products.
pub fn side_by_side<T: Sync, R: Send, E: Send>(
    items: &[T],
    concurrent: usize,
    pass: impl Fn(&T) -> std::result::Result<R, E> + Sync,
    mut take: impl FnMut(&T, R),
) -> std::result::Result<(), E> {
    let pools = one_thread_pools(concurrent.min(items.len()));
    for group in items.chunks(concurrent.max(1)) {
        let results: Vec<std::result::Result<R, E>> = match group {
            [item] => vec![pass(item)],
            _ => std::thread::scope(|s| {
                let running: Vec<_> = group
                    .iter()
                    .zip(&pools)
                    .map(|(item, pool)| s.spawn(|| pool.install(|| pass(item))))
                    .collect();
                running
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                    .collect()
            }),
        };
        for (item, result) in group.iter().zip(results) {
            take(item, result?);
        }
    }
    Ok(())
}

/// `n` rayon pools of one thread each (none when `n` ≤ 1: a lone pass needs none).
fn one_thread_pools(n: usize) -> Vec<rayon::ThreadPool> {
    let n = if n > 1 { n } else { 0 };
    (0..n)
        .map(|i| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .thread_name(move |_| format!("pass-{i}"))
                .build()
                .expect("a thread for a pass")
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    #[default]
    Cpu,
    Wgpu,
    Cuda,
}

impl FromStr for BackendKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(ModelError::Input(format!("unknown backend `{other}` (cpu, wgpu, cuda)"))),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

/// Work that can run on any backend.
pub trait BackendTask {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

impl BackendKind {
    /// Runs `task` on this backend's default device.
    pub fn run<T: BackendTask>(self, task: T) -> Result<T::Output> {
        match self {
            Self::Cpu => Ok(task.run::<Autodiff<Cpu>>(Default::default())),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(task.run::<Autodiff<burn::backend::Wgpu<f32>>>(Default::default())),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(task.run::<Autodiff<burn::backend::Cuda<f32>>>(Default::default())),
            #[allow(unreachable_patterns)]
            other => Err(other.compiled().expect_err("the backends compiled in are matched above")),
        }
    }

    /// Whether this build has the backend: an error naming the cargo feature to build with if not.
    pub fn compiled(self) -> Result<()> {
        match self {
            Self::Cpu => Ok(()),
            Self::Wgpu if cfg!(feature = "wgpu") => Ok(()),
            Self::Cuda if cfg!(feature = "cuda") => Ok(()),
            Self::Wgpu => Err(ModelError::BackendNotCompiled("wgpu")),
            Self::Cuda => Err(ModelError::BackendNotCompiled("cuda")),
        }
    }
}
