//! `cake bench --batch`: aggregate decoding throughput of B sequences advanced together
//! ([`Model::forward_decode_batch`]), for the full cache and each policy, each beside its
//! bound; and, with `--kv-memory`, how many sequences of a context fit in a K/V budget
//! under each policy and the throughput at those batch sizes.

use std::time::{Duration, Instant};

use anyhow::Result;
use burn::tensor::backend::Backend;
use cake_core::{Compressor, LayerCache, PolicySpec};
use cake_models::generate::{Generation, argmax};
use cake_models::model::{DecodeRow, kv_bytes};
use cake_models::{DecoderConfig, Model};
use serde::Serialize;

use super::median_ms;
use crate::settings::Settings;
use cake_models::weights::WeightFormat;

/// One measured (context, method, batch size) cell.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRow {
    /// Prompt tokens of every sequence.
    pub context: usize,
    /// Method label.
    pub policy: String,
    /// The method, typed (not serialised).
    #[serde(skip)]
    pub spec: PolicySpec,
    /// Sequences decoded together.
    pub batch: usize,
    /// Median wall time of one batched step (one token for every sequence).
    pub step_ms: f64,
    /// Aggregate decoded tokens per second: `batch / step`.
    pub tokens_per_s: f64,
    /// K/V bytes one sequence holds after its prefill.
    pub kv_bytes_per_sequence: usize,
    /// Bytes-moved bound of a step: the weights once plus every sequence's K/V, at the
    /// measured read bandwidth (ms).
    pub bytes_bound_ms: Option<f64>,
    /// Compute bound of a step: its multiply-adds (projections and head for every row,
    /// at the measured peak of the products the weights use: f32, or int8 with
    /// `--weights stored-int8`; attention over every sequence's K/V at the f32 peak) (ms).
    pub compute_bound_ms: Option<f64>,
    /// Step time over the larger of the two bounds.
    pub vs_bound: Option<f64>,
}

/// What the bounds are measured against.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// Read bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Matrix-product peak, multiply-adds per second.
    pub macs_per_s: f64,
    /// Peak of the int8 products of `--weights stored-int8` (packed Q8_0 rows times int8
    /// activation rows, [`cake_kernels::PackedMatrix::gemv_quantized`]), multiply-adds per
    /// second.
    pub int8_macs_per_s: f64,
}

impl Machine {
    /// Measures the read bandwidth (a probe over `probe_bytes`) and the host GEMM's
    /// multiply-adds per second on a 256 x 1024 x 1024 product (best of three).
    pub fn measure(probe_bytes: usize) -> Self {
        let bandwidth = cake_kernels::BandwidthProbe::new(probe_bytes).measure(3);
        let (rows, inp, out) = (256, 1024, 1024);
        let w = cake_kernels::testing::pseudo_random(out * inp, 1);
        let x = cake_kernels::testing::pseudo_random(rows * inp, 2);
        let mut y = vec![0.0f32; rows * out];
        let best = (0..3)
            .map(|_| {
                let start = Instant::now();
                cake_kernels::gemm(&w, &x, inp, None, &mut y);
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        std::hint::black_box(&y);
        Self {
            bandwidth,
            macs_per_s: (rows * inp * out) as f64 / best.max(1e-9),
            int8_macs_per_s: int8_peak(),
        }
    }

    /// The peak the projections of `weights` run at.
    pub fn projection_peak(&self, weights: WeightFormat) -> f64 {
        match weights {
            WeightFormat::StoredInt8 => self.int8_macs_per_s,
            WeightFormat::F32 | WeightFormat::Stored => self.macs_per_s,
        }
    }
}

/// Multiply-adds per second of the int8 product on 64 activation rows (a batched step's
/// or a prefill chunk's) x a 1024 x 1024 Q8_0 matrix (scales 1, pseudo-random quants),
/// best of three; the activations are quantised once, outside the timing, as the model
/// quantises one input for several matrices.
fn int8_peak() -> f64 {
    use cake_kernels::{BlockFormat, PackedMatrix, PackedRows};
    let (rows, inp, out) = (64, 1024, 1024);
    let block = 34; // f16 scale + 32 int8 quants
    let mut data = Vec::with_capacity(out * inp / 32 * block);
    let noise = cake_kernels::testing::pseudo_random(out * inp, 3);
    for chunk in noise.chunks_exact(32) {
        data.extend_from_slice(&0x3C00u16.to_le_bytes()); // f16 1.0
        data.extend(chunk.iter().map(|v| ((v * 100.0) as i8) as u8));
    }
    let matrix = PackedRows::new(BlockFormat::Q8_0, out, inp, data)
        .and_then(|rows| PackedMatrix::new(vec![rows]));
    let Ok(matrix) = matrix else {
        return f64::NAN;
    };
    let x = cake_kernels::quant::quantize_rows(
        &cake_kernels::testing::pseudo_random(rows * inp, 4),
        inp,
    );
    let mut y = vec![0.0f32; rows * out];
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            matrix.gemv_quantized(&x, None, &mut y);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    std::hint::black_box(&y);
    (rows * inp * out) as f64 / best.max(1e-9)
}

/// Multiply-adds of one decoding step of one sequence: (every projection and the head,
/// attention's scores and weighted values over `kv_rows` cached tokens per KV head).
pub fn step_macs(config: &DecoderConfig, kv_rows: usize) -> (f64, f64) {
    let c = config;
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    let per_layer =
        c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size;
    let attention = 2 * c.num_heads * c.head_dim * kv_rows;
    (
        (c.num_layers * per_layer + c.hidden_size * c.vocab_size) as f64,
        (c.num_layers * attention) as f64,
    )
}

/// One method's sequences after one prefill, each with its own caches and compressor.
struct Batch<B: Backend> {
    sequences: Vec<(Compressor<B>, Vec<LayerCache<B>>)>,
    tokens: Vec<u32>,
    position: usize,
}

impl<B: Backend> Batch<B> {
    /// `batch` copies of `settings`' method after prefilling `prompt` once.
    fn new(
        model: &Model<B>,
        name: &str,
        settings: &Settings,
        prompt: &[u32],
        batch: usize,
    ) -> Result<Self> {
        let compressor = settings.spec.compressor::<B>(name, model.num_layers())?;
        let mut run = Generation::new(model).with_compressor(compressor);
        let prefilled = run.prefill(prompt)?.clone();
        let first = argmax(&prefilled.logits);
        let (compressor, caches) = run.into_parts();
        Ok(Self {
            sequences: vec![(compressor, caches); batch],
            tokens: vec![first; batch],
            position: prefilled.prompt_len,
        })
    }

    /// One batched step; returns its wall time (forward and logits read back).
    fn step(&mut self, model: &Model<B>) -> Result<Duration> {
        let start = Instant::now();
        let mut rows: Vec<DecodeRow<'_, B>> = self
            .sequences
            .iter_mut()
            .zip(&self.tokens)
            .map(|((compressor, caches), &token)| DecodeRow {
                token,
                position: self.position,
                caches,
                compressor,
            })
            .collect();
        let logits = model.forward_decode_batch(&mut rows)?;
        let [batch, vocab] = logits.dims();
        let logits = logits
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("cannot read the batch's logits back: {e:?}"))?;
        for (token, row) in self.tokens.iter_mut().zip(logits.chunks_exact(vocab)) {
            *token = argmax(row);
        }
        debug_assert_eq!(batch, self.tokens.len());
        self.position += 1;
        Ok(start.elapsed())
    }
}

/// Measures `steps` batched steps of `batch` sequences of `settings`' method after a
/// `prompt`-long prefill.
#[allow(clippy::too_many_arguments)]
pub fn measure<B: Backend>(
    model: &Model<B>,
    name: &str,
    settings: &Settings,
    label: &str,
    prompt: &[u32],
    batch: usize,
    steps: usize,
    machine: Option<Machine>,
) -> Result<ThroughputRow> {
    let mut seqs = Batch::new(model, name, settings, prompt, batch)?;
    let per_sequence = seqs.sequences.first().map_or(0, |(_, c)| kv_bytes(c));
    seqs.step(model)?; // warm-up: first-use allocations of this batch size
    let times = (0..steps.max(1))
        .map(|_| seqs.step(model))
        .collect::<Result<Vec<_>>>()?;
    let step_ms = median_ms(&times);
    let config = model.config();
    let kv_rows = seqs.sequences.first().map_or(0, |(_, caches)| {
        let rows: usize = caches.iter().map(|c| c.len()).sum();
        rows / config.num_layers.max(1)
    });
    let bytes_bound_ms = machine
        .map(|m| (model.decode_weight_bytes() + batch * per_sequence) as f64 / m.bandwidth * 1e3);
    let compute_bound_ms = machine.map(|m| {
        let (projections, attention) = step_macs(config, kv_rows);
        let seconds = projections / m.projection_peak(settings.weights) + attention / m.macs_per_s;
        batch as f64 * seconds * 1e3
    });
    let bound = bytes_bound_ms.zip(compute_bound_ms).map(|(a, b)| a.max(b));
    Ok(ThroughputRow {
        context: prompt.len(),
        policy: label.to_string(),
        spec: settings.spec.clone(),
        batch,
        step_ms,
        tokens_per_s: batch as f64 / (step_ms / 1e3).max(1e-12),
        kv_bytes_per_sequence: per_sequence,
        bytes_bound_ms,
        compute_bound_ms,
        vs_bound: bound.map(|b| step_ms / b.max(1e-12)),
    })
}

/// Sequences of `per_sequence` K/V bytes (grown by `steps` more tokens at
/// `bytes_per_token`) that fit in `budget` bytes.
pub fn sequences_fitting(
    budget: u64,
    per_sequence: usize,
    bytes_per_token: usize,
    steps: usize,
) -> usize {
    let each = (per_sequence + bytes_per_token * steps).max(1) as u64;
    (budget / each) as usize
}

/// The throughput table: per context and method, each batch size's aggregate tokens/s,
/// its speed-up over batch 1 and its distance to its bound.
pub fn markdown(model: &str, rows: &[ThroughputRow]) -> String {
    use std::fmt::Write as _;
    let mut md = format!(
        "model `{model}`: batched decoding\n\n| context | method | batch | step ms | tokens/s | vs batch 1 | K/V MiB per sequence | bytes bound ms | compute bound ms | x bound |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let or_dash = |v: Option<f64>, d: usize| v.map_or("-".to_string(), |v| format!("{v:.d$}"));
    for row in rows {
        let single = rows
            .iter()
            .find(|r| r.context == row.context && r.spec == row.spec && r.batch == 1)
            .map(|r| row.tokens_per_s / r.tokens_per_s.max(1e-12));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:.1} | {} | {:.1} | {} | {} | {} |",
            row.context,
            row.policy,
            row.batch,
            row.step_ms,
            row.tokens_per_s,
            or_dash(single, 2),
            row.kv_bytes_per_sequence as f64 / (1u64 << 20) as f64,
            or_dash(row.bytes_bound_ms, 2),
            or_dash(row.compute_bound_ms, 2),
            or_dash(row.vs_bound, 2),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed on a two-layer model: hidden 8, 2 query heads and 1 KV head of 4,
    /// MLP 16, vocabulary 10.
    #[test]
    fn a_steps_multiply_adds_split_into_projections_and_attention() {
        let config = cake_models::config::decoder_config(&serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        }))
        .unwrap();
        // Per layer: q, k, v 8 x (8 + 4 + 4), o 8 x 8, MLP 3 x 8 x 16 = 128 + 64 + 384;
        // two layers and the head 8 x 10. Attention: 2 heads x 4 x 5 rows, twice, a layer.
        assert_eq!(
            step_macs(&config, 5),
            ((2 * 576 + 80) as f64, (2 * 2 * 2 * 4 * 5) as f64)
        );
        let machine = Machine {
            bandwidth: 1.0,
            macs_per_s: 2.0,
            int8_macs_per_s: 7.0,
        };
        assert_eq!(machine.projection_peak(WeightFormat::F32), 2.0);
        assert_eq!(machine.projection_peak(WeightFormat::Stored), 2.0);
        assert_eq!(machine.projection_peak(WeightFormat::StoredInt8), 7.0);
    }

    /// The int8 peak is measured (a positive, finite rate), not a constant.
    #[test]
    fn the_int8_peak_is_measured() {
        let peak = int8_peak();
        assert!(peak.is_finite() && peak > 1e6, "{peak}");
    }
}
