//! Every policy inside the three tiny architectures (docs/algorithm.md sections 4-7): the
//! full cache is reproduced when the budget covers the prompt, caches hold exactly their
//! budgets, cascading equals one-shot eviction with bounded peak memory, and decoding keeps
//! each layer at a fixed size with increasing positions.

mod common;

use std::path::PathBuf;

use cake_core::{KeepAll, LayerCache, Method, Policy, PolicyCompressor, PolicyConfig, PolicySpec};
use cake_models::generate::{Generation, GenerationConfig};
use cake_models::{Cpu, Model, PrefillLogits, load};
use common::prompt;

fn tiny(arch: &str) -> Model<Cpu> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(arch);
    load::<Cpu>(&dir, &Default::default()).unwrap().model
}

fn config(cache_size: usize, window: usize) -> PolicyConfig {
    PolicyConfig {
        cache_size,
        window,
        ..PolicyConfig::default()
    }
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig::greedy(max_new_tokens, max_new_tokens)
}

fn last_logits(
    model: &Model<Cpu>,
    ids: &[u32],
    compressor: &mut dyn cake_core::KvCompressor<Cpu>,
) -> Vec<f32> {
    let mut caches = model.new_caches();
    let p = model
        .prefill(ids, &mut caches, compressor, PrefillLogits::Last)
        .unwrap();
    p.logits.into_data().into_vec::<f32>().unwrap()
}

#[test]
fn a_budget_covering_the_prompt_reproduces_the_full_cache_for_every_policy() {
    // S = 40 prompt tokens, 12 new ones, C = 64 >= S + 12.
    for arch in ["llama", "mistral", "qwen2"] {
        let model = tiny(arch);
        let ids = prompt(40);
        let full = Generation::new(&model)
            .with_config(greedy(12))
            .generate(&ids)
            .unwrap();
        let full_logits = last_logits(&model, &ids, &mut KeepAll);
        for &(method, name) in Method::ALL {
            let compressor = |cache: PolicyConfig| {
                PolicySpec {
                    method,
                    cache,
                    ..PolicySpec::default()
                }
                .compressor(name, model.num_layers())
                .unwrap()
            };
            let tokens = |cache: PolicyConfig| {
                Generation::new(&model)
                    .with_compressor(compressor(cache))
                    .with_config(greedy(12))
                    .generate(&ids)
                    .unwrap()
                    .tokens
            };
            let logits = last_logits(&model, &ids, &mut compressor(config(64, 8)));
            assert_eq!(logits, full_logits, "{arch} {name}: prefill logits differ");
            // Without decoding eviction every policy equals the full cache.
            let no_decode = PolicyConfig {
                decode_evict: cake_core::DecodeEviction::None,
                ..config(64, 8)
            };
            assert_eq!(
                tokens(no_decode),
                full.tokens,
                "{arch} {name}: tokens differ"
            );
            // With decoding eviction too: a prompt shorter than C leaves every layer room
            // to grow to C = 64 >= S + 12 tokens before it evicts (whatever its share).
            assert_eq!(
                tokens(config(64, 8)),
                full.tokens,
                "{arch} {name}: decode-evict tokens differ"
            );
        }
    }
}

/// Prefill `ids` with `policy` and return the caches and the report's peak and budgets.
fn compress(
    model: &Model<Cpu>,
    ids: &[u32],
    policy: Policy<Cpu>,
) -> (Vec<LayerCache<Cpu>>, cake_core::CompressionReport) {
    let mut compressor = PolicyCompressor::new(policy, model.num_layers());
    let mut caches = model.new_caches();
    model
        .prefill(ids, &mut caches, &mut compressor, PrefillLogits::Last)
        .unwrap();
    let report = compressor.report(&caches);
    (caches, report)
}

#[test]
fn caches_hold_their_budgets_and_keep_the_window() {
    let (s, c, w) = (120, 24, 6);
    for arch in ["llama", "mistral", "qwen2"] {
        let model = tiny(arch);
        let layers = model.num_layers();
        for name in ["streaming", "h2o", "tova", "snapkv", "pyramidkv", "cake"] {
            let policy = Policy::<Cpu>::preset(name.parse().unwrap(), &config(c, w)).unwrap();
            let (caches, report) = compress(&model, &prompt(s), policy);
            let mut total = 0;
            for (layer, cache) in caches.iter().enumerate() {
                let budget = report.layers[layer].budget;
                assert_eq!(
                    cache.len(),
                    s.min(budget + w),
                    "{arch} {name} layer {layer}"
                );
                total += cache.len();
                for positions in cache.positions() {
                    assert!(positions.windows(2).all(|p| p[0] < p[1]), "sorted, unique");
                    assert!(positions.iter().all(|&p| p < s));
                    assert_eq!(
                        &positions[positions.len() - w..],
                        &(s - w..s).collect::<Vec<_>>()[..]
                    );
                }
            }
            assert_eq!(
                total,
                layers * c,
                "{arch} {name}: sum of cache lengths is L * C"
            );
        }
    }
}

#[test]
fn cascading_equals_one_shot_and_bounds_the_peak() {
    let (s, c, w) = (150, 20, 4);
    let mut exact = 0;
    for arch in ["llama", "mistral", "qwen2"] {
        let model = tiny(arch);
        let layers = model.num_layers();
        let cascade = Policy::<Cpu>::preset(Method::Cake, &config(c, w)).unwrap();
        let one_shot = Policy::<Cpu>::preset(
            Method::Cake,
            &PolicyConfig {
                cascading: false,
                ..config(c, w)
            },
        )
        .unwrap();
        let (a, ra) = compress(&model, &prompt(s), cascade);
        let (b, rb) = compress(&model, &prompt(s), one_shot);
        // Both keep, per head, the top of the same scores: the same tokens unless a cascade
        // stage clamped a layer's growth, and otherwise nested sets (one a subset of the
        // other), never unrelated ones.
        if ra.clamped_growths == 0 {
            exact += 1;
            for (x, y) in a.iter().zip(&b) {
                assert_eq!(x.positions(), y.positions(), "{arch}: cascade != one-shot");
            }
        } else {
            for (x, y) in a.iter().zip(&b) {
                for (px, py) in x.positions().iter().zip(y.positions()) {
                    let (small, large) = if px.len() <= py.len() {
                        (px, py)
                    } else {
                        (py, px)
                    };
                    assert!(
                        small.iter().all(|p| large.contains(p)),
                        "{arch}: kept sets are not nested: {px:?} vs {py:?}"
                    );
                }
            }
        }
        let total_budget = (c - w) * layers;
        assert!(
            ra.peak_tokens <= total_budget + s + layers * w,
            "{arch}: cascading peak {} > B_total + S + L*w",
            ra.peak_tokens
        );
        assert_eq!(rb.peak_tokens, s * layers, "{arch}: one-shot peak is S * L");
    }
    assert!(
        exact > 0,
        "no architecture ran the exact cascade = one-shot comparison"
    );
}

#[test]
fn decoding_keeps_each_layer_at_its_budget_with_increasing_positions() {
    let (s, c, w) = (80, 16, 4);
    for arch in ["llama", "qwen2"] {
        let model = tiny(arch);
        for name in ["snapkv", "cake", "h2o", "tova", "streaming"] {
            let policy = Policy::<Cpu>::preset(name.parse().unwrap(), &config(c, w)).unwrap();
            let mut run = Generation::new(&model)
                .with_compressor(PolicyCompressor::new(policy, model.num_layers()))
                .with_config(greedy(65));
            let out = run.generate(&prompt(s)).unwrap();
            assert_eq!(out.tokens.len(), 65);
            let report = run.compressor().report(run.caches());
            let caches = run.caches();
            for (layer, cache) in caches.iter().enumerate() {
                // 64 decoding steps appended 64 tokens; eviction kept the size fixed.
                assert_eq!(
                    cache.len(),
                    report.layers[layer].budget + w,
                    "{arch} {name}"
                );
                for positions in cache.positions() {
                    assert!(positions.windows(2).all(|p| p[0] < p[1]));
                    // The newest w tokens are the last decoded positions.
                    let last = s + 64 - 1;
                    assert_eq!(positions[positions.len() - 1], last);
                    assert_eq!(positions[positions.len() - w], last + 1 - w);
                }
            }
        }
    }
}

#[test]
fn no_decode_eviction_lets_the_cache_grow() {
    let model = tiny("llama");
    let policy = Policy::<Cpu>::preset(
        Method::Cake,
        &PolicyConfig {
            decode_evict: cake_core::DecodeEviction::None,
            ..config(16, 4)
        },
    )
    .unwrap();
    let mut run = Generation::new(&model)
        .with_compressor(PolicyCompressor::new(policy, model.num_layers()))
        .with_config(greedy(11));
    run.generate(&prompt(80)).unwrap();
    let (_, caches) = run.into_parts();
    let total: usize = caches.iter().map(LayerCache::len).sum();
    assert_eq!(
        total,
        3 * 16 + 3 * 10,
        "C per layer after prefill, plus 10 decoded tokens"
    );
}

#[test]
fn every_policy_resumed_from_one_prefill_snapshot_equals_its_live_run() {
    use cake_models::generate::PrefillSnapshot;
    let (s, c, w) = (80, 16, 4);
    let model = tiny("llama");
    let ids = prompt(s);
    let snapshot = PrefillSnapshot::capture(&model, &ids).unwrap();
    assert_eq!(snapshot.prefilled().prompt_len, s);
    let full_peak = snapshot.prefilled().kv_bytes_peak_prefill;
    let mut outputs = Vec::new();
    for name in [
        "full",
        "snapkv",
        "cake",
        "h2o",
        "tova",
        "streaming",
        "pyramidkv",
    ] {
        let spec = PolicySpec {
            method: name.parse::<Method>().unwrap(),
            cache: config(c, w),
            ..PolicySpec::default()
        };
        let compressor = || spec.compressor::<Cpu>("tiny", model.num_layers()).unwrap();
        let mut live = Generation::new(&model)
            .with_compressor(compressor())
            .with_config(greedy(24));
        let expected = live.generate(&ids).unwrap();
        let mut resumed = snapshot
            .resume(&model, compressor())
            .unwrap()
            .with_config(greedy(24));
        let got = resumed.decode().unwrap();
        assert_eq!(got.tokens, expected.tokens, "{name}");
        let positions = |caches: &[LayerCache<Cpu>]| -> Vec<Vec<Vec<usize>>> {
            caches.iter().map(|c| c.positions().to_vec()).collect()
        };
        assert_eq!(
            positions(resumed.caches()),
            positions(live.caches()),
            "{name}"
        );
        // Its own prefill figures, not the full cache's: the peak K/V of the live prefill
        // (each layer compressed before the next fills) and a time made of the shared
        // full-cache prefill plus its own replay of the hooks, each given apart.
        assert_eq!(
            got.kv_bytes_peak_prefill, expected.kv_bytes_peak_prefill,
            "{name}: peak K/V of the prefill"
        );
        assert_eq!(
            (got.kv_bytes_after_prefill, got.kv_bytes_peak),
            (expected.kv_bytes_after_prefill, expected.kv_bytes_peak),
            "{name}"
        );
        if name == "full" {
            assert_eq!(got.kv_bytes_peak_prefill, full_peak);
        } else {
            assert!(got.kv_bytes_peak_prefill < full_peak, "{name}");
        }
        assert_eq!(expected.resumed, None, "a live prefill is its own");
        let parts = got.resumed.expect("a resumed generation says so");
        assert_eq!(parts.shared_prefill_time, snapshot.prefilled().prefill_time);
        assert_eq!(
            got.prefill_time,
            parts.shared_prefill_time + parts.compression_time
        );
        assert_eq!(
            resumed.prefilled().map(|p| p.kv_bytes_peak_prefill),
            Some(got.kv_bytes_peak_prefill)
        );
        outputs.push(got.tokens);
    }
    // The snapshot is untouched by the policies resumed from it, and evicting at C = 16
    // changes the continuation (a snapshot that leaked one policy's eviction into the
    // next, or ignored the policy, would not show this).
    assert!(outputs[1..].iter().any(|t| t != &outputs[0]));
}
