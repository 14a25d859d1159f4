//! Criterion benchmarks of the packed-weight kernels against their f32 counterparts, at
//! SmolLM2-135M's fused gate/up shape (3072 x 576) and Qwen2.5-0.5B's down projection
//! shape (896 x 4864):
//! - one decoding row: [`PackedMatrix::gemv`] on Q4_1, Q8_0, Q5_0, Q4_K, Q6_K against the
//!   f32 [`cake_kernels::gemv`] on the dequantised matrix;
//! - a batch of 4 and 16 rows (batched decoding): [`PackedMatrix::gemv_rows`] against the
//!   f32 GEMM ([`cake_kernels::gemm`]), and the f32 GEMV once per row;
//! - the dequantisation of the whole matrix (what a prefill pays once per weight);
//! - the int8-activation path beside each: [`PackedMatrix::gemv_int8`] (`<format>_int8`),
//!   [`PackedMatrix::gemv_rows_int8`] (`<format>_gemv_rows_int8`, the activations'
//!   quantisation included) and that quantisation alone (`quantize_rows`).
//!
//! Run: `cargo bench -p cake-kernels --bench quant`.
//!
//! For cycle counts, `CAKE_QUANT_PERF="<shape> <format> <f32|int8> <rows> <calls>"` makes
//! the binary run that one product `calls` times instead (no Criterion), e.g.
//! `RAYON_NUM_THREADS=1 CAKE_QUANT_PERF="qwen_down Q5_0 int8 16 200" perf stat -e
//! cycles:u,instructions:u target/release/deps/quant-<hash>`; the same with 0 calls gives
//! the set-up to subtract (where the processor's counters are not exposed, as in some
//! virtual machines, `-e task-clock` instead). It also prints the minimum and median wall
//! time per call.

use std::hint::black_box;

use cake_kernels::quant::quantize_rows;
use cake_kernels::testing::pseudo_random;
use cake_kernels::{BlockFormat, PackedMatrix, PackedRows, gemm, gemv};
use criterion::{BenchmarkId, Criterion, criterion_group};

/// `rows` rows of `cols` random values in `format` (scales in [-1/64, 1/64)).
fn packed(format: BlockFormat, rows: usize, cols: usize) -> PackedMatrix {
    let bytes = rows * format.row_bytes(cols).expect("whole blocks");
    let mut data: Vec<u8> = pseudo_random(bytes, 7)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect();
    let at: &[usize] = match format {
        BlockFormat::Q6K => &[208],
        BlockFormat::Q8_0 | BlockFormat::Q4_0 | BlockFormat::Q5_0 => &[0],
        _ => &[0, 2],
    };
    for block in data.chunks_exact_mut(format.block_bytes()) {
        for &a in at {
            block[a..a + 2].copy_from_slice(&half::f16::from_f32(1.0 / 64.0).to_le_bytes());
        }
    }
    PackedMatrix::new(vec![
        PackedRows::new(format, rows, cols, data).expect("sizes"),
    ])
    .expect("one part")
}

/// The shapes benchmarked: name, rows, columns and formats.
const SHAPES: [(&str, usize, usize, &[BlockFormat]); 2] = [
    (
        "smollm2_gate_up",
        3072,
        576,
        &[BlockFormat::Q4_1, BlockFormat::Q8_0, BlockFormat::Q5_0],
    ),
    (
        "qwen_down",
        896,
        4864,
        &[BlockFormat::Q5_0, BlockFormat::Q4K, BlockFormat::Q6K],
    ),
];

fn kernels(c: &mut Criterion) {
    for (shape, rows, cols, formats) in SHAPES {
        let mut group = c.benchmark_group(format!("gemv_{shape}"));
        let x = pseudo_random(cols, 3);
        let mut y = vec![0.0f32; rows];
        let dense = packed(formats[0], rows, cols).dequantize();
        group.bench_function("f32", |b| {
            b.iter(|| gemv(black_box(&dense), &x, None, &mut y))
        });
        for &format in formats {
            let m = packed(format, rows, cols);
            group.bench_function(format.name(), |b| {
                b.iter(|| m.gemv(black_box(&x), None, &mut y))
            });
            group.bench_function(format!("{}_int8", format.name()), |b| {
                b.iter(|| m.gemv_int8(black_box(&x), None, &mut y))
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("batch_{shape}"));
        let mats: Vec<PackedMatrix> = formats.iter().map(|&f| packed(f, rows, cols)).collect();
        let m = &mats[0];
        for n in [4, 16] {
            let xs = pseudo_random(n * cols, 5);
            let mut ys = vec![0.0f32; n * rows];
            group.bench_with_input(BenchmarkId::new("f32_gemm", n), &n, |b, _| {
                b.iter(|| gemm(black_box(&dense), &xs, cols, None, &mut ys))
            });
            group.bench_with_input(BenchmarkId::new("f32_gemv_per_row", n), &n, |b, _| {
                b.iter(|| {
                    for (x, y) in xs.chunks_exact(cols).zip(ys.chunks_exact_mut(rows)) {
                        gemv(black_box(&dense), x, None, y);
                    }
                })
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{}_gemv_rows", formats[0].name()), n),
                &n,
                |b, _| b.iter(|| black_box(m.gemv_rows(black_box(&xs), None))),
            );
            for (i, m) in mats.iter().enumerate() {
                let name = m.parts()[0].format().name();
                if i > 0 {
                    group.bench_with_input(
                        BenchmarkId::new(format!("{name}_gemv_rows"), n),
                        &n,
                        |b, _| b.iter(|| black_box(m.gemv_rows(black_box(&xs), None))),
                    );
                }
                group.bench_with_input(
                    BenchmarkId::new(format!("{name}_gemv_rows_int8"), n),
                    &n,
                    |b, _| b.iter(|| black_box(m.gemv_rows_int8(black_box(&xs), None))),
                );
            }
            group.bench_with_input(BenchmarkId::new("quantize_rows", n), &n, |b, _| {
                b.iter(|| black_box(quantize_rows(black_box(&xs), cols)))
            });
        }
        group.bench_function(format!("{}_dequantize", formats[0].name()), |b| {
            b.iter(|| black_box(m.dequantize()))
        });
        group.finish();
    }
}

/// `CAKE_QUANT_PERF="<shape> <format> <f32|int8> <rows> <calls>"`: that product, `calls`
/// times (module docs).
fn perf_run(spec: &str) {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let [shape, format, path, n, calls] = words[..] else {
        panic!("CAKE_QUANT_PERF: <shape> <format> <f32|int8> <rows> <calls>, not {spec:?}");
    };
    let (_, rows, cols, _) = SHAPES
        .into_iter()
        .find(|s| s.0 == shape)
        .expect("a benchmarked shape");
    let format = BlockFormat::ALL
        .into_iter()
        .find(|f| f.name() == format)
        .expect("a format");
    let (n, calls): (usize, usize) = (n.parse().expect("rows"), calls.parse().expect("calls"));
    let m = packed(format, rows, cols);
    let xs = pseudo_random(n * cols, 5);
    let mut y = vec![0.0f32; rows];
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = std::time::Instant::now();
        match (path, n) {
            ("f32", 1) => m.gemv(black_box(&xs), None, &mut y),
            ("int8", 1) => m.gemv_int8(black_box(&xs), None, &mut y),
            ("f32", _) => y = m.gemv_rows(black_box(&xs), None),
            ("int8", _) => y = m.gemv_rows_int8(black_box(&xs), None),
            _ => panic!("f32 or int8, not {path}"),
        }
        black_box(&y);
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    if let (Some(min), Some(median)) = (times.first(), times.get(calls / 2)) {
        eprintln!("{spec}: per call min {min:.1} us, median {median:.1} us");
    }
}

criterion_group!(benches, kernels);

fn main() {
    if let Ok(spec) = std::env::var("CAKE_QUANT_PERF") {
        perf_run(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
