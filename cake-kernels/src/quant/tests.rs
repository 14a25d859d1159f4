use half::f16;

use super::*;
use crate::testing::pseudo_random;

/// Byte offsets of a format's f16 scale fields within a block.
fn scale_fields(format: BlockFormat) -> &'static [usize] {
    match format {
        BlockFormat::Q8_0 | BlockFormat::Q4_0 | BlockFormat::Q5_0 => &[0],
        BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4K | BlockFormat::Q5K => &[0, 2],
        BlockFormat::Q6K => &[208],
    }
}

/// `rows` rows of `cols` values of random blocks: random bits, scales in [-1, 1).
fn random_rows(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> PackedRows {
    let bytes = rows * format.row_bytes(cols).expect("whole blocks");
    let mut data: Vec<u8> = pseudo_random(bytes, seed)
        .iter()
        .map(|v| (v.to_bits() >> 7) as u8)
        .collect();
    let scales = pseudo_random(bytes, seed + 1);
    for (b, block) in data.chunks_exact_mut(format.block_bytes()).enumerate() {
        for (k, &at) in scale_fields(format).iter().enumerate() {
            let s = f16::from_f32(scales[2 * b + k]).to_le_bytes();
            block[at..at + 2].copy_from_slice(&s);
        }
    }
    PackedRows::new(format, rows, cols, data).expect("sizes fit")
}

fn dense_dot(w: &[f32], x: &[f32]) -> (f64, f64) {
    let dot = w.iter().zip(x).map(|(&w, &x)| w as f64 * x as f64).sum();
    let size = w
        .iter()
        .zip(x)
        .map(|(&w, &x)| (w as f64 * x as f64).abs())
        .sum();
    (dot, size)
}

/// Q4_1 and Q8_0 blocks worked by hand.
#[test]
fn blocks_dequantise_as_written_by_hand() {
    let mut q4_1 = vec![0u8; 20];
    q4_1[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    q4_1[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
    q4_1[4] = 0x3A; // value 0: nibble 0xA = 10, value 16: nibble 3
    q4_1[19] = 0xF0; // value 15: 0, value 31: 15
    let mut out = [0.0f32; 32];
    blocks::dequantize(BlockFormat::Q4_1, &q4_1, &mut out);
    assert_eq!(out[0], 10.0 * 0.5 - 1.0);
    assert_eq!(out[16], 3.0 * 0.5 - 1.0);
    assert_eq!(out[15], -1.0);
    assert_eq!(out[31], 15.0 * 0.5 - 1.0);
    assert_eq!(out[1], -1.0);

    let mut q8_0 = vec![0u8; 34];
    q8_0[0..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
    q8_0[2] = (-128i8) as u8;
    q8_0[33] = 127;
    blocks::dequantize(BlockFormat::Q8_0, &q8_0, &mut out);
    assert_eq!(out[0], -32.0);
    assert_eq!(out[31], 31.75);
    assert_eq!(out[1..31].iter().filter(|&&v| v != 0.0).count(), 0);
}

/// Every format's fast and portable dot products equal the dot product of its dequantised
/// values, to f32 rounding of the sum.
#[test]
fn dots_equal_the_dequantised_dot_product() {
    for format in BlockFormat::ALL {
        let cols = 4 * format.block_elems();
        let rows = random_rows(format, 7, cols, 11);
        let x = pseudo_random(cols, 5);
        let mut w = vec![0.0f32; cols];
        for r in 0..rows.rows() {
            format.kernels().dequantize(rows.row(r), &mut w);
            let (want, size) = dense_dot(&w, &x);
            for kernels in [format.kernels(), format.portable()] {
                let got = kernels.dot(rows.row(r), &x) as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * size + 1e-6,
                    "{format} {} row {r}: {got} vs {want}",
                    kernels.name()
                );
            }
        }
    }
}

/// Every format's fast dequantisation gives the reference's very bits.
#[test]
fn fast_dequantisation_has_the_reference_bits() {
    for format in BlockFormat::ALL {
        let cols = 3 * format.block_elems();
        let rows = random_rows(format, 5, cols, 21);
        let (mut fast, mut reference) = (vec![0.0f32; 5 * cols], vec![1.0f32; 5 * cols]);
        format.kernels().dequantize(rows.data(), &mut fast);
        blocks::dequantize(format, rows.data(), &mut reference);
        let same = fast
            .iter()
            .zip(&reference)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{format} ({})", format.kernels().name());
    }
}

/// The fast kernels are the ones this processor is said to run (a negative control: on an
/// AVX-512 machine the tests above compared two different implementations).
#[test]
fn kernels_are_chosen_by_the_processor() {
    #[cfg(target_arch = "x86_64")]
    let fast = avx512::available();
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    for format in BlockFormat::ALL {
        let want = if fast { "avx512" } else { "portable" };
        assert_eq!(format.kernels().name(), want, "{format}");
        assert_eq!(format.portable().name(), "portable");
        assert_eq!(format.kernels().format(), format);
    }
    if !fast {
        eprintln!("no AVX-512 here: the fast kernels were not compared with the portable ones");
    }
}

/// A wrong scale changes the dot product (the comparison above can fail).
#[test]
fn a_corrupted_scale_changes_the_dot() {
    let format = BlockFormat::Q4K;
    let rows = random_rows(format, 1, 256, 3);
    let x = pseudo_random(256, 9);
    let good = format.kernels().dot(rows.row(0), &x);
    let mut data = rows.data().to_vec();
    data[0] ^= 0x40;
    let bad = PackedRows::new(format, 1, 256, data).expect("sizes");
    assert_ne!(format.kernels().dot(bad.row(0), &x), good);
}

/// A fused matrix of parts in different formats (as Q4_K_M stores QKV): GEMV and the
/// panelled matrix product equal the dense products of its dequantised values.
#[test]
fn mixed_matrix_products_equal_dense_ones() {
    let cols = 512;
    let parts = vec![
        random_rows(BlockFormat::Q4K, 37, cols, 1),
        random_rows(BlockFormat::Q6K, 20, cols, 2),
        random_rows(BlockFormat::Q8_0, 9, cols, 3),
    ];
    let m = PackedMatrix::new(parts).expect("same widths");
    assert_eq!((m.rows(), m.cols()), (66, cols));
    assert_eq!(m.bytes(), 37 * 288 + 20 * 420 + 9 * 544);
    let w = m.dequantize();
    let bias = pseudo_random(66, 4);
    let xs = pseudo_random(3 * cols, 8);
    let mut y = vec![0.0; 66];
    m.gemv(&xs[..cols], Some(&bias), &mut y);
    for r in 0..66 {
        let (want, size) = dense_dot(&w[r * cols..(r + 1) * cols], &xs[..cols]);
        let want = want + bias[r] as f64;
        assert!((y[r] as f64 - want).abs() <= 1e-5 * size + 1e-5, "row {r}");
    }
    for panel in [16, 30, 66, 1000] {
        let xs = pseudo_random(20 * cols, 8);
        let ys = m.matmul_in_panels(&xs, Some(&bias), panel);
        for (s, ys) in ys.chunks_exact(66).enumerate() {
            for r in 0..66 {
                let (want, size) = dense_dot(&w[r * cols..(r + 1) * cols], &xs[s * cols..][..cols]);
                let want = want + bias[r] as f64;
                assert!(
                    (ys[r] as f64 - want).abs() <= 1e-4 * size + 1e-5,
                    "panel {panel} token {s} row {r}: {} vs {want}",
                    ys[r]
                );
            }
        }
    }
    for n in [2, 3, 16] {
        let xs = pseudo_random(n * cols, 30 + n as u64);
        let ys = m.gemv_rows(&xs, Some(&bias));
        assert_eq!(
            ys,
            m.matmul(&xs, Some(&bias)),
            "{n} rows: matmul takes this path"
        );
        for (s, ys) in ys.chunks_exact(66).enumerate() {
            for r in 0..66 {
                let (want, size) = dense_dot(&w[r * cols..(r + 1) * cols], &xs[s * cols..][..cols]);
                let want = want + bias[r] as f64;
                assert!(
                    (ys[r] as f64 - want).abs() <= 1e-5 * size + 1e-5,
                    "{n}: {s} {r}"
                );
            }
            let mut one = vec![0.0; 66];
            m.gemv(&xs[s * cols..][..cols], Some(&bias), &mut one);
            for (r, (a, b)) in one.iter().zip(ys).enumerate() {
                let (_, size) = dense_dot(&w[r * cols..(r + 1) * cols], &xs[s * cols..][..cols]);
                let gap = (a - b).abs() as f64;
                assert!(gap <= 1e-5 * size + 1e-5, "row {r}: batch {b} vs GEMV {a}");
            }
        }
    }
    let mut rows = vec![0.0; 30 * cols];
    m.dequantize_rows(30, 60, &mut rows);
    assert_eq!(rows, w[30 * cols..60 * cols]);
}

/// Rows are moved whole, and sizes are checked rather than trusted.
#[test]
fn rows_reorder_and_sizes_are_checked() {
    let rows = random_rows(BlockFormat::Q4_0, 4, 64, 6);
    let turned = rows.reorder_rows(|i| 3 - i);
    for i in 0..4 {
        assert_eq!(turned.row(i), rows.row(3 - i));
    }
    assert_eq!(
        PackedRows::new(BlockFormat::Q4_0, 2, 48, vec![0; 54]),
        Err(PackError::PartialBlock {
            format: BlockFormat::Q4_0,
            cols: 48
        })
    );
    assert_eq!(
        PackedRows::new(BlockFormat::Q4_0, 3, 64, vec![0; 71]),
        Err(PackError::Length {
            format: BlockFormat::Q4_0,
            rows: 3,
            cols: 64,
            bytes: 71
        })
    );
    assert!(PackedRows::new(BlockFormat::Q6K, usize::MAX, 256, vec![]).is_err());
    let other = random_rows(BlockFormat::Q4_0, 1, 32, 1);
    assert_eq!(
        PackedMatrix::new(vec![rows, other]),
        Err(PackError::Widths {
            first: 64,
            other: 32
        })
    );
}

/// `n` rows of `cols` activations whose blocks differ in size (factors 0.25 to 16), with
/// all-zero blocks and an outlier in each row.
fn activations(n: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut xs = pseudo_random(n * cols, seed);
    for (s, x) in xs.chunks_exact_mut(cols).enumerate() {
        for (b, block) in x.chunks_exact_mut(32).enumerate() {
            let f = [1.0, 16.0, 0.25, 3.0, 0.0][(b + s) % 5];
            block.iter_mut().for_each(|v| *v *= f);
        }
        x[(7 * s + 3) % cols] = 9.5;
    }
    xs
}

/// The min of each 32-value block of a packed row (0 in the formats without one).
fn block_mins(format: BlockFormat, row: &[u8]) -> Vec<f64> {
    let bytes = format.block_bytes();
    let f16 = |b: &[u8], at| f16::from_le_bytes([b[at], b[at + 1]]).to_f32() as f64;
    row.chunks_exact(bytes)
        .flat_map(|block| match format {
            BlockFormat::Q4_1 | BlockFormat::Q5_1 => vec![f16(block, 2)],
            BlockFormat::Q4K | BlockFormat::Q5K => (0..8)
                .map(|j| f16(block, 2) * blocks::scale_min_k4(j, &block[4..16]).1 as f64)
                .collect(),
            BlockFormat::Q6K => vec![0.0; 8],
            _ => vec![0.0],
        })
        .collect()
}

/// Activations quantise as documented: `d = max|x| / 127`, `|x - q d| <= d / 2` (up to
/// the rounding of `127 / max|x|`), zero blocks to zeros, sums of `q` kept per block.
#[test]
fn activations_quantise_to_int8_blocks() {
    let cols = 1184; // 37 blocks: two groups of 16 and a partial one
    let xs = activations(3, cols, 4);
    let q = quantize_rows(&xs, cols);
    assert_eq!((q.rows(), q.cols()), (3, cols));
    let mut zeros = 0;
    for (s, x) in xs.chunks_exact(cols).enumerate() {
        for (b, x) in x.chunks_exact(32).enumerate() {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = q.scale(s, b);
            assert_eq!(d.to_bits(), (amax / 127.0).to_bits(), "row {s} block {b}");
            let mut sum = 0;
            for (i, &x) in x.iter().enumerate() {
                let v = q.value(s, 32 * b + i);
                sum += v as i32;
                let err = (x as f64 - v as f64 * d as f64).abs();
                assert!(
                    err <= d as f64 / 2.0 * (1.0 + 2f64.powi(-14)),
                    "row {s} value {i}: {err}"
                );
                assert!(v != -128);
            }
            assert_eq!(q.block_sum(s, b), sum);
            if amax == 0.0 {
                zeros += 1;
                assert_eq!(d, 0.0);
                assert_eq!(sum, 0);
                assert!((0..32).all(|i| q.value(s, 32 * b + i) == 0));
            }
        }
    }
    assert!(zeros > 0, "a zero block was tested");
    // Ties go to even: 0.5 * 127 / 127 -> 0, 1.5 -> 2, -2.5 -> -2.
    let mut x = [0.0f32; 32];
    x[..4].copy_from_slice(&[127.0, 0.5, 1.5, -2.5]);
    let q = quantize_rows(&x, 32);
    assert_eq!([1, 2, 3].map(|i| q.value(0, i)), [0, 2, -2]);
    assert_eq!((q.scale(0, 0), q.value(0, 0)), (1.0, 127));
}

/// The SIMD quantisation stores what the portable one stores, bit for bit (values, their
/// copies in partial groups, padding, scales and sums), for whole and partial groups.
#[test]
fn activations_quantise_alike_with_and_without_simd() {
    for cols in [32, 96, 160, 256, 512, 576, 1184, 4864] {
        let xs = activations(3, cols, cols as u64);
        assert!(
            quantize_rows(&xs, cols) == q8::quantize_rows_portable(&xs, cols),
            "{cols}"
        );
    }
}

/// Every format's fast integer products have the bits of the portable ones (the integer
/// sums are exact and the float terms are combined in one order), for rows of one to
/// several groups of 16 blocks, partial groups and 1 to 17 activation rows; and five
/// packed rows at once give the bits of each alone.
#[test]
fn int8_dots_have_the_portable_bits() {
    #[cfg(target_arch = "x86_64")]
    if !vnni::available() {
        eprintln!("no AVX-512 VNNI here: the portable int8 products were compared with themselves");
    }
    for format in BlockFormat::ALL {
        let widths: &[usize] = if format.block_elems() == 256 {
            &[256, 512, 768, 1280, 4864 / 256 * 256]
        } else {
            &[32, 160, 512, 576, 1184, 4864]
        };
        for (i, &cols) in widths.iter().enumerate() {
            let rows = random_rows(format, 5, cols, 40 + i as u64);
            for n in [1, 3, 16, 17] {
                let xs = quantize_rows(&activations(n, cols, 7 + n as u64), cols);
                let mut all = vec![0.0; rows.rows() * n];
                format.kernels().dot_int8(rows.data(), &xs, &mut all);
                for r in 0..rows.rows() {
                    let all: Vec<f32> = all.iter().skip(r).step_by(rows.rows()).copied().collect();
                    let (mut fast, mut portable) = (vec![0.0; n], vec![1.0; n]);
                    format.kernels().dot_int8(rows.row(r), &xs, &mut fast);
                    format.portable().dot_int8(rows.row(r), &xs, &mut portable);
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&fast),
                        bits(&portable),
                        "{format} {cols} x {n} row {r}"
                    );
                    assert_eq!(
                        bits(&all),
                        bits(&fast),
                        "{format} {cols} x {n}: 5 rows at once"
                    );
                }
            }
        }
    }
}

/// The int8 GEMV of every format against the f64 product of the dequantised weights with
/// the original activations: off by at most the activations' rounding, `sum_b (d_b / 2)
/// (1 + 2^-14) sum_{i in b} |w_i|` (exact math, [`q8`]), plus f32 rounding of the sums;
/// and off the f64 product with the quantised activations `q d` by f32 rounding alone.
#[test]
fn int8_gemv_is_within_the_activation_rounding() {
    let mut worst = 0.0f64;
    for format in BlockFormat::ALL {
        let cols = if format.block_elems() == 256 {
            1280
        } else {
            1184
        };
        let m = PackedMatrix::new(vec![random_rows(format, 9, cols, 50)]).expect("one part");
        let w = m.dequantize();
        let bias = pseudo_random(9, 51);
        let x = activations(1, cols, 52);
        let q = quantize_rows(&x, cols);
        let mut y = vec![0.0; 9];
        m.gemv_int8(&x, Some(&bias), &mut y);
        for (r, &got) in y.iter().enumerate() {
            let w = &w[r * cols..(r + 1) * cols];
            let mins = block_mins(format, m.parts()[0].row(r));
            let (mut exact, mut quantised, mut bound, mut size) = (0.0f64, 0.0f64, 0.0, 0.0);
            for (b, (w, x)) in w.chunks_exact(32).zip(x.chunks_exact(32)).enumerate() {
                let d = q.scale(0, b) as f64;
                for (i, (&w, &x)) in w.iter().zip(x).enumerate() {
                    let (w, x) = (w as f64, x as f64);
                    exact += w * x;
                    quantised += w * q.value(0, 32 * b + i) as f64 * d;
                    bound += w.abs() * d / 2.0 * (1.0 + 2f64.powi(-14));
                    size += (w.abs() + 2.0 * mins[b].abs()) * (x.abs() + d);
                }
            }
            let b = bias[r] as f64;
            let rounding = 1e-5 * size + 1e-6;
            let got = got as f64 - b;
            assert!(
                (got - quantised).abs() <= rounding,
                "{format} row {r}: {got} vs {quantised} with q d"
            );
            assert!(
                (got - exact).abs() <= bound + rounding,
                "{format} row {r}: {got} vs {exact}, bound {bound}"
            );
            assert!(bound < 0.05 * size, "{format}: the bound says something");
            worst = worst.max((got - exact).abs() / size);
        }
    }
    eprintln!("worst int8 error relative to sum |w x|: {worst:.2e}");
}

/// Blocks of extreme values (every byte 0x00, 0x7F, 0x80 or 0xFF, so Q8_0's -128, Q6_K's
/// scale -128 and the largest unsigned values) against activations at +-127 `d`: the
/// integer sums do not overflow, and the products are the dequantised ones.
#[test]
fn int8_extremes_are_exact() {
    for format in BlockFormat::ALL {
        let cols = 2 * format.block_elems().max(512);
        for byte in [0x00u8, 0x7F, 0x80, 0xFF] {
            let mut data = vec![byte; format.row_bytes(cols).expect("whole blocks")];
            for block in data.chunks_exact_mut(format.block_bytes()) {
                for &at in scale_fields(format) {
                    block[at..at + 2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
                }
            }
            let rows = PackedRows::new(format, 1, cols, data).expect("sizes");
            let mut w = vec![0.0f32; cols];
            blocks::dequantize(format, rows.data(), &mut w);
            for sign in [1.0f32, -1.0] {
                let x: Vec<f32> = (0..cols)
                    .map(|i| sign * if i % 3 == 0 { -127.0 } else { 127.0 } / 8.0)
                    .collect();
                let want: f64 = w.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
                let size: f64 = w.iter().zip(&x).map(|(&w, &x)| (w * x).abs() as f64).sum();
                let xs = quantize_rows(&x, cols);
                for kernels in [format.kernels(), format.portable()] {
                    let mut got = [0.0f32];
                    kernels.dot_int8(rows.row(0), &xs, &mut got);
                    let got = got[0] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * size + 1e-6,
                        "{format} bytes {byte:#x} {}: {got} vs {want}",
                        kernels.name()
                    );
                }
            }
        }
    }
}

/// The batched int8 product of a mixed matrix: row `s` has the very bits of the int8
/// GEMV of row `s` alone, for 1 to 17 rows, and rows quantised once serve as well.
#[test]
fn int8_rows_equal_one_row_at_a_time() {
    let cols = 512;
    let parts = vec![
        random_rows(BlockFormat::Q4K, 37, cols, 1),
        random_rows(BlockFormat::Q6K, 20, cols, 2),
        random_rows(BlockFormat::Q8_0, 9, cols, 3),
        random_rows(BlockFormat::Q5_0, 11, cols, 4),
    ];
    let m = PackedMatrix::new(parts).expect("same widths");
    let rows = m.rows();
    let bias = pseudo_random(rows, 4);
    for n in [1, 2, 4, 16, 17] {
        let xs = activations(n, cols, 60 + n as u64);
        let ys = m.gemv_rows_int8(&xs, Some(&bias));
        let mut again = vec![0.0; n * rows];
        m.gemv_quantized(&quantize_rows(&xs, cols), Some(&bias), &mut again);
        assert_eq!(ys, again, "{n} rows");
        for (s, ys) in ys.chunks_exact(rows).enumerate() {
            let mut one = vec![0.0; rows];
            m.gemv_int8(&xs[s * cols..(s + 1) * cols], Some(&bias), &mut one);
            let same = one.iter().zip(ys).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{n} rows: row {s}");
        }
    }
}
