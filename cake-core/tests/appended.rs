//! `PolicyCompressor::keep_appended`: rows appended after the prefill without the decoding
//! hooks (a question read after compression) stay while decoding, and decoding then holds
//! each head at that size (one token dropped per generated token).

mod common;

use cake_core::{
    Compressor, DecodeStep, KvCompressor, LayerCache, Method, PolicyConfig, PolicySpec,
};
use common::{B, Normal, SMALL, prefill};

/// Appends `n` random rows to every layer at the positions from `start`, without hooks.
fn append_rows(caches: &mut [LayerCache<B>], start: usize, n: usize, rng: &mut Normal) {
    for cache in caches.iter_mut() {
        let k = rng.tensor([SMALL.kv_heads, n, SMALL.dim], 1.0);
        let v = rng.tensor([SMALL.kv_heads, n, SMALL.dim], 1.0);
        cache.append(k, v, start).unwrap();
    }
}

/// One decoding step at `position` through every layer's hook.
fn step(comp: &mut Compressor<B>, caches: &mut [LayerCache<B>], position: usize, rng: &mut Normal) {
    for (layer, cache) in caches.iter_mut().enumerate() {
        let q = rng.tensor([SMALL.heads, 1, SMALL.dim], 1.0);
        let k = rng.tensor([SMALL.kv_heads, 1, SMALL.dim], 1.0);
        let v = rng.tensor([SMALL.kv_heads, 1, SMALL.dim], 1.0);
        cache.append(k, v, position).unwrap();
        comp.after_decode_step(
            DecodeStep {
                layer,
                query: q,
                attention: None,
            },
            cache,
        )
        .unwrap();
    }
}

fn lens(caches: &[LayerCache<B>]) -> Vec<Vec<usize>> {
    caches.iter().map(LayerCache::head_lens).collect()
}

/// A prompt of 80 tokens at C = 20, w = 4, then 7 question rows: with `keep_appended(7)`
/// every head holds its prefill size plus 7 while decoding (the generated token in, one
/// token out), and the question's rows are still there after the first steps; without it
/// the first step cuts every head back to its prefill size.
#[test]
fn appended_rows_raise_the_decoding_limits_by_their_count() {
    for method in [Method::Cake, Method::SnapKv, Method::H2o, Method::Streaming] {
        let spec = PolicySpec {
            method,
            cache: PolicyConfig {
                cache_size: 20,
                window: 4,
                ..PolicyConfig::default()
            },
            ..PolicySpec::default()
        };
        let (prompt, question) = (80, 7);
        for keep in [true, false] {
            let mut comp = spec.compressor::<B>("m", SMALL.layers).unwrap();
            let mut caches = prefill(SMALL, prompt, 3, &mut comp);
            let after_prefill = lens(&caches);
            let rows: usize = caches.iter().map(LayerCache::rows).sum();
            assert!(
                rows <= 20 * SMALL.layers * SMALL.kv_heads,
                "{method}: {rows}"
            );
            let mut rng = Normal::new(11);
            append_rows(&mut caches, prompt, question, &mut rng);
            let grown: Vec<Vec<usize>> = after_prefill
                .iter()
                .map(|row| row.iter().map(|n| n + question).collect())
                .collect();
            assert_eq!(lens(&caches), grown, "{method}");
            if keep {
                comp.keep_appended(question);
            }
            for s in 0..3 {
                step(&mut comp, &mut caches, prompt + question + s, &mut rng);
                let want = if keep { &grown } else { &after_prefill };
                assert_eq!(&lens(&caches), want, "{method} keep {keep} step {s}");
            }
            if keep {
                // The question's last rows are in the window, so still held.
                for cache in &caches {
                    for kept in cache.positions() {
                        assert!(
                            kept.contains(&(prompt + question - 1)),
                            "{method}: {kept:?}"
                        );
                    }
                }
            }
        }
    }
}
