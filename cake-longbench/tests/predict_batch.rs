//! `SweepGenerator::generate_many`: a sweep whose generator answers every configuration of
//! a record at once writes the same prediction files as one answering them one by one
//! (the default), through fresh runs, resumes from files of different lengths, and a
//! configuration that fails mid-sweep.

mod common;

use std::path::{Path, PathBuf};

use cake_longbench::{
    ApproxTokenizer, BoxError, GenerationOutcome, LongBenchRecord, PredictError, PredictSummary,
    StopRule, SweepGenerator, predict_sweep, registry,
};

fn records(n: usize) -> Vec<LongBenchRecord> {
    (0..n)
        .map(|i| common::record(i, 3 + i % 4, 10 * i as u64))
        .collect()
}

/// Configuration `k` answers record `i` with `"i:k"` (and `k + 1` new tokens); fails on a
/// chosen (record, configuration).
struct Fake {
    configurations: usize,
    fail: Option<(usize, usize)>,
    record: Option<usize>,
    prepares: usize,
    /// The configurations of every `generate` call, in order.
    calls: Vec<usize>,
}

impl Fake {
    fn new(configurations: usize, fail: Option<(usize, usize)>) -> Self {
        Self {
            configurations,
            fail,
            record: None,
            prepares: 0,
            calls: Vec::new(),
        }
    }
}

impl SweepGenerator for Fake {
    fn configurations(&self) -> usize {
        self.configurations
    }

    fn prepare(&mut self, prompt: &str) -> Result<(), BoxError> {
        let n: String = prompt
            .split("record ")
            .nth(1)
            .map(|t| t.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        self.record = Some(n.parse()?);
        self.prepares += 1;
        Ok(())
    }

    fn generate(
        &mut self,
        configuration: usize,
        max_new_tokens: usize,
        _: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        self.calls.push(configuration);
        let record = self.record.ok_or("generate before prepare")?;
        if self.fail == Some((record, configuration)) {
            return Err(format!("configuration {configuration} failed on record {record}").into());
        }
        assert!(max_new_tokens > 0);
        Ok(GenerationOutcome {
            text: format!("{record}:{configuration}"),
            prompt_tokens: 100 + record,
            new_tokens: configuration + 1,
        })
    }
}

/// [`Fake`] answering all configurations of a record at once: in reverse order, and every
/// one of them even after an error (as a batch does).
struct Batched(Fake);

impl SweepGenerator for Batched {
    fn configurations(&self) -> usize {
        self.0.configurations()
    }

    fn prepare(&mut self, prompt: &str) -> Result<(), BoxError> {
        self.0.prepare(prompt)
    }

    fn generate(
        &mut self,
        configuration: usize,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        self.0.generate(configuration, max_new_tokens, stop)
    }

    fn generate_many(
        &mut self,
        configurations: &[usize],
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Vec<Result<GenerationOutcome, BoxError>> {
        let mut results: Vec<_> = configurations
            .iter()
            .rev()
            .map(|&c| self.0.generate(c, max_new_tokens, stop))
            .collect();
        results.reverse();
        results
    }
}

/// The prediction files of `configurations` configurations under `root`.
fn files(root: &Path, configurations: usize) -> Vec<PathBuf> {
    (0..configurations)
        .map(|k| root.join(format!("config-{k}")).join("passage_count.jsonl"))
        .collect()
}

/// A sweep of `data` into `files` with `generator`; the progress steps as (configuration,
/// index, resumed, new tokens).
#[allow(clippy::type_complexity)]
fn sweep<S: SweepGenerator>(
    data: &[LongBenchRecord],
    generator: &mut S,
    files: &[PathBuf],
) -> (
    Result<Vec<PredictSummary>, PredictError>,
    Vec<(usize, usize, bool, Option<usize>)>,
) {
    let spec = registry::lookup("passage_count").unwrap();
    let mut steps = Vec::new();
    let result = predict_sweep(
        data.iter().cloned().map(Ok),
        spec,
        &ApproxTokenizer::new(),
        generator,
        files,
        10_000,
        |p| {
            steps.push((
                p.configuration,
                p.index,
                p.resumed,
                p.outcome.map(|o| o.new_tokens),
            ))
        },
    );
    (result, steps)
}

fn contents(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

/// Truncates each file to its first `keep[k]` lines (an earlier, shorter run).
fn keep_lines(files: &[PathBuf], keep: &[usize]) {
    for (file, &n) in files.iter().zip(keep) {
        let text = std::fs::read_to_string(file).unwrap();
        let kept: String = text.lines().take(n).map(|l| format!("{l}\n")).collect();
        std::fs::write(file, kept).unwrap();
    }
}

#[test]
fn batched_and_one_by_one_sweeps_write_the_same_files() {
    let data = records(6);
    let dir = tempfile::tempdir().unwrap();
    let (one, many) = (dir.path().join("one"), dir.path().join("many"));
    let (one, many) = (files(&one, 3), files(&many, 3));

    // A fresh run.
    let mut a = Fake::new(3, None);
    let mut b = Batched(Fake::new(3, None));
    let (ra, sa) = sweep(&data, &mut a, &one);
    let (rb, sb) = sweep(&data, &mut b, &many);
    assert_eq!(ra.unwrap(), rb.unwrap());
    assert_eq!(sa, sb, "the same progress, in the same order");
    assert_eq!(contents(&one), contents(&many));
    assert_eq!((a.prepares, b.0.prepares), (6, 6));
    // The default asks configuration by configuration; the override in one call per
    // record (here in reverse).
    assert_eq!(a.calls[..3], [0, 1, 2]);
    assert_eq!(b.0.calls[..3], [2, 1, 0]);
    let first = String::from_utf8(contents(&one)[1].clone()).unwrap();
    assert_eq!(first.lines().count(), 6);
    assert!(
        first.starts_with(r#"{"pred":"0:1","answers":["0"]"#),
        "{first}"
    );

    // Resumed from files of different lengths: only the missing (record, configuration)
    // pairs are generated, each record prepared once when some configuration lacks it.
    for files in [&one, &many] {
        keep_lines(files, &[6, 2, 4]);
    }
    let mut a = Fake::new(3, None);
    let mut b = Batched(Fake::new(3, None));
    let (ra, sa) = sweep(&data, &mut a, &one);
    let (rb, sb) = sweep(&data, &mut b, &many);
    let summaries = ra.unwrap();
    assert_eq!(summaries, rb.unwrap());
    assert_eq!(
        summaries.iter().map(|s| s.generated).collect::<Vec<_>>(),
        [0, 4, 2]
    );
    assert_eq!(sa, sb);
    assert_eq!(contents(&one), contents(&many));
    assert_eq!((a.prepares, b.0.prepares), (4, 4));
    assert_eq!(a.calls.len(), 6);
    assert_eq!(b.0.calls.len(), 6);
}

#[test]
fn a_failing_configuration_stops_both_sweeps_at_the_same_line() {
    let data = records(5);
    let dir = tempfile::tempdir().unwrap();
    let (one, many) = (dir.path().join("one"), dir.path().join("many"));
    let (one, many) = (files(&one, 3), files(&many, 3));

    // Configuration 1 fails on record 2: configuration 0 has written it, 2 has not.
    let mut a = Fake::new(3, Some((2, 1)));
    let mut b = Batched(Fake::new(3, Some((2, 1))));
    let (ra, sa) = sweep(&data, &mut a, &one);
    let (rb, sb) = sweep(&data, &mut b, &many);
    for err in [ra.unwrap_err(), rb.unwrap_err()] {
        assert!(
            matches!(&err, PredictError::Generation { index: 2, id, .. } if id == "rec-2"),
            "{err}"
        );
        assert!(err.to_string().contains("configuration 1 failed"), "{err}");
    }
    assert_eq!(sa, sb);
    assert_eq!(contents(&one), contents(&many));
    let lines: Vec<usize> = contents(&one)
        .iter()
        .map(|c| String::from_utf8_lossy(c).lines().count())
        .collect();
    assert_eq!(lines, [3, 2, 2]);
    // The default stops at the error, as one call per configuration did.
    assert_eq!(a.calls[6..], [0, 1]);

    // Resuming without the failure completes both alike.
    let (ra, _) = sweep(&data, &mut Fake::new(3, None), &one);
    let (rb, _) = sweep(&data, &mut Batched(Fake::new(3, None)), &many);
    assert_eq!(ra.unwrap(), rb.unwrap());
    assert_eq!(contents(&one), contents(&many));
    let fresh = files(&dir.path().join("fresh"), 3);
    sweep(&data, &mut Fake::new(3, None), &fresh).0.unwrap();
    assert_eq!(contents(&one), contents(&fresh), "no line lost or doubled");
}

#[test]
fn a_file_of_other_data_stops_both_sweeps_after_the_configurations_before_it() {
    let data = records(3);
    let dir = tempfile::tempdir().unwrap();
    let (one, many) = (dir.path().join("one"), dir.path().join("many"));
    let (one, many) = (files(&one, 3), files(&many, 3));
    // Configuration 1's file holds another record at line 2 (index 1).
    for files in [&one, &many] {
        std::fs::create_dir_all(files[1].parent().unwrap()).unwrap();
        std::fs::write(
            &files[1],
            concat!(
                r#"{"pred":"0:1","answers":["0"],"all_classes":null,"length":0,"_id":"rec-0"}"#,
                "\n",
                r#"{"pred":"x","answers":["1"],"all_classes":null,"length":10,"_id":"other"}"#,
                "\n"
            ),
        )
        .unwrap();
    }
    let mut a = Fake::new(3, None);
    let mut b = Batched(Fake::new(3, None));
    let (ra, sa) = sweep(&data, &mut a, &one);
    let (rb, sb) = sweep(&data, &mut b, &many);
    for err in [ra.unwrap_err(), rb.unwrap_err()] {
        assert!(
            matches!(&err, PredictError::Mismatch { line: 2, found, .. } if found == "other"),
            "{err}"
        );
    }
    assert_eq!(sa, sb);
    assert_eq!(contents(&one), contents(&many));
    // Record 1 was generated for configuration 0 only, before the mismatch.
    assert_eq!(a.calls, [0, 2, 0]);
    assert_eq!(b.0.calls, [2, 0, 0]);
}
