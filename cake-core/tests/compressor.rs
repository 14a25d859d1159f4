//! PolicyCompressor end to end on synthetic random Q/K/V (burn-flex CPU backend).

mod common;

use std::sync::Arc;

use cake_core::{
    Allocator, Compressor, DecodeEviction, LayerCache, LayerPreference, Method, Policy,
    PolicyCompressor, PolicyConfig, PolicySpec, ScoreFunction, Static,
};
use common::{B, SMALL, Shape, decode, prefill};

const S: usize = 200;

fn config(cache_size: usize, window: usize, cascading: bool) -> PolicyConfig {
    PolicyConfig {
        cache_size,
        window,
        cascading,
        ..PolicyConfig::default()
    }
}

fn run(
    name: &str,
    cfg: &PolicyConfig,
    shape: Shape,
    prompt: usize,
    seed: u64,
) -> (PolicyCompressor<B>, Vec<cake_core::LayerCache<B>>) {
    let policy = Policy::<B>::preset(name.parse().unwrap(), cfg).unwrap();
    let mut comp = PolicyCompressor::new(policy, shape.layers);
    let caches = prefill(shape, prompt, seed, &mut comp);
    (comp, caches)
}

const EVICTING: [&str; 6] = ["streaming", "h2o", "tova", "snapkv", "pyramidkv", "cake"];

#[test]
fn every_policy_meets_its_budgets_and_keeps_the_window() {
    let (c, w) = (40, 8);
    for name in EVICTING {
        for cascading in [true, false] {
            let (comp, caches) = run(name, &config(c, w, cascading), SMALL, S, 7);
            let report = comp.report(&caches);
            let budgets: Vec<usize> = report.layers.iter().map(|l| l.budget).collect();
            let sum: usize = budgets.iter().sum();
            if report.clamped_growths == 0 {
                assert_eq!(sum, SMALL.layers * (c - w), "{name} {budgets:?}");
            } else {
                assert!(
                    sum + report.clamped_growths >= SMALL.layers * (c - w),
                    "{name}"
                );
            }
            for (l, cache) in caches.iter().enumerate() {
                assert_eq!(cache.len(), S.min(budgets[l] + w), "{name} layer {l}");
                assert_eq!(cache.num_kv_heads(), SMALL.kv_heads);
                for pos in cache.positions() {
                    assert!(pos.windows(2).all(|p| p[0] < p[1]), "ascending, unique");
                    assert!(pos.iter().all(|&p| p < S));
                    assert_eq!(&pos[pos.len() - w..], &(S - w..S).collect::<Vec<_>>()[..]);
                }
                assert_eq!(
                    cache.scores().unwrap().dims(),
                    [SMALL.kv_heads, cache.len()]
                );
            }
            if name == "streaming" {
                // Sinks 0..4 then the most recent tokens.
                let pos = &caches[0].positions()[0];
                assert_eq!(&pos[..4], &[0, 1, 2, 3]);
                assert_eq!(pos[4], S - (pos.len() - 4));
            }
        }
    }
}

#[test]
fn uniform_policies_give_every_layer_c_minus_w() {
    let (comp, _) = run("snapkv", &config(40, 8, true), SMALL, S, 3);
    assert_eq!(comp.budgets(), &[32; 6]);
    let (comp, _) = run("pyramidkv", &config(40, 8, false), SMALL, S, 3);
    let b = comp.budgets();
    assert!(
        b.windows(2).all(|p| p[0] >= p[1]),
        "pyramid decreases: {b:?}"
    );
    assert!(b[0] > b[5]);
}

#[test]
fn cake_budgets_follow_preferences() {
    let (comp, caches) = run("cake", &config(40, 8, false), SMALL, S, 11);
    let report = comp.report(&caches);
    let prefs: Vec<LayerPreference> = report
        .layers
        .iter()
        .map(|l| l.preference.unwrap())
        .collect();
    let scores: Vec<f64> = report
        .layers
        .iter()
        .map(|l| l.preference_score.unwrap())
        .collect();
    assert!(prefs.iter().all(|p| p.entropy > 0.0 && p.variance > 0.0));
    // Budgets are ordered as the preference scores (no layer is capped here).
    for i in 0..6 {
        for j in 0..6 {
            if scores[i] > scores[j] * 1.05 {
                assert!(
                    report.layers[i].budget >= report.layers[j].budget,
                    "{scores:?}"
                );
            }
        }
    }
    let share_sum: f64 = report.layers.iter().map(|l| l.share).sum();
    assert!((share_sum - 1.0).abs() < 1e-9);
    // The report serialises and parses back.
    let json = report.to_json();
    let back: cake_core::CompressionReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.stage_budgets, report.stage_budgets);
    for (a, b) in back.layers.iter().zip(&report.layers) {
        assert_eq!(
            (a.budget, a.held, &a.kept_positions),
            (b.budget, b.held, &b.kept_positions)
        );
        assert!((a.share - b.share).abs() < 1e-12);
    }
}

#[test]
fn cascading_matches_one_shot_and_bounds_peak_memory() {
    let (c, w) = (40, 8);
    for name in ["cake", "snapkv", "pyramidkv", "h2o", "tova"] {
        for seed in [1, 2, 3] {
            let (cas, cas_caches) = run(name, &config(c, w, true), SMALL, S, seed);
            let (one, one_caches) = run(name, &config(c, w, false), SMALL, S, seed);
            let (rc, ro) = (cas.report(&cas_caches), one.report(&one_caches));
            for (lc, lo) in rc.layers.iter().zip(&ro.layers) {
                // Same final budgets unless rounding grew one at a late stage, in which case
                // the cascade keeps a subset (it never takes a dropped token back).
                assert!(lc.budget <= lo.budget);
                for (pc, po) in lc.kept_positions.iter().zip(&lo.kept_positions) {
                    if lc.budget == lo.budget {
                        assert_eq!(pc, po, "{name} seed {seed} layer {}", lc.layer);
                    } else {
                        assert!(pc.iter().all(|p| po.contains(p)));
                    }
                }
            }
            let differing = rc
                .layers
                .iter()
                .zip(&ro.layers)
                .filter(|(a, b)| a.budget != b.budget)
                .count();
            assert!(differing <= rc.clamped_growths);
            // Peak per KV head: B_total + S + L * w tokens (token rows: times Hkv).
            let total = SMALL.layers * (c - w);
            assert!(
                rc.peak_tokens <= total + S + SMALL.layers * w,
                "{}",
                rc.peak_tokens
            );
            assert_eq!(rc.peak_token_rows, rc.peak_tokens * SMALL.kv_heads);
            assert_eq!(ro.peak_tokens, S * SMALL.layers);
            assert_eq!(ro.peak_token_rows, ro.full_token_rows);
            assert_eq!(rc.full_token_rows, S * SMALL.layers * SMALL.kv_heads);
        }
    }
}

/// An allocator whose layer-0 share grows with the number of layers seen, so that its
/// budget grows between stages: the cascade must clamp instead of needing dropped tokens.
#[derive(Debug)]
struct Growing;

impl Allocator for Growing {
    fn name(&self) -> &'static str {
        "growing"
    }
    fn shares(&self, _: usize, preferences: &[Option<LayerPreference>]) -> Vec<f64> {
        let seen = preferences.len() as f64;
        (0..preferences.len())
            .map(|l| if l == 0 { seen * seen } else { 1.0 })
            .collect()
    }
}

#[test]
fn a_growing_budget_is_clamped_to_what_is_kept() {
    let cfg = config(40, 8, true);
    let policy = Policy::<B>::new(
        Arc::new(Growing),
        Arc::new(cake_core::SnapKv { pool_kernel: 5 }),
        cfg,
    )
    .unwrap();
    let mut comp = PolicyCompressor::new(policy, SMALL.layers);
    let caches = prefill(SMALL, S, 5, &mut comp);
    let report = comp.report(&caches);
    // Stage 0: layer 0 alone gets B_total = 192 (cap 192); stage 1: 4/5 * 192 = 153.6;
    // stage 2: 9/11 * 192 = 157.09 -> grows: clamped to the 154 it kept.
    assert_eq!(report.stage_budgets[0], vec![192]);
    assert_eq!(report.stage_budgets[1], vec![154, 38]);
    assert_eq!(report.stage_budgets[2][0], 154);
    assert!(report.clamped_growths >= 1);
    assert_eq!(caches[0].len(), report.layers[0].budget + 8);
    let first: Vec<usize> = report.stage_budgets.iter().map(|b| b[0]).collect();
    assert!(
        first.windows(2).all(|p| p[1] <= p[0]),
        "held never grows: {first:?}"
    );
}

#[test]
fn decoding_keeps_each_layer_at_budget_plus_window() {
    let (c, w, steps) = (40, 8, 64);
    for name in EVICTING {
        let (mut comp, mut caches) = run(name, &config(c, w, true), SMALL, S, 9);
        let budgets = comp.budgets().to_vec();
        decode(
            SMALL,
            S,
            steps,
            9,
            &mut comp,
            &mut caches,
            |step, layer, cache| {
                assert_eq!(cache.len(), budgets[layer] + w, "{name} step {step}");
                let newest = S + step;
                for pos in cache.positions() {
                    assert!(
                        pos.windows(2).all(|p| p[0] < p[1]),
                        "{name}: positions increase"
                    );
                    assert_eq!(
                        &pos[pos.len() - w..],
                        &(newest + 1 - w..=newest).collect::<Vec<_>>()[..]
                    );
                }
            },
        );
        if name == "streaming" {
            assert_eq!(&caches[0].positions()[0][..4], &[0, 1, 2, 3]);
        }
    }
}

#[test]
fn decoding_without_eviction_grows() {
    let cfg = PolicyConfig {
        decode_evict: DecodeEviction::None,
        ..config(40, 8, true)
    };
    let (mut comp, mut caches) = run("cake", &cfg, SMALL, S, 4);
    let held: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    decode(
        SMALL,
        S,
        10,
        4,
        &mut comp,
        &mut caches,
        |step, layer, cache| {
            assert_eq!(cache.len(), held[layer] + step + 1);
        },
    );
}

/// `decode_slack = N`: a layer grows to `budget + w + N` tokens, then drops `N + 1` at
/// once back to `budget + w` (a saw-tooth of period `N + 1`), keeping the window.
#[test]
fn decode_slack_evicts_in_batches() {
    let slack = 3;
    let cfg = PolicyConfig {
        decode_slack: slack,
        ..config(40, 8, true)
    };
    let (mut comp, mut caches) = run("cake", &cfg, SMALL, S, 4);
    let held: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    let budgets = comp.report(&caches).layers;
    assert!(
        budgets.iter().zip(&held).any(|(l, &h)| h == l.budget + 8),
        "some layer decodes at budget + w"
    );
    decode(
        SMALL,
        S,
        12,
        4,
        &mut comp,
        &mut caches,
        |step, layer, cache| {
            let keep = budgets[layer].budget + 8;
            if held[layer] != keep {
                return; // a layer holding fewer (e.g. a short prompt's) grows to it first
            }
            assert!(
                cache.len() <= keep + slack,
                "never above budget + w + slack"
            );
            // One token per step; at keep + slack + 1 it falls back to keep.
            let expected = keep + (step + 1) % (slack + 1);
            assert_eq!(cache.len(), expected, "layer {layer} step {step}");
            let pos = &cache.positions()[0];
            let newest = S + step;
            assert_eq!(
                &pos[pos.len() - 8..],
                &(newest - 7..=newest).collect::<Vec<_>>()[..]
            );
        },
    );
}

#[test]
fn a_budget_above_the_prompt_keeps_everything() {
    for name in EVICTING {
        for cascading in [true, false] {
            let (comp, caches) = run(name, &config(300, 8, cascading), SMALL, S, 2);
            for cache in &caches {
                assert_eq!(cache.len(), S, "{name}");
                assert_eq!(cache.positions()[0], (0..S).collect::<Vec<_>>());
            }
            assert_eq!(comp.report(&caches).peak_tokens, S * SMALL.layers);
        }
    }
    // A prompt shorter than the window: nothing to evict.
    let (_, caches) = run("cake", &config(40, 32, true), SMALL, 20, 2);
    assert!(caches.iter().all(|c| c.len() == 20));
}

#[test]
fn ratio_budgets_scale_with_the_prompt() {
    let cfg = PolicyConfig {
        ratio: Some(0.25),
        ..config(1024, 8, true)
    };
    let (comp, caches) = run("snapkv", &cfg, SMALL, S, 6);
    assert_eq!(comp.plan().unwrap().cache_size, 50);
    assert!(caches.iter().all(|c| c.len() == 50));
}

#[test]
fn static_allocator_from_a_score_function() {
    let text = r#"{"format": "cake-score-function/1", "model": "synthetic", "num_layers": 6,
        "num_kv_heads": 2, "degree": 1, "domain": [0.0, 1.0], "coefficients": [1.0, -1.0],
        "head_coefficients": null, "cv": {"folds": 3}}"#;
    let f = ScoreFunction::from_json_str(text).unwrap();
    // shares 1 - x for x = 0, .2, .., 1 -> 1, .8, .6, .4, .2, eps (sum 3): of 192 tokens
    // 64, 51.2, 38.4, 25.6, 12.8, ~0: floors sum to 190, the 2 left go to the largest
    // fractions (.8 of layer 4, .6 of layer 3) -> 64, 51, 38, 26, 13, 0.
    let alloc = Static::from_score_function(&f, 6).unwrap();
    assert!(Static::from_score_function(&f, 7).is_err());
    let policy = Policy::<B>::new(
        Arc::new(alloc),
        Arc::new(cake_core::Cake {
            gamma: 200.0,
            pool_kernel: 5,
        }),
        config(40, 8, false),
    )
    .unwrap();
    let mut comp = PolicyCompressor::new(policy, 6);
    let caches = prefill(SMALL, S, 8, &mut comp);
    assert_eq!(comp.budgets(), &[64, 51, 38, 26, 13, 0]);
    assert_eq!(caches[5].len(), 8);
}

#[test]
fn full_keeps_everything_and_reports_nothing() {
    let spec = PolicySpec {
        cache: config(40, 8, true),
        ..PolicySpec::new(Method::Full)
    };
    let mut comp = spec.compressor::<B>("synthetic", SMALL.layers).unwrap();
    assert!(matches!(comp, Compressor::KeepAll));
    let mut caches = prefill(SMALL, S, 1, &mut comp);
    assert!(caches.iter().all(|c| c.len() == S));
    decode(SMALL, S, 3, 1, &mut comp, &mut caches, |step, _, cache| {
        assert_eq!(cache.len(), S + step + 1);
    });
    assert!(comp.report(&caches).is_none());
    assert_eq!(
        caches.iter().map(LayerCache::len).sum::<usize>(),
        SMALL.layers * (S + 3)
    );
    // The same spec with an evicting method holds C tokens per layer and reports them.
    let cake = PolicySpec {
        method: Method::Cake,
        ..spec
    };
    let mut comp = cake.compressor::<B>("synthetic", SMALL.layers).unwrap();
    let caches = prefill(SMALL, S, 1, &mut comp);
    let report = comp.report(&caches).unwrap();
    assert_eq!(report.policy, "cake (preference+cake)");
    assert_eq!(report.total_budget, SMALL.layers * (40 - 8));
    assert_eq!(
        report.layers.iter().map(|l| l.held).sum::<usize>(),
        caches.iter().map(LayerCache::len).sum::<usize>()
    );
}

/// Replaying a recorded prefill leaves what a live run leaves, for every policy, with a
/// plain recorder and with one that also records H2O's prefill scores (which replayed H2O
/// then takes instead of computing them); the recorded scores are really taken: H2O given
/// them reversed keeps other tokens.
#[test]
fn replaying_a_recorded_prefill_equals_a_live_run() {
    use cake_core::KvCompressor as _;
    let cfg = config(40, 8, true);
    for mut recorder in [
        cake_core::PrefillRecorder::<B>::new(),
        cake_core::PrefillRecorder::<B>::with_attention_sums(),
    ] {
        let full = prefill(SMALL, S, 5, &mut recorder);
        assert_eq!(recorder.queries().len(), SMALL.layers);
        assert!(full.iter().all(|c| c.len() == S), "the recorder keeps all");
        for name in EVICTING {
            let (live, live_caches) = run(name, &cfg, SMALL, S, 5);
            let policy = Policy::<B>::preset(name.parse().unwrap(), &cfg).unwrap();
            let mut replayed = PolicyCompressor::new(policy, SMALL.layers);
            let mut caches = full.clone();
            cake_core::replay_prefill(&mut replayed, &recorder, &mut caches).unwrap();
            assert_eq!(replayed.budgets(), live.budgets(), "{name}");
            for (a, b) in caches.iter().zip(&live_caches) {
                assert_eq!(a.positions(), b.positions(), "{name}");
            }
            // Negative control: the policy really evicted (the comparison is not vacuous).
            assert!(caches.iter().all(|c| c.len() < S), "{name}");
        }
    }
    let mut recorder = cake_core::PrefillRecorder::<B>::with_attention_sums();
    let full = prefill(SMALL, S, 5, &mut recorder);
    let sums = recorder.attention_sums().expect("recorded");
    assert_eq!(sums.len(), SMALL.layers);
    // Negative control: H2O fed the recorded scores reversed keeps other tokens.
    let policy = Policy::<B>::preset("h2o".parse().unwrap(), &cfg).unwrap();
    let mut h2o = PolicyCompressor::new(policy, SMALL.layers);
    let mut caches = full.clone();
    for (layer, q) in recorder.queries().iter().enumerate() {
        let mut step = cake_core::PrefillLayer::new(layer, q.clone());
        step.attention_sums = Some(sums[layer].clone().flip([1]));
        h2o.after_prefill_layer(step, &mut caches[..=layer])
            .unwrap();
    }
    h2o.after_prefill(&mut caches).unwrap();
    let (_, live_caches) = run("h2o", &cfg, SMALL, S, 5);
    assert!(
        caches
            .iter()
            .zip(&live_caches)
            .any(|(a, b)| a.positions() != b.positions()),
        "H2O ignored the scores it was given"
    );
}

/// A prompt shorter than the cache size (S = 200 < C = 240) leaves every layer everything,
/// and decoding evicts nothing until a layer holds C tokens: the full cache's tokens
/// exactly. From then on every layer holds C tokens, one in and one out a step, keeping the
/// window: whatever its share of B_total, a layer never grows past C, since all of them
/// at C already hold the total `C * L` (equal memory, [`cake_core::cascade::decode_budgets`];
/// a layer whose uncapped share is above C used to grow to it, past `C * L` in all).
#[test]
fn a_prompt_shorter_than_the_cache_evicts_nothing_until_a_layer_holds_c() {
    let (c, w, steps) = (240, 8, 70);
    for name in ["pyramidkv", "cake"] {
        let (mut comp, mut caches) = run(name, &config(c, w, true), SMALL, S, 5);
        let report = comp.report(&caches);
        let budgets: Vec<usize> = report.layers.iter().map(|l| l.budget).collect();
        let shares: Vec<f64> = report.layers.iter().map(|l| l.share).collect();
        assert_eq!(
            budgets,
            vec![S - w; SMALL.layers],
            "{name}: everything kept"
        );
        // Some layers' uncapped shares of B_total are above C - w: they stay at C too.
        let total = (c - w) * SMALL.layers;
        let uncapped = cake_core::allocate_budgets(&shares, total, &[total; SMALL.layers]);
        assert!(
            uncapped.iter().any(|&b| b + w > c),
            "{name}: some layers' shares are above C: {uncapped:?}"
        );
        let limits: Vec<usize> =
            cake_core::cascade::decode_budgets(&budgets, &shares, total, c - w)
                .iter()
                .map(|b| b + w)
                .collect();
        assert_eq!(limits, vec![c; SMALL.layers], "{name}");
        decode(
            SMALL,
            S,
            steps,
            5,
            &mut comp,
            &mut caches,
            |step, layer, cache| {
                let newest = S + step;
                let len = (newest + 1).min(limits[layer]);
                assert_eq!(cache.len(), len, "{name} layer {layer} step {step}");
                for pos in cache.positions() {
                    if newest < c {
                        assert_eq!(pos, &(0..=newest).collect::<Vec<_>>(), "nothing evicted");
                    }
                    assert!(pos.windows(2).all(|p| p[0] < p[1]), "ascending");
                    assert_eq!(
                        &pos[len - w..],
                        &(newest + 1 - w..=newest).collect::<Vec<_>>()[..]
                    );
                }
            },
        );
    }
}

/// Equal memory when the prompt caps a layer: with S = 60, C = 40, w = 8, PyramidKV's
/// shares give layers 0 and 1 more than the S - w = 52 prompt tokens that exist (raw 62.4
/// and 54.3 of B_total = 192); they keep 52 and the rest goes to the others, so the
/// budgets sum to B_total. While decoding no layer grows towards its uncapped share (layer
/// 0's would be 62): the others use the whole total, and the caches hold `C * L` tokens per
/// KV head at every step, as the uniform baselines do.
#[test]
fn a_layer_capped_by_the_prompt_does_not_grow_past_equal_memory() {
    let (c, w, s, steps) = (40, 8, 60, 20);
    for name in ["pyramidkv", "cake"] {
        let (mut comp, mut caches) = run(name, &config(c, w, false), SMALL, s, 3);
        let budgets = comp.budgets().to_vec();
        assert_eq!(
            budgets.iter().sum::<usize>(),
            SMALL.layers * (c - w),
            "{name}"
        );
        if name == "pyramidkv" {
            assert_eq!(&budgets[..2], &[s - w, s - w], "capped: {budgets:?}");
        }
        let mut lens: Vec<usize> = caches.iter().map(LayerCache::len).collect();
        decode(
            SMALL,
            s,
            steps,
            3,
            &mut comp,
            &mut caches,
            |step, layer, cache| {
                assert_eq!(
                    cache.len(),
                    budgets[layer] + w,
                    "{name} layer {layer} step {step}"
                );
                lens[layer] = cache.len();
                assert!(lens.iter().sum::<usize>() <= c * SMALL.layers, "{name}");
            },
        );
        // The report's decoding peak: every layer at C, and one layer with the step's new
        // token before its eviction.
        let report = comp.report(&caches);
        let rows = (c * SMALL.layers + 1) * SMALL.kv_heads;
        assert_eq!(report.decode_peak_token_rows, rows, "{name}");
        assert_eq!(report.decode_peak_bytes, rows * 2 * SMALL.dim * 4, "{name}");
    }
}

/// The report meters K/V bytes after the prefill and their peak while decoding (none
/// before the first step), and serialises both.
#[test]
fn the_report_gives_the_decoding_peak_next_to_the_prefill_bytes() {
    let (c, w) = (40, 8);
    let (mut comp, mut caches) = run("snapkv", &config(c, w, true), SMALL, S, 2);
    let row = 2 * SMALL.dim * 4;
    let prefilled = comp.report(&caches);
    assert_eq!(prefilled.bytes_after_prefill, prefilled.bytes_held);
    assert_eq!(
        prefilled.bytes_after_prefill,
        c * SMALL.layers * SMALL.kv_heads * row
    );
    assert_eq!(
        (
            prefilled.decode_peak_token_rows,
            prefilled.decode_peak_bytes
        ),
        (0, 0)
    );
    decode(SMALL, S, 3, 2, &mut comp, &mut caches, |_, _, _| {});
    let report = comp.report(&caches);
    assert_eq!(report.bytes_after_prefill, prefilled.bytes_after_prefill);
    assert_eq!(
        report.decode_peak_bytes,
        (c * SMALL.layers + 1) * SMALL.kv_heads * row
    );
    assert_eq!(
        comp.decode_peak(),
        (report.decode_peak_token_rows, report.decode_peak_bytes)
    );
    let back: cake_core::CompressionReport = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(back.decode_peak_bytes, report.decode_peak_bytes);
    // Without decoding eviction the peak is the grown cache's.
    let grow = PolicyConfig {
        decode_evict: DecodeEviction::None,
        ..config(c, w, true)
    };
    let (mut comp, mut caches) = run("snapkv", &grow, SMALL, S, 2);
    decode(SMALL, S, 3, 2, &mut comp, &mut caches, |_, _, _| {});
    assert_eq!(
        comp.report(&caches).decode_peak_bytes,
        (c + 3) * SMALL.layers * SMALL.kv_heads * row
    );
}

/// A ratio whose cache size `round(r * S)` does not exceed the window is refused when
/// the prompt arrives, naming the ratio, the prompt and the window (before, the shared
/// budget was silently 0 and every layer kept its window alone).
#[test]
fn a_ratio_leaving_nothing_outside_the_window_is_an_error() {
    use cake_core::{KvCompressor, PrefillLayer};
    let cfg = PolicyConfig {
        ratio: Some(0.03),
        ..config(1024, 8, true)
    };
    let policy = Policy::<B>::preset(Method::Cake, &cfg).unwrap();
    let mut comp = PolicyCompressor::new(policy, SMALL.layers);
    let mut rng = common::Normal::new(1);
    // round(0.03 * 200) = 6 <= 8.
    let k = rng.tensor([SMALL.kv_heads, S, SMALL.dim], 1.0);
    let mut caches = vec![LayerCache::<B>::new()];
    caches[0].append(k.clone(), k, 0).unwrap();
    let queries = rng.tensor([SMALL.heads, S, SMALL.dim], 1.0);
    let err = comp
        .after_prefill_layer(PrefillLayer::new(0, queries), &mut caches)
        .unwrap_err()
        .to_string();
    for want in ["ratio 0.03", "200-token prompt", "cache size 6", "window 8"] {
        assert!(err.contains(want), "{err}");
    }
    assert_eq!(caches[0].len(), S, "nothing evicted");
    // A ratio one token above the window runs.
    let ok = PolicyConfig {
        ratio: Some(0.045),
        ..cfg
    };
    let (comp, caches) = run("snapkv", &ok, SMALL, S, 1);
    assert_eq!(comp.plan().unwrap().cache_size, 9);
    assert_eq!(
        caches.iter().map(LayerCache::len).sum::<usize>(),
        9 * SMALL.layers
    );
}

/// Decoding keeps the prefill's scores on the cache only for a scorer that adds to them
/// (H2O) and evicts; the others rank by each step's fresh attention, so the scores go at
/// the first step instead of being padded at every append.
#[test]
fn only_an_accumulating_scorer_keeps_scores_while_decoding() {
    // (scorer, decoding eviction, C, scores kept); at C = 240 > S nothing is evicted yet.
    for (name, evict, c, kept) in [
        ("h2o", DecodeEviction::default(), 40, true),
        ("h2o", DecodeEviction::None, 40, false),
        ("cake", DecodeEviction::default(), 40, false),
        ("cake", DecodeEviction::default(), 240, false),
        ("snapkv", DecodeEviction::default(), 240, false),
    ] {
        let cfg = PolicyConfig {
            decode_evict: evict,
            ..config(c, 8, true)
        };
        let (mut comp, mut caches) = run(name, &cfg, SMALL, S, 2);
        assert!(
            caches.iter().all(|c| c.scores().is_some()),
            "{name}: prefill scores"
        );
        decode(SMALL, S, 2, 2, &mut comp, &mut caches, |_, layer, cache| {
            assert_eq!(
                cache.scores().is_some(),
                kept,
                "{name} {evict:?} layer {layer}"
            );
        });
    }
}
