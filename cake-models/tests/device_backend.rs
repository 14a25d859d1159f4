//! The generic Burn path on a device backend: the same model code and the same tests on
//! burn-wgpu (`--features wgpu`; CI runs it on Vulkan with Mesa's CPU driver, lavapipe)
//! and on burn-cuda (`--features cuda`, `tools/gpu-check.sh`), whose CubeCL kernels are
//! compiled from the same source. Neither has the CPU backend's host fast path, so these
//! tests run every model layer, every window statistic and every eviction on the device:
//!
//! - logits of the tiny Llama (llama3 rope scaling), Mistral (sliding window 8) and Qwen2
//!   models at 2048 positions within 1e-4 of torch (`fixtures/long`, as `parity.rs`);
//! - attention over ragged per-head caches equals the masked full-cache reference within
//!   1e-5 (as `ragged_heads.rs`);
//! - all seven policies keep the positions the CPU backend keeps (host fast path) on a
//!   1024-token prompt, after the prefill and after decoding steps with eviction;
//! - a decoding step reads back from the device only the index each KV head evicts
//!   (`cake_core::stats::readbacks`), where the CPU backend reads its scores;
//! - the default model (SmolLM2-135M) with CAKE at the default C = 1024 on the ~2K-token
//!   prompt of the report fixture keeps what the CPU keeps, up to float ties in the
//!   layer budgets (on lavapipe: 2 of 30 cascade stages moved one token between two
//!   layers, the final budgets and every kept position equal; about 5 minutes).
//!
//! The budgets are those of long prompts (C = 256 of 1024 tokens: the device ranks a few
//! hundred kept tokens per KV head). `cake_core::stats::top_k_on_device` ranks by counting
//! on the device, not with Burn 0.21's CubeCL top-k, which unrolls its `k`-slot
//! accumulator into a kernel of `O(k^2)` statements compiled once per `k` (on lavapipe the
//! first top-k of k = 8 / 16 / 24 / 32 / 48 / 64 took 0.17 / 0.7 / 2.1 / 6.5 / 39 / 108 s).
#![cfg(all(feature = "flex", any(feature = "wgpu", feature = "cuda")))]

mod common;

use burn::tensor::backend::Backend;
use cake_core::stats::{Readbacks, readbacks};
use cake_core::{Method, PolicyConfig, PolicySpec};
use cake_models::{Cpu, Model, PrefillLogits};
use common::long::check_long_logits;
use common::ragged::{check as ragged_check, forward_only};
use common::{prompt, tiny};

/// What a policy keeps in a tiny model on one backend.
#[derive(Debug, PartialEq)]
struct Kept {
    /// The report's final budget of each layer.
    budgets: Vec<usize>,
    /// The report's budgets of every cascade stage.
    stages: Vec<Vec<usize>>,
    /// Per snapshot (after the prefill, then after each decoding step), per layer, per KV
    /// head: the positions kept.
    positions: Vec<Vec<Vec<Vec<usize>>>>,
}

/// Tokens per layer and KV head the policies keep (C), the window among them (w).
const C: usize = 256;
const W: usize = 8;

/// The policy `method` at C = 256, w = 8: the layers' budgets before the window sum to
/// L (C - w), hundreds of tokens ranked on the device per KV head.
fn spec(method: Method) -> PolicySpec {
    PolicySpec {
        method,
        cache: PolicyConfig {
            cache_size: C,
            window: W,
            ..PolicyConfig::default()
        },
        ..PolicySpec::default()
    }
}

/// Prefills `ids` into the tiny model `arch` on `device` with `method`, then decodes the
/// tokens `decode` (fixed, so that every backend decodes the same input) with decoding
/// eviction; returns the positions kept after each, and the cake-core read backs of each
/// decoding step.
fn kept<B: Backend>(
    arch: &str,
    device: &B::Device,
    method: Method,
    ids: &[u32],
    decode: &[u32],
) -> (Kept, Vec<Readbacks>) {
    let model: Model<B> = tiny(arch, device);
    kept_by(&model, "tiny", &spec(method), ids, decode)
}

/// [`kept`] for `model` (named `name` for the temperature table) under `spec`.
fn kept_by<B: Backend>(
    model: &Model<B>,
    name: &str,
    spec: &PolicySpec,
    ids: &[u32],
    decode: &[u32],
) -> (Kept, Vec<Readbacks>) {
    let mut compressor = spec
        .compressor::<B>(name, model.num_layers())
        .expect("policy");
    let mut caches = model.new_caches();
    model
        .prefill(ids, &mut caches, &mut compressor, PrefillLogits::Last)
        .expect("prefill");
    let snapshot = |caches: &[cake_core::LayerCache<B>]| -> Vec<Vec<Vec<usize>>> {
        caches.iter().map(|c| c.positions().to_vec()).collect()
    };
    let mut positions = vec![snapshot(&caches)];
    let mut steps = Vec::new();
    for (i, &id) in decode.iter().enumerate() {
        let before = readbacks();
        model
            .forward_decode(id, ids.len() + i, &mut caches, &mut compressor)
            .expect("decode");
        let after = readbacks();
        steps.push(Readbacks {
            tensors: after.tensors - before.tensors,
            elements: after.elements - before.elements,
        });
        positions.push(snapshot(&caches));
    }
    let (budgets, stages) = match compressor.report(&caches) {
        Some(report) => (
            report.layers.iter().map(|l| l.budget).collect(),
            report.stage_budgets,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let kept = Kept {
        budgets,
        stages,
        positions,
    };
    (kept, steps)
}

/// Every policy keeps on `device` what it keeps on the CPU backend, for a 1024-token prompt
/// and four decoding steps, in the tiny model `arch`.
fn policies_keep_what_the_cpu_keeps<B: Backend>(arch: &str, device: &B::Device) {
    let ids = prompt(1024);
    let decode = [5, 77, 140, 201];
    for &(method, name) in Method::ALL {
        let (want, _) = kept::<Cpu>(arch, &Default::default(), method, &ids, &decode);
        let (got, _) = kept::<B>(arch, device, method, &ids, &decode);
        // The CPU's own sizes: the full cache holds the prompt, the others C per layer.
        let (layers, heads) = (want.positions[0].len(), want.positions[0][0].len());
        let held: usize = want.positions[0].iter().flatten().map(Vec::len).sum();
        let per_head = if method == Method::Full { 1024 } else { C };
        assert_eq!(held, layers * heads * per_head, "{arch} {name}: CPU sizes");
        assert_eq!(got.budgets, want.budgets, "{arch} {name}: budgets");
        assert_eq!(got.stages, want.stages, "{arch} {name}: cascade stages");
        for (step, (g, w)) in got.positions.iter().zip(&want.positions).enumerate() {
            assert_eq!(g, w, "{arch} {name}: kept positions, snapshot {step}");
        }
    }
}

/// A CAKE decoding step in the tiny Llama (3 layers, 2 KV heads) reads back from the
/// device exactly one index per KV head and layer: the token it evicts. The CPU backend,
/// for contrast, reads each layer's scores (one per cached token and KV head).
fn decoding_reads_back_only_the_evicted_indices<B: Backend>(device: &B::Device) {
    let model: Model<B> = tiny("llama", device);
    let (layers, kv) = (model.num_layers(), model.config().num_kv_heads);
    let ids = prompt(600); // longer than C: the prefill evicts
    let decode = [9, 18, 27, 36];
    let (on_device, steps) = kept::<B>("llama", device, Method::Cake, &ids, &decode);
    let (on_cpu, cpu_steps) =
        kept::<Cpu>("llama", &Default::default(), Method::Cake, &ids, &decode);
    assert_eq!(on_device, on_cpu);
    let lens = |snapshot: &Vec<Vec<Vec<usize>>>| -> Vec<usize> {
        snapshot.iter().flatten().map(Vec::len).collect()
    };
    let prefilled = lens(&on_device.positions[0]);
    assert_eq!(prefilled.iter().sum::<usize>(), layers * kv * C);
    for (step, (got, cpu)) in steps.iter().zip(&cpu_steps).enumerate() {
        assert_eq!(
            (got.tensors, got.elements),
            (layers, layers * kv),
            "step {step}: one [Hkv, 1] index tensor per layer"
        );
        // The CPU reads each layer's [Hkv, n + 1] scores: its n held tokens and the new one.
        let scores: usize = prefilled.iter().map(|n| n + 1).sum();
        assert_eq!(cpu.elements, scores, "step {step}: CPU read backs");
        // Every step evicted one token per KV head: the sizes stay.
        assert_eq!(
            lens(&on_device.positions[step + 1]),
            prefilled,
            "step {step}"
        );
    }
}

/// The default model (SmolLM2-135M-Instruct, 30 layers of 3 KV heads, dequantised to f32)
/// with CAKE at the default settings (C = 1024, w = 32) on the ~2K-token prompt of the
/// report fixture (`cake-cli/tests/report_fixture.rs` holds the CPU to the committed
/// report) keeps on the device what it keeps on the CPU, up to float ties: the device sums
/// the layer preferences in another order, and a share that lands on a rounding boundary
/// moves one token between two layers of a cascade stage (as the fixture's `float_ties`
/// did when the CPU's own sums changed). So every stage has the CPU's total with at most
/// two layers one token apart, the final budgets likewise, and every KV head keeps
/// nearly the same positions after the prefill and after four decoding steps.
fn default_model_keeps_what_the_cpu_keeps<B: Backend>(device: &B::Device) {
    let path = cake_models::fetch::resolve_model(Some("smollm2-135m")).expect("SmolLM2 GGUF");
    let prompt_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cake-cli/tests/fixtures/report_prompt.txt");
    let text = std::fs::read_to_string(&prompt_file).expect("report prompt");
    let file = cake_models::gguf::GgufFile::open(&path).expect("GGUF");
    let ids = cake_models::tokenizer::Tokenizer::from_gguf(&file)
        .expect("tokenizer")
        .encode(&text, true)
        .expect("encode");
    assert!(ids.len() > 1900, "{} tokens", ids.len());
    let spec = PolicySpec::default();
    assert_eq!((spec.method, spec.cache.cache_size), (Method::Cake, 1024));
    let decode = [28, 1130, 314, 253];
    let cpu: Model<Cpu> = cake_models::load(&path, &Default::default())
        .expect("load on the CPU")
        .model;
    let (want, _) = kept_by(&cpu, "smollm2-135m", &spec, &ids, &decode);
    drop(cpu);
    let on_device: Model<B> = cake_models::load(&path, device)
        .expect("load on the device")
        .model;
    let (got, _) = kept_by(&on_device, "smollm2-135m", &spec, &ids, &decode);
    let held: usize = want.positions[0].iter().flatten().map(Vec::len).sum();
    assert_eq!(held, 30 * 3 * 1024, "CPU: C x L per KV head");
    // Budgets: the same totals, at most two layers one token apart.
    let close = |g: &[usize], w: &[usize]| {
        let apart: Vec<usize> = (0..w.len()).filter(|&l| g[l] != w[l]).collect();
        g.len() == w.len()
            && g.iter().sum::<usize>() == w.iter().sum::<usize>()
            && apart.len() <= 2
            && apart.iter().all(|&l| g[l].abs_diff(w[l]) == 1)
    };
    assert_eq!(got.stages.len(), want.stages.len(), "cascade stages");
    let moved = (0..want.stages.len())
        .filter(|&i| got.stages[i] != want.stages[i])
        .count();
    for (i, (g, w)) in got.stages.iter().zip(&want.stages).enumerate() {
        assert!(close(g, w), "cascade stage {i}: {g:?} vs {w:?}");
    }
    assert!(close(&got.budgets, &want.budgets), "final budgets");
    // Positions: the share of each KV head's kept positions the two have in common.
    let mut least = 1.0f64;
    for (g, w) in got.positions.iter().zip(&want.positions) {
        for (g, w) in g.iter().flatten().zip(w.iter().flatten()) {
            let common = g.iter().filter(|p| w.binary_search(p).is_ok()).count();
            least = least.min(common as f64 / w.len().max(g.len()).max(1) as f64);
        }
    }
    eprintln!(
        "default model on the device: {moved} of {} cascade stages moved a token; least shared positions of a KV head {:.4}",
        want.stages.len(),
        least
    );
    assert!(
        least >= 0.98,
        "a KV head shares only {least:.4} of its kept positions"
    );
}

/// The device tests, instantiated for one backend type and its device.
macro_rules! device_tests {
    ($backend:ty, $device:expr) => {
        use super::*;

        type B = $backend;

        fn device() -> burn::tensor::Device<B> {
            $device
        }

        /// Llama-3 rope scaling past `original_max_position_embeddings` (64).
        #[test]
        fn llama_logits_match_torch_at_2k_positions() {
            check_long_logits::<B>("llama", "llama", &device());
        }

        /// Mistral's sliding window (8) over 2048 positions.
        #[test]
        fn mistral_logits_match_torch_at_2k_positions() {
            check_long_logits::<B>("mistral", "mistral", &device());
        }

        /// Qwen2 (q/k/v biases, tied embeddings) over 2048 positions.
        #[test]
        fn qwen2_logits_match_torch_at_2k_positions() {
            check_long_logits::<B>("qwen2", "qwen2", &device());
        }

        #[test]
        fn ragged_attention_equals_the_masked_full_cache() {
            for arch in ["llama", "mistral", "qwen2"] {
                ragged_check::<B>(arch, &device(), 1, &forward_only::<B>);
            }
        }

        #[test]
        fn llama_policies_keep_what_the_cpu_keeps() {
            policies_keep_what_the_cpu_keeps::<B>("llama", &device());
        }

        #[test]
        fn mistral_policies_keep_what_the_cpu_keeps() {
            policies_keep_what_the_cpu_keeps::<B>("mistral", &device());
        }

        #[test]
        fn qwen2_policies_keep_what_the_cpu_keeps() {
            policies_keep_what_the_cpu_keeps::<B>("qwen2", &device());
        }

        #[test]
        fn the_default_model_keeps_what_the_cpu_keeps_at_2k() {
            default_model_keeps_what_the_cpu_keeps::<B>(&device());
        }

        #[test]
        fn a_decoding_step_reads_back_only_the_evicted_indices() {
            decoding_reads_back_only_the_evicted_indices::<B>(&device());
        }
    };
}

/// The wgpu device, set up once on the adapter wgpu ranks first (on CI lavapipe, whose
/// name `.ci/run` prints with `vulkaninfo`); fails when there is none.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> cake_models::WgpuDevice {
    static ADAPTER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let device = cake_models::WgpuDevice::default();
    let adapter = ADAPTER.get_or_init(|| cake_models::wgpu_adapter(&device));
    assert!(
        adapter.is_some(),
        "wgpu found no adapter: install a Vulkan driver (mesa-vulkan-drivers)"
    );
    device
}

#[cfg(feature = "wgpu")]
mod wgpu {
    device_tests!(cake_models::Wgpu, super::wgpu_device());
}

#[cfg(feature = "cuda")]
mod cuda {
    device_tests!(cake_models::Cuda, Default::default());
}
