//! The prediction loop: files readable by eval, exact resume after a crash (torn last
//! line included), never a duplicate or a lost record; and middle truncation.

mod common;

use std::io::Write;
use std::path::Path;

use cake_longbench::prompt::middle_cut;
use cake_longbench::{
    ApproxTokenizer, BoxError, GenerationOutcome, Generator, LongBenchRecord, PredictError,
    PredictSummary, PredictionLine, PromptTokenizer, StopRule, build_prompt, evaluate_dir,
    predict_dataset, registry,
};
use proptest::prelude::*;

fn records(n: usize) -> Vec<LongBenchRecord> {
    (0..n)
        .map(|i| common::record(i, 5, 100 * i as u64))
        .collect()
}

/// Answers with the record number found in the prompt; fails at a chosen call.
struct Echo {
    calls: usize,
    fail_at: Option<usize>,
    stops: Vec<StopRule>,
}

impl Echo {
    /// An echo that fails at call `fail_at` (1-based), if any.
    fn new(fail_at: Option<usize>) -> Self {
        Self {
            calls: 0,
            fail_at,
            stops: vec![],
        }
    }
}

impl Generator for Echo {
    fn generate(
        &mut self,
        prompt: &str,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        self.calls += 1;
        self.stops.push(*stop);
        if Some(self.calls) == self.fail_at {
            return Err("simulated crash".into());
        }
        let n: String = prompt
            .split("record ")
            .nth(1)
            .map(|t| t.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        assert!(max_new_tokens > 0);
        Ok(GenerationOutcome {
            text: n,
            prompt_tokens: prompt.len(),
            new_tokens: 1,
        })
    }
}

fn read_lines(path: &Path) -> Vec<PredictionLine> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ok_records(
    v: &[LongBenchRecord],
) -> impl Iterator<Item = Result<LongBenchRecord, cake_longbench::DataError>> + '_ {
    v.iter().cloned().map(Ok)
}

/// Predicts `data` as dataset `dataset` into `out` with `g`, prompts of at most
/// `max_length` approximate tokens.
fn predict(
    data: &[LongBenchRecord],
    dataset: &str,
    g: &mut Echo,
    out: &Path,
    max_length: usize,
) -> Result<PredictSummary, PredictError> {
    let spec = registry::lookup(dataset).unwrap();
    let tok = ApproxTokenizer::new();
    predict_dataset(ok_records(data), spec, &tok, g, out, max_length, |_| {})
}

#[test]
fn crash_then_resume_writes_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("passage_count.jsonl");
    let spec = registry::lookup("passage_count").unwrap();
    let tok = ApproxTokenizer::new();
    let data = records(7);

    // First run dies on the 4th generation: 3 lines written.
    let err = predict(
        &data,
        "passage_count",
        &mut Echo::new(Some(4)),
        &out,
        10_000,
    )
    .unwrap_err();
    assert!(
        matches!(err, PredictError::Generation { index: 3, .. }),
        "{err}"
    );
    assert_eq!(read_lines(&out).len(), 3);

    // Simulate a crash in the middle of writing the 4th line: a torn, newline-less tail.
    let torn = br#"{"pred":"3","answers":["3"],"all_cl"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .unwrap()
        .write_all(torn)
        .unwrap();

    let mut g = Echo::new(None);
    let mut seen = Vec::new();
    let summary = predict_dataset(ok_records(&data), spec, &tok, &mut g, &out, 10_000, |p| {
        seen.push((p.index, p.resumed));
    })
    .unwrap();
    assert_eq!(summary.resumed, 3);
    assert_eq!(summary.generated, 4);
    assert_eq!(summary.repaired_bytes, torn.len() as u64);
    assert_eq!(g.calls, 4, "only the missing records are generated");
    assert_eq!(seen.iter().filter(|(_, r)| *r).count(), 3);

    let lines = read_lines(&out);
    let ids: Vec<String> = lines.iter().map(|l| l.id.clone().unwrap()).collect();
    let want: Vec<String> = (0..7).map(|i| format!("rec-{i}")).collect();
    assert_eq!(ids, want);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l.pred, i.to_string());
        assert_eq!(l.answers, vec![i.to_string()]);
        assert_eq!(l.length, 100 * i as u64);
        assert_eq!(l.depth, Some(i as f64 / 10.0));
    }

    // A third run has nothing left to do.
    let mut g = Echo::new(None);
    let summary = predict(&data, "passage_count", &mut g, &out, 10_000).unwrap();
    assert_eq!((summary.resumed, summary.generated, g.calls), (7, 0, 0));

    // And the file scores: every prediction equals its gold count -> 100.
    let result = evaluate_dir(dir.path(), false).unwrap();
    assert_eq!(
        result.scores["passage_count"],
        cake_longbench::DatasetScore::Plain(100.0)
    );
    assert!(result.result_json().contains("\"passage_count\": 100.0"));
}

#[test]
fn resume_refuses_a_file_of_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("passage_count.jsonl");
    let mut g = Echo::new(None);
    predict(&records(2), "passage_count", &mut g, &out, 10_000).unwrap();
    let mut other = records(3);
    other[1].id = "someone-else".into();
    let err = predict(&other, "passage_count", &mut g, &out, 10_000).unwrap_err();
    assert!(
        err.to_string().contains("someone-else") && err.to_string().contains(":2"),
        "{err}"
    );
    // A corrupt line in the middle is an error naming the line, not silently dropped.
    std::fs::write(
        &out,
        "not json\n{\"pred\":\"1\",\"answers\":[\"1\"],\"all_classes\":null,\"length\":1}\n",
    )
    .unwrap();
    let err = predict(&records(2), "passage_count", &mut g, &out, 10_000).unwrap_err();
    assert!(
        matches!(err, PredictError::CorruptLine { line: 1, .. }),
        "{err}"
    );
}

#[test]
fn samsum_asks_for_newline_stop_and_one_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Echo::new(None);
    let out = dir.path().join("samsum.jsonl");
    predict(&records(1), "samsum", &mut g, &out, 100).unwrap();
    assert_eq!(
        g.stops,
        vec![StopRule {
            stop_on_newline: true,
            min_new_tokens: 1
        }]
    );
}

#[test]
fn long_prompt_is_cut_in_the_middle() {
    let tok = ApproxTokenizer::new();
    let spec = registry::lookup("hotpotqa").unwrap();
    let mut r = records(1).remove(0);
    r.context = (0..500)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let full = cake_longbench::prompt::fill_template(&spec.prompt, &r, &spec.name).unwrap();
    let ids = tok.encode(&full);
    let built = build_prompt(&r, spec, &tok, 101).unwrap();
    assert!(built.truncated);
    assert_eq!(built.original_tokens, ids.len());
    // Keeps the first 50 and the last 50 tokens (101 / 2 = 50 each, as LongBench does).
    let want = tok.decode(&ids[..50]) + &tok.decode(&ids[ids.len() - 50..]);
    assert_eq!(built.text, want);
    assert!(built.text.starts_with("Answer the question") && built.text.ends_with("Answer:"));
    assert!(!built.text.contains(" w250 "));
}

proptest! {
    #[test]
    fn middle_cut_keeps_max_length_tokens_around_the_cut(len in 0usize..400, max_length in 2usize..300) {
        let ids: Vec<u32> = (0..len as u32).collect();
        match middle_cut(&ids, max_length) {
            None => prop_assert!(len <= max_length),
            Some((head, tail)) => {
                prop_assert!(len > max_length);
                let half = max_length / 2;
                prop_assert_eq!(head.len() + tail.len(), 2 * half);
                prop_assert_eq!(head, &ids[..half]);
                prop_assert_eq!(tail, &ids[len - half..]);
                // The cut removes exactly the middle: len - 2 * half tokens.
                prop_assert_eq!(tail[0] as usize - head.len(), len - 2 * half);
            }
        }
    }
}
