//! The synthetic suite: deterministic, lengths as declared, gold answers really in the
//! context at the stated depth; and its files go through predict/evaluate like LongBench.

use std::collections::HashSet;

use cake_longbench::prompt::fill_template;
use cake_longbench::synthetic::TASKS;
use cake_longbench::{
    ApproxTokenizer, BoxError, GenerationOutcome, Generator, Haystack, LongBenchRecord,
    PromptTokenizer, StopRule, SuiteConfig, SuiteError, evaluate_dir, generate_suite,
    generate_task, predict_dataset, read_dataset, registry,
};

fn config<'a>(tok: &'a ApproxTokenizer, hay: &'a Haystack, seed: u64) -> SuiteConfig<'a> {
    let mut c = SuiteConfig::new(tok, hay);
    c.seed = seed;
    c.lengths = vec![1024, 2048];
    c.depths = vec![0.0, 0.3, 0.5, 1.0];
    c.samples_per_cell = 2;
    c
}

/// Relative character position of `needle` in `context`.
fn rel_pos(context: &str, needle: &str) -> f64 {
    let at = context
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in context"));
    context[..at].chars().count() as f64 / context.chars().count() as f64
}

fn between<'a>(s: &'a str, from: &str, to: &str) -> &'a str {
    let start = s.find(from).unwrap() + from.len();
    let end = s[start..].find(to).unwrap() + start;
    &s[start..end]
}

/// Index of the "Paragraph N:" (1-based) whose text contains `extract`, and the count.
fn paragraph_holding(context: &str, extract: &str) -> (usize, usize) {
    let paras: Vec<&str> = context.split("\n\n").collect();
    let idx = paras
        .iter()
        .position(|p| p.contains(extract))
        .expect("extract in a paragraph");
    assert!(paras[idx].starts_with(&format!("Paragraph {}: ", idx + 1)));
    (idx + 1, paras.len())
}

fn check_gold_at_depth(r: &LongBenchRecord) {
    let ans = &r.answers[0];
    let depth = r.depth;
    // Needles are placed at the sentence boundary nearest to the depth; filler sentences
    // are at most 240 characters, i.e. under 5% of a 1K-token context.
    let near = |pos: f64| {
        let d = depth.unwrap();
        assert!(
            (pos - d).abs() <= 0.05,
            "{}: answer at {pos:.3}, depth {d}",
            r.id
        );
    };
    match r.dataset.as_str() {
        "synth_passkey" => near(rel_pos(&r.context, &format!("The pass key is {ans}."))),
        "synth_multikey" => {
            let key = between(&r.input, "number for ", " mentioned");
            near(rel_pos(
                &r.context,
                &format!("magic numbers for {key} is: {ans}."),
            ));
            assert_eq!(r.context.matches("special magic numbers for").count(), 4);
        }
        "synth_multivalue" => {
            let key = between(&r.input, "numbers for ", " mentioned");
            let values: Vec<&str> = ans.split(' ').collect();
            assert_eq!(values.len(), 4);
            let positions: Vec<f64> = values
                .iter()
                .map(|v| rel_pos(&r.context, &format!("for {key} is: {v}.")))
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] <= w[1]),
                "gold lists values in order of appearance"
            );
            let d = depth.unwrap();
            assert!(
                positions.iter().any(|p| (p - d).abs() <= 0.05),
                "{}: no value near depth {d}",
                r.id
            );
        }
        "synth_kv" => {
            let key = between(&r.input, "key \"", "\"?");
            let line = format!("\"{key}\": \"{ans}\"");
            let lines: Vec<&str> = r.context.lines().filter(|l| l.contains("\": \"")).collect();
            let idx = lines
                .iter()
                .position(|l| l.contains(&line))
                .expect("pair in context");
            let want = (depth.unwrap() * (lines.len() - 1) as f64).round() as usize;
            assert_eq!(idx, want, "{}", r.id);
        }
        "synth_passage_retrieval" => {
            let (n, total) = paragraph_holding(&r.context, &r.input);
            assert_eq!(ans, &format!("Paragraph {n}"));
            assert_eq!(
                n - 1,
                (depth.unwrap() * (total - 1) as f64).round() as usize,
                "{}",
                r.id
            );
        }
        "synth_passage_count" => {
            assert!(depth.is_none());
            let unique: HashSet<&str> = r
                .context
                .split("\n\n")
                .map(|p| p.split_once(": ").expect("labelled paragraph").1)
                .collect();
            assert_eq!(ans, &unique.len().to_string());
            assert!(r.context.split("\n\n").count() >= unique.len());
        }
        "synth_vartrack" => {
            let names: Vec<&str> = ans.split(' ').collect();
            let value = between(&r.input, "the value ", " in the text");
            near(rel_pos(&r.context, &format!("VAR {} = {value}.", names[0])));
            let mut last = 0.0;
            for w in names.windows(2) {
                let p = rel_pos(&r.context, &format!("VAR {} = VAR {}.", w[1], w[0]));
                assert!(p >= last, "chain in order");
                last = p;
            }
        }
        "synth_fewshot" => {
            let item = between(&r.input, "Item: ", "\nType:");
            let example = format!("Item: {item}\nType: {ans}");
            let lines: Vec<&str> = r.context.split('\n').collect();
            let examples = lines.len() / 2;
            let idx = lines
                .iter()
                .position(|l| *l == format!("Item: {item}"))
                .unwrap()
                / 2;
            assert!(r.context.contains(&example));
            assert_eq!(r.context.matches(&format!("Item: {item}\n")).count(), 1);
            assert_eq!(
                idx,
                (depth.unwrap() * (examples - 1) as f64).round() as usize,
                "{}",
                r.id
            );
            assert!(r.all_classes.as_ref().unwrap().contains(ans));
        }
        other => panic!("unexpected task {other}"),
    }
}

/// The needle field: set for the single-needle tasks, its span holds its text, which holds
/// the gold answer.
fn check_needle(r: &LongBenchRecord) {
    let marked = [
        "synth_passkey",
        "synth_multikey",
        "synth_kv",
        "synth_fewshot",
    ];
    let Some(needle) = &r.needle else {
        assert!(!marked.contains(&r.dataset.as_str()), "{}: no needle", r.id);
        return;
    };
    assert!(marked.contains(&r.dataset.as_str()), "{}", r.id);
    let bytes = needle.byte_range(&r.context).expect("span holds the text");
    assert_eq!(&r.context[bytes], needle.text);
    assert_eq!(r.context.matches(&needle.text).count(), 1, "{}", r.id);
    assert!(needle.text.contains(&r.answers[0]), "{}", r.id);
}

#[test]
fn every_task_is_deterministic_sized_and_holds_its_gold_at_depth() {
    let hay = Haystack::excerpt();
    let tok = ApproxTokenizer::new();
    let cfg = config(&tok, &hay, 7);
    for task in TASKS {
        let a = generate_task(task, &cfg).unwrap();
        let b = generate_task(task, &cfg).unwrap();
        assert_eq!(a, b, "{task} is deterministic");
        let per_length = if task == "synth_passage_count" { 2 } else { 8 };
        assert_eq!(a.len(), 2 * per_length, "{task}");
        let spec = registry::lookup(task).unwrap();
        let ids: HashSet<&str> = a.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), a.len(), "{task}: unique ids");
        for r in &a {
            let target = if r.id.contains("-1024-") { 1024 } else { 2048 };
            let prompt = fill_template(&spec.prompt, r, task).unwrap();
            let tokens = tok.encode(&prompt).len();
            assert_eq!(
                r.length as usize, tokens,
                "{}: length is the prompt's token count",
                r.id
            );
            assert!(tokens <= target, "{}: {tokens} > {target}", r.id);
            // Passage tasks grow by whole passages (up to ~100 tokens), the others by a
            // sentence, a key-value line or an example.
            let fill = if task.contains("passage") { 0.85 } else { 0.9 };
            assert!(
                tokens as f64 >= fill * target as f64,
                "{}: only {tokens} of {target}",
                r.id
            );
            check_gold_at_depth(r);
            check_needle(r);
        }
        let other = generate_task(task, &config(&tok, &hay, 8)).unwrap();
        assert_ne!(a, other, "{task}: the seed matters");
    }
}

#[test]
fn bad_configurations_are_refused() {
    let hay = Haystack::excerpt();
    let tok = ApproxTokenizer::new();
    let mut cfg = config(&tok, &hay, 1);
    cfg.lengths = vec![20];
    assert!(matches!(
        generate_task("synth_passkey", &cfg),
        Err(SuiteError::LengthTooSmall { .. })
    ));
    cfg.lengths = vec![1024];
    cfg.depths = vec![1.5];
    assert!(matches!(
        generate_task("synth_passkey", &cfg),
        Err(SuiteError::Config(_))
    ));
    cfg.depths = vec![0.5];
    let err = generate_task("synth_nope", &cfg).unwrap_err().to_string();
    assert!(err.contains("synth_passkey"), "{err}");
    // The excerpt has about 60 distinct passages: not enough for 8K tokens of them.
    cfg.lengths = vec![8192];
    assert!(matches!(
        generate_task("synth_passage_retrieval", &cfg),
        Err(SuiteError::NotEnoughPassages { .. })
    ));
}

/// Answers with the gold of the record whose context is in the prompt, so the whole
/// pipeline must score 100. For first-line tasks it adds a second line, which the
/// first-line rule must drop.
struct Oracle {
    records: Vec<LongBenchRecord>,
    second_line: bool,
}

impl Generator for Oracle {
    fn generate(
        &mut self,
        prompt: &str,
        _max: usize,
        _stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        let r = self
            .records
            .iter()
            .find(|r| {
                prompt.contains(&r.input)
                    && prompt.contains(&r.context.chars().take(100).collect::<String>())
            })
            .ok_or("no record")?;
        let text = if self.second_line {
            format!("{}\nParagraph 99 999", r.answers[0])
        } else {
            r.answers[0].clone()
        };
        Ok(GenerationOutcome {
            text,
            prompt_tokens: 0,
            new_tokens: 1,
        })
    }
}

#[test]
fn suite_files_predict_and_evaluate_like_longbench() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let preds = dir.path().join("pred");
    let hay = Haystack::excerpt();
    let tok = ApproxTokenizer::new();
    let mut cfg = config(&tok, &hay, 3);
    cfg.lengths = vec![1024];
    cfg.depths = vec![0.5];
    cfg.samples_per_cell = 1;
    let files = generate_suite(&data, &cfg).unwrap();
    assert_eq!(files.len(), 8);
    for f in &files {
        let spec = registry::lookup(&f.task).unwrap();
        let records: Vec<LongBenchRecord> = read_dataset(&data, &f.task)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(records.len(), f.records);
        // The needle field survives the JSONL round trip.
        assert_eq!(records, generate_task(&f.task, &cfg).unwrap(), "{}", f.task);
        let mut oracle = Oracle {
            records,
            second_line: spec.first_line_only,
        };
        let out = preds.join(format!("{}.jsonl", f.task));
        let summary = predict_dataset(
            read_dataset(&data, &f.task).unwrap(),
            spec,
            &tok,
            &mut oracle,
            &out,
            4096,
            |_| {},
        )
        .unwrap();
        assert_eq!(summary.generated, f.records);
    }
    let result = evaluate_dir(&preds, false).unwrap();
    assert_eq!(result.scores.len(), 8);
    for (task, score) in &result.scores {
        assert_eq!(*score, cake_longbench::DatasetScore::Plain(100.0), "{task}");
    }
    assert_eq!(result.english16_average, None);
    assert_eq!(result.english16_missing.len(), 16);
}
