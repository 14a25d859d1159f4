//! Per-head budgets (`docs/algorithm.md`, section 10): the ragged storage, the pure
//! allocation math (property tests, as for the layer budgets) and the compressor's three
//! head-budget modes end to end on synthetic Q/K/V.

mod common;

use burn::tensor::{Tensor, TensorData};
use cake_core::heads::{adakv_split, pair_budgets};
use cake_core::{
    HeadBudgets, LayerCache, MAX_RUNS, Method, Policy, PolicyCompressor, PolicyConfig,
    ScoreFunction, evict_heads_to_budgets,
};
use common::{B, Normal, SMALL, decode, prefill};
use proptest::prelude::*;

/// A cache of `heads` KV heads holding `len` tokens at positions `0..len`, whose key row
/// of token `p` in head `h` is `[h, p, ..]` and value row `[-h, -p, ..]` (so that every row
/// says which token it is).
/// `[heads, n, dim]` rows labelled with their head and position (`start + r`), as
/// `sign * [h, p, 1, 1, ..]`: keys with sign 1, values with -1.
fn labelled_rows(heads: usize, start: usize, n: usize, dim: usize, sign: f32) -> Tensor<B, 3> {
    let data: Vec<f32> = (0..heads * n * dim)
        .map(|i| {
            let (h, r, c) = (i / (n * dim), (i / dim) % n, i % dim);
            sign * [h as f32, (start + r) as f32, 1.0][c.min(2)]
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [heads, n, dim]), &Default::default())
}

fn labelled_cache(heads: usize, len: usize, dim: usize) -> LayerCache<B> {
    let rows = |sign: f32| labelled_rows(heads, 0, len, dim, sign);
    let mut cache = LayerCache::<B>::new();
    cache.append(rows(1.0), rows(-1.0), 0).unwrap();
    cache
}

/// Each head's key rows, checked against the positions it claims to hold.
fn assert_rows_follow_positions(cache: &LayerCache<B>, dim: usize) {
    for h in 0..cache.num_kv_heads() {
        let pos = &cache.positions()[h];
        let keys = cache
            .head_keys(h)
            .map(|k| k.into_data().into_vec::<f32>().unwrap());
        let values = cache
            .head_values(h)
            .map(|v| v.into_data().into_vec::<f32>().unwrap());
        let (keys, values) = (keys.unwrap_or_default(), values.unwrap_or_default());
        assert_eq!(keys.len(), pos.len() * dim, "head {h}");
        for (i, &p) in pos.iter().enumerate() {
            assert_eq!(keys[i * dim + 1], p as f32, "head {h} row {i}");
            assert_eq!(values[i * dim + 1], -(p as f32), "head {h} row {i}");
            assert_eq!(keys[i * dim], h as f32, "head {h} row {i}");
        }
    }
}

/// The `[Hkv, len, d]` view of the keys equals the heads' own rows, one after another.
fn assert_uniform_view_matches(cache: &LayerCache<B>) {
    let view = cache.keys().unwrap().into_data().into_vec::<f32>().unwrap();
    let rows: Vec<f32> = (0..cache.num_kv_heads())
        .flat_map(|h| {
            cache
                .head_keys(h)
                .unwrap()
                .into_data()
                .into_vec::<f32>()
                .unwrap()
        })
        .collect();
    assert_eq!(view, rows);
}

#[test]
fn ragged_heads_hold_their_own_rows_and_free_memory() {
    let (heads, len, dim) = (3, 600, 4);
    let mut cache = labelled_cache(heads, len, dim);
    let full_allocated = cache.allocated_bytes();
    // Head 0 keeps 10 rows, head 1 all, head 2 every other row.
    let keep = vec![
        (590..600).collect(),
        (0..600).collect(),
        (0..600).step_by(2).collect::<Vec<_>>(),
    ];
    cache.retain(&keep).unwrap();
    assert!(cache.is_ragged());
    assert_eq!(cache.head_lens(), vec![10, 600, 300]);
    assert_eq!(cache.len(), 600);
    assert_eq!(cache.rows(), 910);
    // Bytes held: kept rows times the row size (keys and values, f32).
    assert_eq!(cache.bytes(), 910 * 2 * dim * 4);
    // The short heads gave their memory back: less allocated than the full cache.
    assert!(cache.allocated_bytes() < full_allocated);
    let spans = cache.spans();
    assert!(spans[0].capacity < spans[1].capacity, "{spans:?}");
    assert_rows_follow_positions(&cache, dim);
    assert!(
        cache.keys().is_none(),
        "no [Hkv, len, d] view of ragged heads"
    );
    // A decoding step appends one row to every head, each after its own rows.
    let row = |sign: f32| -> Tensor<B, 3> {
        let data: Vec<f32> = (0..heads * dim)
            .map(|i| sign * [(i / dim) as f32, 600.0, 1.0][(i % dim).min(2)])
            .collect();
        Tensor::from_data(TensorData::new(data, [heads, 1, dim]), &Default::default())
    };
    cache.append(row(1.0), row(-1.0), 600).unwrap();
    assert_eq!(cache.head_lens(), vec![11, 601, 301]);
    assert_rows_follow_positions(&cache, dim);
    // Budgets per head: head 0 keeps 2 + window 3, head 1 100 + 3, head 2 everything.
    let scores: Vec<f32> = (0..heads * cache.len()).map(|i| (i % 7) as f32).collect();
    cache
        .set_scores(Tensor::from_data(
            TensorData::new(scores, [heads, cache.len()]),
            &Default::default(),
        ))
        .unwrap();
    let held = evict_heads_to_budgets(&mut cache, &[2, 100, 1000], 3).unwrap();
    assert_eq!(held, vec![5, 103, 301]);
    assert_eq!(cache.head_lens(), held);
    assert_rows_follow_positions(&cache, dim);
    for (h, pos) in cache.positions().iter().enumerate() {
        assert!(pos.windows(2).all(|p| p[0] < p[1]), "head {h} ascending");
        assert_eq!(pos.last(), Some(&600), "head {h} keeps its window");
    }
    assert_eq!(cache.scores().unwrap().dims(), [heads, 301]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Per-pair budgets: each at most the cap, summing to the total when the caps allow
    /// it (else every pair keeps everything).
    #[test]
    fn pair_budgets_meet_the_section_4_invariants(
        layers in 1usize..6,
        heads in 1usize..5,
        cap in 0usize..60,
        total in 0usize..400,
        seed in any::<u64>(),
    ) {
        let mut rng = Normal::new(seed);
        let shares: Vec<Vec<f64>> = (0..layers)
            .map(|_| (0..heads).map(|_| f64::from(rng.sample().abs())).collect())
            .collect();
        let budgets = pair_budgets(&shares, total, cap);
        prop_assert_eq!(budgets.len(), layers);
        let flat: Vec<usize> = budgets.iter().flatten().copied().collect();
        prop_assert_eq!(flat.len(), layers * heads);
        prop_assert!(flat.iter().all(|&b| b <= cap));
        let sum: usize = flat.iter().sum();
        if cap * layers * heads > total {
            prop_assert_eq!(sum, total);
        } else {
            prop_assert!(flat.iter().all(|&b| b == cap));
        }
    }

    /// AdaKV's split: the counts sum to `min(budget * Hkv, candidates)`, every head keeps
    /// at least its floor (or all it has), indices are unique, ascending and in range, and
    /// each head keeps its own best-scored candidates.
    #[test]
    fn adakv_split_keeps_floors_and_the_best_of_the_pool(
        lens in prop::collection::vec(0usize..40, 1..5),
        budget in 0usize..30,
        floor in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let mut rng = Normal::new(seed);
        let rows: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| (0..n).map(|_| (rng.sample() * 4.0).round()).collect())
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        let kept = adakv_split(&refs, budget, floor);
        let total: usize = kept.iter().map(Vec::len).sum();
        prop_assert_eq!(total, (budget * lens.len()).min(lens.iter().sum()));
        let min_floor = (floor * budget as f64).floor() as usize;
        for (h, k) in kept.iter().enumerate() {
            prop_assert!(k.len() >= min_floor.min(lens[h]), "head {} floor", h);
            prop_assert!(k.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(k.iter().all(|&i| i < lens[h]));
            let worst_kept = k.iter().map(|&i| rows[h][i]).fold(f32::INFINITY, f32::min);
            for i in (0..lens[h]).filter(|i| !k.contains(i)) {
                prop_assert!(rows[h][i] <= worst_kept, "head {} dropped a better token", h);
            }
        }
        // Beyond the floors, the pool is ranked across heads: a dropped candidate never
        // outscores a candidate kept above its head's floor.
        for (h, k) in kept.iter().enumerate() {
            if k.len() <= min_floor {
                continue;
            }
            let mut own: Vec<f32> = k.iter().map(|&i| rows[h][i]).collect();
            own.sort_by(|a, b| b.total_cmp(a));
            let marginal = own[k.len() - 1];
            for (g, other) in kept.iter().enumerate() {
                for i in (0..lens[g]).filter(|i| !other.contains(i)) {
                    prop_assert!(rows[g][i] <= marginal, "pool order: head {} vs {}", g, h);
                }
            }
        }
    }

    /// Random retains and appends on a ragged cache: every head's rows follow its
    /// positions, and the bytes held are the kept rows times the row size.
    #[test]
    fn ragged_retain_and_append_keep_rows_with_their_tokens(
        heads in 1usize..4,
        len in 1usize..300,
        seed in any::<u64>(),
        steps in 1usize..4,
    ) {
        let dim = 3;
        let mut cache = labelled_cache(heads, len, dim);
        let mut rng = Normal::new(seed);
        for next in len..len + steps {
            let keep: Vec<Vec<usize>> = cache
                .head_lens()
                .iter()
                .map(|&n| (0..n).filter(|_| rng.sample() > -0.3).collect())
                .collect();
            cache.retain(&keep).unwrap();
            let row = |sign: f32| -> Tensor<B, 3> {
                let data: Vec<f32> = (0..heads * dim)
                    .map(|i| sign * [(i / dim) as f32, next as f32, 1.0][i % dim])
                    .collect();
                Tensor::from_data(TensorData::new(data, [heads, 1, dim]), &Default::default())
            };
            cache.append(row(1.0), row(-1.0), next).unwrap();
            assert_rows_follow_positions(&cache, dim);
            prop_assert_eq!(cache.bytes(), cache.rows() * 2 * dim * 4);
            prop_assert_eq!(cache.rows(), cache.head_lens().iter().sum::<usize>());
        }
    }
}

fn config(head_budgets: HeadBudgets) -> PolicyConfig {
    PolicyConfig {
        cache_size: 40,
        window: 8,
        head_budgets,
        ..PolicyConfig::default()
    }
}

const S: usize = 200;

fn run_cake(
    cfg: &PolicyConfig,
    policy: Option<Policy<B>>,
) -> (PolicyCompressor<B>, Vec<LayerCache<B>>) {
    let policy = policy.unwrap_or_else(|| Policy::<B>::preset(Method::Cake, cfg).unwrap());
    let mut comp = PolicyCompressor::new(policy, SMALL.layers);
    let caches = prefill(SMALL, S, 11, &mut comp);
    (comp, caches)
}

#[test]
fn per_head_modes_share_the_budget_and_keep_every_heads_window() {
    let (c, w) = (40, 8);
    let total_rows = SMALL.layers * SMALL.kv_heads * (c - w);
    let static_fn = ScoreFunction::from_json_str(
        r#"{"format": "cake-score-function/1", "model": "synthetic", "num_layers": 6, "num_kv_heads": 2, "degree": 1,
            "domain": [0.0, 1.0], "coefficients": [1.0, 0.0],
            "head_coefficients": [[1.0, 0.0], [0.2, 1.5]], "cv_error": 0.0}"#,
    )
    .unwrap();
    for mode in [
        HeadBudgets::Preference,
        HeadBudgets::AdaKv,
        HeadBudgets::Static,
    ] {
        let cfg = config(mode);
        let policy = (mode == HeadBudgets::Static).then(|| {
            let statics = cake_core::Static::from_score_function(&static_fn, SMALL.layers).unwrap();
            Policy::<B>::preset(Method::Cake, &cfg)
                .unwrap()
                .with_head_shares(statics.head_shares().unwrap().to_vec())
        });
        let (comp, mut caches) = run_cake(&cfg, policy);
        let report = comp.report(&caches);
        assert_eq!(report.head_budgets, mode);
        let heads: Vec<Vec<usize>> = report
            .layers
            .iter()
            .map(|l| l.head_budgets.clone().unwrap())
            .collect();
        let sum: usize = heads.iter().flatten().sum();
        if report.clamped_growths == 0 {
            assert_eq!(sum, total_rows, "{mode}: {heads:?}");
        }
        assert!(
            heads.iter().any(|l| l.windows(2).any(|p| p[0] != p[1])),
            "{mode}: some layer's heads differ: {heads:?}"
        );
        for (l, cache) in caches.iter().enumerate() {
            for (h, pos) in cache.positions().iter().enumerate() {
                assert_eq!(pos.len(), heads[l][h] + w, "{mode} layer {l} head {h}");
                assert!(pos.windows(2).all(|p| p[0] < p[1]));
                assert_eq!(&pos[pos.len() - w..], &(S - w..S).collect::<Vec<_>>()[..]);
            }
            if mode == HeadBudgets::AdaKv {
                // The layer budget is split, with the floor per head.
                let b = report.layers[l].budget;
                assert_eq!(
                    heads[l].iter().sum::<usize>(),
                    b * SMALL.kv_heads,
                    "layer {l}"
                );
                assert!(
                    heads[l].iter().all(|&x| x >= b / 5),
                    "floor: {:?}",
                    heads[l]
                );
            }
        }
        assert_eq!(
            report.bytes_held,
            caches.iter().map(LayerCache::rows).sum::<usize>() * 2 * SMALL.dim * 4
        );
        // Decoding: every head stays at its own budget + w.
        let sizes: Vec<Vec<usize>> = caches.iter().map(LayerCache::head_lens).collect();
        let mut comp = comp;
        decode(
            SMALL,
            S,
            5,
            3,
            &mut comp,
            &mut caches,
            |step, layer, cache| {
                assert_eq!(
                    cache.head_lens(),
                    sizes[layer],
                    "{mode} step {step} layer {layer}"
                );
                for pos in cache.positions() {
                    assert_eq!(pos.last(), Some(&(S + step)));
                }
            },
        );
    }
}

/// AdaKV with a floor of 1 gives every head its layer's budget from its own best
/// tokens: exactly the layer rule (`none`), through the other code path, after prefill
/// and over decoding steps.
#[test]
fn adakv_with_a_full_floor_is_the_layer_rule() {
    let full_floor = PolicyConfig {
        head_floor: 1.0,
        ..config(HeadBudgets::AdaKv)
    };
    let (mut a, mut layer_caches) = run_cake(&config(HeadBudgets::None), None);
    let (mut b, mut head_caches) = run_cake(&full_floor, None);
    assert_eq!(a.budgets(), b.budgets());
    for (x, y) in layer_caches.iter().zip(&head_caches) {
        assert_eq!(x.positions(), y.positions());
        assert!(!x.is_ragged() && !y.is_ragged());
    }
    decode(SMALL, S, 4, 9, &mut a, &mut layer_caches, |_, _, _| {});
    decode(SMALL, S, 4, 9, &mut b, &mut head_caches, |_, _, _| {});
    for (x, y) in layer_caches.iter().zip(&head_caches) {
        assert_eq!(x.positions(), y.positions());
    }
}

#[test]
fn static_head_budgets_need_shares_for_the_models_heads() {
    use cake_core::{KvCompressor, PrefillLayer};
    let cfg = config(HeadBudgets::Static);
    let try_prefill = |policy: Policy<B>| {
        let mut comp = PolicyCompressor::new(policy, SMALL.layers);
        let mut rng = Normal::new(1);
        let mut caches = vec![LayerCache::<B>::new()];
        let k = rng.tensor([SMALL.kv_heads, 50, SMALL.dim], 1.0);
        caches[0].append(k.clone(), k, 0).unwrap();
        let queries = rng.tensor([SMALL.heads, 50, SMALL.dim], 1.0);
        comp.after_prefill_layer(PrefillLayer::new(0, queries), &mut caches)
            .unwrap_err()
            .to_string()
    };
    let bare = Policy::<B>::preset(Method::Cake, &cfg).unwrap();
    assert!(try_prefill(bare.clone()).contains("with_head_shares"));
    let three = bare.with_head_shares(vec![vec![1.0; 3]; SMALL.layers]);
    assert!(try_prefill(three).contains("3 KV heads, the model has 2"));
}

/// Eviction moves, per head, whichever side of the evicted rows is shorter (on the CPU
/// backend). Either way, in place or by a `select` when something else holds the buffers,
/// every head's rows still follow its positions, the uniform view equals the heads'
/// rows, appends after front moves land after the kept rows, and a long run of
/// one-token evictions at the front keeps the allocation bounded.
#[test]
fn eviction_moves_the_shorter_side_and_rows_follow_positions() {
    let (heads, len, dim) = (3, 300, 4);
    let append = |cache: &mut LayerCache<B>, p: usize| {
        let row = |sign: f32| -> Tensor<B, 3> {
            let data: Vec<f32> = (0..heads * dim)
                .map(|i| sign * [(i / dim) as f32, p as f32, 1.0][(i % dim).min(2)])
                .collect();
            Tensor::from_data(TensorData::new(data, [heads, 1, dim]), &Default::default())
        };
        cache.append(row(1.0), row(-1.0), p).unwrap();
    };
    // Head 0 drops row 5 (the front is shorter), head 1 row 290 (the back), head 2 rows
    // 0..3 (nothing moves from the front).
    let without =
        |n: usize, gone: &[usize]| -> Vec<usize> { (0..n).filter(|i| !gone.contains(i)).collect() };
    let keep = vec![
        without(len, &[5, 6, 7]),
        without(len, &[290, 291, 292]),
        without(len, &[0, 1, 2]),
    ];
    let mut results = Vec::new();
    for shared in [false, true] {
        let mut cache = labelled_cache(heads, len, dim);
        let held = shared.then(|| cache.buffers().map(|(k, v)| (k.clone(), v.clone())));
        cache.retain(&keep).unwrap();
        drop(held);
        assert_eq!(cache.head_lens(), vec![297; 3]);
        assert_rows_follow_positions(&cache, dim);
        assert_uniform_view_matches(&cache);
        append(&mut cache, 300);
        assert_rows_follow_positions(&cache, dim);
        results.push(cache.positions().to_vec());
    }
    assert_eq!(
        results[0], results[1],
        "in place and by select keep the same tokens"
    );
    assert!(results[0][2][0] == 3 && results[0][0][5] == 8);

    // The decoding rule at the front: append one, drop the oldest non-sink row, 600 times.
    let mut cache = labelled_cache(heads, 200, dim);
    let mut allocated = Vec::new();
    for step in 0..600 {
        append(&mut cache, 200 + step);
        let n = cache.len();
        cache
            .retain(&vec![without(n, &[1 + step % 3]); heads])
            .unwrap();
        assert_eq!(cache.head_lens(), vec![200; 3]);
        allocated.push(cache.allocated_bytes());
        if step % 97 == 0 {
            assert_rows_follow_positions(&cache, dim);
            assert_uniform_view_matches(&cache);
        }
    }
    assert_rows_follow_positions(&cache, dim);
    let most = allocated.iter().max().copied().unwrap_or(0);
    assert!(
        most <= allocated[0] * 2,
        "allocation stays bounded: {} then at most {most}",
        allocated[0]
    );
}

/// The decoding rule on the CPU backend (one token evicted per step, anywhere): evicted
/// rows become gaps between runs instead of moving the rows after them, at most
/// `MAX_RUNS` per head; the gaps close when a head's region fills up (the allocation never
/// grows) and before a multi-row append. Through it all each head's rows follow its
/// positions and the uniform view equals the heads' rows.
#[test]
fn decoding_eviction_leaves_gaps_then_closes_them() {
    let (heads, len, dim) = (3, 200, 4);
    let row = |p: usize, n: usize, sign: f32| labelled_rows(heads, p, n, dim, sign);
    let buffers = |cache: &LayerCache<B>| {
        let (k, v) = cache.buffers().unwrap();
        (k.clone().into_data(), v.clone().into_data())
    };
    let mut cache = labelled_cache(heads, len, dim);
    let (mut with_gaps, mut closed) = (0, 0);
    let mut allocated = None;
    for step in 0..400 {
        cache
            .append(
                row(len + step, 1, 1.0),
                row(len + step, 1, -1.0),
                len + step,
            )
            .unwrap();
        let n = cache.len();
        // Head h drops a row that wanders over the head's rows.
        let keep: Vec<Vec<usize>> = (0..heads)
            .map(|h| {
                let gone = (step * 37 + h * 11) % (n - 8) + 4;
                (0..n).filter(|&i| i != gone).collect()
            })
            .collect();
        let had_gaps = cache.runs().iter().any(|r| !r.is_empty());
        let before = buffers(&cache);
        cache.retain(&keep).unwrap();
        assert_eq!(cache.head_lens(), vec![len; heads]);
        let runs = cache.runs();
        assert!(runs.iter().all(|r| r.len() <= MAX_RUNS), "{runs:?}");
        if cfg!(feature = "flex") && runs.iter().all(|r| !r.is_empty()) {
            // Gaps only: not a row moved.
            assert_eq!(buffers(&cache), before, "step {step}");
            with_gaps += 1;
        }
        closed += (had_gaps && runs.iter().all(Vec::is_empty)) as usize;
        if step % 13 == 0 {
            assert_rows_follow_positions(&cache, dim);
            assert_uniform_view_matches(&cache);
        }
        let bytes = cache.allocated_bytes();
        assert_eq!(
            *allocated.get_or_insert(bytes),
            bytes,
            "step {step}: no growth"
        );
    }
    if cfg!(feature = "flex") {
        assert!(
            with_gaps > 300 && closed >= 3,
            "{with_gaps} steps with gaps, closed {closed}"
        );
        assert!(cache.runs().iter().any(|r| !r.is_empty()));
    }
    // A multi-row append (a prefill chunk) closes the gaps first: in place, and on a copy
    // whose buffers another holder shares (they are then copied, the other keeps its rows).
    let mut sharing = cache.clone();
    for cache in [&mut sharing, &mut cache] {
        cache
            .append(row(len + 400, 2, 1.0), row(len + 400, 2, -1.0), len + 400)
            .unwrap();
        assert!(cache.runs().iter().all(Vec::is_empty));
        assert_rows_follow_positions(cache, dim);
    }
    assert_eq!(sharing.positions(), cache.positions());

    // The same on a fresh cache, whose rows before each gap are already at their region's
    // start (they stay; the rows after the gap move up to them).
    let mut cache = labelled_cache(heads, 50, dim);
    cache.evict_rows(&[vec![10], vec![20], vec![]]).unwrap();
    let mut sharing = cache.clone();
    for cache in [&mut sharing, &mut cache] {
        cache.append(row(50, 2, 1.0), row(50, 2, -1.0), 50).unwrap();
        assert!(cache.runs().iter().all(Vec::is_empty));
        assert_rows_follow_positions(cache, dim);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `evict_rows` (a decoding step's few drops, as gaps) keeps exactly what `retain` of
    /// the other rows keeps, step after step, with appends of one row and now and then of
    /// several (a prefill chunk): the same positions, the same key and value rows.
    #[test]
    fn evict_rows_keeps_what_retain_keeps(
        steps in proptest::collection::vec(
            (proptest::collection::vec(any::<u16>(), 0..4), 1usize..4, any::<bool>()),
            1..120,
        ),
    ) {
        let (heads, dim) = (2, 4);
        let mut by_drops = labelled_cache(heads, 40, dim);
        let mut by_keeps = labelled_cache(heads, 40, dim);
        let mut next = 40;
        for (picks, extra, several) in steps {
            let n = if several { extra + 1 } else { 1 };
            let rows = |sign: f32| labelled_rows(heads, next, n, dim, sign);
            for cache in [&mut by_drops, &mut by_keeps] {
                cache.append(rows(1.0), rows(-1.0), next).unwrap();
            }
            next += n;
            let len = by_drops.len();
            let dropped: Vec<Vec<usize>> = (0..heads)
                .map(|h| {
                    let mut d: Vec<usize> =
                        picks.iter().map(|&p| (p as usize + h * 7) % len).collect();
                    d.sort_unstable();
                    d.dedup();
                    d
                })
                .collect();
            by_drops.evict_rows(&dropped).unwrap();
            let keep: Vec<Vec<usize>> = dropped
                .iter()
                .map(|d| (0..len).filter(|i| !d.contains(i)).collect())
                .collect();
            by_keeps.retain(&keep).unwrap();
            prop_assert_eq!(by_drops.positions(), by_keeps.positions());
            prop_assert!(by_drops.runs().iter().all(|r| r.len() <= MAX_RUNS));
            for h in 0..heads {
                let rows = |c: &LayerCache<B>| {
                    let k = c.head_keys(h).map(|t| t.into_data().into_vec::<f32>().unwrap());
                    let v = c.head_values(h).map(|t| t.into_data().into_vec::<f32>().unwrap());
                    (k, v)
                };
                prop_assert_eq!(rows(&by_drops), rows(&by_keeps));
            }
        }
        assert_rows_follow_positions(&by_drops, dim);
        // Bad lists change nothing.
        let before = by_drops.positions().to_vec();
        let n = by_drops.len();
        prop_assert!(by_drops.evict_rows(&[vec![n], vec![]]).is_err());
        prop_assert!(by_drops.evict_rows(&[vec![1, 1], vec![]]).is_err());
        prop_assert!(by_drops.evict_rows(&[vec![]]).is_err());
        prop_assert_eq!(by_drops.positions(), &before[..]);
    }
}

/// With per-head budgets too, a prompt shorter than the cache size (S = 200 < C = 240)
/// lets every KV head decode without evicting until it holds C tokens, and every head
/// holds exactly C after that: all of them at C hold the total `C * L` per KV head, so
/// none grows towards a larger uncapped share (equal memory).
#[test]
fn per_head_modes_evict_nothing_before_c_when_the_prompt_is_shorter() {
    let c = 240;
    for mode in [HeadBudgets::Preference, HeadBudgets::AdaKv] {
        let cfg = PolicyConfig {
            cache_size: c,
            ..config(mode)
        };
        let (mut comp, mut caches) = run_cake(&cfg, None);
        decode(
            SMALL,
            S,
            60,
            3,
            &mut comp,
            &mut caches,
            |step, layer, cache| {
                let newest = S + step;
                for (h, pos) in cache.positions().iter().enumerate() {
                    if newest < c {
                        assert_eq!(
                            pos,
                            &(0..=newest).collect::<Vec<_>>(),
                            "{mode} layer {layer} head {h}"
                        );
                    } else {
                        assert_eq!(pos.len(), c, "{mode} layer {layer} head {h}");
                        assert_eq!(pos.last(), Some(&newest));
                    }
                }
            },
        );
    }
}
