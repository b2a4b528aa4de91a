//! PRUNE (Ma et al., ICLR 2025, arXiv 2405.16821; its public `reduce_weights` and EasyEdit's
//! `func_logn`): after every round, the accumulated update `ΔW = W − W₀` is written back with its
//! singular values `σᵢ ≥ σ_max(W₀)` replaced by `log_b σᵢ − log_b σ_max(W₀) + σ_max(W₀)`, so that
//! no direction of the edits grows past the original weight's largest by more than a logarithm.
//! The reference restrains with base 1.2 (`log1_2`); editbench's `prune_log_base`.

use faer::{Mat, MatRef};

use super::Restrain;
use crate::error::{EditError, Result};

/// The update that makes the layer's accumulated change `current + update − original` restrained.
pub fn restrain(r: &Restrain<'_>) -> Result<Mat<f64>> {
    let accumulated = r.current - r.original + &r.update;
    let restrained =
        restrain_accumulated(r.original, accumulated.as_ref(), r.hparams.prune_log_base)?;
    Ok(r.original + restrained - r.current)
}

/// `ΔW` with its singular values above `σ_max(W₀)` restrained (the rest as they were).
pub fn restrain_accumulated(
    original: MatRef<'_, f64>,
    accumulated: MatRef<'_, f64>,
    base: f64,
) -> Result<Mat<f64>> {
    let svd_error = |e| EditError::Input(format!("PRUNE: singular value decomposition: {e:?}"));
    let limit = original.singular_values().map_err(svd_error)?.first().copied().unwrap_or(0.0);
    let svd = accumulated.thin_svd().map_err(svd_error)?;
    let sigma: Vec<f64> = (0..svd.S().dim()).map(|i| svd.S()[i]).collect();
    let restrained: Vec<f64> = sigma.iter().map(|&s| restrained_value(s, limit, base)).collect();
    if restrained == sigma {
        return Ok(accumulated.to_owned());
    }
    let (u, v) = (svd.U(), svd.V());
    let scaled = Mat::from_fn(u.nrows(), u.ncols(), |i, j| u[(i, j)] * restrained[j]);
    Ok(scaled * v.transpose())
}

/// `σ` itself below `limit`; `log_b σ − log_b limit + limit` from it on (continuous at `limit`).
pub fn restrained_value(sigma: f64, limit: f64, base: f64) -> f64 {
    if sigma >= limit && limit > 0.0 {
        (sigma.ln() - limit.ln()) / base.ln() + limit
    } else {
        sigma
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hparams::MethodHparams;
    use proptest::prelude::*;

    fn matrix(rows: usize, cols: usize, seed: u64, scale: f64) -> Mat<f64> {
        Mat::from_fn(rows, cols, |i, j| {
            let x = ((i * 31 + j * 17) as f64 + seed as f64 * 0.618).sin() * 43758.5453;
            (x - x.floor() - 0.5) * scale
        })
    }

    fn hparams(base: f64) -> MethodHparams {
        let yaml = format!("layer: 0\nspread_layers: [0]\nprune_log_base: {base}\n");
        serde_norway::from_str(&yaml).unwrap()
    }

    proptest! {
        /// Every restrained singular value is PRUNE's `σ_max(W₀) + log_b(σ / σ_max(W₀))`, and
        /// those below `σ_max(W₀)` are kept. (It shrinks `σ` only where `σ_max(W₀) · ln b ≥ 1`;
        /// just above a smaller `σ_max(W₀)` it enlarges it, as the reference's formula does.)
        #[test]
        fn restrained_singular_values_obey_the_bound(
            seed in 0u64..1000, scale in 0.01f64..50.0, base in 1.05f64..4.0,
        ) {
            let (w0, delta) = (matrix(7, 11, seed, 1.0), matrix(7, 11, seed + 1, scale));
            let limit = w0.singular_values().unwrap()[0];
            let before = delta.singular_values().unwrap();
            let after = restrain_accumulated(w0.as_ref(), delta.as_ref(), base)
                .unwrap()
                .singular_values()
                .unwrap();
            let mut expected: Vec<f64> =
                before.iter().map(|&s| restrained_value(s, limit, base)).collect();
            expected.sort_by(|a, b| b.total_cmp(a));
            for (&got, (&want, &old)) in after.iter().zip(expected.iter().zip(&before)) {
                prop_assert!((got - want).abs() <= 1e-9 * (1.0 + want), "{got} vs {want}");
                if limit * base.ln() >= 1.0 {
                    prop_assert!(got <= old + 1e-9 * (1.0 + old));
                }
            }
            for (&s, &old) in after.iter().zip(&before).filter(|(_, &old)| old < limit) {
                prop_assert!((s - old).abs() <= 1e-9 * (1.0 + old));
            }
        }

        /// Below the original's largest singular value nothing is restrained: PRUNE writes
        /// exactly the update MEMIT solved.
        #[test]
        fn a_small_update_is_written_as_solved(seed in 0u64..1000, share in 0.01f64..0.99) {
            let w0 = matrix(6, 9, seed, 1.0);
            let limit = w0.singular_values().unwrap()[0];
            let update = matrix(6, 9, seed + 3, 1.0);
            let top = update.singular_values().unwrap()[0];
            let update = &update * faer::Scale(share * limit / top);
            let h = hparams(1.2);
            let r = Restrain { hparams: &h, original: w0.as_ref(), current: w0.as_ref(), update };
            let written = restrain(&r).unwrap();
            prop_assert!((&written - &r.update).norm_l2() <= 1e-9 * (1.0 + r.update.norm_l2()));
        }
    }

    /// The accumulated change, not this round's update, is what PRUNE restrains: after writing,
    /// `W − W₀` has its largest singular value at the bound.
    #[test]
    fn the_accumulated_change_is_restrained() {
        let w0 = matrix(5, 8, 1, 1.0);
        let limit = w0.singular_values().unwrap()[0];
        let current = &w0 + matrix(5, 8, 2, 3.0 * limit);
        let update = matrix(5, 8, 3, 3.0 * limit);
        let h = hparams(1.2);
        let r = Restrain { hparams: &h, original: w0.as_ref(), current: current.as_ref(), update };
        let written = restrain(&r).unwrap();
        let change = &current + &written - &w0;
        let top = (&current + &r.update - &w0).singular_values().unwrap()[0];
        let got = change.singular_values().unwrap()[0];
        assert!(top > limit);
        assert!((got - restrained_value(top, limit, 1.2)).abs() < 1e-9 * top, "{got}");
    }
}
