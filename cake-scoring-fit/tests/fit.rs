//! Polynomial fit, degree selection, folds, Spearman and leave-one-dataset-out.

mod common;

use cake_scoring_fit::{
    FitError, Poly, average_ranks, fit_polynomial, fold_assignment, leave_one_dataset_out,
    select_degree_cv, spearman,
};
use common::{row, synthetic_rows};
use proptest::prelude::*;

fn grid(n: usize) -> Vec<f64> {
    (0..n).map(|l| l as f64 / (n - 1) as f64).collect()
}

#[test]
fn recovers_known_coefficients_from_noiseless_samples() {
    // Degree 3: p(x) = 0.02 + 0.06x - 0.15x^2 + 0.12x^3 on 30 layers, each layer seen 4 times.
    let truth = Poly {
        coefficients: vec![0.02, 0.06, -0.15, 0.12],
    };
    let xs: Vec<f64> = grid(30).into_iter().cycle().take(120).collect();
    let ys: Vec<f64> = xs.iter().map(|&x| truth.eval(x)).collect();
    let fit = fit_polynomial(&xs, &ys, 3).unwrap();
    for (got, want) in fit.coefficients.iter().zip(&truth.coefficients) {
        assert!((got - want).abs() < 1e-12, "{:?}", fit.coefficients);
    }
    // A higher degree finds zero extra coefficients.
    let fit = fit_polynomial(&xs, &ys, 6).unwrap();
    assert_eq!(fit.degree(), 6);
    for (i, c) in fit.coefficients.iter().enumerate() {
        let want = truth.coefficients.get(i).copied().unwrap_or(0.0);
        assert!((c - want).abs() < 1e-9, "{:?}", fit.coefficients);
    }
}

#[test]
fn least_squares_by_hand() {
    // Points (0, 0), (0.5, 1), (1, 0) and a line: by symmetry slope 0, intercept = mean 1/3.
    let fit = fit_polynomial(&[0.0, 0.5, 1.0], &[0.0, 1.0, 0.0], 1).unwrap();
    assert!((fit.coefficients[0] - 1.0 / 3.0).abs() < 1e-14 && fit.coefficients[1].abs() < 1e-14);
    // Degree 0 is the mean.
    let fit = fit_polynomial(&[0.0, 1.0], &[2.0, 4.0], 0).unwrap();
    assert_eq!(fit.coefficients.len(), 1);
    assert!((fit.coefficients[0] - 3.0).abs() < 1e-14);
    // Horner evaluation: 1 + 2x + 3x^2 at x = 0.5 -> 2.75.
    assert_eq!(
        Poly {
            coefficients: vec![1.0, 2.0, 3.0]
        }
        .eval(0.5),
        2.75
    );
}

#[test]
fn fit_rejects_bad_input() {
    let xs = grid(5);
    let ys = vec![0.2; 5];
    assert!(matches!(
        fit_polynomial(&xs, &ys, 9),
        Err(FitError::BadDegree(9))
    ));
    assert!(matches!(
        fit_polynomial(&xs, &ys, 5),
        Err(FitError::NotEnoughData(_))
    ));
    assert!(matches!(
        fit_polynomial(&xs, &ys[..4], 1),
        Err(FitError::InvalidValue(_))
    ));
    assert!(matches!(
        fit_polynomial(&[0.0, 1.5], &[0.0, 1.0], 1),
        Err(FitError::InvalidValue(_))
    ));
    assert!(matches!(
        fit_polynomial(&[0.0, f64::NAN], &[0.0, 1.0], 1),
        Err(FitError::InvalidValue(_))
    ));
}

proptest! {
    #[test]
    fn noiseless_fits_are_exact(
        degree in 0usize..=8,
        coefficients in proptest::collection::vec(-2.0f64..2.0, 9),
        extra_layers in 0usize..30,
    ) {
        let truth = Poly { coefficients: coefficients[..=degree].to_vec() };
        let xs = grid(degree + 2 + extra_layers);
        let ys: Vec<f64> = xs.iter().map(|&x| truth.eval(x)).collect();
        let fit = fit_polynomial(&xs, &ys, degree).unwrap();
        prop_assert_eq!(fit.degree(), degree);
        for (got, want) in fit.coefficients.iter().zip(&truth.coefficients) {
            prop_assert!((got - want).abs() < 1e-6, "{:?} vs {:?}", fit.coefficients, truth.coefficients);
        }
        for &x in &xs {
            prop_assert!((fit.eval(x) - truth.eval(x)).abs() < 1e-10);
        }
    }
}

#[test]
fn cross_validation_picks_the_true_degree_on_noisy_data() {
    // Curves with clearly non-zero leading coefficients, noise sd 0.003 on shares ~ 0.03.
    let truths = [
        vec![0.01, 0.04],
        vec![0.05, -0.09, 0.08],
        vec![0.02, 0.06, -0.15, 0.12],
        vec![0.03, 0.2, -1.2, 2.4, -2.0, 0.6],
    ];
    for (seed, coefficients) in truths.into_iter().enumerate() {
        let truth = Poly { coefficients };
        let rows = synthetic_rows(&["a", "b", "c"], 15, 30, &truth, 0.003, seed as u64);
        let sel = select_degree_cv(&rows, 1..=8, 5, 7).unwrap();
        assert_eq!(sel.degree, truth.degree(), "{sel:?}");
        assert_eq!(sel.folds, 5);
        assert_eq!(sel.cv_errors.len(), 8);
        // The truth's CV error is at the noise floor (0.003^2 = 9e-6); one degree less is
        // worse by more than a standard error (what the one-standard-error rule needs).
        let at_truth = sel.cv_errors[&truth.degree()];
        assert!(at_truth < 1.2 * 0.003f64.powi(2), "{sel:?}");
        if truth.degree() > 1 {
            let below = sel.cv_errors[&(truth.degree() - 1)];
            assert!(
                below > at_truth + sel.cv_std_errors[&truth.degree()],
                "{sel:?}"
            );
        }
    }
}

#[test]
fn folds_keep_a_samples_layers_together() {
    let truth = Poly {
        coefficients: vec![0.03],
    };
    let rows = synthetic_rows(&["a", "b"], 11, 12, &truth, 0.0, 0);
    let (folds, k) = fold_assignment(&rows, 5, 42).unwrap();
    assert_eq!(k, 5);
    for (chunk, f) in rows.chunks(12).zip(folds.chunks(12)) {
        assert!(
            f.iter().all(|&x| x == f[0]),
            "sample {} split across folds",
            chunk[0].sample_id
        );
    }
    // 22 samples in 5 folds: sizes 5, 5, 4, 4, 4 samples.
    let mut sizes = [0usize; 5];
    for f in folds.chunks(12) {
        sizes[f[0]] += 1;
    }
    sizes.sort_unstable();
    assert_eq!(sizes, [4, 4, 4, 5, 5]);
    // Deterministic per seed, different across seeds.
    assert_eq!(fold_assignment(&rows, 5, 42).unwrap().0, folds);
    assert_ne!(fold_assignment(&rows, 5, 43).unwrap().0, folds);
    // More folds than samples: one sample per fold.
    let few = synthetic_rows(&["a"], 3, 4, &truth, 0.0, 0);
    assert_eq!(fold_assignment(&few, 10, 0).unwrap().1, 3);
    assert!(
        fold_assignment(&few[..4], 5, 0).is_err(),
        "one sample cannot be cross-validated"
    );
    assert!(fold_assignment(&few, 1, 0).is_err());
}

#[test]
fn selection_rejects_mixed_or_unfittable_rows() {
    let truth = Poly {
        coefficients: vec![0.03],
    };
    let mut rows = synthetic_rows(&["a"], 4, 6, &truth, 0.0, 0);
    assert!(matches!(
        select_degree_cv(&rows, 0..=3, 2, 0),
        Err(FitError::BadDegree(0))
    ));
    assert!(matches!(
        select_degree_cv(&rows, 1..=9, 2, 0),
        Err(FitError::BadDegree(9))
    ));
    // 6 layers support degrees up to 5 only.
    let sel = select_degree_cv(&rows, 1..=8, 2, 0).unwrap();
    assert_eq!(
        sel.cv_errors.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    rows.push(row("a", 0, 6, 0, Some(1), 0.1));
    assert!(matches!(
        select_degree_cv(&rows, 1..=3, 2, 0),
        Err(FitError::Inconsistent(_))
    ));
    rows.pop();
    rows.push(row("a", 9, 7, 0, None, 0.1));
    assert!(matches!(
        select_degree_cv(&rows, 1..=3, 2, 0),
        Err(FitError::Inconsistent(_))
    ));
    assert!(matches!(
        select_degree_cv(&[], 1..=3, 2, 0),
        Err(FitError::NotEnoughData(_))
    ));
}

#[test]
fn spearman_with_average_ranks() {
    assert_eq!(
        average_ranks(&[10.0, 20.0, 20.0, 5.0]),
        vec![2.0, 3.5, 3.5, 1.0]
    );
    assert_eq!(spearman(&[1.0, 2.0, 3.0], &[2.0, 4.0, 9.0]), Some(1.0));
    assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
    // b = [5, 6, 7, 8, 7] -> ranks [1, 2, 3.5, 5, 3.5]; centred a ranks -2..2, b ranks
    // -2, -1, 0.5, 2, 0.5: cov 8, var_a 10, var_b 9.5 -> rho = 8 / sqrt(95).
    let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]).unwrap();
    assert!((rho - 8.0 / 95f64.sqrt()).abs() < 1e-15);
    assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
    assert_eq!(spearman(&[1.0], &[1.0]), None);
    assert_eq!(spearman(&[1.0, 2.0], &[1.0]), None);
}

#[test]
fn leave_one_dataset_out_flags_the_odd_dataset() {
    // Three datasets (10 samples each) share an increasing curve; "odd" (3 samples) follows
    // a decreasing one. Holding out a shared dataset, the training rows are 20 shared
    // samples + 3 odd ones, so the fit still increases (Spearman 1) and is off by ~3/23 of
    // the gap; holding out "odd", the fit is the shared curve, off by the whole gap.
    let shared = Poly {
        coefficients: vec![0.01, 0.04, 0.02],
    };
    let odd_curve = Poly {
        coefficients: vec![0.07, -0.04, -0.02],
    };
    let mut rows = synthetic_rows(&["a", "b", "c"], 10, 30, &shared, 0.0, 0);
    rows.extend(synthetic_rows(&["odd"], 3, 30, &odd_curve, 0.0, 0));
    let reports = leave_one_dataset_out(&rows, 2).unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.dataset.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "odd"]);
    let samples: Vec<usize> = reports.iter().map(|r| r.samples).collect();
    assert_eq!(samples, [10, 10, 10, 3]);
    let odd = &reports[3];
    assert_eq!(odd.spearman, Some(-1.0), "{reports:?}");
    for r in &reports[..3] {
        assert!(r.mse < odd.mse / 10.0, "{reports:?}");
        assert_eq!(r.spearman, Some(1.0), "{reports:?}");
    }
    // Without the odd dataset every held-out fit is exact.
    let clean = leave_one_dataset_out(&rows[..3 * 10 * 30], 2).unwrap();
    for r in &clean {
        assert!(
            r.mse < 1e-24 && (r.spearman.unwrap() - 1.0).abs() < 1e-12,
            "{clean:?}"
        );
    }
    assert!(matches!(
        leave_one_dataset_out(&rows[..300], 2),
        Err(FitError::NotEnoughData(_))
    ));
}
