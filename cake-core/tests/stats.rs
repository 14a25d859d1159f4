//! Window statistics and scorers: hand-computed small cases and a PyTorch fixture
//! (`fixtures/stats.json`, made by `fixtures/gen_stats.py`).

mod common;

use burn::tensor::{Tensor, TensorData};
use cake_core::scorer::{DecodeInput, PrefillInput};
use cake_core::stats::{
    attention, avg_pool, cake_indicator, group_mean, layer_preference, mean_plus_var, pool_prefix,
    to_host, top_k_indices, window_attention,
};
use cake_core::{Cake, H2o, LayerCache, Scorer, SnapKv, Streaming, Tova};
use common::B;
use serde::Deserialize;

fn t3(data: Vec<f32>, shape: [usize; 3]) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn t2(data: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn host3(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "index {i}: {x} vs {y}\n{a:?}\n{b:?}"
        );
    }
}

/// One head, d = 1, S = 3, w = 2: every query is 1 and keys are 0, ln 2, ln 3, so the
/// scores are the keys. Query at position 1 sees keys 0..=1: softmax(0, ln 2) =
/// (1/3, 2/3); at position 2: softmax(0, ln 2, ln 3) = (1/6, 2/6, 3/6).
fn tiny() -> (Tensor<B, 3>, Tensor<B, 3>) {
    let q = t3(vec![1.0; 3], [1, 3, 1]);
    let k = t3(vec![0.0, 2f32.ln(), 3f32.ln()], [1, 3, 1]);
    (q, k)
}

#[test]
fn window_attention_is_causal_inside_the_window() {
    let (q, k) = tiny();
    let a = host3(window_attention(q, k, 2));
    close(
        &a,
        &[1.0 / 3.0, 2.0 / 3.0, 0.0, 1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0],
        1e-6,
    );
}

#[test]
fn gqa_maps_query_head_h_to_kv_head_h_over_g() {
    // H = 2, Hkv = 1, d = 1, S = 2, one query per head: scores q * k.
    // Head 0: q = 0 -> (1/2, 1/2); head 1: q = 1 with keys (0, ln 3) -> (1/4, 3/4).
    let q = t3(vec![0.0, 1.0], [2, 1, 1]);
    let k = t3(vec![0.0, 3f32.ln()], [1, 2, 1]);
    close(&host3(attention(q, k, None)), &[0.5, 0.5, 0.25, 0.75], 1e-6);
    // H = 4, Hkv = 2: heads 0, 1 read KV head 0 (keys 0, 0), heads 2, 3 read KV head 1
    // (keys 0, ln 3); all queries 1 -> (1/2, 1/2) twice then (1/4, 3/4) twice.
    let q = t3(vec![1.0; 4], [4, 1, 1]);
    let k = t3(vec![0.0, 0.0, 0.0, 3f32.ln()], [2, 2, 1]);
    close(
        &host3(attention(q, k, None)),
        &[0.5, 0.5, 0.5, 0.5, 0.25, 0.75, 0.25, 0.75],
        1e-6,
    );
    // Scale 1 / sqrt(d): d = 4, q = (1,1,1,1), k1 = (ln 9)/2 * (1,1,1,1) / 2 ... the
    // score of key 1 is 4 * (ln 9 / 4) / 2 = ln 3 -> (1/4, 3/4).
    let q = t3(vec![1.0; 4], [1, 1, 4]);
    let k = t3(
        vec![
            0.0,
            0.0,
            0.0,
            0.0,
            9f32.ln() / 4.0,
            9f32.ln() / 4.0,
            9f32.ln() / 4.0,
            9f32.ln() / 4.0,
        ],
        [1, 2, 4],
    );
    close(&host3(attention(q, k, None)), &[0.25, 0.75], 1e-6);
}

#[test]
fn preference_parts_by_hand() {
    // A_p is the first column: (1/3, 1/6).
    // H = 1/3 ln 3 + 1/6 ln 6 = 0.366204 + 0.298627 = 0.664831;
    // V = var(1/3, 1/6) = (1/6)^2 / 2 = 1/72 = 0.0138889 (unbiased, n - 1 = 1).
    let (q, k) = tiny();
    let p = layer_preference(&window_attention(q, k, 2));
    assert!((p.entropy - 0.664_830_6).abs() < 1e-5, "{p:?}");
    assert!((p.variance - 1.0 / 72.0).abs() < 1e-6, "{p:?}");
}

#[test]
fn indicator_pooling_and_group_mean_by_hand() {
    // mean + gamma var over 2 queries: columns (0.1, 0.3) and (0.5, 0.5):
    // mean (0.2, 0.5), var (0.02, 0) -> gamma 10: (0.4, 0.5).
    let a = t3(vec![0.1, 0.5, 0.3, 0.5], [1, 2, 2]);
    close(&to_host(mean_plus_var(a, 10.0)), &[0.4, 0.5], 1e-6);
    // Width-5 pooling of 1..6 with zero padding 2, divided by 5:
    // (0+0+1+2+3)/5 = 1.2, 10/5 = 2, 3, 4, (3+4+5+6)/5 = 3.6, (4+5+6)/5 = 3.
    let x = t2(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 6]);
    close(
        &to_host(avg_pool(x.clone(), 5)),
        &[1.2, 2.0, 3.0, 4.0, 3.6, 3.0],
        1e-6,
    );
    // Pooling only the first 4 columns: (1+2+3)/5 = 1.2, 2, (1+2+3+4)/5 = 2, (2+3+4)/5 =
    // 1.8, then 5 and 6 untouched.
    close(
        &to_host(pool_prefix(x, 4, 5)),
        &[1.2, 2.0, 2.0, 1.8, 5.0, 6.0],
        1e-6,
    );
    // Group mean: heads (1,2), (3,4) -> KV head 0 = (2, 3); (5,6), (7,8) -> (6, 7).
    let g = t2((1..=8).map(|v| v as f32).collect(), [4, 2]);
    close(&to_host(group_mean(g, 2)), &[2.0, 3.0, 6.0, 7.0], 1e-6);
    // The whole indicator on the tiny case: prefix column 0 is (1/3, 1/6): mean 0.25,
    // var 1/72, gamma 200 -> 0.25 + 2.777778 = 3.027778, pooled alone: / 5 = 0.6055556.
    // Window columns unpooled: col 1 (2/3, 1/3): 0.5 + 200 * (1/3)^2/2 = 11.611111;
    // col 2 (0, 1/2): 0.25 + 200 * (1/2)^2/2 = 25.25.
    let (q, k) = tiny();
    let ind = cake_indicator(window_attention(q, k, 2), 200.0, 5, 1);
    close(&to_host(ind), &[0.605_555_6, 11.611_111, 25.25], 1e-5);
}

/// Keeping all but one (a decoding step's eviction) drops exactly the token the full
/// ranking puts last: ties keep the later token, NaN ranks below everything.
#[test]
fn keeping_all_but_one_drops_the_lowest_ranked_token() {
    let mut state = 7u64;
    for len in 1..40 {
        let row: Vec<f32> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                match (state >> 60) as u8 {
                    0 => f32::NAN,
                    v => f32::from(v % 4), // many ties
                }
            })
            .collect();
        let key = |i: usize| {
            if row[i].is_nan() {
                f32::NEG_INFINITY
            } else {
                row[i]
            }
        };
        let mut ranked: Vec<usize> = (0..len).collect();
        ranked.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(b.cmp(&a)));
        let mut want = ranked[..len - 1].to_vec();
        want.sort_unstable();
        assert_eq!(top_k_indices(&row, len - 1), want, "{row:?}");
    }
}

#[test]
fn top_k_prefers_high_scores_then_recent_tokens() {
    let row = [0.5, 0.1, 0.5, 0.9, f32::NAN];
    assert_eq!(top_k_indices(&row, 3), vec![0, 2, 3]);
    assert_eq!(top_k_indices(&row, 2), vec![2, 3]);
    assert_eq!(top_k_indices(&row, 0), Vec::<usize>::new());
    assert_eq!(top_k_indices(&row, 9), vec![0, 1, 2, 3, 4]);
}

#[test]
fn scorers_by_hand() {
    let (q, k) = tiny();
    let attn = window_attention(q.clone(), k.clone(), 2);
    let input = PrefillInput {
        queries: &q,
        keys: &k,
        window_attention: Some(&attn),
        window: 2,
        attention_sums: None,
    };
    // SnapKV: window sums (1/2, 1, 1/2); the prefix column pooled alone: 0.5 / 5 = 0.1.
    close(
        &to_host(Scorer::<B>::prefill_scores(
            &SnapKv { pool_kernel: 5 },
            &input,
        )),
        &[0.1, 1.0, 0.5],
        1e-6,
    );
    // TOVA: the last query's row (1/6, 1/3, 1/2).
    close(
        &to_host(Scorer::<B>::prefill_scores(&Tova, &input)),
        &[1.0 / 6.0, 1.0 / 3.0, 0.5],
        1e-6,
    );
    // H2O: full causal rows (1,0,0), (1/3,2/3,0), (1/6,1/3,1/2) -> column sums
    // (1.5, 1, 0.5), with chunks of one query row or all at once.
    for chunk in [1, 3, 1 << 20] {
        let h2o = H2o {
            chunk_elements: chunk,
        };
        close(
            &to_host(Scorer::<B>::prefill_scores(&h2o, &input)),
            &[1.5, 1.0, 0.5],
            1e-6,
        );
    }
    // Streaming with 2 sinks over 3 tokens: sinks at 1e30, then positions.
    let s = to_host(Scorer::<B>::prefill_scores(&Streaming { sinks: 2 }, &input));
    assert_eq!(s, vec![1e30, 1e30, 2.0]);
}

#[test]
fn decode_scores_by_hand() {
    // Cache of 4 tokens (1 KV head), window 1; attention of the new query
    // (0.1, 0.2, 0.3, 0.4) on 2 query heads identical.
    let attn = t3(vec![0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4], [2, 1, 4]);
    let positions = vec![vec![0, 5, 9, 10]];
    let device = Default::default();
    let input = |stored| DecodeInput::<B> {
        attention: Some(&attn),
        stored,
        positions: &positions,
        window: 1,
        device: &device,
    };
    // SnapKV / CAKE: pool the 3 candidates alone (width 3 here): (0+.1+.2)/3 = .1,
    // (.1+.2+.3)/3 = .2, (.2+.3)/3 = .16667; the window token stays .4.
    let cake = Cake {
        gamma: 200.0,
        pool_kernel: 3,
    };
    close(
        &to_host(Scorer::<B>::decode_scores(&cake, input(None))),
        &[0.1, 0.2, 0.166_666_7, 0.4],
        1e-6,
    );
    // H2O accumulates: stored (1, 1, 1, 0) + attention.
    let stored = t2(vec![1.0, 1.0, 1.0, 0.0], [1, 4]);
    close(
        &to_host(Scorer::<B>::decode_scores(
            &H2o::default(),
            input(Some(stored)),
        )),
        &[1.1, 1.2, 1.3, 0.4],
        1e-6,
    );
    // Streaming: positions, sink 0 first.
    let s = to_host(Scorer::<B>::decode_scores(
        &Streaming { sinks: 4 },
        input(None),
    ));
    assert_eq!(s, vec![1e30, 5.0, 9.0, 10.0]);
}

#[test]
fn layer_cache_retains_rows_positions_scores_and_releases_memory() {
    // keys[h, i, :] = 100 h + 10 i + (0, 1, 2); 2 heads, 4 tokens, d = 3.
    let data: Vec<f32> = (0..2)
        .flat_map(|h| (0..4).flat_map(move |i| (0..3).map(move |c| (100 * h + 10 * i + c) as f32)))
        .collect();
    let mut cache = LayerCache::<B>::new();
    cache
        .append(t3(data.clone(), [2, 4, 3]), t3(data, [2, 4, 3]), 7)
        .unwrap();
    assert_eq!(cache.bytes(), 2 * 2 * 4 * 3 * 4);
    cache
        .set_scores(t2(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [2, 4]))
        .unwrap();
    cache.retain(&[vec![0, 3], vec![1, 2]]).unwrap();
    assert_eq!(cache.positions(), &[vec![7, 10], vec![8, 9]]);
    assert_eq!(cache.bytes(), 2 * 2 * 2 * 3 * 4);
    let k = host3(cache.keys().unwrap());
    assert_eq!(
        k,
        vec![
            0.0, 1.0, 2.0, 30.0, 31.0, 32.0, 110.0, 111.0, 112.0, 120.0, 121.0, 122.0
        ]
    );
    assert_eq!(
        to_host(cache.scores().unwrap().clone()),
        vec![0.0, 3.0, 5.0, 6.0]
    );
    // Appending pads the scores with 0 and continues the positions.
    cache
        .append(t3(vec![0.0; 6], [2, 1, 3]), t3(vec![0.0; 6], [2, 1, 3]), 11)
        .unwrap();
    assert_eq!(cache.positions(), &[vec![7, 10, 11], vec![8, 9, 11]]);
    assert_eq!(
        to_host(cache.scores().unwrap().clone()),
        vec![0.0, 3.0, 0.0, 5.0, 6.0, 0.0]
    );
}

#[derive(Deserialize)]
struct Shape {
    heads: usize,
    kv_heads: usize,
    prompt: usize,
    window: usize,
    dim: usize,
}

#[derive(Deserialize)]
struct Fixture {
    shape: Shape,
    gamma: f64,
    kernel: usize,
    budget: usize,
    queries: Vec<f32>,
    keys: Vec<f32>,
    window_attention: Vec<f32>,
    entropy: f64,
    variance: f64,
    cake_indicator: Vec<f32>,
    snapkv: Vec<f32>,
    tova: Vec<f32>,
    h2o: Vec<f32>,
    cake_keep: Vec<Vec<usize>>,
}

#[test]
fn matches_pytorch_on_random_attention() {
    let f: Fixture = serde_json::from_str(include_str!("../fixtures/stats.json")).unwrap();
    let Shape {
        heads,
        kv_heads,
        prompt: s,
        window: w,
        dim,
    } = f.shape;
    let q = t3(f.queries.clone(), [heads, s, dim]);
    let k = t3(f.keys.clone(), [kv_heads, s, dim]);
    let attn = window_attention(q.clone(), k.clone(), w);
    close(&host3(attn.clone()), &f.window_attention, 1e-5);
    let p = layer_preference(&attn);
    assert!(
        (p.entropy - f.entropy).abs() < 1e-4 * f.entropy,
        "{} vs {}",
        p.entropy,
        f.entropy
    );
    assert!(
        (p.variance - f.variance).abs() < 1e-4 * f.variance,
        "{} vs {}",
        p.variance,
        f.variance
    );

    let prefix = |t: Tensor<B, 2>| to_host(t.narrow(1, 0, s - w));
    let input = PrefillInput {
        queries: &q,
        keys: &k,
        window_attention: Some(&attn),
        window: w,
        attention_sums: None,
    };
    let cake = Cake {
        gamma: f.gamma,
        pool_kernel: f.kernel,
    };
    let ind = Scorer::<B>::prefill_scores(&cake, &input);
    close(&prefix(ind.clone()), &f.cake_indicator, 1e-4);
    close(
        &prefix(Scorer::<B>::prefill_scores(
            &SnapKv {
                pool_kernel: f.kernel,
            },
            &input,
        )),
        &f.snapkv,
        1e-5,
    );
    let tova = to_host(Scorer::<B>::prefill_scores(&Tova, &input));
    close(&tova[..s], &f.tova, 1e-5);
    close(&tova[s..], &f.tova, 1e-5); // the same for every KV head
    let h2o = H2o {
        chunk_elements: heads * s * 5,
    }; // chunks of 5 query rows
    close(
        &to_host(Scorer::<B>::prefill_scores(&h2o, &input)),
        &f.h2o,
        1e-5,
    );

    // Eviction with the indicator keeps PyTorch's top-k per KV head, plus the window.
    let mut cache = LayerCache::<B>::new();
    cache.append(k.clone(), k, 0).unwrap();
    cache.set_scores(ind).unwrap();
    cake_core::evict_to_budget(&mut cache, f.budget, w).unwrap();
    for (h, keep) in f.cake_keep.iter().enumerate() {
        let mut expected = keep.clone();
        expected.extend(s - w..s);
        assert_eq!(cache.positions()[h], expected, "KV head {h}");
    }
}

/// The device-side ranking keeps exactly what the host rule keeps (distinct scores), and
/// reads back only the smaller side of the split: one index per head for a one-token
/// eviction, never the scores.
#[test]
fn device_top_k_equals_the_host_rule_and_reads_back_only_indices() {
    use cake_core::stats::{readbacks, top_k_indices, top_k_on_device};
    let (heads, n, candidates) = (3, 50, 44);
    // Distinct scores in a scrambled order.
    let host: Vec<f32> = (0..heads * n)
        .map(|i| ((i * 37 + 11) % 211) as f32 * 0.01 + i as f32 * 1e-5)
        .collect();
    let scores = Tensor::<B, 2>::from_data(
        TensorData::new(host.clone(), [heads, n]),
        &Default::default(),
    );
    for keep in [0, 1, 10, 22, 30, 43, 44] {
        let before = readbacks();
        let kept = top_k_on_device(scores.clone(), candidates, keep);
        let after = readbacks();
        for (h, k) in kept.iter().enumerate() {
            let want = top_k_indices(&host[h * n..h * n + candidates], keep);
            assert_eq!(k, &want, "keep {keep}, head {h}");
        }
        let chosen = keep.min(candidates - keep);
        let expected = if chosen == 0 {
            (0, 0)
        } else {
            (1, heads * chosen)
        };
        assert_eq!(
            (
                after.tensors - before.tensors,
                after.elements - before.elements
            ),
            expected,
            "keep {keep}: read backs"
        );
    }
    // Ties in a one-token eviction: the lowest index goes, as on the host.
    let tied = Tensor::<B, 2>::from_data(
        TensorData::new(vec![0.5f32, 0.1, 0.1, 0.9], [1, 4]),
        &Default::default(),
    );
    assert_eq!(top_k_on_device(tied, 4, 3), vec![vec![0, 2, 3]]);
    assert_eq!(top_k_indices(&[0.5, 0.1, 0.1, 0.9], 3), vec![0, 2, 3]);
}

/// Max-pooled scores tie in plateaus: the device ranking still keeps what the host rule
/// keeps (the later of equal tokens, NaN last) at every split, for every row, down to two
/// candidates with one kept (where the kept and the evicted side are the same size).
#[test]
fn device_top_k_breaks_ties_and_nan_as_the_host_rule() {
    use cake_core::stats::{top_k_indices, top_k_on_device};
    let (heads, n, candidates) = (3, 60, 52);
    // Few distinct values, so most of them repeat, and a few NaN.
    let host: Vec<f32> = (0..heads * n)
        .map(|i| match i % 17 {
            3 => f32::NAN,
            r => ((i * 7 + r) % 5) as f32 * 0.25,
        })
        .collect();
    let scores = Tensor::<B, 2>::from_data(
        TensorData::new(host.clone(), [heads, n]),
        &Default::default(),
    );
    for candidates in [1, 2, 3, 4, candidates] {
        for keep in 0..=candidates {
            let kept = top_k_on_device(scores.clone(), candidates, keep);
            for (h, k) in kept.iter().enumerate() {
                let want = top_k_indices(&host[h * n..h * n + candidates], keep);
                assert_eq!(k, &want, "{candidates} candidates, keep {keep}, head {h}");
            }
        }
    }
}

/// The CPU backend's decoding eviction reads the scores of each evicting layer once (its
/// host path, with the `flex` feature; other backends read back indices, tested above).
#[cfg(feature = "flex")]
#[test]
fn host_eviction_reads_each_layers_scores_once() {
    use cake_core::evict_to_budget;
    use cake_core::stats::readbacks;
    let (heads, n, d) = (2, 12, 4);
    let rows = |seed: usize| {
        let v: Vec<f32> = (0..heads * n * d)
            .map(|i| ((i + seed) as f32 * 0.7).sin())
            .collect();
        Tensor::<B, 3>::from_data(TensorData::new(v, [heads, n, d]), &Default::default())
    };
    let mut cache = LayerCache::<B>::new();
    cache.append(rows(1), rows(2), 0).unwrap();
    let s: Vec<f32> = (0..heads * n).map(|i| ((i * 7) % 13) as f32).collect();
    cache
        .set_scores(Tensor::from_data(
            TensorData::new(s, [heads, n]),
            &Default::default(),
        ))
        .unwrap();
    let before = readbacks();
    assert_eq!(evict_to_budget(&mut cache, 7, 4).unwrap(), 11);
    let after = readbacks();
    assert_eq!(after.tensors - before.tensors, 1);
    assert_eq!(after.elements - before.elements, heads * n);
}

/// The CPU backend evicts all layers at once on rayon workers (a one-shot prefill's
/// eviction here): their read backs, one read of each layer's stored scores, count for
/// the thread that asked for them (they used to be counted on the workers, where no
/// caller saw them), and for the process.
#[cfg(feature = "flex")]
#[test]
fn readbacks_of_work_on_rayon_workers_count_for_the_caller() {
    use cake_core::stats::{process_readbacks, readbacks};
    use cake_core::{KvCompressor, Method, Policy, PolicyCompressor, PolicyConfig, PrefillLayer};
    let shape = common::SMALL;
    let s = 64;
    let config = PolicyConfig {
        cache_size: 16,
        window: 4,
        cascading: false,
        ..PolicyConfig::default()
    };
    let policy = Policy::<B>::preset(Method::SnapKv, &config).unwrap();
    let mut comp = PolicyCompressor::new(policy, shape.layers);
    let mut rng = common::Normal::new(3);
    let mut caches = Vec::new();
    for layer in 0..shape.layers {
        let k = rng.tensor([shape.kv_heads, s, shape.dim], 1.0);
        let v = rng.tensor([shape.kv_heads, s, shape.dim], 1.0);
        let mut cache = LayerCache::<B>::new();
        cache.append(k, v, 0).unwrap();
        caches.push(cache);
        let queries = rng.tensor([shape.heads, s, shape.dim], 1.0);
        comp.after_prefill_layer(PrefillLayer::new(layer, queries), &mut caches)
            .unwrap();
    }
    let (before, before_all) = (readbacks(), process_readbacks());
    comp.after_prefill(&mut caches).unwrap();
    let (after, after_all) = (readbacks(), process_readbacks());
    assert!(caches.iter().all(|c| c.len() == 16), "every layer evicted");
    assert_eq!(
        (
            after.tensors - before.tensors,
            after.elements - before.elements
        ),
        (shape.layers, shape.layers * shape.kv_heads * s),
        "one read of each layer's [Hkv, S] scores"
    );
    assert!(after_all.tensors - before_all.tensors >= shape.layers);
    // Another thread's read backs are its own (and the process's), unless it charges the
    // caller's account.
    let scores = t2(vec![1.0; 6], [2, 3]);
    let (before, before_all) = (readbacks(), process_readbacks());
    std::thread::scope(|scope| {
        scope.spawn(|| to_host(scores.clone())).join().unwrap();
    });
    assert_eq!(readbacks(), before);
    assert!(process_readbacks().tensors > before_all.tensors);
    let account = cake_core::stats::ReadbackAccount::current();
    std::thread::scope(|scope| {
        scope
            .spawn(|| account.charge(|| to_host(scores.clone())))
            .join()
            .unwrap();
    });
    let after = readbacks();
    assert_eq!(
        (
            after.tensors - before.tensors,
            after.elements - before.elements
        ),
        (1, 6)
    );
}

/// The layer preference's host pass (one threaded pass, a vector `ln`) gives the sums of
/// its definition, computed here in f64 from the same probabilities, to within float
/// rounding: at every block edge of the pass, for views of some heads, and with a window of
/// one query (no variance). The host pass exists with the `flex` feature (the workspace
/// build enables it).
#[cfg(feature = "flex")]
#[test]
fn host_preference_sums_equal_the_definition() {
    let mut rng = common::Normal::new(5);
    // Lengths around the pass's blocks (16 lanes, 1024 keys per task).
    for (h, w, n) in [(3, 7, 1000), (2, 5, 2100), (1, 1, 40), (4, 3, 17)] {
        // Softmax-like rows in [0, 1], some exact zeros.
        let data: Vec<f32> = (0..h * w * n)
            .map(|i| {
                let x = (rng.sample() * 3.0).exp() / 400.0;
                if i % 97 == 0 { 0.0 } else { x.min(1.0) }
            })
            .collect();
        // f64 sums of the definition over the first `prefix` keys of heads h0..h1.
        let definition = |h0: usize, h1: usize, prefix: usize| {
            let (mut entropy, mut variance) = (0.0f64, 0.0f64);
            for head in h0..h1 {
                for j in 0..prefix {
                    let column: Vec<f64> = (0..w)
                        .map(|q| f64::from(data[(head * w + q) * n + j]))
                        .collect();
                    entropy -= column.iter().map(|&x| x * (x + 1e-10).ln()).sum::<f64>();
                    if w >= 2 {
                        let mean = column.iter().sum::<f64>() / w as f64;
                        variance +=
                            column.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (w - 1) as f64;
                    }
                }
            }
            (entropy, variance)
        };
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() <= 1e-5 * want.abs() + 1e-9,
                "{what} {h}x{w}x{n}: {got} vs {want}"
            );
        };
        let a = t3(data.clone(), [h, w, n]);
        // The window is the last w keys: the preference reads the n - w before it.
        let p = layer_preference(&a);
        let (entropy, variance) = definition(0, h, n.saturating_sub(w));
        close(p.entropy, entropy, "entropy");
        close(p.variance, variance, "variance");
        if w < 2 {
            assert_eq!(p.variance, 0.0);
        }
        // Some heads, a view read in place.
        if h >= 2 {
            let view = a.clone().narrow(0, 1, h - 1);
            let p = layer_preference(&view);
            let (entropy, variance) = definition(1, h, n.saturating_sub(w));
            close(p.entropy, entropy, "entropy of a view");
            close(p.variance, variance, "variance of a view");
        }
    }
}
