//! The CPU fast path (host kernels, chosen by type) and the generic Burn path (every other
//! backend) compute the same layer: attention outputs, post-RoPE queries and decode
//! attention probabilities agree on fresh, sliding-window and evicted caches whose KV
//! heads keep different positions; the GEMV equals the matrix product.

mod common;

use burn::tensor::{Distribution, Tensor};
use cake_core::LayerCache;
use cake_models::Cpu;
use cake_models::config::RopeConfig;
use cake_models::layers::{Attention, AttentionRequest, Linear, Rotary};
use common::attention::host_and_generic;

type B = Cpu;

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    <B as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 0.5), &Default::default())
}

fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

fn attention(window: Option<usize>) -> Attention<B> {
    let (h, hkv, d, hidden) = (6, 2, 16, 48);
    let linear =
        |out, inp, seed| Linear::dense(random([out, inp], seed), Some(random([out], seed + 100)));
    Attention {
        qkv: linear((h + 2 * hkv) * d, hidden, 1),
        o: linear(hidden, h * d, 2),
        num_heads: h,
        num_kv_heads: hkv,
        head_dim: d,
        window,
    }
}

/// Runs the same steps through both paths; the caches evolve identically.
fn check(window: Option<usize>, evict: bool) {
    let attn = attention(window);
    let rotary = Rotary::new(
        16,
        &RopeConfig {
            theta: 10_000.0,
            llama3: None,
            freq_factors: None,
        },
    );
    let device = Default::default();
    let (mut host_cache, mut generic_cache) = (LayerCache::<B>::new(), LayerCache::<B>::new());
    let prompt = 70;
    let x = random([prompt, 48], 7);
    let rope = rotary.tables::<B>(0, prompt, 6, 2, &device);
    let caches = (&mut host_cache, &mut generic_cache);
    let (host, generic) = host_and_generic(&attn, x, 0, &rope, caches, Default::default());
    assert!(
        max_diff(host.output, generic.output) < 1e-4,
        "prefill output"
    );
    assert!(max_diff(host.queries, generic.queries) < 1e-5, "queries");
    if evict {
        // Heads keep different rows (and so different positions).
        let keep = vec![
            (0..prompt).filter(|i| i % 3 != 1).collect::<Vec<_>>(),
            (0..prompt).filter(|i| i % 3 != 2).collect::<Vec<_>>(),
        ];
        host_cache.retain(&keep).unwrap();
        generic_cache.retain(&keep).unwrap();
    }
    for step in 0..5 {
        let pos = prompt + step;
        let x = random([1, 48], 20 + step as u64);
        let rope = rotary.tables::<B>(pos, 1, 6, 2, &device);
        let request = AttentionRequest {
            probabilities: true,
            ..AttentionRequest::default()
        };
        let caches = (&mut host_cache, &mut generic_cache);
        let (host, generic) = host_and_generic(&attn, x, pos, &rope, caches, request);
        assert!(
            max_diff(host.output, generic.output) < 1e-4,
            "decode output"
        );
        let (hp, gp) = (host.probabilities.unwrap(), generic.probabilities.unwrap());
        assert!(max_diff(hp.clone(), gp) < 1e-5, "decode probabilities");
        // Probabilities of every query head sum to one over its visible keys.
        let sums: Vec<f32> = hp.sum_dim(2).into_data().to_vec().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
        assert_eq!(host_cache.positions(), generic_cache.positions());
    }
}

#[test]
fn host_and_generic_attention_agree_on_a_fresh_cache() {
    check(None, false);
}

#[test]
fn host_and_generic_attention_agree_with_a_sliding_window() {
    check(Some(24), false);
}

#[test]
fn host_and_generic_attention_agree_on_heads_with_different_positions() {
    check(None, true);
    check(Some(30), true);
}

#[test]
fn gemv_equals_the_matrix_product() {
    let linear = Linear::dense(random([300, 70], 3), Some(random([300], 4)));
    let x = random([1, 70], 5);
    let fast = linear.forward(x.clone()); // one row: the host GEMV
    let product = x.matmul(linear.weight.to_dense().transpose())
        + linear.bias.clone().unwrap().unsqueeze_dim::<2>(0);
    assert!(max_diff(fast, product) < 1e-5);
}
