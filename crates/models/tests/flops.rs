//! The FLOP counter (`editbench_models::flops`): each forward pass adds what its shapes imply —
//! every block's weight products, the attention over the columns it sees, the head where logits
//! are asked for. One test: the counter is per process and tests run side by side.

use editbench_models::{flops, Hooks, KvCache, LanguageModel, Padding, PromptBatch};

mod common;
use common::fixture;

type Cpu = editbench_models::backend::Cpu;

fn counted(f: impl FnOnce()) -> f64 {
    let before = flops::executed();
    f();
    flops::executed() - before
}

fn close(counted: f64, by_hand: f64) {
    // The model's per-block weights include its norms (2 × 64 of 34,944 here).
    assert!((counted - by_hand).abs() <= 0.01 * by_hand, "counted {counted}, by hand {by_hand}");
}

#[test]
fn every_pass_counts_its_blocks_attention_and_head() {
    let model = LanguageModel::<Cpu>::load(&fixture("tiny-llama"), &Default::default()).unwrap();
    // tiny-llama: d = 64, d_ff = 96, 4 heads of 16, 2 layers, vocab 128, untied head.
    let (d, ff, v, layers) = (64.0, 96.0, 128.0, 2.0);
    // Per token and block: q, k, v, o (d × d) and gate, up, down (d × d_ff); a multiply-add is 2.
    let block = |context: f64| 2.0 * (4.0 * d * d + 3.0 * d * ff) + 4.0 * context * d;
    let head = 2.0 * d * v;
    // 2 rows padded to 5 columns: the padding is computed, so counted.
    let batch = model.batch(&[vec![1, 2, 3, 4, 5], vec![6, 7, 8]], Padding::Right).unwrap();
    close(
        counted(|| drop(model.forward(&batch, &Hooks::default()))),
        10.0 * (layers * block(5.0) + head),
    );
    let stopped = Hooks { stop_after: Some(0), ..Hooks::default() };
    close(counted(|| drop(model.forward(&batch, &stopped))), 10.0 * block(5.0));
    let three = Hooks { logits_at: Some(vec![0, 4, 7]), ..Hooks::default() };
    close(counted(|| drop(model.forward(&batch, &three))), 10.0 * layers * block(5.0) + 3.0 * head);
    // One more token per row after a cache of 5 columns attends to 6.
    let mut cache = KvCache::default();
    model.forward_cached(&batch, &stopped, Some(&mut cache));
    let mut full = KvCache::default();
    model.forward_cached(&batch, &Hooks::default(), Some(&mut full));
    assert_eq!((cache.columns(0), cache.columns(1), full.columns(1)), (5, 0, 5));
    let next = PromptBatch::step(&batch.offsets, &batch.lengths, 5, &[9, 10], &Default::default());
    close(
        counted(|| drop(model.forward_cached(&next, &Hooks::default(), Some(&mut full)))),
        2.0 * (layers * block(6.0) + head),
    );
    assert_eq!(full.columns(1), 6);
    // The whole-model figure is the same count per token.
    close(model.matmul_flops_per_token(5), layers * block(5.0) + head);
}
