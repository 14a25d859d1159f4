//! The sink ablation (`PolicyConfig::sink`, `--sink N`): the first N prompt tokens are
//! kept in every layer and KV head, whatever the policy, inside the layer's budget; N = 0
//! keeps what the scorer ranks best, as before the option existed.

mod common;

use cake_core::allocator::AllocatorKind;
use cake_core::policy::build_scorer;
use cake_core::scorer::{PrefillInput, ScorerKind, pin_sinks};
use cake_core::stats::{to_host, top_k_indices, window_attention};
use cake_core::{
    DecodeStep, HeadBudgets, KvCompressor, LayerCache, Policy, PolicyCompressor, PolicyConfig,
    PrefillLayer,
};
use common::{B, HEAD_MODES, Normal, SMALL, held_rows as rows, indexed_policy, prefill_staged};
use proptest::prelude::*;

/// The sinks (positions below `sink`) among `kept` (ascending positions).
fn sinks_held(kept: &[usize], sink: usize) -> Vec<usize> {
    kept.iter().copied().take_while(|&p| p < sink).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// For every allocator (uniform, pyramid, preference, static), scorer, head-budget mode
    /// (none, preference, adakv, static), prompt length and cascading: after the prefill,
    /// each KV head of each layer keeps the first `min(N, b)` positions, `b` being the
    /// prompt tokens it keeps outside its window (the sinks take the budget's first
    /// places, earliest first); the rows held stay within `C * L * Hkv` (the budget bounds
    /// the total, sinks included); decoding never drops a sink the prefill kept outside the
    /// window (decoding budgets never shrink), and stays within the same bound. Where every budget is at least N (uniform budgets, layer-wide
    /// or AdaKV, a prompt of at least C tokens and `C - w >= N`), every layer and head keeps
    /// all of `0..N`.
    #[test]
    fn sink_keeps_the_first_tokens_inside_the_budget(
        allocator in 0usize..4,
        scorer in 0usize..5,
        head_mode in 0usize..4,
        window in 1usize..8,
        extra in 1usize..30,
        prompt in 1usize..90,
        steps in 0usize..10,
        cascading in any::<bool>(),
        sink in 1usize..12,
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
            sink,
            ..PolicyConfig::default()
        };
        let (policy, name) = indexed_policy(allocator, scorer, head_mode, &fixed, config, l, hkv);
        let name = format!("{name} sink {sink}");
        let modes = HEAD_MODES;
        let mut comp = PolicyCompressor::new(policy, l);
        let equal = c * l * hkv;
        let mut caches = prefill_staged(shape, prompt, seed, &mut comp, |layer, caches| {
            if cascading {
                prop_assert!(rows(caches) <= equal, "{name}: stage {layer}: {} > {equal}", rows(caches));
            }
            Ok(())
        })?;
        prop_assert!(rows(&caches) <= equal, "{name}: after prefill: {} > {equal}", rows(&caches));
        let w = window.min(prompt);
        let uniform_budgets = allocator == 0
            && matches!(modes[head_mode], HeadBudgets::None | HeadBudgets::AdaKv)
            && prompt >= c
            && extra >= sink;
        let mut kept_sinks = Vec::new();
        for (layer, cache) in caches.iter().enumerate() {
            for (h, kept) in cache.positions().iter().enumerate() {
                let outside = kept.len() - w;
                let want: Vec<usize> = (0..sink.min(outside)).collect();
                prop_assert_eq!(
                    &kept[..want.len()], &want[..],
                    "{}: layer {} head {} keeps {} outside its window: {:?}", name, layer, h, outside, kept
                );
                if uniform_budgets {
                    prop_assert_eq!(sinks_held(kept, sink), (0..sink).collect::<Vec<_>>(), "{}", name);
                }
                kept_sinks.push(sinks_held(&kept[..outside], sink));
            }
        }
        let mut rng = Normal::new(seed ^ 0xDEC0DE);
        for step in 0..steps {
            let newest = prompt + step;
            for (layer, cache) in caches.iter_mut().enumerate() {
                let q = rng.tensor([shape.heads, 1, shape.dim], 0.4 + 0.5 * layer as f32);
                let k = rng.tensor([hkv, 1, shape.dim], 1.0);
                let v = rng.tensor([hkv, 1, shape.dim], 1.0);
                cache.append(k, v, newest).unwrap();
                comp.after_decode_step(DecodeStep { layer, query: q, attention: None }, cache).unwrap();
                for (h, kept) in cache.positions().iter().enumerate() {
                    let lost: Vec<&usize> = kept_sinks[layer * hkv + h]
                        .iter()
                        .filter(|p| !kept.contains(p))
                        .collect();
                    prop_assert!(
                        lost.is_empty(),
                        "{}: step {} layer {} head {} dropped sinks {:?}", name, step, layer, h, lost
                    );
                }
            }
            prop_assert!(rows(&caches) <= equal, "{name}: step {step}: {} > {equal}", rows(&caches));
        }
    }
}

/// The prompt tokens outside the window that head `h` keeps when it keeps `keep` of the
/// first `candidates` by `scores` (`[Hkv, S]` on the host), after the first `sink`
/// positions: what the selection computes, written out with `top_k_indices` alone.
fn expected(
    scores: &[f32],
    width: usize,
    h: usize,
    candidates: usize,
    keep: usize,
    sink: usize,
) -> Vec<usize> {
    let row = &scores[h * width..h * width + candidates];
    let first = sink.min(candidates).min(keep);
    let rest = top_k_indices(&row[first..], keep - first);
    let mut kept: Vec<usize> = (0..first)
        .chain(rest.into_iter().map(|i| i + first))
        .collect();
    kept.sort_unstable();
    kept
}

/// Uniform budgets (C - w tokens per layer), every scorer, cascading or one-shot: with
/// N = 0 each head keeps exactly the `C - w` best-scored tokens of its scorer before the
/// window (the selection as it was before the sink option), and with N > 0 the first N
/// positions plus the `C - w - N` best-scored of the others. The scores come from the
/// scorer itself on the layer's queries and keys, so this checks the compressor's
/// selection against an independent top-k.
#[test]
fn sink_n_keeps_the_first_n_then_the_scorers_best_and_zero_keeps_the_scorers_best() {
    let shape = SMALL;
    let (l, hkv) = (shape.layers, shape.kv_heads);
    let (prompt, window, c) = (70, 6, 26);
    let keep = c - window;
    for &(kind, _) in ScorerKind::ALL {
        for cascading in [true, false] {
            for sink in [0, 1, 5, keep, keep + 3] {
                let config = PolicyConfig {
                    cache_size: c,
                    window,
                    cascading,
                    sink,
                    ..PolicyConfig::default()
                };
                let scorer = build_scorer::<B>(kind, &config);
                let policy =
                    Policy::from_kinds(AllocatorKind::Uniform, kind, config.clone()).unwrap();
                let mut comp = PolicyCompressor::new(policy, l);
                let mut rng = Normal::new(7 + sink as u64);
                let mut caches: Vec<LayerCache<B>> = Vec::new();
                let mut want = Vec::new();
                for layer in 0..l {
                    let q = rng.tensor([shape.heads, prompt, shape.dim], 0.4 + 0.5 * layer as f32);
                    let k = rng.tensor([hkv, prompt, shape.dim], 1.0);
                    let v = rng.tensor([hkv, prompt, shape.dim], 1.0);
                    let attn = window_attention(q.clone(), k.clone(), window);
                    let scores = to_host(scorer.prefill_scores(&PrefillInput {
                        queries: &q,
                        keys: &k,
                        window_attention: Some(&attn),
                        window,
                        attention_sums: None,
                    }));
                    for h in 0..hkv {
                        let mut kept = expected(&scores, prompt, h, prompt - window, keep, sink);
                        kept.extend(prompt - window..prompt);
                        want.push(kept);
                    }
                    let mut cache = LayerCache::new();
                    cache.append(k, v, 0).unwrap();
                    caches.push(cache);
                    comp.after_prefill_layer(PrefillLayer::new(layer, q), &mut caches)
                        .unwrap();
                }
                comp.after_prefill(&mut caches).unwrap();
                let got: Vec<Vec<usize>> =
                    caches.iter().flat_map(|c| c.positions().to_vec()).collect();
                assert_eq!(got, want, "{kind} cascading {cascading} sink {sink}");
                if sink > 0 {
                    assert!(got.iter().all(|p| p[..sink.min(keep)] == (0..sink.min(keep)).collect::<Vec<_>>()));
                }
            }
        }
    }
}

/// `pin_sinks` leaves scores alone at N = 0 and past the sinks, pins exactly the
/// positions below N (earlier ones higher, all above any score), reads the positions of
/// each head (ragged heads padded past their length are left alone).
#[test]
fn pinning_rewrites_only_the_sinks() {
    let device = Default::default();
    let scores = burn::tensor::Tensor::<B, 2>::from_data(
        burn::tensor::TensorData::new(vec![0.5f32, 9.0, 1e30, 2.0, 0.1, 0.2, 0.3, 0.0], [2, 4]),
        &device,
    );
    let positions = vec![vec![0, 2, 3, 9], vec![3, 5, 6]];
    assert_eq!(
        to_host(pin_sinks(scores.clone(), &positions, 0)),
        to_host(scores.clone())
    );
    let pinned = to_host(pin_sinks(scores, &positions, 4));
    // Head 0: positions 0, 2, 3 are sinks (0 highest), 9 is not; head 1: position 3 is.
    assert!(pinned[0] > pinned[1] && pinned[1] > pinned[2] && pinned[2] > 1e30);
    assert_eq!(pinned[3], 2.0);
    assert!(pinned[4] > 1e30 && pinned[4] == pinned[2]);
    assert_eq!(&pinned[5..], &[0.2, 0.3, 0.0]);
}
