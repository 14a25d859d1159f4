//! Per-head budgets on the tiny models: attention over a cache whose KV heads hold
//! different numbers of rows (ragged storage) equals a masked reference, i.e. attention
//! over the full cache with each head's evicted positions masked, within 1e-5, on the
//! CPU fast path and on the generic Burn path, for Llama, Mistral (sliding window) and
//! Qwen2 (q/k/v biases). The policy-level test drives a whole model with each head-budget
//! mode and checks bytes and per-head lengths.

mod common;

use cake_core::{HeadBudgets, LayerCache, Method, PolicyConfig, PolicySpec};
use cake_models::layers::{Attention, AttentionOutput, AttentionRequest, RopeTables};
use cake_models::{Cpu, PrefillLogits};
use common::attention::host_and_generic;
use common::ragged::check as ragged_check;

type B = Cpu;

/// The CPU backend's two paths, the host kernels on `caches[0]` and the generic Burn
/// path on `caches[1]`.
fn host_and_generic_paths(
    attn: &Attention<B>,
    x: burn::tensor::Tensor<B, 2>,
    pos: usize,
    rope: &RopeTables<B>,
    caches: &mut [LayerCache<B>],
    request: AttentionRequest,
) -> Vec<(&'static str, AttentionOutput<B>)> {
    let [host, generic] = caches else {
        panic!("two caches")
    };
    let (fast, slow) = host_and_generic(attn, x, pos, rope, (host, generic), request);
    vec![("host", fast), ("generic", slow)]
}

fn check(name: &str) {
    ragged_check::<B>(name, &Default::default(), 2, &host_and_generic_paths);
}

#[test]
fn ragged_llama_attention_equals_the_masked_full_cache() {
    check("llama");
}

#[test]
fn ragged_mistral_attention_equals_the_masked_full_cache() {
    check("mistral");
}

#[test]
fn ragged_qwen2_attention_equals_the_masked_full_cache() {
    check("qwen2");
}

/// Every head-budget mode on a whole tiny model: K/V bytes equal the kept rows times the
/// row size, per-head lengths are each head's budget plus the window, and decoding keeps
/// them while the logits stay finite.
#[test]
fn head_budget_modes_run_a_tiny_model_end_to_end() {
    let model = common::tiny::<B>("llama", &Default::default());
    let config = model.config().clone();
    let ids: Vec<u32> = (0..120).map(|i| (i * 7 % 200) as u32 + 3).collect();
    for mode in [
        HeadBudgets::None,
        HeadBudgets::Preference,
        HeadBudgets::AdaKv,
    ] {
        let spec = PolicySpec {
            method: Method::Cake,
            cache: PolicyConfig {
                cache_size: 24,
                window: 4,
                head_budgets: mode,
                ..PolicyConfig::default()
            },
            ..PolicySpec::default()
        };
        let mut compressor = spec.compressor::<B>("tiny", model.num_layers()).unwrap();
        let mut caches = model.new_caches();
        let prefilled = model
            .prefill(&ids, &mut caches, &mut compressor, PrefillLogits::Last)
            .unwrap();
        let report = compressor.report(&caches).unwrap();
        let row_bytes = 2 * config.head_dim * 4;
        let rows: usize = caches.iter().map(LayerCache::rows).sum();
        assert_eq!(report.bytes_held, rows * row_bytes, "{mode}");
        assert_eq!(cake_models::model::kv_bytes(&caches), rows * row_bytes);
        for (layer, cache) in report.layers.iter().zip(&caches) {
            let budgets = match mode {
                HeadBudgets::None => vec![layer.budget; config.num_kv_heads],
                _ => layer.head_budgets.clone().unwrap(),
            };
            let lens: Vec<usize> = layer.kept_positions.iter().map(Vec::len).collect();
            let want: Vec<usize> = budgets.iter().map(|b| b + 4).collect();
            assert_eq!(lens, want, "{mode} layer {}", layer.layer);
            assert_eq!(cache.head_lens(), lens);
        }
        let sizes: Vec<Vec<usize>> = caches.iter().map(LayerCache::head_lens).collect();
        let mut next = prefilled.logits.argmax(1).into_scalar() as u32;
        for step in 0..4 {
            let logits = model
                .forward_decode(next, ids.len() + step, &mut caches, &mut compressor)
                .unwrap();
            next = logits.clone().argmax(0).into_scalar() as u32;
            let finite: Vec<f32> = logits.into_data().to_vec().unwrap();
            assert!(finite.iter().all(|x| x.is_finite()), "{mode}");
            let now: Vec<Vec<usize>> = caches.iter().map(LayerCache::head_lens).collect();
            assert_eq!(now, sizes, "{mode} step {step}: sizes fixed");
        }
    }
}
