//! Statistics rows (collection, JSONL/CSV), the score-function file (round trip, cake-core
//! reader, static budgets), the Markdown report and the plot.

mod common;

use std::fs;

use cake_core::allocator::{Allocator, Static};
use cake_core::{BudgetPlan, ScoreFunction};
use cake_scoring_fit::{
    FitConfig, FitError, LayerMeasurement, LayerStatsRow, Poly, ScoreFunctionFile,
    fit_score_function, plot_fit, read_csv, read_jsonl, rows_for_head, sample_rows,
    shares_from_preferences, write_csv, write_jsonl,
};
use common::{PCA, row, synthetic_rows};
use proptest::prelude::*;

/// Equal as JSON, numbers to 1e-15 relative: serde_json's default float parser (without
/// its `float_roundtrip` feature) may be off by one ulp.
fn assert_json_close<T: serde::Serialize + std::fmt::Debug>(a: &T, b: &T) {
    fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
        use serde_json::Value::{Array, Number, Object};
        match (a, b) {
            (Number(x), Number(y)) => {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                (x - y).abs() <= 1e-15 * x.abs().max(y.abs())
            }
            (Array(x), Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
            (Object(x), Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
            }
            _ => a == b,
        }
    }
    let (va, vb) = (
        serde_json::to_value(a).unwrap(),
        serde_json::to_value(b).unwrap(),
    );
    assert!(close(&va, &vb), "{a:?}\n!=\n{b:?}");
}

fn measurement(preference: f64) -> LayerMeasurement {
    LayerMeasurement {
        preference,
        entropy: 3.0,
        variance: 0.25,
        key_pca: PCA,
        value_pca: PCA,
    }
}

#[test]
fn shares_and_sample_rows() {
    // 1 : 3 : 4 -> 0.125, 0.375, 0.5.
    assert_eq!(
        shares_from_preferences(&[1.0, 3.0, 4.0]).unwrap(),
        vec![0.125, 0.375, 0.5]
    );
    assert_eq!(
        shares_from_preferences(&[0.0, 0.0]).unwrap(),
        vec![0.5, 0.5]
    );
    assert!(shares_from_preferences(&[]).is_err());
    assert!(shares_from_preferences(&[1.0, -1.0]).is_err());
    assert!(shares_from_preferences(&[1.0, f64::INFINITY]).is_err());

    let layers: Vec<LayerMeasurement> = [2.0, 6.0, 0.0, 2.0].into_iter().map(measurement).collect();
    let rows = sample_rows("narrativeqa", "id-7", Some(1), &layers).unwrap();
    assert_eq!(rows.len(), 4);
    let shares: Vec<f64> = rows.iter().map(|r| r.share).collect();
    assert_eq!(shares, vec![0.2, 0.6, 0.0, 0.2]);
    assert!(
        rows.iter()
            .enumerate()
            .all(|(l, r)| r.layer == l && r.num_layers == 4 && r.kv_head == Some(1))
    );
    assert_eq!(rows[3].x(), 1.0);
    assert!((rows[1].x() - 1.0 / 3.0).abs() < 1e-15);
}

#[test]
fn measurement_from_cake_core_parts() {
    // H = 4, V = 0.25, tau1 = 2, tau2 = 0.5: P = 4^(1/2) * 0.25^2 = 2 * 0.0625 = 0.125.
    let parts = cake_core::LayerPreference {
        entropy: 4.0,
        variance: 0.25,
    };
    let m = LayerMeasurement::from_parts(parts, 2.0, 0.5, PCA, PCA);
    assert!((m.preference - 0.125).abs() < 1e-15, "{m:?}");
    assert_eq!((m.entropy, m.variance), (4.0, 0.25));
    let zero = cake_core::LayerPreference {
        entropy: 4.0,
        variance: 0.0,
    };
    assert_eq!(
        LayerMeasurement::from_parts(zero, 1.0, 1.0, PCA, PCA).preference,
        0.0
    );
}

fn example_rows() -> Vec<LayerStatsRow> {
    let layers: Vec<LayerMeasurement> = [1.5, 2.5, 6.0].into_iter().map(measurement).collect();
    let mut rows = sample_rows("passkey, \"quoted\"", "a,b", None, &layers).unwrap();
    rows.extend(sample_rows("hotpotqa", "x", Some(2), &layers).unwrap());
    rows[4].key_pca.spectral_entropy = 0.1 + 0.2; // a value with a long decimal expansion
    rows
}

#[test]
fn jsonl_and_csv_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let rows = example_rows();
    let jsonl = dir.path().join("stats.jsonl");
    write_jsonl(&jsonl, &rows).unwrap();
    assert_eq!(
        fs::read_to_string(&jsonl).unwrap().lines().count(),
        rows.len()
    );
    let back = read_jsonl(&jsonl).unwrap();
    assert_eq!(back.len(), rows.len());
    for (a, b) in back.iter().zip(&rows) {
        assert_json_close(a, b);
    }
    let csv = dir.path().join("stats.csv");
    write_csv(&csv, &rows).unwrap();
    let text = fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with(&cake_scoring_fit::CSV_HEADER.join(",")),
        "{text}"
    );
    assert_eq!(read_csv(&csv).unwrap(), rows);
    // Empty files still carry the header and read back empty.
    write_csv(&csv, &[]).unwrap();
    assert_eq!(read_csv(&csv).unwrap(), vec![]);
}

#[test]
fn bad_statistics_files_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rows = example_rows();
    let path = dir.path().join("bad.jsonl");
    let good = serde_json::to_string(&rows[0]).unwrap();
    fs::write(&path, format!("{good}\n\n{{\"dataset\": 3}}\n")).unwrap();
    let e = read_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:3:"), "{e}");
    let over = serde_json::to_string(&LayerStatsRow {
        share: 1.5,
        ..rows[0].clone()
    })
    .unwrap();
    fs::write(&path, format!("{good}\n{over}\n")).unwrap();
    let e = read_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2:") && e.contains("share"), "{e}");
    let e = read_jsonl(&dir.path().join("missing.jsonl")).unwrap_err();
    assert!(matches!(e, FitError::Io { .. }) && e.to_string().contains("missing.jsonl"));

    let csv = dir.path().join("bad.csv");
    write_csv(&csv, &rows).unwrap();
    let text = fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[3].contains(",3,2,"), "{}", lines[3]);
    lines[3] = lines[3].replacen(",3,2,", ",three,2,", 1);
    fs::write(&csv, lines.join("\n")).unwrap();
    let e = read_csv(&csv).unwrap_err().to_string();
    assert!(e.contains("bad.csv:4:"), "{e}");
    fs::write(&csv, text.replacen("dataset", "corpus", 1)).unwrap();
    let e = read_csv(&csv).unwrap_err().to_string();
    assert!(e.contains("bad.csv:1:") && e.contains("header"), "{e}");
}

/// Three datasets following one curve (plus noise), per-head rows for 3 heads.
fn calibration_rows() -> Vec<LayerStatsRow> {
    let truth = Poly {
        coefficients: vec![0.02, 0.06, -0.15, 0.12],
    };
    let mut rows = synthetic_rows(
        &["gov_report", "passkey", "qasper"],
        8,
        30,
        &truth,
        0.002,
        11,
    );
    for h in 0..3 {
        let head = Poly {
            coefficients: vec![0.01 + 0.01 * h as f64, 0.06, -0.15, 0.12],
        };
        rows.extend(
            synthetic_rows(&["gov_report"], 4, 30, &head, 0.0, 0)
                .into_iter()
                .map(|mut r| {
                    r.kv_head = Some(h);
                    r
                }),
        );
    }
    rows
}

#[test]
fn fitted_file_round_trips_and_cake_core_reads_it() {
    let rows = calibration_rows();
    let mut config = FitConfig::new("SmolLM2-135M-Instruct", 3);
    config.per_head = true;
    let report = fit_score_function(&rows, &config).unwrap();
    assert_eq!(report.selection.degree, 3, "{:?}", report.selection);
    assert_eq!(report.datasets, ["gov_report", "passkey", "qasper"]);
    assert_eq!(report.samples, 24);
    assert_eq!(report.held_out.len(), 3);
    assert_eq!(report.heads.len(), 3);
    // Head h's curve is the layer curve shifted by 0.01 h - 0.01 (noiseless).
    assert!((report.heads[2].poly.coefficients[0] - 0.03).abs() < 1e-12);

    let file = report.to_score_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smollm2.score.json");
    file.save(&path).unwrap();
    assert_json_close(&ScoreFunctionFile::load(&path).unwrap(), &file);
    let text = fs::read_to_string(&path).unwrap();
    // The format: cake-core's fields, then the fit report, in this order.
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  \""))
        .map(|l| l.split('"').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "format",
            "model",
            "num_layers",
            "num_kv_heads",
            "degree",
            "domain",
            "coefficients",
            "head_coefficients",
            "pca",
            "datasets",
            "cv_errors",
            "held_out",
            "fit_mse"
        ]
    );
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["format"], "cake-score-function/1");
    assert_eq!(json["domain"], serde_json::json!([0.0, 1.0]));
    assert_eq!(json["pca"]["top_k"], 4);
    assert_eq!(json["coefficients"].as_array().unwrap().len(), 4);
    assert!(json["cv_errors"]["3"].is_f64() && json["held_out"][0]["spearman"].is_f64());

    let core = ScoreFunction::from_path(&path).unwrap();
    assert_eq!(core.num_layers, 30);
    for (a, b) in core.coefficients.iter().zip(&file.function.coefficients) {
        assert!((a - b).abs() <= 1e-15 * b.abs(), "{a} vs {b}");
    }
    let raw = file.raw_layer_shares();
    for (a, b) in core.raw_layer_values().iter().zip(&raw) {
        assert!((a - b).abs() < 1e-14);
    }
    let stat = Static::from_score_function(&core, 30).unwrap();
    assert_eq!(stat.head_shares().unwrap().len(), 30);

    // Layer-only file (head_coefficients null) is read too.
    let mut layer_only = file.clone();
    layer_only.function.head_coefficients = None;
    layer_only.save(&path).unwrap();
    assert!(
        ScoreFunction::from_path(&path)
            .unwrap()
            .head_coefficients
            .is_none()
    );
}

#[test]
fn bad_score_files_are_rejected() {
    let report = fit_score_function(
        &rows_for_head(&calibration_rows(), None),
        &FitConfig::new("m", 3),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.json");
    let mut f = report.to_score_file();
    f.function.degree += 1;
    let e = f.save(&path).unwrap_err().to_string();
    assert!(e.contains("f.json") && e.contains("degree"), "{e}");
    report.to_score_file().save(&path).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replace("cake-score-function/1", "cake-score-function/9"),
    )
    .unwrap();
    assert!(
        ScoreFunctionFile::load(&path)
            .unwrap_err()
            .to_string()
            .contains("format")
    );
    fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(
        ScoreFunctionFile::load(&path),
        Err(FitError::InvalidScoreFile { .. })
    ));
}

#[test]
fn fit_needs_consistent_rows() {
    let mut rows = calibration_rows();
    let mut config = FitConfig::new("m", 2);
    config.per_head = true;
    assert!(
        matches!(
            fit_score_function(&rows, &config),
            Err(FitError::Inconsistent(_))
        ),
        "head 2 >= 2 heads"
    );
    config.num_kv_heads = 4;
    assert!(
        matches!(
            fit_score_function(&rows, &config),
            Err(FitError::NotEnoughData(_))
        ),
        "head 3 missing"
    );
    rows[0].value_pca.top_k = 8;
    assert!(matches!(
        fit_score_function(&rows, &FitConfig::new("m", 3)),
        Err(FitError::Inconsistent(_))
    ));
    let heads_only = rows_for_head(&rows, Some(0));
    assert!(matches!(
        fit_score_function(&heads_only, &FitConfig::new("m", 3)),
        Err(FitError::NotEnoughData(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// A static allocation from a fitted file satisfies the section-4 budget invariants.
    #[test]
    fn static_budgets_from_a_fitted_file_keep_the_invariants(
        coefficients in proptest::collection::vec(-0.2f64..0.2, 1..5),
        num_layers in 2usize..40,
        prompt_len in 1usize..5000,
        cache_size in 1usize..2048,
        window in 1usize..64,
        seed in 0u64..1000,
    ) {
        let truth = Poly { coefficients: {
            let mut c = coefficients.clone();
            c[0] += 0.05; // mostly positive shares; negative fitted values must still work
            c
        }};
        let rows = synthetic_rows(&["a", "b"], 3, num_layers, &truth, 0.001, seed);
        let degrees = 1..=(num_layers - 1).min(8);
        let config = FitConfig { degrees, folds: 3, ..FitConfig::new("m", 1) };
        let report = fit_score_function(&rows, &config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fit.json");
        report.to_score_file().save(&path).unwrap();
        let f = ScoreFunction::from_path(&path).unwrap();
        let stat = Static::from_score_function(&f, num_layers).unwrap();
        let shares = stat.shares(num_layers, &vec![None; num_layers]);
        prop_assert_eq!(shares.len(), num_layers);
        prop_assert!(shares.iter().all(|s| s.is_finite() && *s > 0.0));
        let plan = BudgetPlan { prompt_len, window: window.min(prompt_len), cache_size, num_layers };
        let budgets = plan.allocate(&shares);
        prop_assert_eq!(budgets.len(), num_layers);
        prop_assert!(budgets.iter().all(|&b| b <= plan.cap()));
        let sum: usize = budgets.iter().sum();
        if plan.cap() * num_layers > plan.total() {
            prop_assert_eq!(sum, plan.total());
        } else {
            prop_assert!(budgets.iter().all(|&b| b == plan.cap()));
        }
        // Larger fitted share never means a smaller budget (beyond one rounding token),
        // unless the smaller-share layer is the capped one.
        for a in 0..num_layers {
            for b in 0..num_layers {
                if shares[a] > shares[b] && budgets[b] < plan.cap() {
                    prop_assert!(budgets[a] + 1 >= budgets[b], "{:?} {:?}", shares, budgets);
                }
            }
        }
    }
}

#[test]
fn markdown_report_and_plots() {
    let rows = calibration_rows();
    let report = fit_score_function(&rows, &FitConfig::new("SmolLM2-135M-Instruct", 3)).unwrap();
    let md = report.to_markdown();
    assert!(md.contains("| 3 **(chosen)** |"), "{md}");
    for d in 1..=8 {
        assert!(
            md.contains(&format!("\n| {d}")),
            "degree {d} missing:\n{md}"
        );
    }
    for d in ["gov_report", "passkey", "qasper"] {
        assert!(md.contains(&format!("| {d} | 8 |")), "{md}");
    }

    let dir = tempfile::tempdir().unwrap();
    let layer_rows = rows_for_head(&rows, None);
    let svg = dir.path().join("fit.svg");
    plot_fit(&layer_rows, &report.poly, &svg).unwrap();
    let text = fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.contains("fitted polynomial (degree 3)"),
        "{}",
        &text[..200]
    );
    assert!(
        text.matches("<circle").count() >= layer_rows.len(),
        "one dot per row"
    );
    let png = dir.path().join("fit.png");
    plot_fit(&layer_rows, &report.poly, &png).unwrap();
    assert_eq!(&fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let e = plot_fit(&layer_rows, &report.poly, &dir.path().join("fit.bmpx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fit.bmpx") && e.contains(".svg"), "{e}");
    assert!(
        plot_fit(&rows, &report.poly, &svg).is_err(),
        "mixed layer and head rows"
    );
    let _ = row("unused", 0, 2, 0, None, 0.5);
}
