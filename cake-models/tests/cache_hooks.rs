//! The model's side of the KV-compression contract: hook order and shapes, exact prefill
//! outputs while a policy evicts earlier layers, and exact decoding from an evicted cache
//! whose KV heads keep different positions (Mistral's sliding window makes a known set of
//! keys irrelevant, so evicting them must not change any logit).

use std::path::PathBuf;

use burn::tensor::Tensor;
use cake_core::{CacheError, DecodeStep, KeepAll, KvCompressor, LayerCache, PrefillLayer};
use cake_models::config::decoder_config;
use cake_models::weights::SafetensorsFolder;
use cake_models::{Cpu, Model, ModelError, load};

type B = Cpu;

fn fixture(name: &str) -> (PathBuf, Vec<u32>, Vec<Vec<f32>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = json["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logits = json["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (dir, ids, logits)
}

fn max_abs_diff(t: Tensor<B, 1>, want: &[f32]) -> f32 {
    let got = t.into_data().to_vec::<f32>().unwrap();
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Records every hook call as `(kind, layer, query dims, caches seen, cache lens)`.
#[derive(Default)]
struct Recorder {
    calls: Vec<(&'static str, usize, [usize; 3], usize)>,
}

impl KvCompressor<B> for Recorder {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        self.calls
            .push(("layer", step.layer, step.queries.dims(), caches.len()));
        Ok(())
    }
    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        self.calls.push(("prefill", 0, [0; 3], caches.len()));
        Ok(())
    }
    fn after_decode_step(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        assert!(step.attention.is_none(), "attention passed unasked");
        self.calls
            .push(("decode", step.layer, step.query.dims(), cache.len()));
        Ok(())
    }
}

#[test]
fn hooks_are_called_in_order_with_documented_shapes() {
    let (dir, ids, _) = fixture("llama");
    let model = load::<B>(&dir, &Default::default()).unwrap().model;
    let mut rec = Recorder::default();
    let mut caches = model.new_caches();
    model
        .forward_prefill(&ids[..5], &mut caches, &mut rec)
        .unwrap();
    model
        .forward_decode(ids[5], 5, &mut caches, &mut rec)
        .unwrap();
    // 3 layers, H = 4, d = 16; decode sees the layer's cache after appending (6 tokens).
    let expected = vec![
        ("layer", 0, [4, 5, 16], 1),
        ("layer", 1, [4, 5, 16], 2),
        ("layer", 2, [4, 5, 16], 3),
        ("prefill", 0, [0; 3], 3),
        ("decode", 0, [4, 1, 16], 6),
        ("decode", 1, [4, 1, 16], 6),
        ("decode", 2, [4, 1, 16], 6),
    ];
    assert_eq!(rec.calls, expected);
}

/// Keeps only the newest token of every earlier layer as soon as the next layer is done.
struct EvictEarlierLayers;

impl KvCompressor<B> for EvictEarlierLayers {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        for cache in &mut caches[..step.layer] {
            let last = cache.len() - 1;
            cache.retain(&vec![vec![last]; cache.num_kv_heads()])?;
        }
        Ok(())
    }
}

#[test]
fn prefill_output_is_exact_while_earlier_layers_are_evicted() {
    let (dir, ids, logits) = fixture("qwen2");
    let model = load::<B>(&dir, &Default::default()).unwrap().model;
    let mut caches = model.new_caches();
    let last = model
        .forward_prefill(&ids, &mut caches, &mut EvictEarlierLayers)
        .unwrap();
    assert!(max_abs_diff(last, &logits[ids.len() - 1]) <= 1e-4);
    assert_eq!(
        caches.iter().map(LayerCache::len).collect::<Vec<_>>(),
        vec![1, 1, ids.len()]
    );
}

#[test]
fn decoding_from_a_per_head_evicted_cache_is_exact_outside_the_window() {
    // Mistral fixture: window 8. After a prefill of positions 0..=10, every later query
    // (position >= 11) only sees keys at positions >= 4, so evicting positions 0..=3 cannot
    // change any logit. KV head 0 drops 0..=2, KV head 1 drops 1..=3 (and keeps position 0,
    // which the window must then mask by its cached position).
    let (dir, ids, logits) = fixture("mistral");
    let model = load::<B>(&dir, &Default::default()).unwrap().model;
    let mut caches = model.new_caches();
    model
        .forward_prefill(&ids[..11], &mut caches, &mut KeepAll)
        .unwrap();
    for cache in &mut caches {
        let head0: Vec<usize> = (3..11).collect();
        let head1: Vec<usize> = std::iter::once(0).chain(4..11).collect();
        cache.retain(&[head0, head1]).unwrap();
        assert_eq!(cache.positions()[1][..2], [0, 4]);
    }
    for pos in 11..ids.len() {
        let out = model
            .forward_decode(ids[pos], pos, &mut caches, &mut KeepAll)
            .unwrap();
        let diff = max_abs_diff(out, &logits[pos]);
        assert!(diff <= 1e-4, "position {pos}: diff {diff}");
    }
    // The cache length (8 + 11 decoded) is unrelated to the next position (22).
    assert_eq!(caches[0].len(), 8 + (ids.len() - 11));
}

/// Builds the fixture's model with a modified config.
fn with_config(
    name: &str,
    edit: impl FnOnce(&mut cake_models::DecoderConfig),
) -> (Model<B>, Vec<u32>, Vec<Vec<f32>>) {
    let (dir, ids, logits) = fixture(name);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let mut config = decoder_config(&json).unwrap();
    edit(&mut config);
    let mut weights = SafetensorsFolder::open(&dir).unwrap();
    let model = Model::from_weights(&config, &mut weights, &Default::default()).unwrap();
    (model, ids, logits)
}

fn last_logit_diff(model: &Model<B>, ids: &[u32], logits: &[Vec<f32>]) -> f32 {
    let mut caches = model.new_caches();
    max_abs_diff(
        model
            .forward_prefill(ids, &mut caches, &mut KeepAll)
            .unwrap(),
        &logits[ids.len() - 1],
    )
}

#[test]
fn fixtures_exercise_sliding_window_and_llama3_scaling() {
    // Without the features the parity tests check, the logits move far beyond tolerance:
    // the fixtures do exercise them.
    let (model, ids, logits) =
        with_config("mistral", |c| c.sliding_window = vec![None; c.num_layers]);
    assert!(last_logit_diff(&model, &ids, &logits) > 1e-2);
    let (model, ids, logits) = with_config("llama", |c| c.rope.llama3 = None);
    assert!(last_logit_diff(&model, &ids, &logits) > 1e-2);
    let (model, ids, logits) = with_config("mistral", |_| {});
    assert!(last_logit_diff(&model, &ids, &logits) <= 1e-4);
}

#[test]
fn misuse_is_reported() {
    let (dir, ids, _) = fixture("llama");
    let model = load::<B>(&dir, &Default::default()).unwrap().model;
    let mut caches = model.new_caches();
    assert_eq!(
        model
            .forward_prefill(&[], &mut caches, &mut KeepAll)
            .unwrap_err(),
        ModelError::EmptyPrompt
    );
    let mut two = vec![LayerCache::new(), LayerCache::new()];
    assert!(matches!(
        model.forward_prefill(&ids, &mut two, &mut KeepAll),
        Err(ModelError::CacheCount {
            expected: 3,
            got: 2
        })
    ));
    model
        .forward_prefill(&ids[..4], &mut caches, &mut KeepAll)
        .unwrap();
    assert_eq!(
        model
            .forward_prefill(&ids, &mut caches, &mut KeepAll)
            .unwrap_err(),
        ModelError::CachesNotEmpty
    );
    assert_eq!(
        model
            .forward_decode(ids[4], 3, &mut caches, &mut KeepAll)
            .unwrap_err(),
        ModelError::PositionNotAfterCache {
            position: 3,
            last: 3
        }
    );
}
