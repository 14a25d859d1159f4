//! Attention over ragged per-head caches against a masked reference, on any backend (the
//! check of `ragged_heads.rs`, run on the CPU backend's two paths there and on the wgpu
//! backend in `wgpu_backend.rs`).

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor};
use cake_core::LayerCache;
use cake_models::layers::{Attention, AttentionOutput, AttentionRequest, RopeTables, Rotary};

use super::tiny;

/// One attention step of `x` at position `pos` through every path under test, each path
/// appending to its own cache (`caches[i]`); returns each path's name and output.
pub type Paths<'a, B> = &'a dyn Fn(
    &Attention<B>,
    Tensor<B, 2>,
    usize,
    &RopeTables<B>,
    &mut [LayerCache<B>],
    AttentionRequest,
) -> Vec<(&'static str, AttentionOutput<B>)>;

fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    seed: u64,
    device: &B::Device,
) -> Tensor<B, D> {
    B::seed(device, seed);
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn rows<B: Backend>(t: Tensor<B, 3>) -> Vec<f32> {
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

/// Every layer of the tiny model `name` on `device`: a 40-token prompt fills a full
/// cache; each KV head then keeps its own rows (ragged storage) and three decoding steps
/// run through each of `paths` (one cache each, `paths` caches in all) and must equal
/// the masked full-cache reference within 1e-5, with probabilities `[H, 1, longest head]`
/// that are zero past each head's rows and sum to one.
pub fn check<B: Backend>(name: &str, device: &B::Device, paths: usize, step: Paths<B>) {
    let model = tiny::<B>(name, device);
    let config = model.config().clone();
    let (h, hkv, d) = (config.num_heads, config.num_kv_heads, config.head_dim);
    assert!(hkv >= 2, "{name}: the test needs several KV heads");
    let rotary = Rotary::new(d, &config.rope);
    for (l, layer) in model.layers().iter().enumerate() {
        let attn: &Attention<B> = &layer.attention;
        let prompt = 40;
        let x = random::<B, 2>([prompt, config.hidden_size], 3 + l as u64, device);
        let rope = rotary.tables::<B>(0, prompt, h, hkv, device);
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
        let mut caches = vec![ragged; paths];
        for s in 0..3 {
            let pos = prompt + s;
            let x = random::<B, 2>([1, config.hidden_size], 50 + s as u64, device);
            let rope = rotary.tables::<B>(pos, 1, h, hkv, device);
            let request = AttentionRequest {
                probabilities: true,
                ..AttentionRequest::default()
            };
            let outputs = step(attn, x.clone(), pos, &rope, &mut caches, request);
            assert_eq!(outputs.len(), paths);
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
            let kept = caches[0].positions().to_vec();
            for cache in &caches[1..] {
                assert_eq!(kept, cache.positions());
            }
            let reference = masked_reference(
                &rows(outputs[0].1.queries.clone()),
                &rows(full.keys().unwrap()),
                &rows(full.values().unwrap()),
                &kept,
                (h, hkv, d, n),
                pos,
                attn.window,
            );
            let reference = attn
                .o
                .forward(Tensor::<B, 1>::from_floats(&reference[..], device).reshape([1, h * d]));
            let len = caches[0].len();
            for (what, out) in outputs {
                let diff: f32 = (out.output - reference.clone())
                    .abs()
                    .max()
                    .into_scalar()
                    .elem::<f32>();
                assert!(diff < 1e-5, "{name} layer {l} step {s} {what}: {diff}");
                // Probabilities: [H, 1, longest head], zero past each head's own rows, one
                // in sum.
                let probs = out.probabilities.unwrap();
                assert_eq!(probs.dims(), [h, 1, len]);
                let p = rows(probs);
                for head in 0..h {
                    let own = kept[head / (h / hkv)].len();
                    let row = &p[head * len..(head + 1) * len];
                    assert!(
                        row[own..].iter().all(|&x| x == 0.0),
                        "{name} {what} padding"
                    );
                    let sum: f32 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-5, "{name} {what} head {head}: {sum}");
                }
            }
        }
    }
}

/// The one path of a backend without a host fast path: [`Attention::forward`] on
/// `caches[0]`.
pub fn forward_only<B: Backend>(
    attn: &Attention<B>,
    x: Tensor<B, 2>,
    pos: usize,
    rope: &RopeTables<B>,
    caches: &mut [LayerCache<B>],
    request: AttentionRequest,
) -> Vec<(&'static str, AttentionOutput<B>)> {
    let out = attn
        .forward(x, pos, rope, &mut caches[0], request, &mut |_, _, _| Ok(()))
        .expect("attention");
    vec![("forward", out)]
}
