//! Criterion benchmarks of the CPU backend's host kernels and of the cache storage:
//! - attention, several queries (prefill, output only, causal) at S = 512, 2K, 8K in
//!   SmolLM2-135M's head shape (H = 9, Hkv = 3, d = 64);
//! - attention, one query (decoding, with probabilities) over S = 512 .. 32K keys in
//!   Llama-3.1-8B's head shape (H = 32, Hkv = 8, d = 128);
//! - appending one token to a 4K-token cache, and evicting one token at C = 1024
//!   (`evict_to_budget`: read the scores, top-k, compact in place), Llama-3.1-8B's shape;
//! - the decode GEMV of a 4096 x 4096 projection.
//!
//! Run: `cargo bench -p cake-core --features flex --bench host_kernels`.

use std::hint::black_box;

use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;
use cake_core::host::{AttentionShape, KvRows, attention, gemv};
use cake_core::{LayerCache, evict_to_budget};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

type B = Flex;

/// Deterministic pseudo-random values in [-1, 1) (xorshift).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn rows(data: &[f32], len: usize, dim: usize) -> KvRows<'_> {
    KvRows {
        data,
        head_stride: len * dim,
        len,
        dim,
    }
}

fn prefill_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_prefill_h9_kv3_d64");
    group.sample_size(10);
    let (h, hkv, d) = (9, 3, 64);
    for s in [512, 2048, 8192] {
        let q = values(s * h * d, 1);
        let k = values(hkv * s * d, 2);
        let v = values(hkv * s * d, 3);
        let shape = AttentionShape {
            queries: s,
            heads: h,
            kv_heads: hkv,
            dim: d,
        };
        let mut out = vec![0.0f32; s * h * d];
        group.bench_with_input(BenchmarkId::from_parameter(s), &s, |b, _| {
            b.iter(|| {
                attention(
                    &q,
                    rows(&k, s, d),
                    shape,
                    &|_, i| (0, i + 1),
                    Some((rows(&v, s, d), &mut out)),
                    None,
                );
                black_box(out[0])
            })
        });
    }
    group.finish();
}

fn decode_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_decode_h32_kv8_d128");
    group.sample_size(20);
    let (h, hkv, d) = (32, 8, 128);
    for len in [512, 2048, 8192, 32768] {
        let q = values(h * d, 1);
        let k = values(hkv * len * d, 2);
        let v = values(hkv * len * d, 3);
        let shape = AttentionShape {
            queries: 1,
            heads: h,
            kv_heads: hkv,
            dim: d,
        };
        let mut out = vec![0.0f32; h * d];
        let mut probs = vec![0.0f32; h * len];
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| {
                attention(
                    &q,
                    rows(&k, len, d),
                    shape,
                    &|_, _| (0, len),
                    Some((rows(&v, len, d), &mut out)),
                    Some(&mut probs),
                );
                black_box(probs[0])
            })
        });
    }
    group.finish();
}

fn tensor3(shape: [usize; 3], seed: u64) -> Tensor<B, 3> {
    Tensor::from_data(
        TensorData::new(values(shape.iter().product(), seed), shape),
        &Default::default(),
    )
}

fn cache_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_llama8b_kv8_d128");
    let (hkv, d) = (8, 128);
    // Append one token to a cache of 4096 (capacity to spare: one row write per head).
    let mut cache = LayerCache::<B>::new();
    cache
        .append(tensor3([hkv, 4096, d], 1), tensor3([hkv, 4096, d], 2), 0)
        .unwrap();
    let (k1, v1) = (tensor3([hkv, 1, d], 3), tensor3([hkv, 1, d], 4));
    group.bench_function("append_one_token_at_4k", |b| {
        b.iter_batched(
            || private_copy(&cache),
            |mut c| {
                c.append(k1.clone(), v1.clone(), 10_000).unwrap();
                black_box(c.len())
            },
            criterion::BatchSize::LargeInput,
        )
    });
    // Evict one token at C = 1024, w = 32 (the paper's decoding rule).
    let (budget, w) = (1024 - 32, 32);
    let n = budget + w + 1;
    let mut full = LayerCache::<B>::new();
    full.append(tensor3([hkv, n, d], 5), tensor3([hkv, n, d], 6), 0)
        .unwrap();
    let scores = Tensor::from_data(
        TensorData::new(values(hkv * n, 7), [hkv, n]),
        &Default::default(),
    );
    full.set_scores(scores).unwrap();
    group.bench_function("evict_one_token_at_c1024", |b| {
        b.iter_batched(
            || private_copy(&full),
            |mut c| black_box(evict_to_budget(&mut c, budget, w).unwrap()),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A private copy of a cache (its buffers no longer shared with the original), so that
/// in-place writes are measured, not copy-on-write.
fn private_copy(cache: &LayerCache<B>) -> LayerCache<B> {
    let fresh = |t: Tensor<B, 3>| Tensor::<B, 3>::from_data(t.into_data(), &Default::default());
    let mut copy = LayerCache::new();
    copy.append(
        fresh(cache.keys().unwrap()),
        fresh(cache.values().unwrap()),
        0,
    )
    .unwrap();
    if let Some(s) = cache.scores() {
        copy.set_scores(Tensor::from_data(
            s.clone().into_data(),
            &Default::default(),
        ))
        .unwrap();
    }
    copy
}

fn decode_gemv(c: &mut Criterion) {
    let (out, inp) = (4096, 4096);
    let w = values(out * inp, 1);
    let x = values(inp, 2);
    let mut y = vec![0.0f32; out];
    c.bench_function("gemv_4096x4096", |b| {
        b.iter(|| {
            gemv(&w, &x, None, &mut y);
            black_box(y[0])
        })
    });
}

criterion_group!(
    benches,
    prefill_attention,
    decode_attention,
    cache_ops,
    decode_gemv
);
criterion_main!(benches);
