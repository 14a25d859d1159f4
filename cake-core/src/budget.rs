//! Integer per-layer budgets from preference shares (`docs/algorithm.md`, section 4).
//!
//! Plain Rust on slices, so that the invariants can be property-tested without tensors:
//! every budget is at most its layer's cap (the prompt tokens before the window, `S - w`),
//! the budgets sum exactly to the total when the caps allow it (otherwise every layer keeps
//! everything), and what a capped layer cannot use goes to the others in proportion to
//! their shares (water filling), then largest-remainder rounding.

/// Shares `total` tokens among layers in proportion to `shares`, never giving a layer
/// more than `caps[l]`.
///
/// Invariants (checked by the property tests):
/// - `budget[l] <= caps[l]` for every layer;
/// - `sum(budget) == total` when `sum(caps) > total`, else `budget == caps` (every layer
///   keeps everything);
/// - the part of a capped layer's share it cannot use is redistributed to the uncapped
///   layers in proportion to their shares;
/// - the fractional parts are rounded by largest remainder (ties: lower layer first).
///
/// Non-finite or negative shares count as 0; when all active shares are 0 the tokens are
/// split equally.
///
/// # Panics
/// When `shares` and `caps` differ in length (a bug of the caller).
pub fn allocate_budgets(shares: &[f64], total: usize, caps: &[usize]) -> Vec<usize> {
    assert_eq!(shares.len(), caps.len(), "one share per cap");
    let cap_sum: usize = caps.iter().sum();
    if cap_sum <= total {
        return caps.to_vec();
    }
    let weights: Vec<f64> = shares
        .iter()
        .map(|&s| if s.is_finite() && s > 0.0 { s } else { 0.0 })
        .collect();
    let mut budgets = vec![0usize; shares.len()];
    let mut active: Vec<usize> = (0..shares.len()).filter(|&l| caps[l] > 0).collect();
    let mut remaining = total;
    // Water filling: layers whose proportional share reaches their cap are fixed at the
    // cap; the rest is shared again among the others. Invariant: remaining < sum of the
    // active layers' caps, so the loop ends with at least one active layer.
    let raws = loop {
        let raws = proportional(&weights, &active, remaining);
        let capped: Vec<usize> = active
            .iter()
            .zip(&raws)
            .filter(|&(&l, &raw)| raw >= caps[l] as f64)
            .map(|(&l, _)| l)
            .collect();
        if capped.is_empty() || capped.len() == active.len() {
            break raws;
        }
        for &l in &capped {
            budgets[l] = caps[l];
            remaining -= caps[l];
        }
        active.retain(|l| !capped.contains(l));
    };
    // Largest remainder among the active layers.
    let mut order: Vec<(usize, f64)> = Vec::with_capacity(active.len());
    let mut assigned = 0usize;
    for (&l, &raw) in active.iter().zip(&raws) {
        let floor = (raw.floor().max(0.0) as usize).min(caps[l]);
        budgets[l] = floor;
        assigned += floor;
        order.push((l, raw - raw.floor()));
    }
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    while assigned < remaining {
        for &(l, _) in &order {
            if assigned == remaining {
                break;
            }
            if budgets[l] < caps[l] {
                budgets[l] += 1;
                assigned += 1;
            }
        }
    }
    // Floating-point rounding may overshoot by a token: take it back from the smallest
    // remainders.
    while assigned > remaining {
        for &(l, _) in order.iter().rev() {
            if assigned == remaining {
                break;
            }
            if budgets[l] > 0 {
                budgets[l] -= 1;
                assigned -= 1;
            }
        }
    }
    budgets
}

/// Real-valued proportional split of `remaining` among `active` layers.
fn proportional(weights: &[f64], active: &[usize], remaining: usize) -> Vec<f64> {
    let sum: f64 = active.iter().map(|&l| weights[l]).sum();
    active
        .iter()
        .map(|&l| {
            if sum > 0.0 {
                weights[l] / sum * remaining as f64
            } else {
                remaining as f64 / active.len() as f64
            }
        })
        .collect()
}

/// Cache size C (tokens per layer, window included) and the derived totals for one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BudgetPlan {
    /// Prompt length S.
    pub prompt_len: usize,
    /// Observation / recent window w (at most S).
    pub window: usize,
    /// Cache size C: average tokens kept per layer, window included.
    pub cache_size: usize,
    /// Number of decoder layers L.
    pub num_layers: usize,
}

impl BudgetPlan {
    /// Tokens shared out by preference, `B_total = (C - w) * L` (0 when C <= w).
    pub fn total(&self) -> usize {
        self.cache_size.saturating_sub(self.window) * self.num_layers
    }

    /// The most prompt tokens a layer can keep outside the window, `S - w`.
    pub fn cap(&self) -> usize {
        self.prompt_len.saturating_sub(self.window)
    }

    /// Tokens a layer holds after prefill eviction with prompt budget `budget`:
    /// `min(S, budget + w)`.
    pub fn held(&self, budget: usize) -> usize {
        (budget + self.window).min(self.prompt_len)
    }

    /// The least decoding budget of every layer (and KV head): `C - w` when the prompt is
    /// shorter than the cache size, else 0. Such a prompt left every layer everything
    /// (section 4(b)) and each holds fewer than `C` tokens: a layer then decodes without
    /// evicting until it holds `C` tokens, as the full cache would, instead of paying for
    /// evictions of memory the cache size allows. (The design is silent here; section 6
    /// read literally would hold every layer at the prompt's `S` tokens from the first
    /// decoding step.)
    pub fn decode_floor(&self) -> usize {
        if self.prompt_len < self.cache_size {
            self.cache_size.saturating_sub(self.window)
        } else {
            0
        }
    }

    /// Budgets of the first `shares.len()` layers, sharing the whole `B_total` (the
    /// cascade's stage budgets; with all `L` shares, the final ones).
    pub fn allocate(&self, shares: &[f64]) -> Vec<usize> {
        allocate_budgets(shares, self.total(), &vec![self.cap(); shares.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_water_filling() {
        // shares 6:3:1 of 100 with caps 50 each: raw 60/30/10 -> layer 0 capped at 50,
        // the remaining 50 split 3:1 -> 37.5 / 12.5 -> rounding: 38 / 12 (tie of .5 goes
        // to the lower layer).
        assert_eq!(
            allocate_budgets(&[6.0, 3.0, 1.0], 100, &[50, 50, 50]),
            vec![50, 38, 12]
        );
        // Caps too small for the total: everything kept.
        assert_eq!(allocate_budgets(&[1.0, 1.0], 100, &[10, 20]), vec![10, 20]);
        // Equal split of 10 among 3: 3.33 each -> 4, 3, 3.
        assert_eq!(
            allocate_budgets(&[1.0, 1.0, 1.0], 10, &[9, 9, 9]),
            vec![4, 3, 3]
        );
        // Zero shares everywhere -> equal split.
        assert_eq!(allocate_budgets(&[0.0, 0.0], 7, &[9, 9]), vec![4, 3]);
        // NaN counts as 0.
        assert_eq!(allocate_budgets(&[f64::NAN, 1.0], 7, &[9, 9]), vec![0, 7]);
    }

    #[test]
    fn plan_totals() {
        let plan = BudgetPlan {
            prompt_len: 100,
            window: 8,
            cache_size: 24,
            num_layers: 4,
        };
        assert_eq!(plan.total(), 64);
        assert_eq!(plan.cap(), 92);
        assert_eq!(plan.held(10), 18);
        assert_eq!(plan.held(95), 100);
        assert_eq!(plan.allocate(&[1.0; 4]), vec![16; 4]);
    }
}
