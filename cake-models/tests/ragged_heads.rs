//! Per-head budgets on the tiny models: attention over a cache whose KV heads hold
//! different numbers of rows (ragged storage) equals a masked reference, i.e. attention
//! over the full cache with each head's evicted positions masked, within 1e-5, on the
//! CPU fast path and on the generic Burn path, for Llama, Mistral (sliding window) and
//! Qwen2 (q/k/v biases). The policy-level test drives a whole model with each head-budget
//! mode and checks bytes and per-head lengths.

mod common;

use std::path::PathBuf;

use burn::tensor::{Distribution, Tensor};
use cake_core::{HeadBudgets, LayerCache, Method, PolicyConfig, PolicySpec};
use cake_models::layers::{Attention, AttentionRequest, Rotary};
use cake_models::{Cpu, Model, PrefillLogits, load};
use common::attention::host_and_generic;

type B = Cpu;

fn tiny(name: &str) -> Model<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(name);
    load::<B>(&dir, &Default::default()).unwrap().model
}

fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<B, D> {
    <B as burn::tensor::backend::Backend>::seed(&Default::default(), seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn rows(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// The masked reference of one decoding query: `q` `[H, 1, d]` at position `pos` over
/// the full cache's keys and values (`[Hkv, n, d]`, positions `0..n`), each query head
/// seeing only the positions its KV head kept (`kept[kv]`) and, with a sliding window
/// `w`, only `pos - w < j`. Returns `[1, H d]` before the output projection.
fn masked_reference(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    kept: &[Vec<usize>],
    (h, hkv, d, n): (usize, usize, usize, usize),
    pos: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let g = h / hkv;
    let mut out = vec![0.0f32; h * d];
    for head in 0..h {
        let kv = head / g;
        let visible = |j: usize| kept[kv].contains(&j) && window.is_none_or(|w| j + w > pos);
        let scores: Vec<f64> = (0..n)
            .map(|j| {
                if !visible(j) {
                    return f64::NEG_INFINITY;
                }
                let dot: f64 = (0..d)
                    .map(|c| f64::from(q[head * d + c]) * f64::from(keys[(kv * n + j) * d + c]))
                    .sum();
                dot / (d as f64).sqrt()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        for c in 0..d {
            let acc: f64 = (0..n)
                .map(|j| exps[j] / sum * f64::from(values[(kv * n + j) * d + c]))
                .sum();
            out[head * d + c] = acc as f32;
        }
    }
    out
}

fn check(name: &str) {
    let model = tiny(name);
    let config = model.config().clone();
    let (h, hkv, d) = (config.num_heads, config.num_kv_heads, config.head_dim);
    assert!(hkv >= 2, "{name}: the test needs several KV heads");
    let rotary = Rotary::new(d, &config.rope);
    let device = Default::default();
    for (l, layer) in model.layers().iter().enumerate() {
        let attn: &Attention<B> = &layer.attention;
        let prompt = 40;
        let x = random([prompt, config.hidden_size], 3 + l as u64);
        let rope = rotary.tables::<B>(0, prompt, h, hkv, &device);
        let mut full = LayerCache::<B>::new();
        attn.forward(
            x,
            0,
            &rope,
            &mut full,
            AttentionRequest::default(),
            &mut |_, _, _| Ok(()),
        )
        .unwrap();
        // Head kv keeps its own rows: every (kv + 2)-th prompt token and the last 4.
        let keep: Vec<Vec<usize>> = (0..hkv)
            .map(|kv| {
                (0..prompt)
                    .filter(|&i| i % (kv + 2) == 0 || i + 4 >= prompt)
                    .collect()
            })
            .collect();
        let mut ragged = full.clone();
        ragged.retain(&keep).unwrap();
        assert!(ragged.is_ragged(), "{name}");
        let mut generic = ragged.clone();
        for step in 0..3 {
            let pos = prompt + step;
            let x = random([1, config.hidden_size], 50 + step as u64);
            let rope = rotary.tables::<B>(pos, 1, h, hkv, &device);
            let request = AttentionRequest {
                probabilities: true,
                ..AttentionRequest::default()
            };
            let caches = (&mut ragged, &mut generic);
            let (fast, slow) = host_and_generic(attn, x.clone(), pos, &rope, caches, request);
            attn.forward(
                x,
                pos,
                &rope,
                &mut full,
                AttentionRequest::default(),
                &mut |_, _, _| Ok(()),
            )
            .unwrap();
            let n = full.len();
            let kept = ragged.positions().to_vec();
            assert_eq!(kept, generic.positions());
            let reference = masked_reference(
                &rows(fast.queries.clone()),
                &rows(full.keys().unwrap()),
                &rows(full.values().unwrap()),
                &kept,
                (h, hkv, d, n),
                pos,
                attn.window,
            );
            let reference = attn
                .o
                .forward(Tensor::<B, 1>::from_floats(&reference[..], &device).reshape([1, h * d]));
            for (what, out) in [("host", fast.output), ("generic", slow.output)] {
                let diff = (out - reference.clone()).abs().max().into_scalar();
                assert!(diff < 1e-5, "{name} layer {l} step {step} {what}: {diff}");
            }
            // Probabilities: [H, 1, longest head], zero past each head's own rows, one in sum.
            for probs in [fast.probabilities.unwrap(), slow.probabilities.unwrap()] {
                assert_eq!(probs.dims(), [h, 1, ragged.len()]);
                let p = rows(probs);
                for head in 0..h {
                    let own = kept[head / (h / hkv)].len();
                    let row = &p[head * ragged.len()..(head + 1) * ragged.len()];
                    assert!(row[own..].iter().all(|&x| x == 0.0), "{name} padding");
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "{name} head {head}: {sum}");
                }
            }
        }
    }
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
    let model = tiny("llama");
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
