//! The memory plan `editbench run --dry-run` prints: per model and phase, an estimate of the peak
//! device and host memory of the largest objects (weights in their dtype, a statistics pass, the
//! target search's caches, the kept inputs of a spread edit's keys, the solves in f64, scoring's
//! logits), and a warning past a given limit.
//!
//! Estimates, not measurements: they count the large buffers named below and nothing else.

use editbench_editing::keys::KEPT_BYTES;
use editbench_editing::targets::{search_row_bytes, SEARCH_BYTES};
use editbench_models::ModelDims;

const GB: f64 = 1e9;
/// Bytes of an f32 and an f64.
const F32: u64 = 4;
const F64: u64 = 8;
/// Tokens per scoring pass (editing::score), of which logits are computed at the scored ones: about
/// a quarter for CounterFact (a 1–3-token target after a ~12-token prompt).
const SCORED_TOKENS: u64 = 4096 / 4;
/// The target search assumed: edits searched at once (on the CPU two passes of 8 side by side),
/// prompts per edit (10 context templates, the bare prompt, the KL prompt), tokens per prompt,
/// tokens a step recomputes per prompt (from the subject's last on) and scored positions per prompt
/// (the target's tokens). Against `bench targets` on SmolLM2 (16 edits): estimate 2.4 GB, measured
/// peak RSS 2.0 GB.
const SEARCH_EDITS: u64 = 16;
const SEARCH_PROMPTS: u64 = 12;
const SEARCH_TOKENS: usize = 24;
const SEARCH_RECOMPUTED: usize = 4;
const SEARCH_SCORED: usize = 3;
/// Sentences per edit whose keys are read (10 context templates) and per padded 64-sentence pass.
const KEY_SENTENCES: u64 = 10;
const KEY_CHUNK: u64 = 64;

/// What a plan is made for.
#[derive(Debug, Clone)]
pub struct Workload {
    pub dims: ModelDims,
    /// Layers edited by any cell (each needs C in f64).
    pub edited_layers: u64,
    /// The largest batch of edits solved at once.
    pub max_batch: u64,
    /// Padded tokens per statistics pass.
    pub stats_tokens: u64,
    /// On the CPU backend device memory is host memory.
    pub on_cpu: bool,
    /// Bytes per weight on the device (4 for f32, 2 for f16/bf16).
    pub weight_bytes: u64,
}

/// One phase's estimate, in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: &'static str,
    pub device: u64,
    pub host: u64,
}

/// Per phase: device memory (weights plus the phase's buffers) and host memory (the f64 objects of
/// the solves and statistics; on the CPU backend the device's too).
pub fn plan(w: &Workload) -> Vec<Phase> {
    let d = &w.dims;
    let (dm, ff, v) = (d.hidden_size as u64, d.intermediate_size as u64, d.vocab_size as u64);
    let weights = d.parameters * w.weight_bytes;
    // A statistics pass: per token the residual stream (3 × d) and the MLP's gate/up/act (3 × d_ff),
    // the captured keys of each edited layer, and the d_ff × d_ff Gram of a batch per layer.
    let stats_device = w.stats_tokens * (3 * dm + 3 * ff) * F32
        + w.edited_layers * (w.stats_tokens * ff + ff * ff) * F32;
    let covariances = w.edited_layers * ff * ff * F64;
    // The search (editing::targets::search_row_bytes) at CounterFact's lengths, capped where the
    // chunking caps it: longer prompts are searched in smaller chunks.
    let rows = SEARCH_EDITS * SEARCH_PROMPTS;
    let row = search_row_bytes(d, 0, SEARCH_TOKENS, SEARCH_RECOMPUTED, SEARCH_SCORED);
    let search_device = (rows * row).min(SEARCH_BYTES);
    // Keys of a spread edit, read bottom-up: each template sentence's and bare prompt's input to the
    // next edited block is kept (at most `KEPT_BYTES` per set of sentences), plus one pass of 64.
    let kept =
        |sentences: u64| (sentences * SEARCH_TOKENS as u64 * dm * F32).min(KEPT_BYTES as u64);
    let keys_device = kept(w.max_batch * KEY_SENTENCES)
        + kept(w.max_batch)
        + KEY_CHUNK * SEARCH_TOKENS as u64 * (3 * dm + 3 * ff) * F32;
    // The solves: C of every edited layer, a d_ff × d_ff system and its factor, keys and residuals,
    // EMMET's C⁻¹K and the B × B system with its factor.
    let b = w.max_batch;
    let solve_host = covariances + 2 * ff * ff * F64 + (2 * ff + dm) * b * F64 + 2 * b * b * F64;
    let score_device = 2 * SCORED_TOKENS * v * F32;
    let host = |device: u64, own: u64| if w.on_cpu { device + own } else { own };
    let largest_tensor = v * dm * w.weight_bytes;
    vec![
        Phase {
            name: "weights",
            device: weights,
            host: if w.on_cpu { weights } else { largest_tensor },
        },
        Phase {
            name: "statistics",
            device: weights + stats_device,
            host: host(weights + stats_device, covariances),
        },
        Phase {
            name: "target search",
            device: weights + search_device,
            host: host(weights + search_device, 0),
        },
        Phase { name: "keys", device: weights + keys_device, host: host(weights + keys_device, 0) },
        Phase { name: "solve (f64, host)", device: weights, host: host(weights, solve_host) },
        Phase {
            name: "scoring",
            device: weights + score_device,
            host: host(weights + score_device, 0),
        },
    ]
}

/// The plan as text, with a warning for every phase past `limit_gb` (device and host alike).
pub fn describe(label: &str, phases: &[Phase], on_cpu: bool, limit_gb: Option<f64>) -> String {
    let mut out = format!(
        "memory plan for {label} (estimates{}):\n",
        if on_cpu { "; cpu: device memory is host memory" } else { "" }
    );
    for p in phases {
        out += &format!(
            "  {:<18} device {:>8.2} GB   host {:>8.2} GB\n",
            p.name,
            p.device as f64 / GB,
            p.host as f64 / GB
        );
    }
    let peak = phases.iter().map(|p| p.device.max(p.host)).max().unwrap_or(0) as f64 / GB;
    out += &format!("  peak {peak:.2} GB\n");
    if let Some(limit) = limit_gb {
        for p in phases.iter().filter(|p| p.device.max(p.host) as f64 / GB > limit) {
            out += &format!(
                "  warning: {} needs about {:.2} GB, more than --memory {limit} GB\n",
                p.name,
                p.device.max(p.host) as f64 / GB
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims() -> ModelDims {
        ModelDims {
            num_layers: 2,
            hidden_size: 4,
            intermediate_size: 8,
            vocab_size: 10,
            max_positions: 16,
            parameters: 1000,
        }
    }

    /// Every phase against numbers worked out by hand for d = 4, d_ff = 8, V = 10, 2 layers.
    #[test]
    fn the_arithmetic_matches_hand_computed_cases() {
        let w = Workload {
            dims: dims(),
            edited_layers: 1,
            max_batch: 3,
            stats_tokens: 5,
            on_cpu: false,
            weight_bytes: 4,
        };
        let p = plan(&w);
        // Weights: 1,000 parameters × 4 B; host: the largest tensor, 10 × 4 × 4 B.
        assert_eq!(p[0], Phase { name: "weights", device: 4000, host: 160 });
        // Statistics: 5 × (12 + 24) × 4 = 720, keys 5 × 8 × 4 = 160, Gram 64 × 4 = 256; C: 64 × 8.
        assert_eq!(p[1], Phase { name: "statistics", device: 4000 + 720 + 160 + 256, host: 512 });
        // Search: 16 × 12 = 192 rows of 24 tokens, K/V 192 × 24 × 2 layers × 2 × 4 × 4 B = 294,912;
        // backward activations 192 × 4 × 2 × (24 + 24) × 4 = 294,912; four vocabulary rows at
        // 192 × 3 positions, 4 × 576 × 10 × 4 = 92,160.
        assert_eq!(p[2].device, 4000 + 294_912 + 294_912 + 92_160);
        // Keys: 3 edits × 10 templates × 24 tokens × 4 × 4 B = 11,520 kept, the bare prompts
        // 3 × 24 × 4 × 4 = 1,152, one pass of 64 × 24 tokens × (12 + 24) × 4 = 221,184.
        assert_eq!(p[3], Phase { name: "keys", device: 4000 + 11_520 + 1_152 + 221_184, host: 0 });
        // Solve: C 512 + system and factor 1,024 + keys/C⁻¹K/residuals (16 + 4) × 3 × 8 = 480 + B² 2 × 9 × 8 = 144.
        assert_eq!(p[4].host, 512 + 1024 + 480 + 144);
        // Scoring: logits at 1,024 positions, 2 × 1,024 × 10 × 4.
        assert_eq!(p[5].device, 4000 + 81_920);
        // On the CPU the host holds the device's buffers too.
        let cpu = plan(&Workload { on_cpu: true, ..w.clone() });
        assert_eq!(cpu[4].host, 4000 + 2160);
        // Half-precision weights: 1,000 × 2 B on the device, the largest tensor 10 × 4 × 2 B.
        let half = plan(&Workload { weight_bytes: 2, ..w.clone() });
        assert_eq!(half[0], Phase { name: "weights", device: 2000, host: 80 });
        assert_eq!(half[5].device, 2000 + 81_920);
        // The kept inputs stop at 1 GiB per set of sentences: LLaMA-2's width at B = 10,000.
        let big = ModelDims {
            parameters: 0,
            intermediate_size: 11008,
            hidden_size: 4096,
            vocab_size: 32000,
            num_layers: 32,
            max_positions: 4096,
        };
        let keys = &plan(&Workload { dims: big, max_batch: 10_000, ..w })[3];
        assert_eq!(keys.device, 2 * (1 << 30) + 64 * 24 * (3 * 4096 + 3 * 11008) * 4);
    }

    #[test]
    fn a_limit_is_warned_about_per_phase() {
        let big = ModelDims {
            parameters: 7_000_000_000,
            intermediate_size: 11008,
            hidden_size: 4096,
            vocab_size: 32000,
            num_layers: 32,
            max_positions: 4096,
        };
        let w = Workload {
            dims: big,
            edited_layers: 5,
            max_batch: 10_000,
            stats_tokens: 4096,
            on_cpu: true,
            weight_bytes: 4,
        };
        let text = describe("llama", &plan(&w), true, Some(24.0));
        assert!(
            text.contains("warning: weights needs about 28.00 GB, more than --memory 24 GB"),
            "{text}"
        );
        assert!(!describe("llama", &plan(&w), true, Some(100.0)).contains("warning"));
    }
}
