//! How close the decoding GEMV comes to the machine's read bandwidth: the projections of a
//! SmolLM2-135M decoding step (30 layers of `[960 | 576 | 3072 | 576]` rows, about 425 MB)
//! through `host::gemv`, one after another as a step runs them, against the bandwidth probe,
//! alternating for a few rounds.
//!
//! ```text
//! cargo run --release -p cake-kernels --example gemv_bandwidth [-- --serial-us N]
//! ```
//!
//! With `--serial-us N`, the caller works alone for N microseconds after each GEMV (touching
//! no memory), as a decoding step's serial work does between its parallel regions: the
//! time that the pool's idle worker spends requesting the next weights (reported apart:
//! the figure is the GEMVs' bytes over the whole time, serial work included).

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let serial_us: u64 = args
        .iter()
        .position(|a| a == "--serial-us")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(0);
    let serial = std::time::Duration::from_micros(serial_us);
    // (out, in) of each layer's projections: fused q|k|v, o, fused gate|up, down.
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    let layers: Vec<Vec<Vec<f32>>> = (0..30)
        .map(|_| shapes.iter().map(|&(o, i)| vec![0.5; o * i]).collect())
        .collect();
    let bytes: usize = layers.iter().flatten().map(|w| w.len() * 4).sum();
    let x = vec![0.1f32; 1536];
    let mut y = vec![0.0f32; 3072];
    for round in 0..3 {
        let probe = cake_kernels::read_bandwidth(512 << 20, 5);
        let mut best = f64::INFINITY;
        for _ in 0..7 {
            let start = Instant::now();
            for layer in &layers {
                for (w, &(o, i)) in layer.iter().zip(&shapes) {
                    cake_kernels::gemv(w, &x[..i], None, &mut y[..o]);
                    let alone = Instant::now();
                    while alone.elapsed() < serial {
                        std::hint::spin_loop();
                    }
                }
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "round {round}: probe {:.1} GB/s, decoding GEMVs {:.1} GB/s ({:.1} ms for {:.0} MB)",
            probe / 1e9,
            bytes as f64 / best / 1e9,
            best * 1e3,
            bytes as f64 / 1e6
        );
    }
}
