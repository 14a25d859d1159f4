//! Rouge-L F as LongBench's `rouge_score` gets it from the `rouge` package (1.0.1):
//! `Rouge().get_scores([pred], [gt], avg=True)["rouge-l"]["f"]`, 0.0 on any exception.
//!
//! What the package does, step by step:
//! - sentences: `[" ".join(s.split()) for s in text.split(".") if len(s) > 0]`;
//!   no sentence on either side raises `ValueError` (LongBench then returns 0.0);
//! - words: each sentence split on single spaces; `m`/`n` count the DISTINCT words of the
//!   reference / hypothesis (the package's `Ngrams` is a set in its default mode);
//! - for every (reference sentence, hypothesis sentence) pair the LCS is rebuilt by a
//!   recursive walk with a fixed tie-break, and the distinct words of all those LCSs form
//!   a union; `llcs` is the size of that union;
//! - `r = llcs / m`, `p = llcs / n`, `f = 2 * (p * r) / (p + r + 1e-8)`.
//!
//! The LCS walk is recursive in Python. When it needs more nested calls than the
//! interpreter's recursion limit allows, `RecursionError` is raised and LongBench's bare
//! `except` turns the whole score into 0.0 (this happens on long single-sentence texts,
//! e.g. Chinese summaries that contain no ASCII period). The budgets below were measured by
//! `fixtures/gen_metric_fixtures.py` with CPython 3.11 calling `eval.scorer` from module
//! level, exactly as LongBench's `eval.py` does.

use std::collections::HashSet;

use crate::pytext;

/// Most nested `_recon` calls that succeed under `rouge_score` called from `eval.py`.
pub const ROUGE_MAX_RECON_CALLS: usize = 991;
/// Same under `rouge_zh_score` (one more Python frame on the stack).
pub const ROUGE_ZH_MAX_RECON_CALLS: usize = 990;

/// Split into the package's sentences (see module doc).
fn sentences(text: &str) -> Vec<String> {
    text.split('.')
        .filter(|s| !s.is_empty())
        .map(pytext::collapse_whitespace)
        .collect()
}

/// `_recon_lcs(x, y)`: the LCS tokens (taken from `x`) along the package's traceback and
/// the number of recursive calls the walk makes. `None` when the walk would exceed
/// `max_calls` (Python raises `RecursionError`).
fn recon_lcs<'a>(x: &[&'a str], y: &[&'a str], max_calls: usize) -> Option<Vec<&'a str>> {
    let (n, m) = (x.len(), y.len());
    // Each call moves i or j (or both) down by one and the walk stops when either is zero,
    // so at least min(n, m) + 1 calls happen: fail early before building the table.
    if n.min(m) + 1 > max_calls {
        return None;
    }
    // table[i][j] = LCS length of x[..i], y[..j]; values are <= min(n, m) < max_calls.
    let width = m + 1;
    let mut table = vec![0u32; (n + 1) * width];
    for i in 1..=n {
        for j in 1..=m {
            table[i * width + j] = if x[i - 1] == y[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let (mut i, mut j) = (n, m);
    let mut calls = 1;
    let mut tokens = Vec::new();
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            tokens.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[(i - 1) * width + j] > table[i * width + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
        calls += 1;
        if calls > max_calls {
            return None;
        }
    }
    Some(tokens)
}

/// Rouge-L F of `prediction` against `reference` with the given recursion budget.
pub fn rouge_l_f(prediction: &str, reference: &str, max_calls: usize) -> f64 {
    let hyp = sentences(prediction);
    let refs = sentences(reference);
    if hyp.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let hyp_words: Vec<Vec<&str>> = hyp.iter().map(|s| s.split(' ').collect()).collect();
    let ref_words: Vec<Vec<&str>> = refs.iter().map(|s| s.split(' ').collect()).collect();
    let m = ref_words.iter().flatten().collect::<HashSet<_>>().len();
    let n = hyp_words.iter().flatten().collect::<HashSet<_>>().len();
    let mut union: HashSet<&str> = HashSet::new();
    for r in &ref_words {
        for h in &hyp_words {
            match recon_lcs(r, h, max_calls) {
                Some(tokens) => union.extend(tokens),
                None => return 0.0,
            }
        }
    }
    let llcs = union.len() as f64;
    let r_lcs = llcs / m as f64;
    let p_lcs = llcs / n as f64;
    2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // "a b c" vs "a c": one sentence each, LCS {a, c}; m = 2 (ref "a c"), n = 3.
        // r = 2/2 = 1, p = 2/3, f = 2 * (2/3) / (5/3 + 1e-8).
        let f = rouge_l_f("a b c", "a c", ROUGE_MAX_RECON_CALLS);
        let p = 2.0_f64 / 3.0;
        assert_eq!(f, 2.0 * ((p * 1.0) / (p + 1.0 + 1e-8)));
        // Empty hypothesis raises in the package -> 0.0.
        assert_eq!(rouge_l_f("", "a", ROUGE_MAX_RECON_CALLS), 0.0);
        assert_eq!(rouge_l_f("...", "a", ROUGE_MAX_RECON_CALLS), 0.0);
    }

    #[test]
    fn recursion_budget() {
        // Reference "w0" against k hypothesis words makes k + 1 calls.
        let words = |k: usize| {
            (0..k)
                .map(|i| format!("w{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(rouge_l_f(&words(990), "w0", ROUGE_MAX_RECON_CALLS) > 0.0);
        assert_eq!(rouge_l_f(&words(991), "w0", ROUGE_MAX_RECON_CALLS), 0.0);
    }
}
