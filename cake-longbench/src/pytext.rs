//! Python `str` and `re` primitives the official LongBench code relies on, reproduced so the
//! metric ports give the same answers on every input (Unicode included).
//!
//! Python's character classes differ from Rust's in small but observable ways:
//! `str.isspace` also accepts U+001C..U+001F, `re`'s `\w` is "letter or number" by general
//! category (Rust's `is_alphanumeric` also accepts combining marks with the Alphabetic
//! property), and `\d` is exactly the decimal digits (category Nd).

use unicode_general_category::{GeneralCategory, get_general_category};

/// Python `str.isspace` for one character.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python `str.split()` with no argument: split on runs of whitespace, drop empty pieces.
pub fn split_whitespace(s: &str) -> Vec<&str> {
    s.split(is_space).filter(|p| !p.is_empty()).collect()
}

/// Python `" ".join(s.split())`.
pub fn collapse_whitespace(s: &str) -> String {
    split_whitespace(s).join(" ")
}

/// Python `str.lower()` (full Unicode lowercase mapping, final sigma included).
pub fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// Python `string.punctuation`.
pub const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Is `c` in Python's `string.punctuation`?
pub fn is_ascii_punctuation(c: char) -> bool {
    c.is_ascii() && ASCII_PUNCTUATION.contains(c)
}

/// Python `re` `\w` on a `str` pattern: `str.isalnum()` or underscore.
pub fn is_word_char(c: char) -> bool {
    use GeneralCategory::*;
    c == '_'
        || matches!(
            get_general_category(c),
            UppercaseLetter
                | LowercaseLetter
                | TitlecaseLetter
                | ModifierLetter
                | OtherLetter
                | DecimalNumber
                | LetterNumber
                | OtherNumber
        )
}

/// Python `re` `\d` on a `str` pattern: a Unicode decimal digit (category Nd).
pub fn is_decimal_digit(c: char) -> bool {
    get_general_category(c) == GeneralCategory::DecimalNumber
}

/// Python `re.findall(r"\d+", s)`: the maximal runs of decimal digits, in order.
pub fn find_digit_runs(s: &str) -> Vec<&str> {
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        match (is_decimal_digit(c), start) {
            (true, None) => start = Some(i),
            (false, Some(st)) => {
                runs.push(&s[st..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(st) = start {
        runs.push(&s[st..]);
    }
    runs
}

/// Python `re.findall(prefix + r"(\d+)", s)[0]`: the digits after the first occurrence of
/// `prefix` that is followed by at least one decimal digit.
pub fn first_number_after(s: &str, prefix: &str) -> Option<String> {
    let mut from = 0;
    while let Some(pos) = s[from..].find(prefix) {
        let after = from + pos + prefix.len();
        let digits: String = s[after..]
            .chars()
            .take_while(|&c| is_decimal_digit(c))
            .collect();
        if !digits.is_empty() {
            return Some(digits);
        }
        // Advance by one character past the start of this occurrence.
        let step = s[from + pos..].chars().next().map_or(1, char::len_utf8);
        from += pos + step;
    }
    None
}

/// Python `s.lstrip('\n').split('\n')[0]`: the first line after leading newlines.
pub fn first_line(s: &str) -> &str {
    let trimmed = s.trim_start_matches('\n');
    trimmed.split('\n').next().unwrap_or("")
}

/// Python's built-in `round(x, 2)` on a float: the exact binary value rounded to two
/// decimals (ties, which only exact binary fractions can produce, go to even).
pub fn py_round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's `{:.2}` formats the exact decimal expansion and rounds half to even, which is
    // what CPython's `round` does through its correctly rounded dtoa.
    format!("{x:.2}").parse().unwrap_or(x)
}

/// NumPy's `round(np.float64(x), 2)`: `rint(x * 100) / 100` (not correctly rounded; e.g.
/// 2.675 -> 2.68 where Python's `round` gives 2.67).
pub fn numpy_round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// NumPy's pairwise summation of a contiguous float64 array (`np.add.reduce`), the
/// order `np.mean` adds in.
pub fn numpy_pairwise_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        // NumPy starts from -0.0 here so that a sum of negative zeros stays -0.0.
        let mut res = -0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= BLOCK {
        let mut r = [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]];
        let mut i = 8;
        while i < n - (n % 8) {
            for (k, acc) in r.iter_mut().enumerate() {
                *acc += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_pairwise_sum(&a[..n2]) + numpy_pairwise_sum(&a[n2..])
    }
}

/// `np.mean` of a list of floats; NaN for an empty list (NumPy warns and returns nan).
pub fn numpy_mean(a: &[f64]) -> f64 {
    if a.is_empty() {
        return f64::NAN;
    }
    numpy_pairwise_sum(a) / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_matches_python_isspace() {
        // Python: "a\x1cb\u00a0c\u3000d".split() == ['a', 'b', 'c', 'd']
        assert_eq!(
            split_whitespace("a\u{1c}b\u{a0}c\u{3000}d"),
            vec!["a", "b", "c", "d"]
        );
        // U+200B (zero width space) is not whitespace in Python.
        assert_eq!(split_whitespace("a\u{200b}b"), vec!["a\u{200b}b"]);
    }

    #[test]
    fn word_chars_follow_python() {
        assert!(is_word_char('_') && is_word_char('é') && is_word_char('中') && is_word_char('²'));
        // Combining acute accent (Mn) is not \w in Python.
        assert!(!is_word_char('\u{301}'));
        assert!(is_decimal_digit('٣') && is_decimal_digit('３') && !is_decimal_digit('²'));
    }

    #[test]
    fn digit_runs_and_prefix_numbers() {
        assert_eq!(find_digit_runs("a12b٣٤ 5"), vec!["12", "٣٤", "5"]);
        assert_eq!(
            first_number_after("Paragraph x Paragraph 12", "Paragraph "),
            Some("12".into())
        );
        assert_eq!(first_number_after("段落7和段落8", "段落"), Some("7".into()));
        assert_eq!(first_number_after("nothing", "Paragraph "), None);
    }

    #[test]
    fn first_line_strips_leading_newlines_only() {
        assert_eq!(first_line("\n\nabc\ndef"), "abc");
        assert_eq!(first_line(" \nabc"), " ");
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn rounding_variants() {
        // Python: round(2.675, 2) == 2.67; numpy: round(np.float64(2.675), 2) == 2.68.
        assert_eq!(py_round2(2.675), 2.67);
        assert_eq!(numpy_round2(2.675), 2.68);
        // Exact binary tie: Python round(0.125, 2) == 0.12 (half to even).
        assert_eq!(py_round2(0.125), 0.12);
        assert_eq!(py_round2(0.375), 0.38);
        assert!(numpy_mean(&[]).is_nan());
    }

    #[test]
    fn pairwise_sum_matches_numpy_order() {
        // 0.1 * 10: numpy.add.reduce([0.1]*10) == 1.0 (pairwise), while a left fold gives
        // 0.9999999999999999.
        let v = vec![0.1; 10];
        assert_eq!(numpy_pairwise_sum(&v), 1.0);
        assert_eq!(v.iter().sum::<f64>(), 0.9999999999999999);
    }
}
