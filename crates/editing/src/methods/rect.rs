//! RECT (Gu et al., EMNLP 2024, arXiv 2401.04700, "RElative Change in weighT"): of each solved
//! update, only the `rect_keep_percent` % of entries with the largest relative change
//! `|ΔWᵢⱼ| / (|Wᵢⱼ| + ε)` are written; the others are set to zero. The paper keeps the top 20 %.

use faer::{Mat, MatRef};

use super::Restrain;
use crate::error::{EditError, Result};

/// Guards the relative change against zero weights.
const EPSILON: f64 = 1e-8;

pub fn restrain(r: &Restrain<'_>) -> Result<Mat<f64>> {
    let percent = r.hparams.rect_keep_percent;
    if !(0.0..=100.0).contains(&percent) {
        return Err(EditError::Input(format!(
            "rect_keep_percent must lie in 0..=100, found {percent}"
        )));
    }
    let mask = kept_mask(r.current, r.update.as_ref(), percent);
    let cols = r.update.ncols();
    Ok(Mat::from_fn(r.update.nrows(), cols, |i, j| {
        if mask[i * cols + j] {
            r.update[(i, j)]
        } else {
            0.0
        }
    }))
}

/// Row-major: whether each entry of `update` is among the `percent` % with the largest relative
/// change to `weight`; ties go to the earlier position, so exactly [`kept_entries`] are.
pub fn kept_mask(weight: MatRef<'_, f64>, update: MatRef<'_, f64>, percent: f64) -> Vec<bool> {
    let (rows, cols) = (update.nrows(), update.ncols());
    let relative: Vec<f64> = (0..rows * cols)
        .map(|n| {
            let (i, j) = (n / cols, n % cols);
            update[(i, j)].abs() / (weight[(i, j)].abs() + EPSILON)
        })
        .collect();
    let mut order: Vec<usize> = (0..rows * cols).collect();
    order.sort_by(|&a, &b| relative[b].total_cmp(&relative[a]).then(a.cmp(&b)));
    let mut mask = vec![false; rows * cols];
    for &n in &order[..kept_entries(rows * cols, percent)] {
        mask[n] = true;
    }
    mask
}

/// How many of `n` entries `percent` % keeps (rounded to the nearest).
pub fn kept_entries(n: usize, percent: f64) -> usize {
    ((n as f64 * percent / 100.0).round() as usize).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hparams::MethodHparams;
    use proptest::prelude::*;

    fn hparams(percent: f64) -> MethodHparams {
        let yaml = format!("layer: 0\nspread_layers: [0]\nrect_keep_percent: {percent}\n");
        serde_norway::from_str(&yaml).unwrap()
    }

    fn apply(w: MatRef<'_, f64>, update: &Mat<f64>, percent: f64) -> Mat<f64> {
        let h = hparams(percent);
        let r = Restrain { hparams: &h, original: w, current: w, update: update.clone() };
        restrain(&r).unwrap()
    }

    proptest! {
        /// Exactly the top-k % entries by relative change are kept, unchanged, the others are
        /// zero, and every kept entry's relative change is at least every dropped one's.
        #[test]
        fn keeps_exactly_the_top_k_percent(
            w in prop::collection::vec(-2.0f64..2.0, 24),
            u in prop::collection::vec(-1.0f64..1.0, 24),
            percent in 0.0f64..=100.0,
        ) {
            let w = Mat::from_fn(4, 6, |i, j| w[i * 6 + j]);
            let update = Mat::from_fn(4, 6, |i, j| u[i * 6 + j]);
            let mask = kept_mask(w.as_ref(), update.as_ref(), percent);
            prop_assert_eq!(mask.iter().filter(|&&m| m).count(), kept_entries(24, percent));
            let written = apply(w.as_ref(), &update, percent);
            let rel = |n: usize| update[(n / 6, n % 6)].abs() / (w[(n / 6, n % 6)].abs() + EPSILON);
            let (mut min_kept, mut max_dropped) = (f64::INFINITY, 0.0f64);
            for (n, &kept) in mask.iter().enumerate() {
                let want = if kept { update[(n / 6, n % 6)] } else { 0.0 };
                prop_assert_eq!(written[(n / 6, n % 6)], want);
                if kept {
                    min_kept = min_kept.min(rel(n));
                } else {
                    max_dropped = max_dropped.max(rel(n));
                }
            }
            prop_assert!(min_kept >= max_dropped);
        }
    }

    /// With the knob at 100 % RECT writes MEMIT's update as solved.
    #[test]
    fn at_one_hundred_percent_it_is_memit() {
        let w = Mat::from_fn(3, 5, |i, j| (i as f64 - j as f64) * 0.3);
        let update = Mat::from_fn(3, 5, |i, j| ((i * 5 + j) as f64).cos());
        assert_eq!(apply(w.as_ref(), &update, 100.0), update);
    }

    /// A hand-made case: relative changes 10, 1, 0.1, 4 → keeping 50 % keeps the first and last.
    #[test]
    fn keeps_the_largest_relative_changes_not_the_largest_changes() {
        let w = Mat::from_fn(1, 4, |_, j| [0.1, 2.0, 10.0, 0.5][j]);
        let update = Mat::from_fn(1, 4, |_, j| [1.0, 2.0, 1.0, 2.0][j]);
        let kept = apply(w.as_ref(), &update, 50.0);
        assert_eq!(kept, Mat::from_fn(1, 4, |_, j| [1.0, 0.0, 0.0, 2.0][j]));
        assert!(restrain(&Restrain {
            hparams: &hparams(120.0),
            original: w.as_ref(),
            current: w.as_ref(),
            update
        })
        .is_err());
    }
}
