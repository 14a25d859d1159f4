//! Minimised score-function files from `cake-fuzz` runs: each must fail validation with an
//! error instead of panicking or allocating a table sized by the file.

use cake_core::ScoreFunction;
use cake_core::score_function::{MAX_KV_HEADS, MAX_LAYERS};

fn file(num_layers: &str, num_kv_heads: &str, degree: &str, coefficients: &str) -> String {
    format!(
        r#"{{"format": "cake-score-function/1", "num_layers": {num_layers},
            "num_kv_heads": {num_kv_heads}, "degree": {degree}, "coefficients": {coefficients}}}"#
    )
}

#[test]
fn degree_at_usize_max_is_an_error() {
    // cake-fuzz `score_function` (crash): `degree + 1` overflowed (a panic with overflow
    // checks; without them it wrapped to 0 and an empty coefficient list was accepted).
    let err = ScoreFunction::from_json_str(&file("3", "0", "18446744073709551615", "[]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("degree 18446744073709551615"), "{err}");
}

#[test]
fn layer_and_head_counts_are_bounded() {
    // 2^40 layers passed validation, and `layer_shares` then allocated 8 TiB.
    let huge = (1u64 << 40).to_string();
    let err = ScoreFunction::from_json_str(&file(&huge, "0", "0", "[1.0]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_layers"), "{err}");
    let over = (MAX_LAYERS + 1).to_string();
    assert!(ScoreFunction::from_json_str(&file(&over, "0", "0", "[1.0]")).is_err());
    let at = MAX_LAYERS.to_string();
    let f = ScoreFunction::from_json_str(&file(&at, "0", "0", "[1.0]")).expect("at the cap");
    assert_eq!(f.layer_shares().len(), MAX_LAYERS);

    let heads = (MAX_KV_HEADS + 1).to_string();
    let err = ScoreFunction::from_json_str(&file("2", &heads, "0", "[1.0]"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_kv_heads"), "{err}");
    // Head polynomials without a declared head count are bounded too.
    let polys = vec!["[1.0]"; MAX_KV_HEADS + 1].join(",");
    let text = file("2", "0", "0", "[1.0]").replace(
        "\"coefficients\"",
        &format!("\"head_coefficients\": [{polys}], \"coefficients\""),
    );
    assert!(ScoreFunction::from_json_str(&text).is_err());
}

#[test]
fn a_device_path_is_not_read_without_bound() {
    // A settings file's `score_fn` may name any path; `/dev/zero` never ends.
    let zero = std::path::Path::new("/dev/zero");
    if zero.exists() {
        let err = ScoreFunction::from_path(zero).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }
}
