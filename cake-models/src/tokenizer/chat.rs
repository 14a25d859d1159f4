//! Chat messages and chat templates rendered the way transformers renders them: Jinja with
//! `trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now` and Python-style
//! `tojson`; a plain `role: content` fallback for models without a template.

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::{Tokenizer, TokenizerError};

/// One chat message, as passed to a chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

impl Tokenizer {
    /// Renders `messages` with the model's chat template, as transformers' `apply_chat_template`
    /// with `tokenize=False`. Without a template, falls back to plain text: one `role: content`
    /// line per message, then `assistant:` when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let Some(source) = self.chat_template.as_deref() else {
            return Ok(plain_chat(messages, add_generation_prompt));
        };
        check_template_extent(source)?;
        let env = jinja_environment();
        let template = env
            .template_from_str(source)
            .map_err(|e| TokenizerError::Template(format!("{e:#}")))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.special.bos_token.clone().unwrap_or_default(),
            eos_token => self.special.eos_token.clone().unwrap_or_default(),
            unk_token => self.special.unk_token.clone().unwrap_or_default(),
            pad_token => self.special.pad_token.clone().unwrap_or_default(),
        };
        template
            .render(ctx)
            .map_err(|e| TokenizerError::Template(format!("{e:#}")))
    }
}

/// Longest line, and most lines, a chat template may have. minijinja (2.24) records
/// template positions as 16-bit line and column numbers; past them the positions wrap, and
/// its error report (`{e:#}`, which underlines the failing span) then panics with a
/// capacity overflow (`debug.rs`). Real templates are a few kilobytes.
pub const MAX_TEMPLATE_EXTENT: usize = u16::MAX as usize - 1;

/// Refuses templates whose positions minijinja cannot represent ([`MAX_TEMPLATE_EXTENT`]).
fn check_template_extent(source: &str) -> Result<(), TokenizerError> {
    let mut lines = 0usize;
    for (i, line) in source.split('\n').enumerate() {
        lines += 1;
        if line.len() > MAX_TEMPLATE_EXTENT {
            return Err(TokenizerError::Template(format!(
                "line {} of the chat template is {} bytes long (at most {MAX_TEMPLATE_EXTENT})",
                i + 1,
                line.len()
            )));
        }
    }
    if lines > MAX_TEMPLATE_EXTENT {
        return Err(TokenizerError::Template(format!(
            "the chat template has {lines} lines (at most {MAX_TEMPLATE_EXTENT})"
        )));
    }
    Ok(())
}

/// The fallback used when a model has no chat template.
fn plain_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&format!("{}: {}\n", m.role, m.content));
    }
    if add_generation_prompt {
        out.push_str("assistant:");
    }
    out
}

/// A Jinja environment configured like transformers' `_compile_jinja_template`.
fn jinja_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| strftime_utc_now(&format));
    env.add_filter(
        "tojson",
        |value: minijinja::Value, indent: Option<usize>| -> Result<String, minijinja::Error> {
            let json = serde_json::to_value(&value)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            let mut out = String::new();
            python_json(&json, indent, 0, &mut out);
            Ok(out)
        },
    );
    env
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)` as Python writes it.
fn python_json(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Formats the current UTC time with the common `strftime` fields (%Y %y %m %d %B %b %H %M %S %%).
fn strftime_utc_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, format)
}

fn strftime(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strftime_known_date() {
        // 2024-02-29 13:05:09 UTC = 1709211909 (date -u -d @1709211909).
        assert_eq!(
            strftime(1_709_211_909, "%d %b %Y %H:%M:%S %B %%"),
            "29 Feb 2024 13:05:09 February %"
        );
    }

    #[test]
    fn python_json_separators() {
        let v = json!({"a": [1, "é"], "b": {}});
        let mut out = String::new();
        python_json(&v, None, 0, &mut out);
        // json.dumps({"a": [1, "é"], "b": {}}, ensure_ascii=False)
        assert_eq!(out, r#"{"a": [1, "é"], "b": {}}"#);
    }
}
