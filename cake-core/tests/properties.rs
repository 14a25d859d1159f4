//! Property tests: budget invariants of every allocator, monotone cascade budgets, and
//! the eviction of one layer (unique in-range indices, window kept, positions preserved).

mod common;

use burn::tensor::{Tensor, TensorData};
use cake_core::{
    Allocator, BudgetPlan, LayerCache, LayerPreference, Preference, Pyramid, Static, Uniform,
    allocate_budgets, evict_to_budget,
};
use common::B;
use proptest::prelude::*;

fn check_invariants(budgets: &[usize], total: usize, caps: &[usize]) {
    assert_eq!(budgets.len(), caps.len());
    assert!(
        budgets.iter().zip(caps).all(|(b, c)| b <= c),
        "cap: {budgets:?} {caps:?}"
    );
    let cap_sum: usize = caps.iter().sum();
    let sum: usize = budgets.iter().sum();
    if cap_sum > total {
        assert_eq!(sum, total, "sum: {budgets:?}");
    } else {
        assert_eq!(budgets, caps, "keep everything");
    }
}

fn preferences() -> impl Strategy<Value = Vec<Option<LayerPreference>>> {
    prop::collection::vec((0.0f64..500.0, 0.0f64..5.0), 1..80).prop_map(|v| {
        v.into_iter()
            .map(|(entropy, variance)| Some(LayerPreference { entropy, variance }))
            .collect()
    })
}

fn allocators(tau1: f64, tau2: f64, shares: Vec<f64>) -> Vec<Box<dyn Allocator>> {
    vec![
        Box::new(Uniform),
        Box::new(Pyramid { beta: 20.0 }),
        Box::new(Preference { tau1, tau2 }),
        Box::new(Static::from_shares(shares).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn budgets_meet_the_section_4_invariants(
        layers in prop::collection::vec((0.0f64..1e6, 0usize..600), 1..64),
        total in 0usize..20_000,
    ) {
        let (shares, caps): (Vec<f64>, Vec<usize>) = layers.into_iter().unzip();
        let budgets = allocate_budgets(&shares, total, &caps);
        check_invariants(&budgets, total, &caps);
    }

    #[test]
    fn surplus_goes_in_proportion_to_preference(
        shares in prop::collection::vec(0.1f64..10.0, 2..20),
        cap in 1usize..200,
        per_layer in 1usize..400,
    ) {
        let caps = vec![cap; shares.len()];
        let total = per_layer * shares.len();
        let budgets = allocate_budgets(&shares, total, &caps);
        check_invariants(&budgets, total, &caps);
        // A layer with a larger share never gets fewer tokens (up to a rounding token).
        for i in 0..shares.len() {
            for j in 0..shares.len() {
                if shares[i] > shares[j] {
                    prop_assert!(budgets[i] + 1 >= budgets[j], "{shares:?} {budgets:?}");
                }
            }
        }
    }

    #[test]
    fn every_allocator_meets_the_invariants(
        prefs in preferences(),
        seq_len in 1usize..5000,
        window in 1usize..64,
        cache_size in 1usize..2048,
        tau1 in 0.2f64..3.0,
        tau2 in 0.2f64..3.0,
    ) {
        let l = prefs.len();
        let plan = BudgetPlan { prompt_len: seq_len, window: window.min(seq_len), cache_size, num_layers: l };
        let fixed: Vec<f64> = (0..l).map(|i| (i as f64 * 0.7).sin()).collect();
        for alloc in allocators(tau1, tau2, fixed) {
            let shares = alloc.shares(l, &prefs);
            prop_assert_eq!(shares.len(), l);
            prop_assert!(shares.iter().all(|s| *s >= 0.0 && s.is_finite()), "{}", alloc.name());
            let budgets = plan.allocate(&shares);
            check_invariants(&budgets, plan.total(), &vec![plan.cap(); l]);
            if alloc.name() == "pyramid" {
                prop_assert!(budgets.windows(2).all(|p| p[0] >= p[1]), "{budgets:?}");
            }
        }
    }

    /// Cascade stages: the budget of a layer seen at stage m never grows at a later stage
    /// by more than the one rounding token; the real-valued shares only shrink.
    #[test]
    fn cascade_budgets_shrink_monotonically(
        prefs in preferences(),
        per_layer in 1usize..300,
        cap in 1usize..2000,
        tau1 in 0.2f64..3.0,
        tau2 in 0.2f64..3.0,
    ) {
        let l = prefs.len();
        let plan = BudgetPlan { prompt_len: cap + 8, window: 8, cache_size: per_layer + 8, num_layers: l };
        let fixed: Vec<f64> = (0..l).map(|i| 1.0 + (i as f64).cos()).collect();
        for alloc in allocators(tau1, tau2, fixed) {
            let mut held: Vec<usize> = Vec::new();
            let mut previous: Vec<usize> = Vec::new();
            for m in 0..l {
                let stage = plan.allocate(&alloc.shares(l, &prefs[..=m]));
                for (i, (&now, &before)) in stage.iter().zip(&previous).enumerate() {
                    prop_assert!(now <= before + 1, "{} layer {i}: {before} -> {now}", alloc.name());
                }
                // What the cascade keeps: clamped to what the layer still holds.
                held = stage.iter().enumerate()
                    .map(|(i, &b)| held.get(i).map_or(b, |&h: &usize| b.min(h)))
                    .collect();
                previous = stage;
            }
            // The cascade never exceeds the one-shot budgets and loses at most one token per
            // layer to rounding.
            let one_shot = plan.allocate(&alloc.shares(l, &prefs));
            for (h, o) in held.iter().zip(&one_shot) {
                prop_assert!(h <= o && h + 1 >= *o);
            }
        }
    }

    #[test]
    fn eviction_keeps_unique_in_range_indices_and_the_window(
        heads in 1usize..4,
        len in 1usize..120,
        window in 1usize..16,
        keep in 0usize..130,
        seed in any::<u64>(),
        start in 0usize..1000,
    ) {
        let mut rng = common::Normal::new(seed);
        let dim = 2;
        let keys: Tensor<B, 3> = rng.tensor([heads, len, dim], 1.0);
        let mut cache = LayerCache::<B>::new();
        cache.append(keys.clone(), keys, start).unwrap();
        let scores: Vec<f32> = (0..heads * len).map(|_| rng.sample()).collect();
        cache.set_scores(Tensor::from_data(TensorData::new(scores.clone(), [heads, len]), &Default::default())).unwrap();
        let before = cache.positions().to_vec();
        let held = evict_to_budget(&mut cache, keep, window).unwrap();
        let w = window.min(len);
        let expected = (keep + w).min(len);
        prop_assert_eq!(held, expected);
        prop_assert_eq!(cache.len(), expected);
        for h in 0..heads {
            let pos = &cache.positions()[h];
            prop_assert!(pos.windows(2).all(|p| p[0] < p[1]));
            prop_assert!(pos.iter().all(|p| before[h].contains(p)));
            prop_assert_eq!(&pos[pos.len() - w..], &before[h][len - w..]);
            // Kept candidates outscore every dropped candidate.
            let kept: Vec<usize> = pos.iter().map(|p| p - start).filter(|&i| i < len - w).collect();
            let min_kept = kept.iter().map(|&i| scores[h * len + i]).fold(f32::INFINITY, f32::min);
            for i in (0..len - w).filter(|i| !kept.contains(i)) {
                prop_assert!(scores[h * len + i] <= min_kept);
            }
        }
        // Gathered rows match their positions (keys[h, i, :] followed the token).
        let k = cache.keys().unwrap().into_data().into_vec::<f32>().unwrap();
        prop_assert_eq!(k.len(), heads * expected * dim);
    }
}
