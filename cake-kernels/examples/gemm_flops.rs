//! GFLOP/s of the host GEMM ([`cake_kernels::gemm`]) at SmolLM2-135M's projection
//! shapes, for 512 and 2048 tokens, on the threads rayon is given (`RAYON_NUM_THREADS`).
//!
//! `cargo run --release -p cake-kernels --example gemm_flops`
use std::time::Instant;

use cake_kernels::gemm;

use cake_kernels::testing::pseudo_random as values;

fn main() {
    let mut total = (0.0, 0.0);
    for (name, inp, out) in [
        ("qkv", 576, 960),
        ("o", 576, 576),
        ("gate_up", 576, 3072),
        ("down", 1536, 576),
    ] {
        for tokens in [512, 2048] {
            let w = values(out * inp, 1);
            let x = values(tokens * inp, 2);
            let mut y = vec![0.0f32; tokens * out];
            for _ in 0..3 {
                gemm(&w, &x, inp, None, &mut y);
            }
            // The best of 20 runs (the machine's noise only ever slows a run down).
            let dt = (0..20)
                .map(|_| {
                    let start = Instant::now();
                    gemm(&w, &x, inp, None, &mut y);
                    start.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min);
            let flops = 2.0 * (tokens * inp * out) as f64;
            total.0 += flops;
            total.1 += dt;
            println!(
                "{name} {tokens}x{inp}x{out}: {:.0} GFLOP/s ({:.2} ms)",
                flops / dt / 1e9,
                dt * 1e3
            );
        }
    }
    println!("all: {:.0} GFLOP/s", total.0 / total.1 / 1e9);
}
