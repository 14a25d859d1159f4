//! Batched decoding ([`Model::forward_decode_batch`]) and continuous batching
//! ([`BatchGeneration`]): every request's greedy tokens and kept positions equal the same
//! request run alone with [`Generation`], for every policy and head-budget mode, with
//! requests of different prompt lengths joining and leaving at different steps; the
//! batched logits equal the one-sequence ones within float reordering; the batched
//! attention's generic Burn path equals its CPU path; and a negative control shows the
//! comparison fails when one row is fed a wrong position.

use std::path::PathBuf;

use burn::tensor::{Distribution, Tensor};
use cake_core::{
    Compressor, HeadBudgets, KvCompressor, LayerCache, Method, Policy, PolicyCompressor,
    PolicyConfig, PolicySpec,
};
use cake_models::batch::{BatchGeneration, BatchRequest};
use cake_models::generate::{Generation, GenerationConfig, PrefillSnapshot, argmax};
use cake_models::layers::{AttentionRequest, Rotary};
use cake_models::model::{AttentionRow, DecodeRow};
use cake_models::{Cpu, Model, PrefillLogits, load};

type B = Cpu;

fn tiny(arch: &str) -> Model<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(arch);
    load::<B>(&dir, &Default::default()).unwrap().model
}

/// A deterministic prompt of `n` token ids below the tiny vocabulary (256), varied by
/// `seed`.
fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 37 + seed * 101 + 11) % 250 + 3)
        .collect()
}

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig::greedy(n, n)
}

/// Kept positions of every layer and KV head.
fn positions(caches: &[LayerCache<B>]) -> Vec<Vec<Vec<usize>>> {
    caches.iter().map(|c| c.positions().to_vec()).collect()
}

/// The compressor of `method` at cache size `c`, window `w`, with head-budget `mode`
/// (static: fixed, uneven per-head shares).
fn compressor(
    method: Method,
    mode: HeadBudgets,
    (c, w): (usize, usize),
    model: &Model<B>,
) -> Compressor<B> {
    let cache = PolicyConfig {
        cache_size: c,
        window: w,
        head_budgets: mode,
        ..PolicyConfig::default()
    };
    if mode == HeadBudgets::Static {
        let layers = model.num_layers();
        let hkv = model.config().num_kv_heads;
        let shares: Vec<Vec<f64>> = (0..layers)
            .map(|l| (0..hkv).map(|h| 1.0 + ((l + 2 * h) % 3) as f64).collect())
            .collect();
        let policy = Policy::<B>::preset(method, &cache)
            .unwrap()
            .with_head_shares(shares);
        return Compressor::Policy(Box::new(PolicyCompressor::new(policy, layers)));
    }
    PolicySpec {
        method,
        cache,
        ..PolicySpec::default()
    }
    .compressor::<B>("tiny", model.num_layers())
    .unwrap()
}

/// Every policy with the layer budgets, then the per-head modes.
fn policies() -> Vec<(Method, HeadBudgets)> {
    let mut all: Vec<(Method, HeadBudgets)> = Method::ALL
        .iter()
        .map(|&(m, _)| (m, HeadBudgets::None))
        .collect();
    for mode in [
        HeadBudgets::Preference,
        HeadBudgets::AdaKv,
        HeadBudgets::Static,
    ] {
        all.push((Method::Cake, mode));
        all.push((Method::SnapKv, mode));
    }
    all
}

/// One request of a batch test: prompt, policy and length.
struct Case {
    prompt: Vec<u32>,
    policy: (Method, HeadBudgets),
    new_tokens: usize,
}

/// Runs `cases` through a [`BatchGeneration`] of `max_batch` and alone; asserts equal
/// tokens and kept positions, that some request waited, and that requests joined at
/// several steps, and that most requests evicted something.
fn batch_equals_alone(model: &Model<B>, cases: &[Case], max_batch: usize, cw: (usize, usize)) {
    let mut batch = BatchGeneration::new(model, max_batch);
    for case in cases {
        let (method, mode) = case.policy;
        let request = BatchRequest::new(case.prompt.clone(), compressor(method, mode, cw, model))
            .with_config(greedy(case.new_tokens));
        batch.push(request);
    }
    assert_eq!(batch.waiting(), cases.len());
    let outputs = batch.run().unwrap();
    assert!(batch.is_done());
    let mut joined = Vec::new();
    let mut evicted = 0;
    for (case, out) in cases.iter().zip(outputs) {
        let (method, mode) = case.policy;
        let what = format!("{method} {mode} S={}", case.prompt.len());
        let out = out.unwrap();
        let mut alone = Generation::new(model)
            .with_compressor(compressor(method, mode, cw, model))
            .with_config(greedy(case.new_tokens));
        let expected = alone.generate(&case.prompt).unwrap();
        assert_eq!(out.output.tokens, expected.tokens, "{what}: tokens");
        assert_eq!(out.output.tokens.len(), case.new_tokens, "{what}");
        assert_eq!(
            positions(&out.caches),
            positions(alone.caches()),
            "{what}: kept positions"
        );
        assert_eq!(
            out.compressor.report(&out.caches),
            alone.compressor().report(alone.caches()),
            "{what}: report"
        );
        assert_eq!(out.output.kv_bytes_peak, expected.kv_bytes_peak, "{what}");
        assert_eq!(
            out.output.decode_step_times.len(),
            expected.decode_step_times.len()
        );
        let kept: usize = out.caches.iter().map(LayerCache::len).sum();
        if kept < model.num_layers() * (case.prompt.len() + case.new_tokens - 1) {
            evicted += 1;
        }
        joined.push(out.joined_at_step);
    }
    let steps = joined;
    assert!(
        steps.iter().any(|&s| s > 0),
        "some request waited for a place: {steps:?}"
    );
    let mut distinct = steps.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() >= 3,
        "requests joined at several steps: {steps:?}"
    );
    assert!(
        evicted * 2 >= cases.len(),
        "most requests evicted: {evicted} of {}",
        cases.len()
    );
}

/// Every policy and head-budget mode, on the three tiny architectures (Mistral's sliding
/// window, Qwen2's biases), 13 requests of prompt lengths 17-101 and 5-23 new tokens,
/// at most 4 at once.
#[test]
fn every_policy_in_a_batch_equals_its_run_alone() {
    for arch in ["llama", "mistral", "qwen2"] {
        let model = tiny(arch);
        let cases: Vec<Case> = policies()
            .into_iter()
            .enumerate()
            .map(|(i, policy)| Case {
                prompt: prompt(17 + (i * 29) % 85, i as u32),
                policy,
                new_tokens: 5 + (i * 7) % 19,
            })
            .collect();
        batch_equals_alone(&model, &cases, 4, (16, 4));
    }
}

/// Requests resumed from one prefill snapshot decode as one batch (what `cake pred`
/// does with the configurations of one prompt), each equal to its live run alone.
#[test]
fn requests_resumed_from_a_snapshot_equal_their_live_runs() {
    let model = tiny("llama");
    let ids = prompt(60, 7);
    let snapshot = PrefillSnapshot::capture(&model, &ids).unwrap();
    let policies = policies();
    let mut batch = BatchGeneration::new(&model, 3);
    for &(method, mode) in &policies {
        let request = BatchRequest::resumed(&snapshot, compressor(method, mode, (16, 4), &model))
            .with_config(greedy(12));
        batch.push(request);
    }
    for (&(method, mode), out) in policies.iter().zip(batch.run().unwrap()) {
        let out = out.unwrap();
        let mut live = Generation::new(&model)
            .with_compressor(compressor(method, mode, (16, 4), &model))
            .with_config(greedy(12));
        let expected = live.generate(&ids).unwrap();
        assert_eq!(out.output.tokens, expected.tokens, "{method} {mode}");
        assert_eq!(
            positions(&out.caches),
            positions(live.caches()),
            "{method} {mode}"
        );
        assert!(out.output.resumed.is_some());
    }
}

/// EOS and stop strings end each request on its own, with its own text; a request
/// whose config is invalid fails alone.
#[test]
fn stop_rules_and_text_are_per_request() {
    let model = tiny("llama");
    let piece = |t: u32| format!("<{t}>");
    let alone = |config: GenerationConfig, eos: Vec<u32>, ids: &[u32]| {
        Generation::new(&model)
            .with_config(config)
            .with_eos(eos)
            .with_text(piece, |_| {})
            .generate(ids)
            .unwrap()
    };
    // A first greedy run gives tokens to stop on.
    let base = alone(greedy(12), vec![], &prompt(30, 1));
    let stop_string = GenerationConfig {
        stop_strings: vec![piece(base.tokens[4])],
        ..GenerationConfig::greedy(12, 0)
    };
    let requests = [
        (greedy(12), vec![], prompt(30, 1)),
        (
            GenerationConfig::greedy(12, 0),
            vec![base.tokens[3]],
            prompt(30, 1),
        ),
        (
            GenerationConfig::greedy(12, 5),
            vec![base.tokens[3]],
            prompt(30, 1),
        ),
        (stop_string, vec![], prompt(30, 1)),
        (greedy(7), vec![], prompt(45, 2)),
    ];
    let mut streamed = vec![String::new(); requests.len()];
    let mut texts = Vec::new();
    {
        let mut batch = BatchGeneration::<B, cake_core::KeepAll>::new(&model, 2);
        let mut sinks: Vec<&mut String> = streamed.iter_mut().collect();
        for (config, eos, ids) in requests.iter().cloned() {
            let sink = sinks.remove(0);
            batch.push(
                BatchRequest::new(ids, cake_core::KeepAll)
                    .with_config(config)
                    .with_eos(eos)
                    .with_text(piece, move |s: &str| sink.push_str(s)),
            );
        }
        // Stop strings without text: refused for that request only.
        let bad = GenerationConfig {
            stop_strings: vec!["x".into()],
            ..greedy(3)
        };
        batch.push(BatchRequest::new(prompt(10, 3), cake_core::KeepAll).with_config(bad));
        let outputs = batch.run().unwrap();
        for (i, (config, eos, ids)) in requests.iter().cloned().enumerate() {
            let expected = alone(config, eos, &ids);
            let got = outputs[i].as_ref().unwrap();
            assert_eq!(got.output.tokens, expected.tokens, "request {i}");
            assert_eq!(got.output.stop_reason, expected.stop_reason, "request {i}");
            assert_eq!(got.output.text, expected.text, "request {i}");
            texts.push(got.output.text.clone().unwrap());
        }
        assert!(outputs[requests.len()].is_err());
    }
    // Each request streamed its own text, in full.
    assert_eq!(streamed, texts);
    assert!(texts.iter().all(|t| !t.is_empty()));
}

/// Greedy decoding of `steps` tokens for several sequences through one
/// [`Model::forward_decode_batch`] per step; `shift[b]` is added to row b's positions
/// (0 for the correct ones). Returns each row's tokens and every step's logits.
fn decode_batched(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    steps: usize,
    shift: &[usize],
) -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let vocab = model.config().vocab_size;
    let mut compressors: Vec<Compressor<B>> = (0..prompts.len())
        .map(|i| {
            let method = [Method::Cake, Method::H2o, Method::SnapKv][i % 3];
            compressor(method, HeadBudgets::None, (12, 4), model)
        })
        .collect();
    let mut caches: Vec<Vec<LayerCache<B>>> = prompts.iter().map(|_| model.new_caches()).collect();
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    for ((ids, c), cache) in prompts.iter().zip(&mut compressors).zip(&mut caches) {
        let p = model.prefill(ids, cache, c, PrefillLogits::Last).unwrap();
        tokens.push(vec![argmax(&p.logits.into_data().to_vec::<f32>().unwrap())]);
    }
    let mut logits = vec![Vec::new(); prompts.len()];
    for _ in 0..steps {
        let mut rows: Vec<DecodeRow<'_, B>> = compressors
            .iter_mut()
            .zip(&mut caches)
            .enumerate()
            .map(|(b, (c, caches))| DecodeRow {
                token: *tokens[b].last().unwrap(),
                position: prompts[b].len() + tokens[b].len() - 1 + shift[b],
                caches,
                compressor: c as &mut dyn KvCompressor<B>,
            })
            .collect();
        let out = model.forward_decode_batch(&mut rows).unwrap();
        assert_eq!(out.dims(), [prompts.len(), vocab]);
        let out: Vec<f32> = out.into_data().to_vec().unwrap();
        for (b, row) in out.chunks_exact(vocab).enumerate() {
            tokens[b].push(argmax(row));
            logits[b].push(row.to_vec());
        }
    }
    (tokens, logits)
}

/// The same greedy decoding, one sequence at a time through [`Model::forward_decode`].
fn decode_alone(model: &Model<B>, prompts: &[Vec<u32>], steps: usize) -> Vec<Vec<Vec<f32>>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            let method = [Method::Cake, Method::H2o, Method::SnapKv][i % 3];
            let mut c = compressor(method, HeadBudgets::None, (12, 4), model);
            let mut caches = model.new_caches();
            let p = model
                .prefill(ids, &mut caches, &mut c, PrefillLogits::Last)
                .unwrap();
            let mut token = argmax(&p.logits.into_data().to_vec::<f32>().unwrap());
            (0..steps)
                .map(|s| {
                    let l = model
                        .forward_decode(token, ids.len() + s, &mut caches, &mut c)
                        .unwrap();
                    let l: Vec<f32> = l.into_data().to_vec().unwrap();
                    token = argmax(&l);
                    l
                })
                .collect()
        })
        .collect()
}

/// Largest `|a - b| / max(1, |b|)` over two logit rows.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// The batched logits equal the one-sequence ones up to float reordering (the R-row
/// GEMM against the one-row GEMV), and a batch of one row is bit-exact.
#[test]
fn batched_logits_equal_one_sequence_logits_within_float_reordering() {
    for arch in ["llama", "qwen2"] {
        let model = tiny(arch);
        let prompts: Vec<Vec<u32>> = [40, 23, 71].iter().map(|&n| prompt(n, n as u32)).collect();
        let alone = decode_alone(&model, &prompts, 10);
        let (_, batched) = decode_batched(&model, &prompts, 10, &[0, 0, 0]);
        let mut worst = 0.0f32;
        for (a, b) in batched.iter().flatten().zip(alone.iter().flatten()) {
            worst = worst.max(max_rel_diff(a, b));
        }
        eprintln!("{arch}: largest relative logit difference batched vs alone: {worst:e}");
        assert!(worst < 1e-4, "{arch}: {worst}");
        // One row runs the one-sequence code: the same bits.
        let (_, one) = decode_batched(&model, &prompts[..1], 10, &[0]);
        assert_eq!(one[0], alone[0], "{arch}: a batch of one row");
    }
}

/// Negative control: feeding one row a wrong position (3 too far) changes that row's
/// tokens, which the equality checks above would catch, and leaves the other rows'.
#[test]
fn a_wrong_position_for_one_row_changes_its_tokens() {
    let model = tiny("llama");
    let prompts: Vec<Vec<u32>> = [40, 23, 71].iter().map(|&n| prompt(n, n as u32)).collect();
    let (right, right_logits) = decode_batched(&model, &prompts, 12, &[0, 0, 0]);
    let (wrong, wrong_logits) = decode_batched(&model, &prompts, 12, &[0, 3, 0]);
    assert_eq!(wrong[0], right[0]);
    assert_eq!(wrong[2], right[2]);
    assert_ne!(
        wrong[1], right[1],
        "a wrong position must change row 1's tokens"
    );
    let diff = max_rel_diff(&wrong_logits[1][0], &right_logits[1][0]);
    assert!(diff > 1e-3, "row 1's logits moved by {diff}");
}

/// The batched attention on the generic Burn path equals the CPU path and each row run
/// alone through [`cake_models::layers::Attention::forward`], over ragged caches of
/// different lengths, with probabilities and hooks per row.
#[test]
fn batched_attention_generic_path_equals_the_cpu_path() {
    for arch in ["llama", "mistral", "qwen2"] {
        let model = tiny(arch);
        let c = model.config().clone();
        let (h, hkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rotary = Rotary::new(d, &c.rope);
        let device = Default::default();
        let attn = &model.layers()[0].attention;
        // Three caches: prompts of 30, 11 and 52 rows, two of them ragged.
        let lens = [30usize, 11, 52];
        let mut host: Vec<LayerCache<B>> = Vec::new();
        for (i, &n) in lens.iter().enumerate() {
            <B as burn::tensor::backend::Backend>::seed(&device, 7 + i as u64);
            let x =
                Tensor::<B, 2>::random([n, c.hidden_size], Distribution::Normal(0.0, 1.0), &device);
            let rope = rotary.tables::<B>(0, n, h, hkv, &device);
            let mut cache = LayerCache::new();
            attn.forward(
                x,
                0,
                &rope,
                &mut cache,
                AttentionRequest::default(),
                &mut |_, _, _| Ok(()),
            )
            .unwrap();
            if i != 1 {
                let keep: Vec<Vec<usize>> = (0..hkv)
                    .map(|kv| {
                        (0..n)
                            .filter(|&j| j % (kv + 2) == 0 || j + 3 >= n)
                            .collect()
                    })
                    .collect();
                cache.retain(&keep).unwrap();
            }
            host.push(cache);
        }
        let mut generic = host.clone();
        let mut alone = host.clone();
        <B as burn::tensor::backend::Backend>::seed(&device, 99);
        let x = Tensor::<B, 2>::random([3, c.hidden_size], Distribution::Normal(0.0, 1.0), &device);
        let ropes: Vec<_> = lens
            .iter()
            .map(|&n| rotary.tables::<B>(n, 1, h, hkv, &device))
            .collect();
        // Each hook records the probabilities it saw: [H, 1, len].
        let mut seen: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
        let run = |caches: &mut [LayerCache<B>], generic: bool, seen: &mut Vec<Vec<Vec<f32>>>| {
            let mut hooks: Vec<_> = seen
                .iter_mut()
                .map(|seen| {
                    move |_: &mut LayerCache<B>, _: &Tensor<B, 3>, p: Option<&Tensor<B, 3>>| {
                        seen.push(p.unwrap().clone().into_data().to_vec().unwrap());
                        Ok(())
                    }
                })
                .collect();
            let mut rows: Vec<AttentionRow<'_, B>> = caches
                .iter_mut()
                .zip(&mut hooks)
                .zip(&ropes)
                .zip(&lens)
                .map(|(((cache, after), rope), &n)| AttentionRow {
                    position: n,
                    rope,
                    cache,
                    probabilities: true,
                    after,
                })
                .collect();
            let out = if generic {
                attn.forward_batch_generic(attn.qkv.forward(x.clone()), &mut rows)
            } else {
                attn.forward_batch(x.clone(), &mut rows)
            };
            out.unwrap()
        };
        let fast = run(&mut host, false, &mut seen);
        let slow = run(&mut generic, true, &mut seen);
        for b in 0..3 {
            let request = AttentionRequest {
                probabilities: true,
                ..AttentionRequest::default()
            };
            let one = attn
                .forward(
                    x.clone().narrow(0, b, 1),
                    lens[b],
                    &ropes[b],
                    &mut alone[b],
                    request,
                    &mut |_, _, _| Ok(()),
                )
                .unwrap();
            let row = |t: &Tensor<B, 2>| t.clone().narrow(0, b, 1);
            for (what, out) in [("host", row(&fast)), ("generic", row(&slow))] {
                let diff = (out - one.output.clone()).abs().max().into_scalar();
                assert!(diff < 1e-5, "{arch} row {b} {what}: {diff}");
            }
            assert_eq!(host[b].positions(), alone[b].positions(), "{arch} row {b}");
            assert_eq!(
                generic[b].positions(),
                alone[b].positions(),
                "{arch} row {b}"
            );
            let p: Vec<f32> = one.probabilities.unwrap().into_data().to_vec().unwrap();
            for (what, got) in [("host", &seen[b][0]), ("generic", &seen[b][1])] {
                assert_eq!(got.len(), p.len(), "{arch} row {b} {what}");
                let diff = got
                    .iter()
                    .zip(&p)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-5, "{arch} row {b} {what} probabilities: {diff}");
            }
        }
    }
}

/// The real default model (SmolLM2-135M-Instruct): four requests under three policies,
/// two places, each equal to its run alone.
#[test]
fn smollm2_batch_equals_each_request_alone() {
    let path = cake_models::fetch::resolve_model(Some("smollm2-135m")).expect("SmolLM2 GGUF");
    let model = load::<B>(&path, &Default::default()).unwrap().model;
    let vocab = model.config().vocab_size as u32;
    let ids = |n: usize, seed: u32| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 7919 + seed * 104_729 + 17) % (vocab - 100) + 50)
            .collect()
    };
    let cases = [
        Case {
            prompt: ids(90, 1),
            policy: (Method::Cake, HeadBudgets::None),
            new_tokens: 10,
        },
        Case {
            prompt: ids(40, 2),
            policy: (Method::SnapKv, HeadBudgets::None),
            new_tokens: 6,
        },
        Case {
            prompt: ids(120, 3),
            policy: (Method::Full, HeadBudgets::None),
            new_tokens: 8,
        },
        Case {
            prompt: ids(64, 4),
            policy: (Method::Cake, HeadBudgets::AdaKv),
            new_tokens: 5,
        },
    ];
    let mut batch = BatchGeneration::new(&model, 2);
    for case in &cases {
        let (method, mode) = case.policy;
        batch.push(
            BatchRequest::new(
                case.prompt.clone(),
                compressor(method, mode, (32, 8), &model),
            )
            .with_config(greedy(case.new_tokens)),
        );
    }
    let outputs = batch.run().unwrap();
    let mut joined = Vec::new();
    for (case, out) in cases.iter().zip(outputs) {
        let (method, mode) = case.policy;
        let out = out.unwrap();
        let mut alone = Generation::new(&model)
            .with_compressor(compressor(method, mode, (32, 8), &model))
            .with_config(greedy(case.new_tokens));
        let expected = alone.generate(&case.prompt).unwrap();
        assert_eq!(out.output.tokens, expected.tokens, "{method} {mode}");
        assert_eq!(
            positions(&out.caches),
            positions(alone.caches()),
            "{method} {mode}"
        );
        joined.push(out.joined_at_step);
    }
    assert!(joined.iter().any(|&s| s > 0), "{joined:?}");
}
