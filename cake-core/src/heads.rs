//! Per-head budgets (`docs/algorithm.md`, section 10): how a layer's budget is split
//! across its KV heads, each of which then stores only its own kept rows (see
//! [`crate::LayerCache`]).
//!
//! Plain Rust on slices (no tensors), so that the invariants are property-tested like the
//! layer budgets: sums, caps, floors, and the uniqueness and range of kept indices.

use crate::budget::allocate_budgets;

crate::names::named_enum! {
    /// How budgets reach the KV heads of a layer.
    #[derive(Default)]
    pub enum HeadBudgets("head budgets") {
        /// Every KV head of a layer keeps the layer's budget (the paper's rule).
        #[default]
        None = "none",
        /// CAKE per head: the preference of each KV head's query group, with the whole
        /// budget shared over all (layer, KV head) pairs.
        Preference = "preference",
        /// AdaKV: the layer budgets stay; inside a layer the heads' scores are pooled and
        /// the best `budget * Hkv` kept, each head guaranteed a floor.
        AdaKv = "adakv",
        /// Fixed per-head shares of a fitted score function (`cake fit --per-head`).
        Static = "static",
    }
}

impl HeadBudgets {
    /// True for `none` (every head keeps the layer's budget).
    pub fn is_none(&self) -> bool {
        *self == HeadBudgets::None
    }

    /// True when the budgets come from per-(layer, head) shares (`preference`, `static`)
    /// rather than from the layer budgets.
    pub fn shares_pairs(self) -> bool {
        matches!(self, HeadBudgets::Preference | HeadBudgets::Static)
    }
}

/// Budgets of every (layer, KV head) pair from their shares `shares[l][h]`: the whole
/// `total` (token rows, i.e. `B_total * Hkv`) is shared over all pairs by the section-4
/// rules ([`allocate_budgets`]), each pair capped at `cap` (`S - w`). Returns `[L][Hkv]`.
pub fn pair_budgets(shares: &[Vec<f64>], total: usize, cap: usize) -> Vec<Vec<usize>> {
    let flat: Vec<f64> = shares.iter().flatten().copied().collect();
    let budgets = allocate_budgets(&flat, total, &vec![cap; flat.len()]);
    regroup(&budgets, shares)
}

/// `flat` (the pairs of `like` in row order) cut back into rows of `like`'s lengths.
pub fn regroup<T: Clone, U>(flat: &[T], like: &[Vec<U>]) -> Vec<Vec<T>> {
    let mut at = 0;
    like.iter()
        .map(|row| {
            let out = flat[at..at + row.len()].to_vec();
            at += row.len();
            out
        })
        .collect()
}

/// AdaKV's split of one layer: the candidates (tokens before each head's window) of all
/// KV heads are pooled by score, and the best `budget * Hkv` kept, with every head first
/// given its own best `floor(floor_fraction * budget)` (at most what it has).
///
/// `scores[h]`: head `h`'s candidates' scores. Returns each head's kept candidate
/// indices, ascending; the counts sum to `min(budget * Hkv, all candidates)`. Ties rank
/// the later index first (as [`crate::stats::top_k_indices`]), then the lower head; NaN
/// ranks below everything.
pub fn adakv_split(scores: &[&[f32]], budget: usize, floor_fraction: f64) -> Vec<Vec<usize>> {
    let heads = scores.len();
    let floor = (floor_fraction.clamp(0.0, 1.0) * budget as f64).floor() as usize;
    let total = (budget * heads).min(scores.iter().map(|s| s.len()).sum());
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    // Each head's candidates, best first: (score desc, index desc).
    let ranked: Vec<Vec<usize>> = scores
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| key(row[b]).total_cmp(&key(row[a])).then(b.cmp(&a)));
            idx
        })
        .collect();
    let mut taken: Vec<usize> = ranked.iter().map(|r| floor.min(r.len())).collect();
    let mut left = total.saturating_sub(taken.iter().sum());
    // Then the best of what remains, over all heads: merge the heads' ranked tails.
    while left > 0 {
        let best = (0..heads)
            .filter(|&h| taken[h] < ranked[h].len())
            .max_by(|&a, &b| {
                let (ia, ib) = (ranked[a][taken[a]], ranked[b][taken[b]]);
                key(scores[a][ia])
                    .total_cmp(&key(scores[b][ib]))
                    .then(ia.cmp(&ib))
                    .then(b.cmp(&a))
            });
        let Some(h) = best else { break };
        taken[h] += 1;
        left -= 1;
    }
    ranked
        .into_iter()
        .zip(taken)
        .map(|(mut r, n)| {
            r.truncate(n);
            r.sort_unstable();
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adakv_hand_computed() {
        // Budget 2 per head, 2 heads -> 4 kept; floor 0.5 * 2 = 1 per head.
        // Head 0 holds the four best scores; head 1 gets its floor (its best, index 1).
        let h0 = [0.9, 0.8, 0.7, 0.6];
        let h1 = [0.1, 0.2, 0.05];
        let kept = adakv_split(&[&h0, &h1], 2, 0.5);
        assert_eq!(kept, vec![vec![0, 1, 2], vec![1]]);
        // No floor: the pool alone.
        assert_eq!(
            adakv_split(&[&h0, &h1], 2, 0.0),
            vec![vec![0, 1, 2, 3], vec![]]
        );
        // Full floor: every head keeps its own budget (the layer rule).
        assert_eq!(
            adakv_split(&[&h0, &h1], 2, 1.0),
            vec![vec![0, 1], vec![0, 1]]
        );
        // Fewer candidates than the budget: everything kept.
        assert_eq!(
            adakv_split(&[&h0, &h1], 9, 0.2),
            vec![vec![0, 1, 2, 3], vec![0, 1, 2]]
        );
    }

    #[test]
    fn pair_budgets_share_the_total_over_pairs() {
        // 2 layers x 2 heads, shares 3:1:0:0 of 8 rows, cap 5 -> 5 capped, 3 to the next.
        let b = pair_budgets(&[vec![3.0, 1.0], vec![0.0, 0.0]], 8, 5);
        assert_eq!(b, vec![vec![5, 3], vec![0, 0]]);
        // Equal shares: equal budgets.
        assert_eq!(
            pair_budgets(&vec![vec![1.0; 3]; 2], 12, 9),
            vec![vec![2; 3]; 2]
        );
    }

    #[test]
    fn names_round_trip() {
        for &(k, n) in HeadBudgets::ALL {
            assert_eq!(n.parse::<HeadBudgets>().unwrap(), k);
        }
        let err = "ada".parse::<HeadBudgets>().unwrap_err().to_string();
        assert!(err.contains("none, preference, adakv, static"), "{err}");
    }
}
