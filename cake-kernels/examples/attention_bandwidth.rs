//! How close the one-query (decoding) attention comes to the machine's read bandwidth: one
//! `host::attention` call per layer over a full cache of `S` tokens, for a model's 30 (or
//! 32) layers one after another as a decoding step runs them (each layer its own buffers,
//! so nothing is served from the caches), against the bandwidth probe, alternating for a
//! few rounds. Shapes: SmolLM2-135M (H = 9, Hkv = 3, d = 64, 30 layers) and Llama-3.1-8B
//! (H = 32, Hkv = 8, d = 128, 32 layers, at a quarter of the context so that it fits).
//! With `--gaps N`, each head's rows are split into N runs by one-row gaps, as decoding
//! eviction leaves them (`LayerCache::runs`). With `--resident`, every layer reads the first
//! layer's buffers, which then stay in the caches: the kernel's own speed, memory aside.
//!
//! ```text
//! cargo run --release -p cake-kernels --example attention_bandwidth [-- S] [--probs] [--gaps N] [--resident]
//! ```

use std::time::Instant;

use cake_kernels::RowRun;
use cake_kernels::{AttentionShape, KvRows, attention};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let probs = args.iter().any(|a| a == "--probs");
    let resident = args.iter().any(|a| a == "--resident");
    let gaps: usize = args
        .iter()
        .position(|a| a == "--gaps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(0);
    let context: usize = args
        .iter()
        .enumerate()
        .filter(|&(i, _)| i == 0 || args[i - 1] != "--gaps")
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(8192);
    let models = [
        ("smollm2-135m", 30, 9, 3, 64, context),
        ("llama-3.1-8b", 32, 32, 8, 128, context / 4),
    ];
    let probe = cake_kernels::BandwidthProbe::new(512 << 20);
    for (name, layers, heads, kv_heads, dim, len) in models {
        let shape = AttentionShape {
            queries: 1,
            heads,
            kv_heads,
            dim,
        };
        // Each head's region: its rows and the gaps, runs of len / gaps rows.
        let region = len + gaps;
        let runs: Vec<Vec<RowRun>> = (0..kv_heads)
            .map(|_| {
                (0..gaps.min(len))
                    .map(|r| RowRun {
                        row: r * len / gaps,
                        offset: r * len / gaps + r,
                    })
                    .collect()
            })
            .collect();
        let cache: Vec<(Vec<f32>, Vec<f32>)> = (0..layers)
            .map(|l| {
                // [Hkv, region, d], each layer its own values.
                let fill = |seed: usize| -> Vec<f32> {
                    (0..kv_heads * region * dim)
                        .map(|i| (((i * 7 + seed * 13 + l) % 97) as f32 - 48.0) / 97.0)
                        .collect()
                };
                (fill(1), fill(2))
            })
            .collect();
        let q: Vec<f32> = (0..heads * dim)
            .map(|i| ((i % 11) as f32 - 5.0) / 11.0)
            .collect();
        let starts: Vec<usize> = (0..kv_heads).map(|h| h * region).collect();
        let mut out = vec![0.0f32; heads * dim];
        let mut p = vec![0.0f32; if probs { heads * len } else { 0 }];
        let bytes = layers * 2 * kv_heads * len * dim * 4;
        let visible = |_: usize, _: usize| (0, len);
        for round in 0..3 {
            let probe = probe.measure(5);
            let mut best = f64::INFINITY;
            for _ in 0..7 {
                let start = Instant::now();
                for layer in 0..layers {
                    let (k, v) = &cache[if resident { 0 } else { layer }];
                    let rows = |data| KvRows {
                        data,
                        runs: &runs,
                        starts: &starts,
                        len,
                        dim,
                    };
                    let p = probs.then_some(&mut p[..]);
                    attention(&q, rows(k), shape, &visible, Some((rows(v), &mut out)), p);
                }
                best = best.min(start.elapsed().as_secs_f64());
            }
            println!(
                "{name} S={len}{}{}{}: round {round}: probe {:.1} GB/s, decode attention {:.1} GB/s ({:.2} ms for {:.0} MB)",
                if probs { " +probs" } else { "" },
                if resident { " resident" } else { "" },
                if gaps > 0 {
                    format!(" {gaps} runs")
                } else {
                    String::new()
                },
                probe / 1e9,
                bytes as f64 / best / 1e9,
                best * 1e3,
                bytes as f64 / 1e6
            );
        }
    }
}
