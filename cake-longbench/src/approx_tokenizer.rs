//! A model-free stand-in tokenizer for tests and for sizing the synthetic suite when no
//! model tokenizer is at hand.
//!
//! Tokens are "pieces": a run of whitespace glued to the word that follows it, or a single
//! other character (punctuation, symbol), again with its leading whitespace. English prose
//! comes out at roughly 1.2 pieces per word, in the range of real BPE tokenizers (which
//! give about 1.3 tokens per word), so lengths are estimates, not model token counts. Ids
//! come from a growing vocabulary shared by all calls; decoding is exact, so
//! `decode(encode(t)) == t` for every text.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::prompt::PromptTokenizer;

#[derive(Default)]
struct Vocab {
    ids: HashMap<String, u32>,
    pieces: Vec<String>,
}

/// Whitespace/punctuation piece tokenizer with an exact inverse (see module doc).
#[derive(Default)]
pub struct ApproxTokenizer {
    vocab: Mutex<Vocab>,
}

impl ApproxTokenizer {
    /// A tokenizer with an empty vocabulary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Split `text` into pieces (no ids).
    pub fn pieces(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c.is_whitespace() {
                // Whitespace joins the piece that follows it.
                continue;
            }
            let end = if c.is_alphanumeric() {
                let mut end = i + c.len_utf8();
                while let Some(&(j, d)) = chars.peek() {
                    if !d.is_alphanumeric() {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                end
            } else {
                i + c.len_utf8()
            };
            out.push(&text[start..end]);
            start = end;
        }
        if start < text.len() {
            out.push(&text[start..]); // trailing whitespace
        }
        out
    }

    /// Number of pieces in `text`, without touching the vocabulary.
    pub fn count(text: &str) -> usize {
        Self::pieces(text).len()
    }
}

impl PromptTokenizer for ApproxTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        let mut vocab = self
            .vocab
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::pieces(text)
            .into_iter()
            .map(|p| {
                if let Some(&id) = vocab.ids.get(p) {
                    return id;
                }
                let id = vocab.pieces.len() as u32;
                vocab.pieces.push(p.to_string());
                vocab.ids.insert(p.to_string(), id);
                id
            })
            .collect()
    }

    fn decode(&self, ids: &[u32]) -> String {
        let vocab = self
            .vocab
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ids.iter()
            .filter_map(|&id| vocab.pieces.get(id as usize).map(String::as_str))
            .collect()
    }

    /// No model, no chat template: the message is returned unchanged.
    fn apply_chat_template(&self, user: &str) -> String {
        user.to_string()
    }
}

/// For tests: the approximate tokenizer with a chat template given as a function.
#[cfg(test)]
pub(crate) struct WithChat(pub ApproxTokenizer, pub fn(&str) -> String);

#[cfg(test)]
impl PromptTokenizer for WithChat {
    fn encode(&self, t: &str) -> Vec<u32> {
        self.0.encode(t)
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids)
    }
    fn apply_chat_template(&self, user: &str) -> String {
        (self.1)(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pieces_glue_whitespace_to_the_next_word() {
        assert_eq!(
            ApproxTokenizer::pieces("Call me  Ishmael."),
            vec!["Call", " me", "  Ishmael", "."]
        );
        assert_eq!(ApproxTokenizer::pieces(" a\n"), vec![" a", "\n"]);
        assert!(ApproxTokenizer::pieces("").is_empty());
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(text in "\\PC{0,80}") {
            let tok = ApproxTokenizer::new();
            let ids = tok.encode(&text);
            prop_assert_eq!(tok.decode(&ids), text);
        }
    }
}
