//! The public API returns errors on bad arguments instead of panicking: attention over an
//! empty cache or with queries of the wrong shape, caches that do not fit the model,
//! positions that go backwards, unsorted or duplicate keep lists, decoding before a prefill.

use std::path::PathBuf;

use burn::tensor::{Tensor, TensorData};
use cake_core::{CacheError, KeepAll, LayerCache};
use cake_models::generate::{GenerateError, Generation};
use cake_models::{Cpu, Model, ModelError, PrefillLogits, load};

fn tiny() -> Model<Cpu> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny/llama");
    load::<Cpu>(&dir, &Default::default()).unwrap().model
}

fn tensor(shape: [usize; 3]) -> Tensor<Cpu, 3> {
    let n = shape.iter().product::<usize>();
    let data: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn values(t: Tensor<Cpu, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

#[test]
fn attention_rejects_empty_caches_and_foreign_shapes() {
    let model = tiny();
    // 4 query heads and 2 KV heads of 16 dims.
    let attention = &model.layers()[0].attention;
    let empty = LayerCache::<Cpu>::new();
    let q = tensor([4, 1, 16]);
    assert_eq!(
        attention.attend(q.clone(), 0, &empty, false).unwrap_err(),
        CacheError::Empty
    );
    let mut cache = LayerCache::<Cpu>::new();
    cache
        .append(tensor([2, 3, 16]), tensor([2, 3, 16]), 0)
        .unwrap();
    // The query at position 3 sees the 3 cached rows: its output and probabilities are
    // those of exact softmax attention (query head h reads KV head h / 2).
    let (out, probs) = attention.attend(q.clone(), 3, &cache, true).unwrap();
    let probs = probs.expect("probabilities asked for");
    assert_eq!((out.dims(), probs.dims()), ([4, 1, 16], [4, 1, 3]));
    let (out, probs) = (values(out), values(probs));
    let (queries, kv) = (values(q.clone()), values(tensor([2, 3, 16])));
    for h in 0..4 {
        let rows = |j: usize| &kv[((h / 2) * 3 + j) * 16..][..16];
        let scores: Vec<f64> = (0..3)
            .map(|j| dot(&queries[h * 16..][..16], rows(j)) / 4.0)
            .collect();
        let sum: f64 = scores.iter().map(|s| s.exp()).sum();
        for j in 0..3 {
            let p = scores[j].exp() / sum;
            assert!(
                (f64::from(probs[h * 3 + j]) - p).abs() < 1e-5,
                "head {h} key {j}"
            );
        }
        for c in 0..16 {
            // Values are the keys' data here (both built by `tensor`).
            let want: f64 = (0..3)
                .map(|j| scores[j].exp() / sum * f64::from(rows(j)[c]))
                .sum();
            assert!((f64::from(out[h * 16 + c]) - want).abs() < 1e-5, "head {h}");
        }
    }
    for bad in [[3, 1, 16], [4, 1, 8], [4, 0, 16]] {
        let err = attention.attend(tensor(bad), 3, &cache, false).unwrap_err();
        assert!(matches!(err, CacheError::Shape(_)), "{bad:?}: {err}");
    }
    // A cache of 3 KV heads is not this attention's.
    let mut foreign = LayerCache::<Cpu>::new();
    foreign
        .append(tensor([3, 3, 16]), tensor([3, 3, 16]), 0)
        .unwrap();
    assert!(matches!(
        attention.attend(q, 3, &foreign, false),
        Err(CacheError::Shape(_))
    ));
}

#[test]
fn caches_must_fit_the_model_and_positions_must_advance() {
    let model = tiny();
    let ids = [1u32, 2, 3, 4];
    // One cache short.
    let mut short: Vec<LayerCache<Cpu>> = model.new_caches();
    short.pop();
    assert!(matches!(
        model.prefill(&ids, &mut short, &mut KeepAll, PrefillLogits::Last),
        Err(ModelError::CacheCount { .. })
    ));
    // Prefill twice into the same caches.
    let mut caches = model.new_caches();
    model
        .prefill(&ids, &mut caches, &mut KeepAll, PrefillLogits::Last)
        .unwrap();
    assert!(matches!(
        model.prefill(&ids, &mut caches, &mut KeepAll, PrefillLogits::Last),
        Err(ModelError::CachesNotEmpty)
    ));
    // Decoding at a position already cached.
    assert!(matches!(
        model.forward_decode(5, 2, &mut caches, &mut KeepAll),
        Err(ModelError::PositionNotAfterCache { .. })
    ));
    assert!(
        model
            .forward_decode(5, 4, &mut caches, &mut KeepAll)
            .is_ok()
    );
    // A layer cache filled with 3 KV heads elsewhere.
    let mut foreign = model.new_caches();
    foreign[0]
        .append(tensor([3, 2, 16]), tensor([3, 2, 16]), 0)
        .unwrap();
    let err = model
        .forward_decode(5, 2, &mut foreign, &mut KeepAll)
        .unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
    // An empty prompt and an unknown token.
    let mut caches = model.new_caches();
    assert!(matches!(
        model.prefill(&[], &mut caches, &mut KeepAll, PrefillLogits::Last),
        Err(ModelError::EmptyPrompt)
    ));
    assert!(matches!(
        model.prefill(&[100_000], &mut caches, &mut KeepAll, PrefillLogits::Last),
        Err(ModelError::TokenOutOfRange { .. })
    ));
}

#[test]
fn keep_lists_must_be_sorted_unique_and_in_range() {
    let mut cache = LayerCache::<Cpu>::new();
    cache
        .append(tensor([2, 5, 16]), tensor([2, 5, 16]), 0)
        .unwrap();
    for bad in [
        vec![vec![2, 1], vec![0, 1]],
        vec![vec![1, 1], vec![0, 1]],
        vec![vec![0, 9], vec![0, 1]],
        vec![vec![0, 1]],
    ] {
        assert!(cache.retain(&bad).is_err(), "{bad:?}");
        assert_eq!(cache.len(), 5, "a rejected keep list changes nothing");
    }
    cache.retain(&[vec![0, 4], vec![1, 3]]).unwrap();
    assert_eq!(cache.positions(), &[vec![0, 4], vec![1, 3]]);
}

#[test]
fn decoding_needs_a_prefill_first() {
    let model = tiny();
    let err = Generation::new(&model).decode().unwrap_err();
    assert!(matches!(err, GenerateError::Config(_)), "{err}");
}

/// A prompt longer than `max_position_embeddings` (256 for the tiny model) is refused
/// before any work, naming both lengths; one of exactly the context length runs.
#[test]
fn prompts_longer_than_the_context_are_refused() {
    let model = tiny();
    assert_eq!(model.config().max_position_embeddings, Some(256));
    let prompt: Vec<u32> = (0..257).map(|i| 3 + i % 200).collect();
    let mut run = Generation::new(&model);
    let err = run.prefill(&prompt).unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::PromptTooLong {
                prompt: 257,
                context: 256
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("257") && err.to_string().contains("256"));
    assert!(run.caches().iter().all(LayerCache::is_empty));
    let prefilled = Generation::new(&model)
        .prefill(&prompt[..256])
        .unwrap()
        .clone();
    assert_eq!(prefilled.prompt_len, 256);
}
