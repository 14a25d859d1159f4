//! Criterion benchmarks of cake-core on the burn-flex CPU backend:
//! budget allocation for L = 32..80, indicator + top-k for one layer at S = 4K, 32K, 128K
//! (H = 32, Hkv = 8, w = 32), window attention for the same shapes (d = 128), and a full
//! 32-layer prefill cascade (and its one-shot counterpart) at S = 32K.
//!
//! Run: `cargo bench -p cake-core`.

use std::hint::black_box;

use burn::tensor::{Tensor, activation::softmax};
use cake_core::Allocator;
use cake_core::stats::{cake_indicator, to_host, top_k_indices, window_attention};
use cake_core::{
    BudgetPlan, KvCompressor, LayerCache, LayerPreference, Policy, PolicyCompressor, PolicyConfig,
    Preference, PrefillLayer,
};
use common::{B, tensor3, values};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

mod common;

const H: usize = 32;
const HKV: usize = 8;
const W: usize = 32;
const D: usize = 128;

fn budget_allocation(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_allocation");
    for layers in [32, 48, 64, 80] {
        let prefs: Vec<Option<LayerPreference>> = values(2 * layers, 7)
            .chunks(2)
            .map(|p| {
                Some(LayerPreference {
                    entropy: 100.0 + 50.0 * p[0] as f64,
                    variance: 1.0 + 0.9 * p[1] as f64,
                })
            })
            .collect();
        let plan = BudgetPlan {
            prompt_len: 32_768,
            window: W,
            cache_size: 1024,
            num_layers: layers,
        };
        let alloc = Preference {
            tau1: 1.6,
            tau2: 0.4,
        };
        group.bench_with_input(BenchmarkId::new("one_shot", layers), &layers, |b, &l| {
            b.iter(|| plan.allocate(&alloc.shares(l, black_box(&prefs))))
        });
        // All cascade stages m = 0..L (re-allocation over the layers seen so far).
        group.bench_with_input(
            BenchmarkId::new("all_cascade_stages", layers),
            &layers,
            |b, &l| {
                b.iter(|| {
                    (1..=l)
                        .map(|m| {
                            plan.allocate(&alloc.shares(l, black_box(&prefs[..m])))
                                .len()
                        })
                        .sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

fn indicator_top_k(c: &mut Criterion) {
    let mut group = c.benchmark_group("indicator_top_k");
    group.sample_size(10);
    for s in [4096, 32_768, 131_072] {
        // Window attention [H, w, S]: softmax of random logits.
        let attn = softmax(tensor3([H, W, s], 11, 4.0), 2);
        let keep = 1024 - W;
        group.bench_with_input(BenchmarkId::new("S", s), &s, |b, _| {
            b.iter(|| {
                let ind = cake_indicator(attn.clone(), 200.0, 5, HKV); // [Hkv, S]
                let host = to_host(ind.narrow(1, 0, s - W));
                let kept: usize = host
                    .chunks(s - W)
                    .map(|row| top_k_indices(row, keep).len())
                    .sum();
                black_box(kept)
            })
        });
    }
    group.finish();
}

fn window_attention_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_attention_d128");
    group.sample_size(10);
    for s in [4096, 32_768, 131_072] {
        let q = tensor3([H, W, D], 3, 1.0);
        let k = tensor3([HKV, s, D], 5, 1.0);
        group.bench_with_input(BenchmarkId::new("S", s), &s, |b, _| {
            b.iter(|| black_box(window_attention(q.clone(), k.clone(), W)))
        });
    }
    group.finish();
}

/// A 32-layer prefill at S = 32K through the CAKE compressor. Each layer's hook gets the
/// last w queries only (all a window-attention policy reads), with a per-layer scale so
/// that preferences differ; keys are one shared tensor (appending clones a handle).
fn cascade(c: &mut Criterion) {
    const L: usize = 32;
    const S: usize = 32_768;
    let mut group = c.benchmark_group("prefill_32_layers_S32K");
    group.sample_size(10);
    let keys = tensor3([HKV, S, D], 9, 1.0);
    let queries: Vec<Tensor<B, 3>> = (0..L)
        .map(|l| tensor3([H, W, D], 100 + l as u64, 0.5 + 0.1 * l as f32))
        .collect();
    for cascading in [true, false] {
        let config = PolicyConfig {
            cascading,
            tau1: Some(1.6),
            tau2: Some(0.4),
            ..PolicyConfig::default()
        };
        let name = if cascading { "cascade" } else { "one_shot" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let policy =
                    Policy::<B>::preset(cake_core::Method::Cake, &config).expect("valid preset");
                let mut comp = PolicyCompressor::new(policy, L);
                let mut caches: Vec<LayerCache<B>> = Vec::with_capacity(L);
                for (layer, q) in queries.iter().enumerate() {
                    let mut cache = LayerCache::new();
                    cache.append(keys.clone(), keys.clone(), 0).unwrap();
                    caches.push(cache);
                    comp.after_prefill_layer(PrefillLayer::new(layer, q.clone()), &mut caches)
                        .unwrap();
                }
                comp.after_prefill(&mut caches).unwrap();
                black_box(comp.peak())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    budget_allocation,
    indicator_top_k,
    window_attention_bench,
    cascade
);
criterion_main!(benches);
