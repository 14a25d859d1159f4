//! Shared helpers of the integration tests: a seeded normal generator and a simulated
//! model that fills per-layer caches and calls the compressor hooks like cake-models does.
#![allow(dead_code)]

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;
use cake_core::allocator::{Allocator, AllocatorKind, Static};
use cake_core::policy::{build_allocator, build_scorer};
use cake_core::scorer::ScorerKind;
use cake_core::{
    DecodeStep, HeadBudgets, KvCompressor, LayerCache, Policy, PolicyConfig, PrefillLayer,
};

/// The CPU test backend.
pub type B = Flex;

/// Seeded xorshift64* with Box-Muller normals (no rand dependency).
pub struct Normal(u64);

impl Normal {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// One standard normal sample.
    pub fn sample(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    /// A `[a, b, c]` tensor of normals times `scale`.
    pub fn tensor(&mut self, shape: [usize; 3], scale: f32) -> Tensor<B, 3> {
        let data: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| self.sample() * scale)
            .collect();
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }
}

/// Shape of a simulated model.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub dim: usize,
}

pub const SMALL: Shape = Shape {
    layers: 6,
    heads: 4,
    kv_heads: 2,
    dim: 8,
};

/// Per-layer query scale: different sharpness per layer, so preferences differ.
fn query_scale(layer: usize) -> f32 {
    0.4 + 0.5 * layer as f32
}

/// Runs the prefill hooks over a random prompt of `prompt` tokens; returns the caches.
pub fn prefill<C: KvCompressor<B>>(
    shape: Shape,
    prompt: usize,
    seed: u64,
    compressor: &mut C,
) -> Vec<LayerCache<B>> {
    let staged = prefill_staged(shape, prompt, seed, compressor, |_, _| Ok::<_, ()>(()));
    staged.unwrap_or_default()
}

/// [`prefill`], calling `stage(layer, caches)` after each layer's hook (a cascade stage):
/// its first error ends the prefill.
pub fn prefill_staged<C: KvCompressor<B>, E>(
    shape: Shape,
    prompt: usize,
    seed: u64,
    compressor: &mut C,
    mut stage: impl FnMut(usize, &[LayerCache<B>]) -> Result<(), E>,
) -> Result<Vec<LayerCache<B>>, E> {
    let mut rng = Normal::new(seed);
    let mut caches: Vec<LayerCache<B>> = Vec::new();
    for layer in 0..shape.layers {
        let q = rng.tensor([shape.heads, prompt, shape.dim], query_scale(layer));
        let k = rng.tensor([shape.kv_heads, prompt, shape.dim], 1.0);
        let v = rng.tensor([shape.kv_heads, prompt, shape.dim], 1.0);
        let mut cache = LayerCache::new();
        cache.append(k, v, 0).unwrap();
        caches.push(cache);
        compressor
            .after_prefill_layer(PrefillLayer::new(layer, q), &mut caches)
            .unwrap();
        stage(layer, &caches)?;
    }
    compressor.after_prefill(&mut caches).unwrap();
    Ok(caches)
}

/// Token rows (tokens summed over KV heads) held by `caches`.
pub fn held_rows(caches: &[LayerCache<B>]) -> usize {
    caches.iter().map(LayerCache::rows).sum()
}

/// The head-budget modes the property tests index: none, preference, adakv, static.
pub const HEAD_MODES: [HeadBudgets; 4] = [
    HeadBudgets::None,
    HeadBudgets::Preference,
    HeadBudgets::AdaKv,
    HeadBudgets::Static,
];

/// A policy of the property tests, with its label: allocator 0..3 (uniform, pyramid,
/// preference; any other the static shares `fixed`, one per layer), scorer
/// `ScorerKind::ALL[scorer]` and head-budget mode `HEAD_MODES[head_mode]` (static heads take
/// `fixed` as `[layer][head]` shares) over `config`, whose `head_budgets` it sets.
pub fn indexed_policy(
    allocator: usize,
    scorer: usize,
    head_mode: usize,
    fixed: &[f64],
    config: PolicyConfig,
    layers: usize,
    kv_heads: usize,
) -> (Policy<B>, String) {
    let mode = HEAD_MODES[head_mode];
    let config = PolicyConfig {
        head_budgets: mode,
        ..config
    };
    let kinds = [
        AllocatorKind::Uniform,
        AllocatorKind::Pyramid,
        AllocatorKind::Preference,
    ];
    let alloc: Arc<dyn Allocator> = match kinds.get(allocator) {
        Some(&kind) => build_allocator(kind, &config).unwrap(),
        None => Arc::new(Static::from_shares(fixed[..layers].to_vec()).unwrap()),
    };
    let scorer = build_scorer::<B>(ScorerKind::ALL[scorer].0, &config);
    let mut policy = Policy::new(alloc, scorer, config).unwrap();
    if mode == HeadBudgets::Static {
        policy = policy.with_head_shares(fixed.chunks(kv_heads).map(<[f64]>::to_vec).collect());
    }
    let name = format!("{} heads {mode}", policy.name());
    (policy, name)
}

/// Runs `steps` decoding steps after a prompt of `prompt` tokens.
pub fn decode<C: KvCompressor<B>>(
    shape: Shape,
    prompt: usize,
    steps: usize,
    seed: u64,
    compressor: &mut C,
    caches: &mut [LayerCache<B>],
    mut check: impl FnMut(usize, usize, &LayerCache<B>),
) {
    let mut rng = Normal::new(seed ^ 0xDEC0DE);
    for step in 0..steps {
        let pos = prompt + step;
        for (layer, cache) in caches.iter_mut().enumerate() {
            let q = rng.tensor([shape.heads, 1, shape.dim], query_scale(layer));
            let k = rng.tensor([shape.kv_heads, 1, shape.dim], 1.0);
            let v = rng.tensor([shape.kv_heads, 1, shape.dim], 1.0);
            cache.append(k, v, pos).unwrap();
            compressor
                .after_decode_step(
                    DecodeStep {
                        layer,
                        query: q,
                        attention: None,
                    },
                    cache,
                )
                .unwrap();
            check(step, layer, cache);
        }
    }
}
