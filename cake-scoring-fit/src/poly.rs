//! Polynomial least squares on the normalised layer index `x in [0, 1]`.
//!
//! Fitting directly in the monomial basis `1, x, x^2, ...` gives an ill-conditioned
//! Vandermonde matrix on [0, 1] (condition number around 1e7 at degree 8). The fit is
//! therefore solved in the shifted Chebyshev basis `T_k(2x - 1)`, whose columns are close to
//! orthogonal on a layer grid, with `faer`'s column-pivoted Householder QR least-squares
//! solver (no normal equations, which would square the condition number). The Chebyshev
//! coefficients are then converted exactly to ascending monomial coefficients (the conversion
//! matrix has small integer entries), because that is the form the score-function file stores.

use faer::Mat;
use faer::linalg::solvers::SolveLstsq;
use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};

/// Highest polynomial degree the crate fits.
pub const MAX_DEGREE: usize = 8;

/// A polynomial `p(x) = sum_i coefficients[i] * x^i` (ascending powers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Poly {
    /// Ascending monomial coefficients `c_0, c_1, ...`.
    pub coefficients: Vec<f64>,
}

impl Poly {
    /// Degree (number of coefficients minus one; 0 for an empty polynomial).
    pub fn degree(&self) -> usize {
        self.coefficients.len().saturating_sub(1)
    }

    /// Evaluates `p(x)` by Horner's rule.
    pub fn eval(&self, x: f64) -> f64 {
        self.coefficients
            .iter()
            .rev()
            .fold(0.0, |acc, &c| acc * x + c)
    }
}

/// Monomial coefficients (ascending) of the shifted Chebyshev polynomials `T_k(2x - 1)` for
/// `k = 0..=degree`, by `T_{k+1} = 2 t T_k - T_{k-1}` with `t = 2x - 1`.
fn shifted_chebyshev_monomials(degree: usize) -> Vec<Vec<f64>> {
    let mut t: Vec<Vec<f64>> = vec![vec![1.0]];
    if degree >= 1 {
        t.push(vec![-1.0, 2.0]);
    }
    for k in 1..degree {
        let mut next = vec![0.0; k + 2];
        for (i, &c) in t[k].iter().enumerate() {
            // 2 * (2x - 1) * c x^i
            next[i] -= 2.0 * c;
            next[i + 1] += 4.0 * c;
        }
        for (i, &c) in t[k - 1].iter().enumerate() {
            next[i] -= c;
        }
        t.push(next);
    }
    t
}

/// Least-squares polynomial of the given degree (0..=[`MAX_DEGREE`]) through `(xs[i], ys[i])`,
/// `xs` in [0, 1]. Needs at least `degree + 1` distinct `x` values.
pub fn fit_polynomial(xs: &[f64], ys: &[f64], degree: usize) -> Result<Poly> {
    if degree > MAX_DEGREE {
        return Err(FitError::BadDegree(degree));
    }
    if xs.len() != ys.len() {
        return Err(FitError::InvalidValue(format!(
            "{} x values but {} y values",
            xs.len(),
            ys.len()
        )));
    }
    if let Some(v) = xs.iter().chain(ys).find(|v| !v.is_finite()) {
        return Err(FitError::InvalidValue(format!("non-finite fit input {v}")));
    }
    if let Some(x) = xs.iter().find(|x| !(-1e-12..=1.0 + 1e-12).contains(*x)) {
        return Err(FitError::InvalidValue(format!(
            "x = {x} is outside the domain [0, 1]"
        )));
    }
    let distinct = count_distinct(xs);
    if distinct < degree + 1 {
        return Err(FitError::NotEnoughData(format!(
            "a degree-{degree} fit needs at least {} distinct layer positions, got {distinct}",
            degree + 1
        )));
    }
    let n = xs.len();
    // [n, degree + 1] design matrix in the shifted Chebyshev basis.
    let mut a = Mat::<f64>::zeros(n, degree + 1);
    for (i, &x) in xs.iter().enumerate() {
        let t = 2.0 * x - 1.0;
        let (mut prev, mut cur) = (1.0, t);
        a[(i, 0)] = 1.0;
        if degree >= 1 {
            a[(i, 1)] = t;
        }
        for k in 2..=degree {
            let next = 2.0 * t * cur - prev;
            a[(i, k)] = next;
            (prev, cur) = (cur, next);
        }
    }
    let b = Mat::<f64>::from_fn(n, 1, |i, _| ys[i]); // [n, 1]
    let cheb = a.col_piv_qr().solve_lstsq(&b); // [degree + 1, 1]
    let basis = shifted_chebyshev_monomials(degree);
    let mut coefficients = vec![0.0; degree + 1];
    for (k, poly) in basis.iter().enumerate() {
        for (i, &c) in poly.iter().enumerate() {
            coefficients[i] += cheb[(k, 0)] * c;
        }
    }
    if coefficients.iter().any(|c| !c.is_finite()) {
        return Err(FitError::Linalg(
            "least-squares solution is not finite".into(),
        ));
    }
    Ok(Poly { coefficients })
}

/// Number of distinct values (exact comparison after sorting).
pub(crate) fn count_distinct(xs: &[f64]) -> usize {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v.len()
}

/// Mean squared error of `poly` on the points (0 when there are none).
pub fn mean_squared_error(poly: &Poly, xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    if n == 0 {
        return 0.0;
    }
    xs.iter()
        .zip(ys)
        .map(|(&x, &y)| (poly.eval(x) - y).powi(2))
        .sum::<f64>()
        / n as f64
}
