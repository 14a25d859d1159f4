//! Structural mutation of seed files: byte-level operators (bit flips, interesting values,
//! little-endian size fields, truncation, chunk duplication and splicing, insertions) and
//! token-level ones for text formats (numbers made huge, negative or NaN, quotes and braces
//! dropped, keys and lines duplicated, values retyped, deep nesting, dictionary words).

use crate::rng::Rng;

/// A numeric field of a binary seed that a parser reads as a size, count or type
/// (e.g. a GGUF string length or a tensor dimension), found when the seed was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset of the field.
    pub offset: usize,
    /// Width in bytes: 4 or 8 (little-endian).
    pub width: u8,
}

/// One corpus entry: a real file (or one built by the rules of its format).
#[derive(Debug, Clone)]
pub struct Seed {
    /// Where the seed came from, for reports.
    pub name: String,
    /// Which variant of the target's input this is (e.g. which file of a tokenizer folder
    /// it replaces); the target decides what it means.
    pub kind: u32,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Numeric fields worth overwriting with extreme values (binary formats only).
    pub fields: Vec<Field>,
}

impl Seed {
    /// A seed without known fields.
    pub fn new(name: impl Into<String>, kind: u32, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            kind,
            bytes: bytes.into(),
            fields: Vec::new(),
        }
    }
}

/// How a target wants its inputs mutated.
#[derive(Debug, Clone)]
pub struct MutationConfig {
    /// Percentage (0-100) of mutation rounds that use text operators.
    pub text_percent: usize,
    /// Inputs are cut to at most this many bytes.
    pub max_len: usize,
    /// Target-specific words inserted or substituted by the dictionary operators.
    pub dictionary: &'static [&'static str],
}

const BYTES: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x20, 0x40, b'"', b'\\'];

const U32S: [u32; 12] = [
    0,
    1,
    2,
    9,
    13,
    0xff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    1_000_000,
];

const U64S: [u64; 14] = [
    0,
    1,
    2,
    0xffff_ffff,
    1 << 31,
    1 << 32,
    1 << 40,
    (1 << 40) + 1,
    1 << 48,
    (1 << 62) + 3,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX - 7,
    u64::MAX,
];

const NUMBERS: [&str; 24] = [
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "3",
    "65536",
    "4294967295",
    "4294967296",
    "1099511627776",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "1e999",
    "-1e999",
    "1e-400",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "0.5",
];

const STRINGS: [&str; 16] = [
    "",
    "\\u0000",
    "\\ud800",
    "\\\\",
    "\\\"",
    "{{",
    "{%",
    "%}",
    "\u{1f980}",
    "../../x",
    "/dev/zero",
    "null",
    "<|im_start|>",
    "\\n",
    "\u{ffff}",
    "\u{200b}",
];

const VALUES: [&str; 12] = [
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "\"x\"",
    "[[[[]]]]",
    "-1",
    "1e999",
    "[1,2,3]",
    "{\"a\":{}}",
    "''",
];

const STRUCTURAL: [u8; 10] = [b'"', b'{', b'}', b'[', b']', b',', b':', b'=', b'\'', b'\n'];

/// Applies a stack of 1-8 random mutations (mostly 1-3) to `data`, a copy of `seed`;
/// `corpus` holds the other seeds of the target for splicing.
pub fn mutate(
    rng: &mut Rng,
    data: &mut Vec<u8>,
    seed: &Seed,
    corpus: &[Seed],
    cfg: &MutationConfig,
) {
    let rounds = if rng.chance(1, 8) {
        1 + rng.below(8)
    } else {
        1 + rng.below(3)
    };
    for _ in 0..rounds {
        if rng.below(100) < cfg.text_percent {
            text_round(rng, data, cfg);
        } else {
            binary_round(rng, data, seed, corpus);
        }
        if data.len() > cfg.max_len {
            data.truncate(cfg.max_len);
        }
    }
}

fn write_le(data: &mut [u8], at: usize, value: u64, width: usize) {
    for (i, b) in value.to_le_bytes().iter().take(width).enumerate() {
        if let Some(slot) = data.get_mut(at + i) {
            *slot = *b;
        }
    }
}

fn read_le(data: &[u8], at: usize, width: usize) -> u64 {
    let mut out = 0u64;
    for i in (0..width).rev() {
        out = (out << 8) | u64::from(data.get(at + i).copied().unwrap_or(0));
    }
    out
}

/// An extreme value for a field of `width` bytes in a file of `len` bytes.
fn interesting(rng: &mut Rng, width: usize, len: usize) -> u64 {
    let len = len as u64;
    match rng.below(10) {
        0 => len,
        1 => len + 1,
        2 => len.saturating_sub(1),
        3 => len * 2,
        _ if width <= 4 => u64::from(*rng.pick(&U32S)),
        _ => *rng.pick(&U64S),
    }
}

fn chunk(rng: &mut Rng, len: usize) -> (usize, usize) {
    let start = rng.below(len);
    let max = (len - start).min(if rng.chance(1, 4) { 4096 } else { 64 });
    (start, start + 1 + rng.below(max))
}

fn binary_round(rng: &mut Rng, data: &mut Vec<u8>, seed: &Seed, corpus: &[Seed]) {
    let len = data.len();
    if len == 0 {
        let n = 1 + rng.below(16);
        data.extend((0..n).map(|_| rng.byte()));
        return;
    }
    match rng.below(14) {
        0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = rng.below(len);
            data[at] = *rng.pick(&BYTES);
        }
        2 => {
            let at = rng.below(len);
            data[at] = rng.byte();
        }
        3 => {
            // Small arithmetic on a 1/4/8-byte little-endian integer.
            let width = *rng.pick(&[1usize, 4, 8]);
            let at = rng.below(len);
            let delta = 1 + rng.below(16) as u64;
            let v = read_le(data, at, width);
            let v = if rng.chance(1, 2) {
                v.wrapping_add(delta)
            } else {
                v.wrapping_sub(delta)
            };
            write_le(data, at, v, width);
        }
        4 | 5 => {
            // An extreme size field: at a known field when the seed has them, else anywhere
            // (aligned half the time, as most headers are).
            let (at, width) = if !seed.fields.is_empty() && rng.chance(3, 4) {
                let f = rng.pick(&seed.fields);
                (f.offset, usize::from(f.width))
            } else {
                let width = *rng.pick(&[2usize, 4, 8]);
                let mut at = rng.below(len);
                if rng.chance(1, 2) {
                    at -= at % width;
                }
                (at, width)
            };
            let v = interesting(rng, width, len);
            write_le(data, at, v, width);
        }
        6 => {
            // Truncation: anywhere, or a few bytes off the end.
            let cut = if rng.chance(1, 2) {
                rng.below(len)
            } else {
                len - 1 - rng.below(len.min(16))
            };
            data.truncate(cut);
        }
        7 => {
            let (a, b) = chunk(rng, len);
            data.drain(a..b);
        }
        8 => {
            // Duplicate a chunk somewhere.
            let (a, b) = chunk(rng, len);
            let piece = data[a..b].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, piece);
        }
        9 => {
            // Overwrite a chunk with another chunk of the same input.
            let (a, b) = chunk(rng, len);
            let piece = data[a..b].to_vec();
            let at = rng.below(len);
            let end = (at + piece.len()).min(len);
            data[at..end].copy_from_slice(&piece[..end - at]);
        }
        10 | 11 => {
            // Splice: a chunk of another seed of the same kind, inserted or overwriting.
            let others: Vec<&Seed> = corpus.iter().filter(|s| s.kind == seed.kind).collect();
            let other = others[rng.below(others.len())];
            if other.bytes.is_empty() {
                return;
            }
            let (a, b) = chunk(rng, other.bytes.len());
            let piece = &other.bytes[a..b];
            let at = rng.below(len + 1);
            if rng.chance(1, 2) {
                data.splice(at..at, piece.iter().copied());
            } else {
                let end = (at + piece.len()).min(len);
                data[at.min(len)..end].copy_from_slice(&piece[..end - at.min(len)]);
            }
        }
        12 => {
            let n = 1 + rng.below(16);
            let at = rng.below(len + 1);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(at..at, bytes);
        }
        _ => {
            // A run of one byte (long strings, long zero fills).
            let max = if rng.chance(1, 4) { 4096 } else { 32 };
            let n = 1 + rng.below(max);
            let b = if rng.chance(1, 2) {
                *rng.pick(&BYTES)
            } else {
                rng.byte()
            };
            let at = rng.below(len + 1);
            data.splice(at..at, std::iter::repeat_n(b, n));
        }
    }
}

/// Byte ranges of the numbers in `data` (a digit run with sign, point and exponent).
fn numbers(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let starts = data[i].is_ascii_digit()
            || (data[i] == b'-' && data.get(i + 1).is_some_and(u8::is_ascii_digit));
        if starts && (i == 0 || !data[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            i += 1;
            while i < data.len()
                && (data[i].is_ascii_digit() || matches!(data[i], b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the contents of double-quoted strings (escapes skipped).
fn strings(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < data.len() && data[j] != b'"' {
                j += if data[j] == b'\\' { 2 } else { 1 };
            }
            let end = j.min(data.len());
            out.push((start, end));
            i = end + 1;
        } else {
            i += 1;
        }
    }
    out
}

fn positions_of(data: &[u8], set: &[u8]) -> Vec<usize> {
    data.iter()
        .enumerate()
        .filter(|(_, b)| set.contains(b))
        .map(|(i, _)| i)
        .collect()
}

/// Line ranges, each with its newline.
fn lines(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < data.len() {
        out.push((start, data.len()));
    }
    out
}

/// Largest span the text operators scan: in a large file (a safetensors model with its
/// JSON header) they work on a window, at the start half of the time.
const TEXT_WINDOW: usize = 8 << 10;

fn text_round(rng: &mut Rng, data: &mut Vec<u8>, cfg: &MutationConfig) {
    if data.len() <= TEXT_WINDOW {
        return text_op(rng, data, cfg);
    }
    let lo = if rng.chance(1, 2) {
        0
    } else {
        rng.below(data.len() - TEXT_WINDOW)
    };
    let mut part = data[lo..lo + TEXT_WINDOW].to_vec();
    text_op(rng, &mut part, cfg);
    data.splice(lo..lo + TEXT_WINDOW, part);
}

fn text_op(rng: &mut Rng, data: &mut Vec<u8>, cfg: &MutationConfig) {
    let len = data.len();
    match rng.below(11) {
        0 | 1 => {
            // A number made huge, negative, fractional or not a number at all.
            let nums = numbers(data);
            if !nums.is_empty() {
                let (a, b) = nums[rng.below(nums.len())];
                let word = rng.pick(&NUMBERS).as_bytes();
                data.splice(a..b, word.iter().copied());
            }
        }
        2 => {
            // Drop a structural character (quote, brace, bracket, comma, colon, ...).
            let at = positions_of(data, &STRUCTURAL);
            if !at.is_empty() {
                data.remove(*rng.pick(&at));
            }
        }
        3 => {
            let at = rng.below(len + 1);
            data.insert(at, *rng.pick(&STRUCTURAL));
        }
        4 => {
            // Duplicate a `key: value,` segment (JSON) or a line (TOML, JSONL).
            if rng.chance(1, 2) {
                let commas = positions_of(data, b",{\n");
                if commas.len() >= 2 {
                    let i = rng.below(commas.len() - 1);
                    let (a, b) = (commas[i] + 1, commas[i + 1] + 1);
                    let piece = data[a..b].to_vec();
                    data.splice(a..a, piece);
                }
            } else {
                let ls = lines(data);
                if !ls.is_empty() {
                    let (a, b) = *rng.pick(&ls);
                    let piece = data[a..b].to_vec();
                    let at = rng.pick(&ls).0;
                    data.splice(at..at, piece);
                }
            }
        }
        5 => {
            // A string's contents replaced by an awkward one, or made very long.
            let ss = strings(data);
            if !ss.is_empty() {
                let (a, b) = ss[rng.below(ss.len())];
                let word: Vec<u8> = if rng.chance(1, 4) {
                    let n = *rng.pick(&[256usize, 4096, 65_536]);
                    std::iter::repeat_n(b'A', n).collect()
                } else {
                    rng.pick(&STRINGS).as_bytes().to_vec()
                };
                data.splice(a..b, word);
            }
        }
        6 => {
            // The value after a `:` or `=` replaced by a value of another type.
            let seps = positions_of(data, b":=");
            if !seps.is_empty() {
                let at = seps[rng.below(seps.len())];
                let start = at + 1;
                let mut end = start;
                while end < data.len() && !matches!(data[end], b',' | b'}' | b']' | b'\n') {
                    end += 1;
                }
                let value = rng.pick(&VALUES).as_bytes();
                data.splice(start..end, value.iter().copied());
            }
        }
        7 => {
            // Deep nesting, around the recursion limits of the parsers.
            let depth = *rng.pick(&[64usize, 127, 128, 129, 256, 1000, 5000]);
            let (open, close) = *rng.pick(&[(b'[', b']'), (b'{', b'}'), (b'(', b')')]);
            let mut piece = vec![open; depth];
            if rng.chance(1, 2) {
                piece.extend(std::iter::repeat_n(close, depth));
            }
            let at = rng.below(len + 1);
            data.splice(at..at, piece);
        }
        8 => {
            // Swap two lines.
            let ls = lines(data);
            if ls.len() >= 2 {
                let i = rng.below(ls.len() - 1);
                let (a, m) = ls[i];
                let (_, b) = ls[i + 1];
                data[a..b].rotate_left(m - a);
            }
        }
        _ => {
            // A dictionary word, inserted or replacing a string's contents.
            if cfg.dictionary.is_empty() {
                return;
            }
            let word = rng.pick(cfg.dictionary).as_bytes();
            let ss = strings(data);
            if rng.chance(1, 2) && !ss.is_empty() {
                let (a, b) = *rng.pick(&ss);
                data.splice(a..b, word.iter().copied());
            } else {
                let at = rng.below(len + 1);
                data.splice(at..at, word.iter().copied());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanners_find_tokens() {
        let text = br#"{"a": 12, "b": [-3.5e2, "x\"y"]}"#;
        let nums: Vec<&[u8]> = numbers(text).iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(nums, vec![&b"12"[..], b"-3.5e2"]);
        let ss: Vec<&[u8]> = strings(text).iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(ss, vec![&b"a"[..], b"b", br#"x\"y"#]);
        assert_eq!(lines(b"a\nb"), vec![(0, 2), (2, 3)]);
    }

    #[test]
    fn mutations_respect_the_cap_and_change_inputs() {
        let seed = Seed::new("s", 0, br#"{"n": 1, "s": "abc"}"#.to_vec());
        let corpus = vec![seed.clone()];
        let cfg = MutationConfig {
            text_percent: 50,
            max_len: 64,
            dictionary: &["word"],
        };
        let mut changed = 0;
        for i in 0..2000 {
            let mut rng = crate::rng::for_execution(5, "t", i);
            let mut data = seed.bytes.clone();
            mutate(&mut rng, &mut data, &seed, &corpus, &cfg);
            assert!(data.len() <= 64);
            changed += usize::from(data != seed.bytes);
        }
        assert!(changed > 1800, "{changed}");
    }
}
