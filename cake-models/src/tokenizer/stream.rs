//! Streaming detokenization: generated ids to text increments that never split a character.

use super::{Tokenizer, TokenizerError};

/// Turns generated token ids into text increments, holding back bytes of a character that
/// is not complete yet (so multi-byte UTF-8 characters split over tokens print whole).
#[derive(Debug)]
pub struct TextStreamer<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// End of the text already emitted, in ids.
    read: usize,
}

impl<'a> TextStreamer<'a> {
    /// A streamer over `tokenizer`; `skip_special` drops special tokens from the text.
    pub fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        TextStreamer {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let delta = self.pending(false)?;
        if delta.is_some() {
            self.prefix = self.read;
            self.read = self.ids.len();
        }
        Ok(delta)
    }

    /// The text still held back (an incomplete character at the end), if any.
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        let delta = self.pending(true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(delta)
    }

    /// The text the ids after `read` add to the decoded context window; `None` while it
    /// ends in a partial character (a replacement char), unless `at_end`.
    fn pending(&self, at_end: bool) -> Result<Option<String>, TokenizerError> {
        let decode = |ids: &[u32]| self.tokenizer.decode(ids, self.skip_special);
        let before = decode(&self.ids[self.prefix..self.read])?;
        let now = decode(&self.ids[self.prefix..])?;
        let complete = at_end || !now.ends_with('\u{FFFD}');
        Ok(
            (now.len() > before.len() && complete && now.is_char_boundary(before.len()))
                .then(|| now[before.len()..].to_string()),
        )
    }
}
