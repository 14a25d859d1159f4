//! `difflib.SequenceMatcher(None, a, b).ratio()` and fuzzywuzzy's `fuzz.ratio`, as run
//! when python-Levenshtein is not installed (fuzzywuzzy then falls back to difflib).
//!
//! The port keeps difflib's "autojunk" heuristic: when `b` has 200 or more elements, every
//! element occurring more than `len(b) / 100 + 1` times is "popular" and cannot start a
//! match (matches may still extend over it).

use std::collections::HashMap;

/// `SequenceMatcher(None, a, b).ratio()` over Unicode code points.
pub fn sequence_matcher_ratio(a: &[char], b: &[char]) -> f64 {
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let matches = matching_characters(a, b);
    2.0 * matches as f64 / total as f64
}

/// Sum of the sizes of `SequenceMatcher.get_matching_blocks()`.
fn matching_characters(a: &[char], b: &[char]) -> usize {
    let b2j = chain_b(b);
    let mut queue = vec![(0usize, a.len(), 0usize, b.len())];
    let mut total = 0;
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = find_longest_match(a, b, &b2j, alo, ahi, blo, bhi);
        if k > 0 {
            total += k;
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    total
}

/// `SequenceMatcher.__chain_b` with `isjunk=None, autojunk=True`: positions of each element
/// of `b`, popular elements removed.
fn chain_b(b: &[char]) -> HashMap<char, Vec<usize>> {
    let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
    for (j, &c) in b.iter().enumerate() {
        b2j.entry(c).or_default().push(j);
    }
    let n = b.len();
    if n >= 200 {
        let ntest = n / 100 + 1;
        b2j.retain(|_, idxs| idxs.len() <= ntest);
    }
    b2j
}

/// `SequenceMatcher.find_longest_match(alo, ahi, blo, bhi)` (no junk elements, so only the
/// two plain extension loops apply). Returns `(i, j, size)`.
fn find_longest_match(
    a: &[char],
    b: &[char],
    b2j: &HashMap<char, Vec<usize>>,
    alo: usize,
    ahi: usize,
    blo: usize,
    bhi: usize,
) -> (usize, usize, usize) {
    let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
    let mut j2len: HashMap<usize, usize> = HashMap::new();
    for (i, c) in a.iter().enumerate().take(ahi).skip(alo) {
        let mut new_j2len: HashMap<usize, usize> = HashMap::new();
        if let Some(js) = b2j.get(c) {
            for &j in js {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                let prev = if j > 0 {
                    j2len.get(&(j - 1)).copied().unwrap_or(0)
                } else {
                    0
                };
                let k = prev + 1;
                new_j2len.insert(j, k);
                if k > bestsize {
                    besti = i + 1 - k;
                    bestj = j + 1 - k;
                    bestsize = k;
                }
            }
        }
        j2len = new_j2len;
    }
    while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
        besti -= 1;
        bestj -= 1;
        bestsize += 1;
    }
    while besti + bestsize < ahi
        && bestj + bestsize < bhi
        && a[besti + bestsize] == b[bestj + bestsize]
    {
        bestsize += 1;
    }
    (besti, bestj, bestsize)
}

/// fuzzywuzzy 0.18 `fuzz.ratio(s1, s2)`: 100 when equal, 0 when either is empty, else
/// `int(round(100 * SequenceMatcher(None, s1, s2).ratio()))` (round half to even).
pub fn fuzz_ratio(s1: &str, s2: &str) -> u32 {
    if s1 == s2 {
        return 100;
    }
    if s1.is_empty() || s2.is_empty() {
        return 0;
    }
    let a: Vec<char> = s1.chars().collect();
    let b: Vec<char> = s2.chars().collect();
    (100.0 * sequence_matcher_ratio(&a, &b)).round_ties_even() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(a: &str, b: &str) -> f64 {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        sequence_matcher_ratio(&a, &b)
    }

    #[test]
    fn hand_computed_ratios() {
        // difflib docs: SequenceMatcher(None, "abcd", "bcde").ratio() == 0.75 (3 matches, 8 chars).
        assert_eq!(ratio("abcd", "bcde"), 0.75);
        // No common character.
        assert_eq!(ratio("abc", "xyz"), 0.0);
        // Both empty: difflib returns 1.0.
        assert_eq!(ratio("", ""), 1.0);
    }

    #[test]
    fn fuzz_ratio_rounding_and_edges() {
        // "ab" vs "abc": 2*2/5 = 0.8 -> 80.
        assert_eq!(fuzz_ratio("ab", "abc"), 80);
        // "abcdefgh" vs "abcd": 2*4/12 = 0.6667 -> 67.
        assert_eq!(fuzz_ratio("abcdefgh", "abcd"), 67);
        // Python round(12.5) == 12: "a" vs 15 chars starting with "a": 2*1/16 = 0.125.
        assert_eq!(fuzz_ratio("a", "abbbbbbbbbbbbbb"), 12);
        assert_eq!(fuzz_ratio("", ""), 100);
        assert_eq!(fuzz_ratio("", "x"), 0);
    }
}
