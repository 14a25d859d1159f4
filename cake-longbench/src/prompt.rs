//! Building a model prompt from a record the way LongBench's `pred.py` does: fill the
//! dataset's template, cut the middle out when the prompt has more than `max_length`
//! tokens (keep the first and the last `max_length / 2`, decode each back to text), then
//! apply the chat template unless the dataset is one that LongBench feeds raw.
//!
//! Where the question goes relative to the compression is a [`QuestionProtocol`]: inside
//! the compressed prompt (the paper's protocol, the default), or read after the context was
//! compressed (kvpress's). For the latter, [`build_split_prompt`] builds the same prompt
//! and says where its question starts (the one definition of that split).

use crate::record::LongBenchRecord;
use crate::registry::DatasetSpec;

/// The model's tokenizer as prompt building needs it. The CLI plugs the real model's
/// tokenizer in; [`crate::approx_tokenizer::ApproxTokenizer`] stands in for tests.
pub trait PromptTokenizer {
    /// Token ids of `text`, special tokens added the way the model's tokenizer adds them to
    /// a plain call (Hugging Face `tokenizer(text).input_ids`, e.g. a leading BOS).
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Text of `ids`, special tokens skipped (`skip_special_tokens=True`).
    fn decode(&self, ids: &[u32]) -> String;
    /// The model's chat template around one user message, ready for generation (the
    /// assistant turn opened).
    fn apply_chat_template(&self, user: &str) -> String;
}

/// A template could not be filled.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PromptError {
    /// The template names a field records do not have (or one that is not text).
    #[error(
        "prompt template of {dataset} uses {{{field}}}, which is not a text field of a LongBench record (use context, input, dataset, language, _id or length)"
    )]
    UnknownField {
        /// Dataset whose template failed.
        dataset: String,
        /// The field name.
        field: String,
    },
    /// The template has no `{context}`, so no question can follow it
    /// ([`build_split_prompt`]).
    #[error(
        "prompt template of {dataset} has no {{context}}: --question after-compression needs a context to compress before the question"
    )]
    NoContext {
        /// Dataset whose template failed.
        dataset: String,
    },
    /// The question part of a prompt could not be found whole in the prompt text: the
    /// middle cut reached into it, or the chat template rewrote it ([`build_split_prompt`]).
    #[error(
        "record {id} of {dataset}: the question part of the prompt is not whole in the prompt text ({why}); --question after-compression needs it whole: raise --max-length"
    )]
    QuestionNotFound {
        /// Dataset of the record.
        dataset: String,
        /// Record id.
        id: String,
        /// What went wrong.
        why: &'static str,
    },
    /// Unbalanced braces (Python's `str.format` raises on these too).
    #[error(
        "prompt template of {dataset} has an unmatched brace at byte {at}; write {{{{ or }}}} for a literal brace"
    )]
    UnmatchedBrace {
        /// Dataset whose template failed.
        dataset: String,
        /// Byte offset in the template.
        at: usize,
    },
}

/// Where a record's question goes relative to the compression of its prompt (`cake pred
/// --question`, settings key `question`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuestionProtocol {
    /// The paper's protocol: the whole prompt, question included, is prefilled and
    /// compressed, then the answer is generated.
    #[default]
    InPrompt,
    /// kvpress's protocol: the context part of the prompt is prefilled and compressed
    /// first (as a cached document that serves many questions), then the question part
    /// (see [`build_split_prompt`]) is read against the compressed cache without being
    /// compressed, then the answer is generated. kvpress notes that putting the question
    /// inside the compressed prompt favours scorers that look at the prompt's last tokens
    /// (SnapKV-like window scores).
    AfterCompression,
}

impl QuestionProtocol {
    /// Every protocol with its name, as flags and settings files write it.
    pub const ALL: &'static [(QuestionProtocol, &'static str)] = &[
        (QuestionProtocol::InPrompt, "in-prompt"),
        (QuestionProtocol::AfterCompression, "after-compression"),
    ];

    /// The name, as flags, settings files and manifests write it.
    pub fn name(self) -> &'static str {
        match self {
            QuestionProtocol::InPrompt => "in-prompt",
            QuestionProtocol::AfterCompression => "after-compression",
        }
    }

    /// True for the default, [`QuestionProtocol::InPrompt`] (serde's
    /// `skip_serializing_if`: settings written before the protocol existed keep their
    /// identity).
    pub fn is_in_prompt(&self) -> bool {
        *self == QuestionProtocol::InPrompt
    }
}

impl std::fmt::Display for QuestionProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A question protocol name that is not one.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("unknown question protocol {0:?}; use one of: in-prompt, after-compression")]
pub struct UnknownQuestionProtocol(pub String);

impl std::str::FromStr for QuestionProtocol {
    type Err = UnknownQuestionProtocol;

    /// The name, in any case, surrounding spaces ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_lowercase();
        Self::ALL
            .iter()
            .find(|(_, name)| *name == wanted)
            .map(|(p, _)| *p)
            .ok_or_else(|| UnknownQuestionProtocol(text.to_string()))
    }
}

impl serde::Serialize for QuestionProtocol {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for QuestionProtocol {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Python `template.format(**record)` for the fields a template may use.
pub fn fill_template(
    template: &str,
    record: &LongBenchRecord,
    dataset: &str,
) -> Result<String, PromptError> {
    let mut out = String::with_capacity(template.len() + record.context.len() + record.input.len());
    let mut rest = template;
    let mut offset = 0;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            offset += pos + 2;
            continue;
        }
        let unmatched = || PromptError::UnmatchedBrace {
            dataset: dataset.to_string(),
            at: offset + pos,
        };
        if tail.starts_with('}') {
            return Err(unmatched());
        }
        let end = tail.find('}').ok_or_else(unmatched)?;
        let field = &tail[1..end];
        let length;
        let value: &str = match field {
            "context" => &record.context,
            "input" => &record.input,
            "dataset" => &record.dataset,
            "language" => &record.language,
            "_id" => &record.id,
            "length" => {
                length = record.length.to_string();
                &length
            }
            _ => {
                return Err(PromptError::UnknownField {
                    dataset: dataset.to_string(),
                    field: field.to_string(),
                });
            }
        };
        out.push_str(value);
        rest = &tail[end + 1..];
        offset += pos + end + 1;
    }
    out.push_str(rest);
    Ok(out)
}

/// The ids LongBench keeps when a prompt is too long: the first and the last
/// `max_length / 2` (integer division; an odd `max_length` keeps one token less).
/// Returns `None` when the prompt fits.
pub fn middle_cut(ids: &[u32], max_length: usize) -> Option<(&[u32], &[u32])> {
    if ids.len() <= max_length {
        return None;
    }
    let half = max_length / 2;
    Some((&ids[..half], &ids[ids.len() - half..]))
}

/// A prompt ready for the generator.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltPrompt {
    /// The text to generate from (chat template applied where the dataset uses it).
    pub text: String,
    /// Tokens of the filled template before truncation.
    pub original_tokens: usize,
    /// Whether the middle was cut out.
    pub truncated: bool,
}

/// Fill the template, truncate the middle to `max_length` tokens, apply the chat template
/// where LongBench does.
pub fn build_prompt<T: PromptTokenizer + ?Sized>(
    record: &LongBenchRecord,
    spec: &DatasetSpec,
    tokenizer: &T,
    max_length: usize,
) -> Result<BuiltPrompt, PromptError> {
    let filled = fill_template(&spec.prompt, record, &spec.name)?;
    let ids = tokenizer.encode(&filled);
    let (text, truncated) = match middle_cut(&ids, max_length) {
        Some((head, tail)) => (tokenizer.decode(head) + &tokenizer.decode(tail), true),
        None => (filled, false),
    };
    let text = if spec.chat_template {
        tokenizer.apply_chat_template(&text)
    } else {
        text
    };
    Ok(BuiltPrompt {
        text,
        original_tokens: ids.len(),
        truncated,
    })
}

/// A prompt and where its question part starts: [`build_split_prompt`]'s result.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitPrompt {
    /// The whole prompt, equal to [`build_prompt`]'s.
    pub prompt: BuiltPrompt,
    /// Byte offset in `prompt.text` where the question part starts (a char boundary,
    /// strictly inside the text).
    pub question_start: usize,
}

impl SplitPrompt {
    /// The part prefilled and compressed: the chat template's head, the template up to the
    /// context, and the context (middle-cut where the prompt was too long).
    pub fn context(&self) -> &str {
        &self.prompt.text[..self.question_start]
    }

    /// The part read after compression: the template after the context (the question and
    /// the instructions around it) and the chat template's tail (the generation prompt).
    pub fn question(&self) -> &str {
        &self.prompt.text[self.question_start..]
    }
}

/// [`build_prompt`], and where the question starts in its text: the one definition of the
/// split that `--question after-compression` uses.
///
/// The **question part** is everything the dataset's template puts after its (last)
/// `{context}` (LongBench's templates and the synthetic suite's all put the question after
/// the context; in templates without `{input}`, such as summaries and passage counts, it
/// is the task's closing instruction), followed by whatever the chat template adds after
/// the user message (the generation prompt). The **context part** is everything before it.
/// The two concatenated are exactly [`build_prompt`]'s text, so both protocols read the
/// same text.
///
/// The middle cut is LongBench's, on the whole filled template as [`build_prompt`] does
/// it; the question part must then be whole at the end of the kept tail (the decoded tail
/// ends with it), and the chat template must hold the user message verbatim (or trimmed).
///
/// # Errors
/// [`PromptError::NoContext`] for a template without `{context}`;
/// [`PromptError::QuestionNotFound`] when the middle cut reached into the question part
/// (raise `max_length`) or the chat template rewrote the message; template errors as
/// [`build_prompt`].
pub fn build_split_prompt<T: PromptTokenizer + ?Sized>(
    record: &LongBenchRecord,
    spec: &DatasetSpec,
    tokenizer: &T,
    max_length: usize,
) -> Result<SplitPrompt, PromptError> {
    const MARKER: &str = "\u{0}cake-question-context\u{0}";
    let mut marked = record.clone();
    marked.context = MARKER.to_string();
    let marked = fill_template(&spec.prompt, &marked, &spec.name)?;
    let Some(at) = marked.rfind(MARKER) else {
        return Err(PromptError::NoContext {
            dataset: spec.name.clone(),
        });
    };
    // What follows the last context: no other field depends on the context.
    let suffix = &marked[at + MARKER.len()..];
    let not_found = |why| PromptError::QuestionNotFound {
        dataset: spec.name.clone(),
        id: record.id.clone(),
        why,
    };
    let filled = fill_template(&spec.prompt, record, &spec.name)?;
    let ids = tokenizer.encode(&filled);
    let (text, start, truncated) = match middle_cut(&ids, max_length) {
        None => {
            let start = filled.len() - suffix.len();
            (filled, start, false)
        }
        Some((head, tail)) => {
            let (head, tail) = (tokenizer.decode(head), tokenizer.decode(tail));
            // The question part, whole at the end of the kept tail (a tokenizer that drops
            // the leading space of a decoded piece may drop the part's leading spaces).
            let part = [suffix, suffix.trim_start()]
                .into_iter()
                .find(|part| !part.is_empty() && tail.ends_with(part))
                .ok_or_else(|| not_found("the middle cut reached into it"))?;
            let start = head.len() + tail.len() - part.len();
            (head + &tail, start, true)
        }
    };
    let (text, start) = if spec.chat_template {
        let templated = tokenizer.apply_chat_template(&text);
        let start = match templated.find(&text) {
            Some(off) => off + start,
            None => {
                let trimmed = text.trim();
                let lead = text.len() - text.trim_start().len();
                let off = templated
                    .find(trimmed)
                    .filter(|_| start >= lead && start < lead + trimmed.len())
                    .ok_or_else(|| not_found("the chat template does not hold it verbatim"))?;
                off + start - lead
            }
        };
        (templated, start)
    } else {
        (text, start)
    };
    if start == 0 || start >= text.len() || !text.is_char_boundary(start) {
        return Err(not_found("the context or the question part is empty"));
    }
    Ok(SplitPrompt {
        prompt: BuiltPrompt {
            text,
            original_tokens: ids.len(),
            truncated,
        },
        question_start: start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approx_tokenizer::{ApproxTokenizer, WithChat};
    use crate::registry;

    fn record(context: &str, input: &str) -> LongBenchRecord {
        LongBenchRecord {
            input: input.into(),
            context: context.into(),
            answers: vec!["a".into()],
            length: 3,
            dataset: "trec".into(),
            language: "en".into(),
            all_classes: None,
            id: "id7".into(),
            depth: None,
            needle: None,
        }
    }

    #[test]
    fn fills_like_str_format() {
        let r = record("C {input} }", "Q");
        // Substituted values are not re-scanned; doubled braces are literals.
        assert_eq!(
            fill_template("{{x}} {context}|{input}|{_id}|{length}", &r, "d").unwrap(),
            "{x} C {input} }|Q|id7|3"
        );
        assert!(matches!(
            fill_template("{answers}", &r, "d"),
            Err(PromptError::UnknownField { .. })
        ));
        assert!(matches!(
            fill_template("a } b", &r, "d"),
            Err(PromptError::UnmatchedBrace { at: 2, .. })
        ));
        assert!(matches!(
            fill_template("a {context", &r, "d"),
            Err(PromptError::UnmatchedBrace { .. })
        ));
    }

    #[test]
    fn chat_rule_follows_the_dataset() {
        let tok = WithChat(ApproxTokenizer::new(), |user| {
            format!("<user>{user}</user>")
        });
        let r = record("ctx", "q");
        let trec = build_prompt(&r, registry::lookup("trec").unwrap(), &tok, 1000).unwrap();
        assert!(!trec.text.starts_with("<user>") && !trec.truncated);
        let qa = build_prompt(&r, registry::lookup("hotpotqa").unwrap(), &tok, 1000).unwrap();
        assert!(qa.text.starts_with("<user>Answer the question"));
    }
}
