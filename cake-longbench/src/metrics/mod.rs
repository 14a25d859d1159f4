//! LongBench v1's metrics (`metrics.py`), ported with the same semantics, quirks included.
//!
//! Every function returns a score in [0, 1] for one (prediction, ground truth) pair; the
//! dataset-level rules (first-line truncation, max over gold answers, x100 and rounding)
//! live in [`crate::eval`]. Parity with the official Python code is checked by
//! `tests/metric_parity.rs` against `fixtures/metric_parity.json`.

pub mod difflib;
pub mod rouge;

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::pytext;

/// A metric failure that the official code would turn into a Python exception.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricError {
    /// `retrieval_score` / `retrieval_zh_score` found no paragraph id in the gold answer.
    #[error("gold answer {answer:?} contains no {pattern:?} followed by a number")]
    NoParagraphId {
        /// The gold answer.
        answer: String,
        /// "Paragraph " or "段落".
        pattern: &'static str,
    },
    /// `classification_score` needs the record's `all_classes`, which is null.
    #[error("classification needs `all_classes`, but the record has none")]
    MissingClasses,
}

/// One of LongBench's metric functions (named as in `metrics.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `qa_f1_score`: token F1 after answer normalisation.
    QaF1Score,
    /// `qa_f1_zh_score`: F1 over jieba words.
    QaF1ZhScore,
    /// `rouge_score`: Rouge-L F of the `rouge` package.
    RougeScore,
    /// `rouge_zh_score`: Rouge-L F over jieba words.
    RougeZhScore,
    /// `classification_score`: the all_classes matching rule.
    ClassificationScore,
    /// `retrieval_score`: share of numbers in the prediction equal to "Paragraph N"'s N.
    RetrievalScore,
    /// `retrieval_zh_score`: same with "段落N".
    RetrievalZhScore,
    /// `count_score`: share of numbers in the prediction equal to the gold count.
    CountScore,
    /// `code_sim_score`: fuzzywuzzy ratio of the first non-comment line.
    CodeSimScore,
}

impl Metric {
    /// All metrics.
    pub const ALL: [Metric; 9] = [
        Metric::QaF1Score,
        Metric::QaF1ZhScore,
        Metric::RougeScore,
        Metric::RougeZhScore,
        Metric::ClassificationScore,
        Metric::RetrievalScore,
        Metric::RetrievalZhScore,
        Metric::CountScore,
        Metric::CodeSimScore,
    ];

    /// The Python function name, e.g. `qa_f1_score`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::QaF1Score => "qa_f1_score",
            Metric::QaF1ZhScore => "qa_f1_zh_score",
            Metric::RougeScore => "rouge_score",
            Metric::RougeZhScore => "rouge_zh_score",
            Metric::ClassificationScore => "classification_score",
            Metric::RetrievalScore => "retrieval_score",
            Metric::RetrievalZhScore => "retrieval_zh_score",
            Metric::CountScore => "count_score",
            Metric::CodeSimScore => "code_sim_score",
        }
    }

    /// Look a metric up by its Python function name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Score one prediction against one gold answer.
    pub fn score(
        self,
        prediction: &str,
        ground_truth: &str,
        all_classes: Option<&[String]>,
    ) -> Result<f64, MetricError> {
        Ok(match self {
            Metric::QaF1Score => qa_f1_score(prediction, ground_truth),
            Metric::QaF1ZhScore => qa_f1_zh_score(prediction, ground_truth),
            Metric::RougeScore => rouge_score(prediction, ground_truth),
            Metric::RougeZhScore => rouge_zh_score(prediction, ground_truth),
            Metric::ClassificationScore => classification_score(
                prediction,
                ground_truth,
                all_classes.ok_or(MetricError::MissingClasses)?,
            ),
            Metric::RetrievalScore => retrieval_score(prediction, ground_truth)?,
            Metric::RetrievalZhScore => retrieval_zh_score(prediction, ground_truth)?,
            Metric::CountScore => count_score(prediction, ground_truth),
            Metric::CodeSimScore => code_sim_score(prediction, ground_truth),
        })
    }
}

/// `normalize_answer`: lowercase, drop ASCII punctuation, replace the articles a/an/the
/// (as `\b(a|an|the)\b`) by a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lowered = pytext::lower(s);
    let no_punc: String = lowered
        .chars()
        .filter(|&c| !pytext::is_ascii_punctuation(c))
        .collect();
    pytext::collapse_whitespace(&remove_articles(&no_punc))
}

/// `re.sub(r"\b(a|an|the)\b", " ", text)`.
fn remove_articles(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let is_word = |i: usize| chars.get(i).is_some_and(|&c| pytext::is_word_char(c));
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let at_boundary = i == 0 || !is_word(i - 1);
        let mut matched = 0;
        if at_boundary {
            // Alternatives are tried in order; each must end at a word boundary.
            for article in ["a", "an", "the"] {
                let len = article.chars().count();
                let fits =
                    chars.len() >= i + len && chars[i..i + len].iter().copied().eq(article.chars());
                if fits && !is_word(i + len) {
                    matched = len;
                    break;
                }
            }
        }
        if matched > 0 {
            out.push(' ');
            i += matched;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Chinese punctuation removed by `normalize_zh_answer` (in addition to ASCII punctuation).
const ZH_PUNCTUATION: &str = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.";

/// `normalize_zh_answer`: lowercase, drop ASCII and Chinese punctuation, remove whitespace.
pub fn normalize_zh_answer(s: &str) -> String {
    let lowered = pytext::lower(s);
    let no_punc: String = lowered
        .chars()
        .filter(|&c| !pytext::is_ascii_punctuation(c) && !ZH_PUNCTUATION.contains(c))
        .collect();
    pytext::split_whitespace(&no_punc).concat()
}

/// `f1_score` over token lists (multiset overlap).
pub fn f1_score<S: AsRef<str>>(prediction: &[S], ground_truth: &[S]) -> f64 {
    let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
    for t in prediction {
        counts.entry(t.as_ref()).or_default().0 += 1;
    }
    for t in ground_truth {
        counts.entry(t.as_ref()).or_default().1 += 1;
    }
    let num_same: usize = counts.values().map(|&(p, g)| p.min(g)).sum();
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / prediction.len() as f64;
    let recall = num_same as f64 / ground_truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// `qa_f1_score`.
pub fn qa_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    f1_score(&pytext::split_whitespace(&p), &pytext::split_whitespace(&g))
}

/// The shared jieba segmenter (default dictionary, loaded once).
fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: OnceLock<jieba_rs::Jieba> = OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// `list(jieba.cut(text, cut_all=False))` (precise mode with HMM), via jieba-rs.
///
/// jieba-rs 0.8 uses the same dictionary and HMM model as Python jieba 0.42.1 and agrees
/// on every Chinese string of the parity fixtures. Known ways it can differ: its "Han"
/// character class also covers the CJK extension blocks and U+9FD6..U+9FFF (Python's
/// stops at U+9FD5), and its whitespace class is Unicode `White_Space` (Python's `\s` also
/// matches U+001C..U+001F). Strings with such characters may be segmented differently.
pub fn jieba_cut(text: &str) -> Vec<&str> {
    jieba().cut(text, true)
}

/// `qa_f1_zh_score`.
pub fn qa_f1_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    let norm = |s: &str| -> Vec<String> {
        jieba_cut(s)
            .into_iter()
            .map(normalize_zh_answer)
            .filter(|t| !t.is_empty())
            .collect()
    };
    f1_score(&norm(prediction), &norm(ground_truth))
}

/// `rouge_score`: Rouge-L F (see [`rouge`]).
pub fn rouge_score(prediction: &str, ground_truth: &str) -> f64 {
    rouge::rouge_l_f(prediction, ground_truth, rouge::ROUGE_MAX_RECON_CALLS)
}

/// `rouge_zh_score`: Rouge-L F of the jieba words joined by spaces.
pub fn rouge_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = jieba_cut(prediction).join(" ");
    let g = jieba_cut(ground_truth).join(" ");
    rouge::rouge_l_f(&p, &g, rouge::ROUGE_ZH_MAX_RECON_CALLS)
}

/// `classification_score`, including its quirks: the removal loop mutates the list it
/// iterates (Python then skips the element after each removed one), and the
/// `em_match_list != 0` test is always true, so the difflib fallback never runs.
pub fn classification_score(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut em: Vec<&str> = all_classes
        .iter()
        .map(String::as_str)
        .filter(|c| prediction.contains(c))
        .collect();
    let mut idx = 0;
    while idx < em.len() {
        let term = em[idx];
        if ground_truth.contains(term) && term != ground_truth {
            // list.remove removes the first equal element, which may sit before idx.
            if let Some(pos) = em.iter().position(|&t| t == term) {
                em.remove(pos);
            }
        }
        idx += 1;
    }
    if em.contains(&ground_truth) {
        1.0 / em.len() as f64
    } else {
        0.0
    }
}

/// Share of the numbers in `prediction` that equal `target` (string equality).
fn share_equal(prediction: &str, target: &str) -> f64 {
    let numbers = pytext::find_digit_runs(prediction);
    if numbers.is_empty() {
        return 0.0;
    }
    let right = numbers.iter().filter(|&&n| n == target).count();
    right as f64 / numbers.len() as f64
}

/// `retrieval_score`.
pub fn retrieval_score(prediction: &str, ground_truth: &str) -> Result<f64, MetricError> {
    paragraph_retrieval(prediction, ground_truth, "Paragraph ")
}

/// `retrieval_zh_score`.
pub fn retrieval_zh_score(prediction: &str, ground_truth: &str) -> Result<f64, MetricError> {
    paragraph_retrieval(prediction, ground_truth, "段落")
}

/// Share of the numbers in `prediction` equal to the paragraph id that follows `pattern`
/// in `ground_truth`.
fn paragraph_retrieval(
    prediction: &str,
    ground_truth: &str,
    pattern: &'static str,
) -> Result<f64, MetricError> {
    let id = pytext::first_number_after(ground_truth, pattern).ok_or_else(|| {
        MetricError::NoParagraphId {
            answer: ground_truth.into(),
            pattern,
        }
    })?;
    Ok(share_equal(prediction, &id))
}

/// `count_score`.
pub fn count_score(prediction: &str, ground_truth: &str) -> f64 {
    share_equal(prediction, ground_truth)
}

/// `code_sim_score`: fuzzywuzzy ratio / 100 between the first prediction line without
/// "`", "#" or "//" (after leading newlines) and the gold line.
pub fn code_sim_score(prediction: &str, ground_truth: &str) -> f64 {
    let line = prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|l| !l.contains('`') && !l.contains('#') && !l.contains("//"))
        .unwrap_or("");
    f64::from(difflib::fuzz_ratio(line, ground_truth)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_answer("The Cat, a dog; an-apple!"),
            "cat dog anapple"
        );
        assert_eq!(normalize_answer("theatre another"), "theatre another");
        assert_eq!(normalize_zh_answer("北京，是 首都。"), "北京是首都");
    }

    #[test]
    fn qa_f1_hand_computed() {
        // pred tokens [paris, france], gold [paris]: p = 1/2, r = 1, f1 = 2/3.
        assert!((qa_f1_score("Paris, France", "paris") - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(qa_f1_score("", ""), 0.0);
    }

    #[test]
    fn classification_removal_quirk() {
        let classes: Vec<String> = ["Other", "Other number", "Number"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Matches: [Other, Other number, Number]. Gold "Other number": "Other" is in the gold
        // and is removed, then Python skips "Other number" and looks at "Number" (in the gold,
        // removed). Left: [Other number] -> 1.0.
        assert_eq!(
            classification_score("Other number", "Other number", &classes),
            1.0
        );
        // Matching is case-sensitive: "Number" is not in "Other number", so with gold
        // "Number" nothing matches it -> 0.0 (Python gives 0.0 too).
        assert_eq!(
            classification_score("Other number", "Number", &classes),
            0.0
        );
        // Prediction "Other number Number", gold "Number": no match is a strict part of the
        // gold, all 3 stay -> 1/3 (Python: 0.3333333333333333).
        assert_eq!(
            classification_score("Other number Number", "Number", &classes),
            1.0 / 3.0
        );
    }

    #[test]
    fn count_and_retrieval() {
        assert_eq!(count_score("3 or 4", "3"), 0.5);
        assert_eq!(retrieval_score("Paragraph 7", "Paragraph 7"), Ok(1.0));
        assert!(retrieval_score("7", "no id").is_err());
        assert_eq!(code_sim_score("# comment\nx = 1", "x = 1"), 1.0);
    }
}
