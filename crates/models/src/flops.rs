//! Matrix-product FLOPs the forward passes of this process executed, counted from each pass's
//! shapes (a multiply-add counts 2; padding is counted, since it is computed): every block's weight
//! matrices once per token, the attention scores and mixing `2 · 2 · context · d_model` per token,
//! and the head once per position whose logits were asked for. Element-wise work (norms,
//! activations, softmax) is not counted. Benchmarks read the counter before and after a phase
//! ([`executed`]) to report its rate against the measured GEMM rate (the roofline of the
//! performance issue); code that runs a backward pass adds its estimate with [`add`].

use std::sync::atomic::{AtomicU64, Ordering};

static EXECUTED: AtomicU64 = AtomicU64::new(0);

/// Matrix-product FLOPs counted so far in this process.
pub fn executed() -> f64 {
    EXECUTED.load(Ordering::Relaxed) as f64
}

/// Counts `flops` more (e.g. a backward pass: the input gradients of every product of the forward
/// pass it differentiates cost what that pass did).
pub fn add(flops: f64) {
    EXECUTED.fetch_add(flops.max(0.0).round() as u64, Ordering::Relaxed);
}
