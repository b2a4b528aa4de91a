//! The preservation–memorization objective and its closed-form solutions (paper §3; algo §5), in
//! f64 with faer.
//!
//! Column convention: keys `K ∈ R^{d_in×B}`, residuals `R = V − W₀K ∈ R^{d_out×B}`, key second
//! moment `C ∈ R^{d_in×d_in}`; every solution is an update `ΔW ∈ R^{d_out×d_in}`.

use faer::linalg::solvers::Solve;
use faer::{Mat, MatRef, Side};

/// How the new facts `Ŵ K ≈ V` are memorised while `Ŵ K₀ ≈ W₀ K₀` is preserved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Memorization<'a> {
    /// Equality constraint `Ŵ K = V` (ROME, EMMET), with an optional regulariser `μ` on the `B×B`
    /// system: `ΔW = R (Kᵀ C⁻¹ K + μ I)⁻¹ Kᵀ C⁻¹`.
    Equality { mu: f64 },
    /// The official ROME's equality on other keys than the direction's (algo §5.2): exact on
    /// `constraint_keys` `K_p` (`ΔW K_p = R`) with the update in the span of `C⁻¹K`:
    /// `ΔW = R (K_pᵀ C⁻¹ K)⁻¹ (C⁻¹K)ᵀ`. With `K_p = K` it is `Equality { mu: 0 }`.
    Asymmetric { constraint_keys: MatRef<'a, f64> },
    /// Least squares `λ‖Ŵ K₀ − W₀ K₀‖² + ‖Ŵ K − V‖²` (MEMIT): `ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹`.
    LeastSquares { lambda: f64 },
    /// AlphaEdit: the update is confined to the null space of the preserved keys by the projector
    /// `P`: `ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹`, where `K_p K_pᵀ` (`previous`) sums the keys
    /// of edits written in earlier rounds.
    NullSpace { projector: MatRef<'a, f64>, previous: MatRef<'a, f64>, alpha: f64 },
}

/// An update and what the solve had to do to produce it.
#[derive(Debug, Clone)]
pub struct Update {
    /// `ΔW ∈ R^{d_out×d_in}`.
    pub delta: Mat<f64>,
    /// Estimate of the condition number of the system that was solved (the squared ratio of the
    /// largest to smallest Cholesky pivot), when a Cholesky factorisation was used.
    pub condition_estimate: Option<f64>,
    /// Set when the system was singular and a pseudo-inverse had to be used.
    pub used_pseudo_inverse: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SolveError {
    #[error("shapes do not fit: C is {c:?}, keys {keys:?}, residuals {residuals:?}")]
    Shape { c: (usize, usize), keys: (usize, usize), residuals: (usize, usize) },
    #[error("the key second moment C is not positive definite (too few statistics samples for d_in = {0}?)")]
    NotPositiveDefinite(usize),
    #[error("the {0} system is singular")]
    Singular(&'static str),
    #[error("the update has non-finite entries")]
    NonFinite,
}

/// Solves the preservation–memorization objective for one layer (algo §5.1).
pub fn preservation_memorization_update(
    c: MatRef<'_, f64>,
    keys: MatRef<'_, f64>,
    residuals: MatRef<'_, f64>,
    memorization: Memorization<'_>,
) -> Result<Update, SolveError> {
    let d_in = c.nrows();
    if c.ncols() != d_in || keys.nrows() != d_in || residuals.ncols() != keys.ncols() {
        return Err(SolveError::Shape {
            c: (c.nrows(), c.ncols()),
            keys: (keys.nrows(), keys.ncols()),
            residuals: (residuals.nrows(), residuals.ncols()),
        });
    }
    let update = match memorization {
        Memorization::Equality { mu } => equality(c, keys, residuals, mu)?,
        Memorization::Asymmetric { constraint_keys } => {
            asymmetric(c, keys, constraint_keys, residuals)?
        }
        Memorization::LeastSquares { lambda } => least_squares(c, keys, residuals, lambda)?,
        Memorization::NullSpace { projector, previous, alpha } => {
            null_space(projector, previous, keys, residuals, alpha)?
        }
    };
    if update.delta.col_iter().any(|col| col.iter().any(|x| !x.is_finite())) {
        return Err(SolveError::NonFinite);
    }
    Ok(update)
}

/// EMMET / ROME (algo §5.4, §5.2): `Y = C⁻¹K`, `D = KᵀY + μI`, `ΔW = R D⁻¹ Yᵀ`.
fn equality(
    c: MatRef<'_, f64>,
    keys: MatRef<'_, f64>,
    residuals: MatRef<'_, f64>,
    mu: f64,
) -> Result<Update, SolveError> {
    let c_inv_k =
        c.llt(Side::Lower).map_err(|_| SolveError::NotPositiveDefinite(c.nrows()))?.solve(keys);
    let mut d = keys.transpose() * &c_inv_k;
    symmetrize(&mut d);
    for i in 0..d.nrows() {
        d[(i, i)] += mu;
    }
    let (d_inv_yt, condition_estimate, used_pseudo_inverse) =
        solve_symmetric(&d, c_inv_k.transpose(), "KᵀC⁻¹K")?;
    Ok(Update { delta: residuals * d_inv_yt, condition_estimate, used_pseudo_inverse })
}

/// Official ROME (algo §5.2): `Y = C⁻¹K`, `D = K_pᵀY`, `ΔW = R D⁻¹ Yᵀ`. `D` is not symmetric, so
/// it is solved by LU; a singular `D` is an error (ROME's edit cannot be written then).
fn asymmetric(
    c: MatRef<'_, f64>,
    keys: MatRef<'_, f64>,
    constraint: MatRef<'_, f64>,
    residuals: MatRef<'_, f64>,
) -> Result<Update, SolveError> {
    if constraint.nrows() != keys.nrows() || constraint.ncols() != keys.ncols() {
        return Err(SolveError::Shape {
            c: (c.nrows(), c.ncols()),
            keys: (constraint.nrows(), constraint.ncols()),
            residuals: (residuals.nrows(), residuals.ncols()),
        });
    }
    let c_inv_k =
        c.llt(Side::Lower).map_err(|_| SolveError::NotPositiveDefinite(c.nrows()))?.solve(keys);
    let d = constraint.transpose() * &c_inv_k;
    let d_inv_yt = d.partial_piv_lu().solve(c_inv_k.transpose());
    if d_inv_yt.col_iter().any(|col| col.iter().any(|x| !x.is_finite())) {
        return Err(SolveError::Singular("K_pᵀC⁻¹K"));
    }
    Ok(Update { delta: residuals * d_inv_yt, condition_estimate: None, used_pseudo_inverse: false })
}

/// MEMIT (algo §5.3): `(λC + KKᵀ) X = K`, `ΔW = R Xᵀ`.
fn least_squares(
    c: MatRef<'_, f64>,
    keys: MatRef<'_, f64>,
    residuals: MatRef<'_, f64>,
    lambda: f64,
) -> Result<Update, SolveError> {
    let mut a = keys * keys.transpose() + c * faer::Scale(lambda);
    symmetrize(&mut a);
    let (x, condition_estimate, used_pseudo_inverse) = solve_symmetric(&a, keys, "λC + KKᵀ")?;
    Ok(Update { delta: residuals * x.transpose(), condition_estimate, used_pseudo_inverse })
}

/// AlphaEdit (algo §5.5, as jianghoucheng/AlphaEdit `AlphaEdit_main.py` solves it):
/// `(P (KKᵀ + K_pK_pᵀ) + αI) U = P K Rᵀ`, `ΔW = Uᵀ` (the transpose of the spec's form).
fn null_space(
    p: MatRef<'_, f64>,
    previous: MatRef<'_, f64>,
    keys: MatRef<'_, f64>,
    residuals: MatRef<'_, f64>,
    alpha: f64,
) -> Result<Update, SolveError> {
    let mut a = p * (keys * keys.transpose() + previous);
    for i in 0..a.nrows() {
        a[(i, i)] += alpha;
    }
    let rhs = p * (keys * residuals.transpose());
    let u = a.partial_piv_lu().solve(&rhs);
    if u.col_iter().any(|col| col.iter().any(|x| !x.is_finite())) {
        return Err(SolveError::Singular("P(KKᵀ + K_pK_pᵀ) + αI"));
    }
    Ok(Update {
        delta: u.transpose().to_owned(),
        condition_estimate: None,
        used_pseudo_inverse: false,
    })
}

fn symmetrize(a: &mut Mat<f64>) {
    for i in 0..a.nrows() {
        for j in 0..i {
            let m = 0.5 * (a[(i, j)] + a[(j, i)]);
            a[(i, j)] = m;
            a[(j, i)] = m;
        }
    }
}

/// Beyond this condition estimate a Cholesky solve is not trusted (an ill-conditioned system
/// rarely fails to factorise; it silently amplifies rounding instead — algo §5.4).
const MAX_CONDITION: f64 = 1e12;

/// Solves `A X = B` for symmetric `A`: Cholesky if `A` is positive definite, otherwise the
/// pseudo-inverse from its eigendecomposition (logged, and reported in [`Update`]).
fn solve_symmetric(
    a: &Mat<f64>,
    b: MatRef<'_, f64>,
    name: &'static str,
) -> Result<(Mat<f64>, Option<f64>, bool), SolveError> {
    if let Ok(llt) = a.llt(Side::Lower) {
        let pivots: Vec<f64> = (0..a.nrows()).map(|i| llt.L()[(i, i)]).collect();
        let (lo, hi) =
            pivots.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        let condition = (hi / lo).powi(2);
        if condition < MAX_CONDITION {
            return Ok((llt.solve(b), Some(condition), false));
        }
        tracing::warn!("{name} ({}×{}) is numerically singular (condition ≈ {condition:.1e}): solving with its pseudo-inverse", a.nrows(), a.ncols());
    } else {
        tracing::warn!(
            "{name} ({}×{}) is not positive definite: solving with its pseudo-inverse",
            a.nrows(),
            a.ncols()
        );
    }
    let eig = a.self_adjoint_eigen(Side::Lower).map_err(|_| SolveError::Singular(name))?;
    Ok((eig.pseudoinverse() * b, None, true))
}

/// `P = Û Ûᵀ`, the projector onto the eigenvectors of `C` whose eigenvalues are below `threshold`
/// (AlphaEdit's `get_project`: an absolute threshold on the singular values of the normalised C).
pub fn null_space_projector(
    c: MatRef<'_, f64>,
    threshold: f64,
) -> Result<(Mat<f64>, usize), SolveError> {
    let eig = c
        .self_adjoint_eigen(Side::Lower)
        .map_err(|_| SolveError::Singular("C eigendecomposition"))?;
    let small: Vec<usize> = (0..c.nrows()).filter(|&i| eig.S()[i] < threshold).collect();
    let u = Mat::from_fn(c.nrows(), small.len(), |i, j| eig.U()[(i, small[j])]);
    Ok((&u * u.transpose(), small.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random SPD `C = XXᵀ/n + εI`, keys and residuals from a seed.
    fn problem(seed: u64, d_in: usize, d_out: usize, b: usize) -> (Mat<f64>, Mat<f64>, Mat<f64>) {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let n = 4 * d_in;
        let x = Mat::from_fn(d_in, n, |_, _| next());
        let mut c = &x * x.transpose() * faer::Scale(1.0 / n as f64);
        for i in 0..d_in {
            c[(i, i)] += 1e-3;
        }
        let k = Mat::from_fn(d_in, b, |_, _| next());
        let r = Mat::from_fn(d_out, b, |_, _| next());
        (c, k, r)
    }

    fn rel_err(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
        (a - b).norm_l2() / b.norm_l2().max(1e-300)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// EMMET with μ = 0 (and ROME, B = 1) memorises exactly: ΔW K = R.
        #[test]
        fn equality_memorises_exactly(seed in any::<u64>(), d_in in 8usize..40, d_out in 4usize..20, b in 1usize..6) {
            let (c, k, r) = problem(seed, d_in, d_out, b);
            let u = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::Equality { mu: 0.0 }).unwrap();
            prop_assert!(rel_err((&u.delta * &k).as_ref(), r.as_ref()) < 1e-8);
        }

        /// MEMIT's update solves its normal equations ΔW (λC + KKᵀ) = R Kᵀ.
        #[test]
        fn least_squares_solves_normal_equations(seed in any::<u64>(), d_in in 8usize..40, d_out in 4usize..20, b in 1usize..10, lambda in 0.01f64..100.0) {
            let (c, k, r) = problem(seed, d_in, d_out, b);
            let u = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::LeastSquares { lambda }).unwrap();
            let lhs = &u.delta * (&c * faer::Scale(lambda) + &k * k.transpose());
            prop_assert!(rel_err(lhs.as_ref(), (&r * k.transpose()).as_ref()) < 1e-8);
        }

        /// Push-through identity (algo §5.1): EMMET with regulariser μ equals MEMIT with λ = μ.
        #[test]
        fn emmet_with_mu_equals_memit_with_lambda(seed in any::<u64>(), d_in in 8usize..40, d_out in 4usize..20, b in 1usize..10, mu in 0.01f64..10.0) {
            let (c, k, r) = problem(seed, d_in, d_out, b);
            let emmet = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::Equality { mu }).unwrap();
            let memit = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::LeastSquares { lambda: mu }).unwrap();
            prop_assert!(rel_err(emmet.delta.as_ref(), memit.delta.as_ref()) < 1e-8);
        }

        /// ROME's rank-one form `ΔW = r (C⁻¹k)ᵀ / (kᵀC⁻¹k)` is EMMET at batch size 1.
        #[test]
        fn rome_rank_one_is_emmet_at_batch_one(seed in any::<u64>(), d_in in 8usize..40, d_out in 4usize..20) {
            let (c, k, r) = problem(seed, d_in, d_out, 1);
            let emmet = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::Equality { mu: 0.0 }).unwrap();
            let c_inv_k = c.llt(Side::Lower).unwrap().solve(&k);
            let denom = (k.transpose() * &c_inv_k)[(0, 0)];
            let rome = &r * c_inv_k.transpose() * faer::Scale(1.0 / denom);
            prop_assert!(rel_err(emmet.delta.as_ref(), rome.as_ref()) < 1e-8);
        }

        /// Official ROME: exact on the constraint (bare) key, direction from the averaged key; with
        /// the constraint key equal to the averaged one it is EMMET at μ = 0 (r-ROME).
        #[test]
        fn asymmetric_equality_is_exact_on_the_constraint_keys(seed in any::<u64>(), d_in in 8usize..40, d_out in 4usize..20) {
            let (c, k, r) = problem(seed, d_in, d_out, 1);
            let (_, k_p, _) = problem(seed ^ 1, d_in, d_out, 1);
            let kp = &k + &k_p * faer::Scale(0.3);
            let u = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::Asymmetric { constraint_keys: kp.as_ref() }).unwrap();
            prop_assert!(rel_err((&u.delta * &kp).as_ref(), r.as_ref()) < 1e-8);
            let c_inv_k = c.llt(Side::Lower).unwrap().solve(&k);
            let rome = &r * c_inv_k.transpose() * faer::Scale(1.0 / (kp.transpose() * &c_inv_k)[(0, 0)]);
            prop_assert!(rel_err(u.delta.as_ref(), rome.as_ref()) < 1e-8);
            let same = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::Asymmetric { constraint_keys: k.as_ref() }).unwrap();
            let emmet = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::Equality { mu: 0.0 }).unwrap();
            prop_assert!(rel_err(same.delta.as_ref(), emmet.delta.as_ref()) < 1e-8);
        }

        /// AlphaEdit's update lives in the projector's range: ΔW (I − P) = 0, so keys in the
        /// preserved subspace are untouched.
        #[test]
        fn null_space_update_preserves_the_projected_out_keys(seed in any::<u64>(), d_in in 8usize..30, d_out in 4usize..12, b in 1usize..5) {
            let (c, k, r) = problem(seed, d_in, d_out, b);
            let (p, _) = null_space_projector(c.as_ref(), 0.2).unwrap();
            let previous = Mat::<f64>::zeros(d_in, d_in);
            let u = preservation_memorization_update(c.as_ref(), k.as_ref(), r.as_ref(), Memorization::NullSpace { projector: p.as_ref(), previous: previous.as_ref(), alpha: 1.0 }).unwrap();
            let leak = &u.delta * (Mat::<f64>::identity(d_in, d_in) - &p);
            prop_assert!(leak.norm_l2() <= 1e-9 * (1.0 + u.delta.norm_l2()));
        }
    }

    #[test]
    fn duplicate_keys_fall_back_to_the_pseudo_inverse_and_still_memorise() {
        let (c, k, r) = problem(7, 16, 6, 2);
        let k = Mat::from_fn(16, 2, |i, _| k[(i, 0)]);
        let r = Mat::from_fn(6, 2, |i, _| r[(i, 0)]);
        let u = preservation_memorization_update(
            c.as_ref(),
            k.as_ref(),
            r.as_ref(),
            Memorization::Equality { mu: 0.0 },
        )
        .unwrap();
        assert!(u.used_pseudo_inverse);
        assert!(rel_err((&u.delta * &k).as_ref(), r.as_ref()) < 1e-6);
    }

    #[test]
    fn indefinite_c_is_an_error() {
        let c = Mat::<f64>::from_fn(4, 4, |i, j| {
            if i == j {
                if i == 0 {
                    -1.0
                } else {
                    1.0
                }
            } else {
                0.0
            }
        });
        let k = Mat::<f64>::ones(4, 1);
        let r = Mat::<f64>::ones(2, 1);
        let err = preservation_memorization_update(
            c.as_ref(),
            k.as_ref(),
            r.as_ref(),
            Memorization::Equality { mu: 0.0 },
        )
        .unwrap_err();
        assert_eq!(err, SolveError::NotPositiveDefinite(4));
    }
}
