//! Records the prediction-loop tests share.

use cake_longbench::LongBenchRecord;

/// Record `i` of a passage-count test set: its question, `repeats` sentences of context,
/// answer `i` and the given `length`.
pub fn record(i: usize, repeats: usize, length: u64) -> LongBenchRecord {
    LongBenchRecord {
        input: format!("question {i}"),
        context: format!("context of record {i}. ").repeat(repeats),
        answers: vec![format!("{i}")],
        length,
        dataset: "passage_count".into(),
        language: "en".into(),
        all_classes: None,
        id: format!("rec-{i}"),
        depth: Some(i as f64 / 10.0),
        needle: None,
    }
}
