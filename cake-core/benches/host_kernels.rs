//! Criterion benchmarks of the CPU backend's host kernels and of the cache storage:
//! - attention, several queries (prefill, output only, causal) at S = 512, 2K, 8K in
//!   SmolLM2-135M's head shape (H = 9, Hkv = 3, d = 64);
//! - attention, one query (decoding, with probabilities) over S = 512 .. 32K keys in
//!   Llama-3.1-8B's head shape (H = 32, Hkv = 8, d = 128);
//! - appending one token to a 4K-token cache, evicting one token at C = 1024
//!   (`evict_to_budget`: read the stored scores, top-k, retain), and a decoding step's
//!   append and `evict_rows` of a named token (the gaps building up and closing over the
//!   steps), Llama-3.1-8B's shape;
//! - CAKE's whole decoding hook (`after_decode_step`: score the new query's probabilities,
//!   drop each KV head's lowest-scored token) after a one-row append, in SmolLM2-135M's
//!   shape (30 layers, H = 9, Hkv = 3, d = 64) at C = 256, w = 32 after a 512-token prompt,
//!   the layers taken in turn as decoding runs them;
//! - the decode GEMV of a 4096 x 4096 projection;
//! - the prefill GEMM of 512 tokens through SmolLM2-135M's four projections (fused QKV
//!   576 -> 960, output 576 -> 576, fused gate/up 576 -> 3072, down 1536 -> 576), each
//!   also through the CPU backend's own `matmul` for comparison.
//!
//! Run: `cargo bench -p cake-core --features flex --bench host_kernels`.

use std::hint::black_box;

use burn::tensor::{Tensor, TensorData};
use cake_core::{
    DecodeStep, KvCompressor, LayerCache, Method, Policy, PolicyCompressor, PolicyConfig,
    PrefillLayer, evict_to_budget,
};
use cake_kernels::packed_starts;
use cake_kernels::{AttentionShape, KvRows, Visible, attention, gemm, gemv};
use common::{B, tensor3, values};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};

mod common;

fn rows<'a>(data: &'a [f32], starts: &'a [usize], len: usize, dim: usize) -> KvRows<'a> {
    KvRows {
        data,
        runs: &[],
        starts,
        len,
        dim,
    }
}

/// Benchmarks one `attention` call of `shape` over `len` cached keys and values, with
/// the probabilities when `probs`; the parameter shown is `len`.
fn bench_attention(
    group: &mut BenchmarkGroup<'_, WallTime>,
    shape: AttentionShape,
    len: usize,
    visible: Visible<'_>,
    probs: bool,
) {
    let (s, h, d) = (shape.queries, shape.heads, shape.dim);
    let q = values(s * h * d, 1);
    let k = values(shape.kv_heads * len * d, 2);
    let v = values(shape.kv_heads * len * d, 3);
    let mut out = vec![0.0f32; s * h * d];
    let mut p = vec![0.0f32; if probs { h * s * len } else { 0 }];
    let starts = packed_starts(shape.kv_heads, len);
    group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
        b.iter(|| {
            let values = Some((rows(&v, &starts, len, d), &mut out[..]));
            let p = probs.then_some(&mut p[..]);
            attention(&q, rows(&k, &starts, len, d), shape, visible, values, p);
            black_box(out[0])
        })
    });
}

fn prefill_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_prefill_h9_kv3_d64");
    group.sample_size(10);
    for s in [512, 2048, 8192] {
        let shape = AttentionShape {
            queries: s,
            heads: 9,
            kv_heads: 3,
            dim: 64,
        };
        bench_attention(&mut group, shape, s, &|_, i| (0, i + 1), false);
    }
    group.finish();
}

fn decode_attention(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention_decode_h32_kv8_d128");
    group.sample_size(20);
    for len in [512, 2048, 8192, 32768] {
        let shape = AttentionShape {
            queries: 1,
            heads: 32,
            kv_heads: 8,
            dim: 128,
        };
        bench_attention(&mut group, shape, len, &|_, _| (0, len), true);
    }
    group.finish();
}

fn cache_ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_llama8b_kv8_d128");
    let (hkv, d) = (8, 128);
    // Append one token to a cache of 4096 (capacity to spare: one row write per head).
    let mut cache = LayerCache::<B>::new();
    cache
        .append(
            tensor3([hkv, 4096, d], 1, 1.0),
            tensor3([hkv, 4096, d], 2, 1.0),
            0,
        )
        .unwrap();
    let (k1, v1) = (tensor3([hkv, 1, d], 3, 1.0), tensor3([hkv, 1, d], 4, 1.0));
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
    full.append(
        tensor3([hkv, n, d], 5, 1.0),
        tensor3([hkv, n, d], 6, 1.0),
        0,
    )
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
    // A decoding step's eviction as CAKE runs it (fresh scores, none stored): one token
    // named per head, at a place that moves over the steps, after a one-row append; the
    // cache is reused, so gaps build up and close as they do while decoding.
    let mut decoding = private_copy(&full);
    decoding.clear_scores();
    let mut step = 0usize;
    group.bench_function("append_and_evict_rows_one_token_at_c1024", |b| {
        b.iter(|| {
            step += 1;
            decoding
                .append(k1.clone(), v1.clone(), 20_000 + step)
                .unwrap();
            let n = decoding.len();
            let gone = (step * 389) % (n - w);
            decoding.evict_rows(&vec![vec![gone]; hkv]).unwrap();
            black_box(decoding.len())
        })
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

fn cake_decode_hook(c: &mut Criterion) {
    let (layers, heads, hkv, d, prompt, w) = (30, 9, 3, 64, 512, 32);
    let config = PolicyConfig {
        cache_size: 256,
        window: w,
        tau1: Some(1.0),
        tau2: Some(1.0),
        ..PolicyConfig::default()
    };
    let policy = Policy::<B>::preset(Method::Cake, &config).unwrap();
    let mut compressor = PolicyCompressor::new(policy, layers);
    let mut caches: Vec<LayerCache<B>> = Vec::with_capacity(layers);
    for layer in 0..layers {
        let seed = 10 * layer as u64;
        let mut cache = LayerCache::new();
        cache
            .append(
                tensor3([hkv, prompt, d], seed + 1, 1.0),
                tensor3([hkv, prompt, d], seed + 2, 1.0),
                0,
            )
            .unwrap();
        caches.push(cache);
        // The last w queries: all that a window-attention policy reads.
        let queries = tensor3([heads, w, d], seed + 3, 0.5 + 0.05 * layer as f32);
        compressor
            .after_prefill_layer(PrefillLayer::new(layer, queries), &mut caches)
            .unwrap();
    }
    compressor.after_prefill(&mut caches).unwrap();
    // The new query's probabilities over a layer's held tokens and the new one,
    // `[H, 1, n]` (each layer holds its own budget).
    let probabilities = |n: usize, seed: u64| {
        let raw: Vec<f32> = values(heads * n, seed).iter().map(|v| v.exp()).collect();
        let mut data = Vec::with_capacity(raw.len());
        for row in raw.chunks(n) {
            let sum: f32 = row.iter().sum();
            data.extend(row.iter().map(|x| x / sum));
        }
        Tensor::<B, 3>::from_data(TensorData::new(data, [heads, 1, n]), &Default::default())
    };
    let mut attention: Vec<Tensor<B, 3>> = (0..layers)
        .map(|l| probabilities(caches[l].len() + 1, 500 + l as u64))
        .collect();
    let query = tensor3([heads, 1, d], 9, 1.0);
    let (k1, v1) = (tensor3([hkv, 1, d], 3, 1.0), tensor3([hkv, 1, d], 4, 1.0));
    let mut step = 0usize;
    c.bench_function("cake_decode_hook_smollm2_s512_c256", |b| {
        // Timed: the append and the hook. A layer still under its decoding budget grows,
        // and gets probabilities of its new length outside the timed part.
        b.iter_custom(|iters| {
            let mut timed = std::time::Duration::ZERO;
            for _ in 0..iters {
                let layer = step % layers;
                let n = caches[layer].len() + 1;
                if attention[layer].dims()[2] != n {
                    attention[layer] = probabilities(n, 500 + step as u64);
                }
                let start = std::time::Instant::now();
                let cache = &mut caches[layer];
                cache
                    .append(k1.clone(), v1.clone(), prompt + step / layers)
                    .unwrap();
                let decode = DecodeStep {
                    layer,
                    query: query.clone(),
                    attention: Some(attention[layer].clone()),
                };
                compressor.after_decode_step(decode, cache).unwrap();
                timed += start.elapsed();
                step += 1;
                black_box(cache.len());
            }
            timed
        })
    });
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

fn prefill_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_prefill_512_tokens");
    group.sample_size(20);
    let tokens = 512;
    for (name, inp, out) in [
        ("qkv_576x960", 576, 960),
        ("o_576x576", 576, 576),
        ("gate_up_576x3072", 576, 3072),
        ("down_1536x576", 1536, 576),
    ] {
        let w = values(out * inp, 1);
        let x = values(tokens * inp, 2);
        let mut y = vec![0.0f32; tokens * out];
        group.throughput(criterion::Throughput::Elements(
            (2 * tokens * inp * out) as u64,
        ));
        group.bench_function(name, |b| {
            b.iter(|| {
                gemm(&w, &x, inp, None, &mut y);
                black_box(y[0])
            })
        });
        // The same product through the CPU backend's own matmul (the `gemm` crate), what
        // the projections ran before the host GEMM.
        let device = Default::default();
        let wt = Tensor::<B, 2>::from_data(TensorData::new(w, [out, inp]), &device);
        let xt = Tensor::<B, 2>::from_data(TensorData::new(x, [tokens, inp]), &device);
        group.bench_function(format!("{name}_burn_matmul"), |b| {
            b.iter(|| black_box(xt.clone().matmul(wt.clone().transpose())))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    prefill_attention,
    decode_attention,
    cache_ops,
    cake_decode_hook,
    decode_gemv,
    prefill_gemm
);
criterion_main!(benches);
