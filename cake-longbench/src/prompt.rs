//! Building a model prompt from a record the way LongBench's `pred.py` does: fill the
//! dataset's template, cut the middle out when the prompt has more than `max_length`
//! tokens (keep the first and the last `max_length / 2`, decode each back to text), then
//! apply the chat template unless the dataset is one that LongBench feeds raw.

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
