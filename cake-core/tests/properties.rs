//! Property tests: budget invariants of every allocator, monotone cascade budgets, the
//! eviction of one layer (unique in-range indices, window kept, positions preserved), and
//! equal memory (every policy holds at most `C` tokens per layer on average).

mod common;

use burn::tensor::{Tensor, TensorData};
use cake_core::{
    Allocator, BudgetPlan, DecodeStep, KvCompressor, LayerCache, LayerPreference, PolicyCompressor,
    PolicyConfig, Preference, Pyramid, Static, Uniform, allocate_budgets, evict_to_budget,
};
use common::{B, Normal, SMALL, held_rows as rows, indexed_policy, prefill_staged};
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

/// Each allocator's shares of all `l = prefs.len()` layers, against their definition:
/// uniform 1 each; PyramidKV linear from `2 - 1/beta` to `1/beta` (mean 1 over two or more
/// layers); preference `P_l / max P` (0 without a positive preference), in logs; static
/// the normalised fixed shares, summing to 1.
fn check_shares(
    name: &str,
    shares: &[f64],
    prefs: &[Option<LayerPreference>],
    fixed: &[f64],
    tau1: f64,
    tau2: f64,
) -> Result<(), TestCaseError> {
    let l = shares.len();
    prop_assert!(shares.iter().all(|s| s.is_finite()), "{name}: {shares:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    match name {
        "uniform" => prop_assert!(shares.iter().all(|&s| s == 1.0), "{shares:?}"),
        "pyramid" => {
            prop_assert!(close(shares[0], 2.0 - 1.0 / 20.0), "{shares:?}");
            if l > 1 {
                prop_assert!(close(shares[l - 1], 1.0 / 20.0), "{shares:?}");
                prop_assert!(
                    close(shares.iter().sum::<f64>(), l as f64),
                    "mean 1: {shares:?}"
                );
                let step = shares[0] - shares[1];
                prop_assert!(
                    shares.windows(2).all(|p| close(p[0] - p[1], step)),
                    "linear"
                );
            }
        }
        "preference" => {
            let logs: Vec<Option<f64>> = prefs
                .iter()
                .map(|p| p.and_then(|p| p.log_score(tau1, tau2)))
                .collect();
            let max = logs
                .iter()
                .flatten()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            for (s, log) in shares.iter().zip(&logs) {
                match log {
                    Some(log) => prop_assert!(close(*s, (log - max).exp()), "{s} vs {log} - {max}"),
                    None => prop_assert_eq!(*s, 0.0),
                }
            }
            if max.is_finite() {
                prop_assert!(close(shares.iter().copied().fold(0.0, f64::max), 1.0));
            }
        }
        "static" => {
            prop_assert!(close(shares.iter().sum::<f64>(), 1.0), "{shares:?}");
            let want = Static::from_shares(fixed.to_vec()).unwrap();
            prop_assert_eq!(shares, want.layer_shares());
        }
        other => prop_assert!(false, "unexpected allocator {other}"),
    }
    Ok(())
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
        for alloc in allocators(tau1, tau2, fixed.clone()) {
            let shares = alloc.shares(l, &prefs);
            prop_assert_eq!(shares.len(), l);
            check_shares(alloc.name(), &shares, &prefs, &fixed, tau1, tau2)?;
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Equal memory (section 6): whatever the allocator (uniform, pyramid, preference,
    /// static), scorer, head budgets (none, preference, adakv, static), prompt length
    /// (shorter or longer than C, or than the window) and cascading, the tokens held per
    /// KV head summed over layers, window included, never exceed `C * L`: after each
    /// cascade stage of the prefill (after the prefill when one-shot, whose layers stay
    /// full until then by design), and after every layer's hook of every decoding step
    /// (`(C + N) * L` with the amortised slack N, whose layers may hold N more by
    /// definition). A prompt of at most C tokens decodes as the full cache until each
    /// head holds C tokens, then stays there. The report's decoding peak (metered with each
    /// step's new token before its eviction) is at most one token per KV head above.
    #[test]
    fn every_policy_holds_at_most_c_tokens_per_layer_on_average(
        allocator in 0usize..4,
        scorer in 0usize..5,
        head_mode in 0usize..4,
        window in 1usize..12,
        extra in 1usize..40,
        prompt in 1usize..100,
        steps in 0usize..24,
        cascading in any::<bool>(),
        slack in prop_oneof![3 => Just(0usize), 1 => 1usize..4],
        seed in 1u64..u64::MAX,
        fixed in prop::collection::vec(0.0f64..1.0, SMALL.layers * SMALL.kv_heads),
    ) {
        let shape = SMALL;
        let (l, hkv) = (shape.layers, shape.kv_heads);
        let c = window + extra;
        let config = PolicyConfig {
            cache_size: c,
            window,
            cascading,
            decode_slack: slack,
            ..PolicyConfig::default()
        };
        let (policy, name) = indexed_policy(allocator, scorer, head_mode, &fixed, config, l, hkv);
        let mut comp = PolicyCompressor::new(policy, l);
        let equal = c * l * hkv;
        let mut caches = prefill_staged(shape, prompt, seed, &mut comp, |layer, caches| {
            if cascading {
                prop_assert!(rows(caches) <= equal, "{name}: stage {layer}: {} > {equal}", rows(caches));
            }
            Ok(())
        })?;
        prop_assert!(rows(&caches) <= equal, "{name}: after prefill: {} > {equal}", rows(&caches));
        let bound = (c + slack) * l * hkv;
        let mut rng = Normal::new(seed ^ 0xDEC0DE);
        let mut held: Vec<usize> = caches.iter().map(LayerCache::rows).collect();
        let mut most = 0;
        for step in 0..steps {
            let newest = prompt + step;
            for (layer, cache) in caches.iter_mut().enumerate() {
                let q = rng.tensor([shape.heads, 1, shape.dim], 0.4 + 0.5 * layer as f32);
                let k = rng.tensor([hkv, 1, shape.dim], 1.0);
                let v = rng.tensor([hkv, 1, shape.dim], 1.0);
                cache.append(k, v, newest).unwrap();
                comp.after_decode_step(DecodeStep { layer, query: q, attention: None }, cache).unwrap();
                held[layer] = cache.rows();
                let total: usize = held.iter().sum();
                most = most.max(total);
                prop_assert!(total <= bound, "{name}: step {step} layer {layer}: {total} > {bound}");
                if prompt <= c && slack == 0 {
                    let want = (newest + 1).min(c);
                    prop_assert_eq!(cache.head_lens(), vec![want; hkv], "{} step {}", name, step);
                }
            }
        }
        let report = comp.report(&caches);
        if steps > 0 {
            prop_assert!(report.decode_peak_token_rows >= most);
            prop_assert!(report.decode_peak_token_rows <= bound + hkv, "{name}");
            prop_assert_eq!(report.decode_peak_bytes, report.decode_peak_token_rows * 2 * shape.dim * 4);
        } else {
            prop_assert_eq!(report.decode_peak_token_rows, 0);
        }
    }
}
