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
