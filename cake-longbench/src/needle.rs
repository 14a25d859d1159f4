//! Where a record's needle ([`NeedleSpan`](crate::record::NeedleSpan), the `needle` field
//! the synthetic suite writes) ends up in the model's prompt, in bytes of the prompt text and
//! then in token positions.
//!
//! The prompt is built as [`build_prompt`](crate::prompt::build_prompt) builds it: template
//! filled, middle cut to `max_length` tokens, chat template applied. The needle's character
//! span in `context` is carried through each step:
//!
//! 1. Filling: the context is inserted verbatim, at the byte offset where a marker put in
//!    its place appears in the filled template.
//! 2. Middle cut: the kept text is `decode(head) + decode(tail)`, which need not reproduce
//!    the original bytes, so the needle is found by its text: the `k`-th occurrence of the
//!    needle's text in the filled prompt is the `k`-th occurrence in `decode(head)` when the
//!    head holds more than `k`, else the same occurrence counted from the end in
//!    `decode(tail)`; otherwise the cut removed it (`None`).
//! 3. Chat template: the user message is found verbatim in the templated text (or trimmed,
//!    for templates that trim it).
//!
//! Token positions then come from the tokenizer's byte offsets of each token in the final
//! prompt text ([`token_span`]): the tokens whose offsets overlap the needle's bytes. This
//! is exact whatever the tokenizer merges at the needle's edges (a leading space glued to
//! the needle's first word, say), where tokenizing the needle alone and searching its ids
//! in the prompt's ids would miss; tokens the tokenizer adds itself (BOS) have empty
//! offsets and are never counted.

use std::ops::Range;

use crate::prompt::{BuiltPrompt, PromptError, PromptTokenizer, fill_template, middle_cut};
use crate::record::LongBenchRecord;
use crate::registry::DatasetSpec;

/// Locating a needle failed.
#[derive(Debug, thiserror::Error)]
pub enum NeedleError {
    /// The record carries no `needle` field.
    #[error(
        "record {id} has no `needle` field: write the data with `cake suite` (its passkey, multi-key, key-value and few-shot tasks mark their needle) or add \"needle\": {{\"text\": ..., \"char_start\": ..., \"char_end\": ...}} (character offsets in context)"
    )]
    Missing {
        /// Record id.
        id: String,
    },
    /// The span does not hold the needle's text in the context.
    #[error(
        "record {id}: its needle span {char_start}..{char_end} does not hold the needle's text {text:?} in the context; fix the record's `needle` field (character offsets, context[char_start:char_end] == text)"
    )]
    Mismatch {
        /// Record id.
        id: String,
        /// The needle's text.
        text: String,
        /// Its claimed first character.
        char_start: usize,
        /// Its claimed end.
        char_end: usize,
    },
    /// The dataset's template has no `{context}`, or the chat template rewrote the message.
    #[error("record {id}: the needle cannot be placed in the prompt: {why}")]
    NotPlaced {
        /// Record id.
        id: String,
        /// What went wrong.
        why: String,
    },
    /// Template filling failed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

/// A prompt built from a record, with its needle's place in it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptWithNeedle {
    /// The prompt, equal to what [`build_prompt`](crate::prompt::build_prompt) returns.
    pub prompt: BuiltPrompt,
    /// The needle's byte range in `prompt.text`; `None` when the middle cut removed it.
    pub bytes: Option<Range<usize>>,
}

/// Builds the prompt of `record` (as [`build_prompt`](crate::prompt::build_prompt) does)
/// and locates the record's needle in it (see the module doc).
pub fn locate_needle<T: PromptTokenizer + ?Sized>(
    record: &LongBenchRecord,
    spec: &DatasetSpec,
    tokenizer: &T,
    max_length: usize,
) -> Result<PromptWithNeedle, NeedleError> {
    let needle = record.needle.as_ref().ok_or_else(|| NeedleError::Missing {
        id: record.id.clone(),
    })?;
    let in_context = needle
        .byte_range(&record.context)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| NeedleError::Mismatch {
            id: record.id.clone(),
            text: needle.text.clone(),
            char_start: needle.char_start,
            char_end: needle.char_end,
        })?;
    let not_placed = |why: &str| NeedleError::NotPlaced {
        id: record.id.clone(),
        why: why.to_string(),
    };
    // 1. Filling: where the context goes.
    const MARKER: &str = "\u{0}cake-needle-context\u{0}";
    let mut marked = record.clone();
    marked.context = MARKER.to_string();
    let at = fill_template(&spec.prompt, &marked, &spec.name)?
        .find(MARKER)
        .ok_or_else(|| not_placed("the dataset's prompt template has no {context}"))?;
    let filled = fill_template(&spec.prompt, record, &spec.name)?;
    let in_filled = at + in_context.start..at + in_context.end;
    // 2. Middle cut.
    let ids = tokenizer.encode(&filled);
    let (text, bytes, truncated) = match middle_cut(&ids, max_length) {
        None => (filled.clone(), Some(in_filled), false),
        Some((head, tail)) => {
            let (head, tail) = (tokenizer.decode(head), tokenizer.decode(tail));
            let all = occurrences(&filled, &needle.text);
            let k = all
                .iter()
                .position(|&s| s == in_filled.start)
                .ok_or_else(|| not_placed("the needle's text is not at its span"))?;
            let from_end = all.len() - 1 - k;
            let in_head = occurrences(&head, &needle.text);
            let in_tail = occurrences(&tail, &needle.text);
            let start = if k < in_head.len() {
                Some(in_head[k])
            } else if from_end < in_tail.len() {
                Some(head.len() + in_tail[in_tail.len() - 1 - from_end])
            } else {
                None
            };
            let bytes = start.map(|s| s..s + needle.text.len());
            (head + &tail, bytes, true)
        }
    };
    // 3. Chat template.
    let (text, bytes) = if spec.chat_template {
        let templated = tokenizer.apply_chat_template(&text);
        let shift = match templated.find(&text) {
            Some(off) => bytes.map(|b| b.start + off..b.end + off),
            None => {
                let trimmed = text.trim();
                let lead = text.len() - text.trim_start().len();
                let off = templated.find(trimmed).ok_or_else(|| {
                    not_placed("the chat template does not hold the prompt verbatim")
                })?;
                bytes
                    .filter(|b| b.start >= lead && b.end <= lead + trimmed.len())
                    .map(|b| b.start - lead + off..b.end - lead + off)
            }
        };
        (templated, shift)
    } else {
        (text, bytes)
    };
    Ok(PromptWithNeedle {
        prompt: BuiltPrompt {
            text,
            original_tokens: ids.len(),
            truncated,
        },
        bytes,
    })
}

/// Start bytes of every occurrence of `pattern` in `text`, overlapping ones included.
fn occurrences(text: &str, pattern: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text.get(from..).and_then(|t| t.find(pattern)) {
        out.push(from + i);
        // Next char boundary after this start.
        from += i + text[from + i..].chars().next().map_or(1, char::len_utf8);
    }
    out
}

/// Token positions whose byte `offsets` (one `(start, end)` per token, in the prompt text,
/// as a tokenizer reports them) overlap `bytes`: the first to one past the last. Tokens
/// with empty offsets (special tokens the tokenizer adds) never overlap. `None` when no
/// token does.
pub fn token_span(offsets: &[(usize, usize)], bytes: &Range<usize>) -> Option<Range<usize>> {
    let overlaps = |&(s, e): &(usize, usize)| s < e && s < bytes.end && e > bytes.start;
    let first = offsets.iter().position(overlaps)?;
    let last = offsets.iter().rposition(overlaps)?;
    Some(first..last + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approx_tokenizer::{ApproxTokenizer, WithChat};
    use crate::prompt::build_prompt;
    use crate::record::NeedleSpan;
    use crate::registry;

    const NEEDLE: &str = "The pass key is 48213. Remember it. 48213 is the pass key.";

    /// A passkey record: `before` filler sentences, the needle, `after` filler sentences.
    fn record(before: usize, after: usize) -> LongBenchRecord {
        let filler = |n: usize, tag: &str| -> Vec<String> {
            (0..n)
                .map(|i| format!("Filler sentence {tag}{i} about whales."))
                .collect()
        };
        let mut parts = filler(before, "a");
        parts.push(NEEDLE.into());
        parts.extend(filler(after, "b"));
        let context = parts.join(" ");
        LongBenchRecord {
            input: "What is the pass key?".into(),
            needle: NeedleSpan::find(&context, NEEDLE),
            context,
            answers: vec!["48213".into()],
            length: 0,
            dataset: "synth_passkey".into(),
            language: "en".into(),
            all_classes: None,
            id: "hand-made".into(),
            depth: None,
        }
    }

    /// Byte offsets of the approximate tokenizer's pieces in `text`.
    fn offsets(text: &str) -> Vec<(usize, usize)> {
        ApproxTokenizer::pieces(text)
            .iter()
            .map(|p| {
                let start = p.as_ptr() as usize - text.as_ptr() as usize;
                (start, start + p.len())
            })
            .collect()
    }

    /// Position of `needle` in `hay`, as a run of ids.
    fn find_ids(hay: &[u32], needle: &[u32]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    /// Checks that the needle's tokens, by offsets, are where its ids sit in the prompt ids.
    fn check(tok: &ApproxTokenizer, found: &PromptWithNeedle) -> Range<usize> {
        let bytes = found.bytes.clone().expect("needle in the prompt");
        assert_eq!(&found.prompt.text[bytes.clone()], NEEDLE);
        let ids = tok.encode(&found.prompt.text);
        let span = token_span(&offsets(&found.prompt.text), &bytes).unwrap();
        // In the prompt the needle follows a space or a blank line, glued to its first
        // word; its ids encoded that way sit exactly at the span.
        let lead = &found.prompt.text[..bytes.start];
        let ws = lead.len() - lead.trim_end().len();
        let needle_ids = tok.encode(&found.prompt.text[bytes.start - ws..bytes.end]);
        assert_eq!(find_ids(&ids, &needle_ids), Some(span.start));
        assert_eq!(span.len(), needle_ids.len());
        span
    }

    #[test]
    fn needle_tokens_are_where_its_ids_sit_in_the_prompt() {
        let tok = ApproxTokenizer::new();
        let spec = registry::lookup("synth_passkey").unwrap();
        // Fits: the prompt equals build_prompt's.
        let r = record(30, 30);
        let found = locate_needle(&r, spec, &tok, 100_000).unwrap();
        assert_eq!(found.prompt, build_prompt(&r, spec, &tok, 100_000).unwrap());
        assert!(!found.prompt.truncated);
        let span = check(&tok, &found);
        assert_eq!(span.len(), 15, "{span:?}");
        // At depth 0 the needle follows the template's blank line.
        check(
            &tok,
            &locate_needle(&record(0, 30), spec, &tok, 100_000).unwrap(),
        );
        // Cut in the middle: a late needle survives in the tail, an early one in the head,
        // a middle one is cut out.
        let late = record(300, 2);
        let found = locate_needle(&late, spec, &tok, 200).unwrap();
        assert!(found.prompt.truncated);
        assert_eq!(found.prompt, build_prompt(&late, spec, &tok, 200).unwrap());
        check(&tok, &found);
        check(
            &tok,
            &locate_needle(&record(1, 300), spec, &tok, 200).unwrap(),
        );
        let middle = locate_needle(&record(150, 150), spec, &tok, 200).unwrap();
        assert!(middle.prompt.truncated && middle.bytes.is_none());
    }

    #[test]
    fn the_chat_template_shifts_the_needle() {
        let tok = WithChat(ApproxTokenizer::new(), |user| {
            format!("<user>\n{}\n</user>\n", user.trim())
        });
        let spec = registry::lookup("synth_passkey").unwrap();
        let found = locate_needle(&record(5, 5), spec, &tok, 100_000).unwrap();
        assert!(found.prompt.text.starts_with("<user>\n"));
        assert_eq!(&found.prompt.text[found.bytes.unwrap()], NEEDLE);
    }

    #[test]
    fn bad_or_missing_needles_are_named() {
        let tok = ApproxTokenizer::new();
        let spec = registry::lookup("synth_passkey").unwrap();
        let mut r = record(3, 3);
        r.needle.as_mut().unwrap().char_start += 1;
        let err = locate_needle(&r, spec, &tok, 1000).unwrap_err().to_string();
        assert!(
            err.contains("hand-made") && err.contains("char_start"),
            "{err}"
        );
        r.needle = None;
        let err = locate_needle(&r, spec, &tok, 1000).unwrap_err().to_string();
        assert!(err.contains("hand-made") && err.contains("needle"), "{err}");
    }

    #[test]
    fn spans_skip_empty_offsets() {
        let offsets = [(0, 0), (0, 3), (3, 7), (7, 9), (9, 12)];
        assert_eq!(token_span(&offsets, &(4..8)), Some(2..4));
        assert_eq!(token_span(&offsets, &(0..1)), Some(1..2));
        assert_eq!(token_span(&offsets, &(12..14)), None);
        assert_eq!(occurrences("aaa", "aa"), vec![0, 1]);
    }

    #[test]
    fn needle_spans_count_characters() {
        let context = "héllo wörld, the needle. Done.";
        let span = NeedleSpan::find(context, "the needle.").unwrap();
        assert_eq!((span.char_start, span.char_end), (13, 24));
        let bytes = span.byte_range(context).unwrap();
        assert_eq!(&context[bytes], "the needle.");
        let bad = NeedleSpan {
            char_start: 40,
            ..span
        };
        assert_eq!(bad.byte_range(context), None);
    }
}
