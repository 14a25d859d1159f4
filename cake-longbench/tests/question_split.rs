//! `--question after-compression`: where a prompt's question part starts
//! (`build_split_prompt`), checked by hand on a small record for every template, through
//! the middle cut and the chat template; and the prediction loop's use of it.

mod common;

use cake_longbench::{
    ApproxTokenizer, BoxError, GenerationOutcome, LongBenchRecord, PromptError, PromptTokenizer,
    QuestionProtocol, SplitPrompt, StopRule, SweepGenerator, build_prompt, build_split_prompt,
    predict_sweep, registry,
};

/// The approximate tokenizer with a chat template around the user message.
struct Chat(ApproxTokenizer);

impl PromptTokenizer for Chat {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.0.encode(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids)
    }
    fn apply_chat_template(&self, user: &str) -> String {
        format!("<system>Be brief.</system><user>{user}</user><assistant>")
    }
}

fn record(dataset: &str, context: &str) -> LongBenchRecord {
    LongBenchRecord {
        input: "Which one?".into(),
        context: context.into(),
        answers: vec!["a".into()],
        length: 3,
        dataset: dataset.into(),
        language: "en".into(),
        all_classes: None,
        id: format!("{dataset}-0"),
        depth: None,
        needle: None,
    }
}

/// Every template's question part for the input `Which one?`, written out from the
/// templates (`data/dataset2prompt.json`, `data/synthetic_tasks.json`): what follows the
/// context, then the chat template's tail where the dataset uses it.
const QUESTIONS: [(&str, &str); 29] = [
    (
        "narrativeqa",
        "\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: Which one?\n\nAnswer:</user><assistant>",
    ),
    (
        "qasper",
        "\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: Which one?\n\nAnswer:</user><assistant>",
    ),
    (
        "multifieldqa_en",
        "\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "multifieldqa_zh",
        "\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：Which one?\n回答：</user><assistant>",
    ),
    (
        "hotpotqa",
        "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "2wikimqa",
        "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "musique",
        "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "dureader",
        "\n\n请基于上述文章回答下面的问题。\n\n问题：Which one?\n回答：</user><assistant>",
    ),
    (
        "gov_report",
        "\n\nNow, write a one-page summary of the report.\n\nSummary:</user><assistant>",
    ),
    (
        "qmsum",
        "\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "multi_news",
        "\n\nNow, write a one-page summary of all the news.\n\nSummary:</user><assistant>",
    ),
    ("vcsum", "\n\n会议总结：</user><assistant>"),
    ("trec", "\nWhich one?"),
    ("triviaqa", "\n\nWhich one?"),
    ("samsum", "\n\nWhich one?"),
    ("lsht", "\nWhich one?"),
    (
        "passage_count",
        "\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: </user><assistant>",
    ),
    (
        "passage_retrieval_en",
        "\n\nThe following is an abstract.\n\nWhich one?\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: </user><assistant>",
    ),
    (
        "passage_retrieval_zh",
        "\n\n下面是一个摘要\n\nWhich one?\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：</user><assistant>",
    ),
    ("lcc", "Next line of code:\n"),
    ("repobench-p", "Which one?Next line of code:\n"),
    (
        "synth_passkey",
        "\n\nNow answer the question. Only give me the number and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "synth_multikey",
        "\n\nNow answer the question. Only give me the number and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "synth_multivalue",
        "\n\nNow answer the question. Give all the numbers, separated by spaces, and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "synth_kv",
        "\n\nOnly give me the value and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    (
        "synth_passage_retrieval",
        "\n\nThe following is an abstract.\n\nWhich one?\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: </user><assistant>",
    ),
    (
        "synth_passage_count",
        "\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: </user><assistant>",
    ),
    (
        "synth_vartrack",
        "\n\nNow answer the question. Give the variable names separated by spaces and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>",
    ),
    ("synth_fewshot", "\nWhich one?"),
];

/// For every dataset: the split prompt is `build_prompt`'s, its question part is the
/// hand-written one, and its context part is the rest (the chat template's head, the
/// template before the context, the context).
#[test]
fn every_template_splits_after_its_context() {
    let tok = Chat(ApproxTokenizer::new());
    assert_eq!(QUESTIONS.len(), registry::all().len());
    for (name, question) in QUESTIONS {
        let spec = registry::lookup(name).unwrap();
        let r = record(name, "Alpha beta. Gamma delta.");
        let split = build_split_prompt(&r, spec, &tok, 10_000).unwrap();
        assert_eq!(
            split.prompt,
            build_prompt(&r, spec, &tok, 10_000).unwrap(),
            "{name}"
        );
        assert_eq!(split.question(), question, "{name}");
        assert!(
            split.context().ends_with("Alpha beta. Gamma delta."),
            "{name}: {:?}",
            split.context()
        );
        assert_eq!(
            split.context().len() + split.question().len(),
            split.prompt.text.len()
        );
    }
    // Two written out whole.
    let hotpot = build_split_prompt(
        &record("hotpotqa", "P1. P2."),
        registry::lookup("hotpotqa").unwrap(),
        &tok,
        10_000,
    )
    .unwrap();
    assert_eq!(
        hotpot.context(),
        "<system>Be brief.</system><user>Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\nP1. P2."
    );
    let trec = build_split_prompt(
        &record("trec", "Q: x\nType: y"),
        registry::lookup("trec").unwrap(),
        &tok,
        10_000,
    )
    .unwrap();
    assert_eq!(
        trec.context(),
        "Please determine the type of the question below. Here are some examples of questions.\n\nQ: x\nType: y"
    );
    assert_eq!(trec.question(), "\nWhich one?");
}

/// A prompt over `max_length` is cut in the middle as `build_prompt` cuts it; the question
/// part stays whole at the end of the kept tail. When the cut reaches into it, or the
/// template has no context, the error says so.
#[test]
fn the_middle_cut_keeps_the_question_whole_or_says_why_not() {
    let tok = Chat(ApproxTokenizer::new());
    let spec = registry::lookup("synth_kv").unwrap();
    let context = (0..200).map(|i| format!(" word{i}")).collect::<String>();
    let r = record("synth_kv", &context);
    let split = build_split_prompt(&r, spec, &tok, 60).unwrap();
    assert!(split.prompt.truncated);
    assert_eq!(split.prompt, build_prompt(&r, spec, &tok, 60).unwrap());
    assert_eq!(
        split.question(),
        "\n\nOnly give me the value and do not output any other words.\n\nQuestion: Which one?\nAnswer:</user><assistant>"
    );
    // The kept tail (30 pieces: the question's 20 and the context's last 10) ends it.
    assert!(
        split.context().ends_with(" word198 word199"),
        "{:?}",
        split.context()
    );
    assert!(!split.context().contains(" word100 "));
    // 16 pieces kept at the end cannot hold the question's 20.
    let err = build_split_prompt(&r, spec, &tok, 32).unwrap_err();
    assert!(
        matches!(err, PromptError::QuestionNotFound { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("synth_kv-0") && err.to_string().contains("--max-length"),
        "{err}"
    );
    let mut no_context = spec.clone();
    no_context.prompt = "Answer {input}".into();
    let err = build_split_prompt(&r, &no_context, &tok, 1000).unwrap_err();
    assert!(matches!(err, PromptError::NoContext { .. }), "{err:?}");
}

/// The protocol's names, in flags, settings files and manifests.
#[test]
fn protocol_names_parse_in_any_case() {
    assert_eq!(
        "After-Compression".parse::<QuestionProtocol>().unwrap(),
        QuestionProtocol::AfterCompression
    );
    assert_eq!(
        " in-prompt ".parse::<QuestionProtocol>().unwrap(),
        QuestionProtocol::InPrompt
    );
    let err = "after".parse::<QuestionProtocol>().unwrap_err().to_string();
    assert!(err.contains("in-prompt, after-compression"), "{err}");
    assert_eq!(
        serde_json::to_string(&QuestionProtocol::AfterCompression).unwrap(),
        "\"after-compression\""
    );
    assert_eq!(
        serde_json::from_str::<QuestionProtocol>("\"IN-PROMPT\"").unwrap(),
        QuestionProtocol::InPrompt
    );
    assert!(QuestionProtocol::default().is_in_prompt());
}

/// Records what the loop hands it: whole prompts, or split ones.
struct Recorder {
    question: QuestionProtocol,
    split: bool,
    prompts: Vec<String>,
    questions: Vec<String>,
}

impl SweepGenerator for Recorder {
    fn configurations(&self) -> usize {
        1
    }
    fn question(&self) -> QuestionProtocol {
        self.question
    }
    fn prepare(&mut self, prompt: &str) -> Result<(), BoxError> {
        self.prompts.push(prompt.to_string());
        Ok(())
    }
    fn prepare_split(&mut self, prompt: &SplitPrompt) -> Result<(), BoxError> {
        if !self.split {
            return Err("no split".into());
        }
        self.prompts.push(prompt.prompt.text.clone());
        self.questions.push(prompt.question().to_string());
        Ok(())
    }
    fn generate(
        &mut self,
        _: usize,
        _: usize,
        _: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        Ok(GenerationOutcome {
            text: format!("{}", self.prompts.len()),
            prompt_tokens: 1,
            new_tokens: 1,
        })
    }
}

/// The loop prepares whole prompts for an in-prompt generator and split ones (the same
/// text, with the question part `build_split_prompt` gives) for an after-compression one;
/// the prediction files are written the same way.
#[test]
fn the_loop_splits_prompts_for_after_compression_generators() {
    let tok = ApproxTokenizer::new();
    let spec = registry::lookup("passage_count").unwrap();
    let records: Vec<LongBenchRecord> = (0..3).map(|i| common::record(i, 2, 10)).collect();
    let dir = tempfile::tempdir().unwrap();
    let run = |question, split: bool| {
        let mut generator = Recorder {
            question,
            split,
            prompts: Vec::new(),
            questions: Vec::new(),
        };
        let files = [dir
            .path()
            .join(format!("{question}-{split}"))
            .join("passage_count.jsonl")];
        let result = predict_sweep(
            records.iter().cloned().map(Ok),
            spec,
            &tok,
            &mut generator,
            &files,
            10_000,
            |_| {},
        );
        (
            result.map(|_| std::fs::read_to_string(&files[0]).unwrap()),
            generator,
        )
    };
    let (whole, in_prompt) = run(QuestionProtocol::InPrompt, true);
    let (split, after) = run(QuestionProtocol::AfterCompression, true);
    assert_eq!(in_prompt.prompts, after.prompts);
    assert!(in_prompt.questions.is_empty());
    let want: Vec<String> = records
        .iter()
        .map(|r| {
            build_split_prompt(r, spec, &tok, 10_000)
                .unwrap()
                .question()
                .to_string()
        })
        .collect();
    assert_eq!(after.questions, want);
    assert!(
        want[0].starts_with("\n\nPlease enter the final count"),
        "{want:?}"
    );
    assert_eq!(whole.unwrap(), split.unwrap());
    // A generator without a split reader fails the record, naming it.
    let (failed, _) = run(QuestionProtocol::AfterCompression, false);
    let err = failed.unwrap_err().to_string();
    assert!(err.contains("rec-0") && err.contains("no split"), "{err}");
}
