//! Weights as stored: GGML block formats, kept packed in memory, and the matrix kernels that
//! read the packed rows directly. A decoding step then streams 0.56-1.06 bytes per weight
//! instead of 4.
//!
//! The kernels of one format sit behind [`BlockKernels`]: the portable implementation
//! dequantises a block at a time into a small buffer and takes an f32 dot product; on
//! AVX-512 processors each block is dequantised in registers ([`BlockFormat::kernels`]
//! chooses at run time). Activations stay f32 in both, so a packed model computes what the
//! same file dequantised to f32 computes, up to rounding order.
//!
//! The int8 path ([`PackedMatrix::gemv_int8`], [`PackedMatrix::gemv_quantized`]) quantises
//! the activations to int8 blocks instead ([`QuantizedRows`], [`q8`]) and multiplies them
//! with the packed values as integers ([`BlockKernels::dot_int8`]: AVX-512 VNNI, or the
//! portable code with the same bits), trading the activations' rounding for fewer
//! instructions.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod blocks;
pub mod q8;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use q8::{QuantizedRows, quantize_rows};

use std::fmt;

use rayon::prelude::*;

use crate::attention::SharedOut;

/// A GGML block format that stays packed in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// 8-bit, 32 per block, scale only (34 bytes).
    Q8_0,
    /// 4-bit, 32 per block, scale only (18 bytes).
    Q4_0,
    /// 4-bit, 32 per block, scale and min (20 bytes).
    Q4_1,
    /// 5-bit, 32 per block, scale only (22 bytes).
    Q5_0,
    /// 5-bit, 32 per block, scale and min (24 bytes).
    Q5_1,
    /// K-quant, 4-bit, 256 per super-block (144 bytes).
    Q4K,
    /// K-quant, 5-bit, 256 per super-block (176 bytes).
    Q5K,
    /// K-quant, 6-bit, 256 per super-block (210 bytes).
    Q6K,
}

impl BlockFormat {
    /// Every format, in GGML id order.
    pub const ALL: [BlockFormat; 8] = [
        BlockFormat::Q4_0,
        BlockFormat::Q4_1,
        BlockFormat::Q5_0,
        BlockFormat::Q5_1,
        BlockFormat::Q8_0,
        BlockFormat::Q4K,
        BlockFormat::Q5K,
        BlockFormat::Q6K,
    ];

    /// Values per block.
    pub const fn block_elems(self) -> usize {
        match self {
            BlockFormat::Q4K | BlockFormat::Q5K | BlockFormat::Q6K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
            BlockFormat::Q5_0 => 22,
            BlockFormat::Q5_1 => 24,
            BlockFormat::Q4K => 144,
            BlockFormat::Q5K => 176,
            BlockFormat::Q6K => 210,
        }
    }

    /// GGML's name of the format (`Q4_K`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            BlockFormat::Q8_0 => "Q8_0",
            BlockFormat::Q4_0 => "Q4_0",
            BlockFormat::Q4_1 => "Q4_1",
            BlockFormat::Q5_0 => "Q5_0",
            BlockFormat::Q5_1 => "Q5_1",
            BlockFormat::Q4K => "Q4_K",
            BlockFormat::Q5K => "Q5_K",
            BlockFormat::Q6K => "Q6_K",
        }
    }

    /// Bytes of one row of `cols` values, or `None` when `cols` is not whole blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_elems())
            .then(|| cols / self.block_elems() * self.block_bytes())
    }

    /// The fastest kernels of this format the processor runs.
    pub fn kernels(self) -> &'static dyn BlockKernels {
        let at = Self::ALL.iter().position(|&f| f == self).unwrap_or(0);
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            return &AVX512[at];
        }
        &PORTABLE[at]
    }

    /// The portable kernels of this format (the reference the fast ones are tested against).
    pub fn portable(self) -> &'static dyn BlockKernels {
        let at = Self::ALL.iter().position(|&f| f == self).unwrap_or(0);
        &PORTABLE[at]
    }
}

impl fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kernels of one block format: what a packed matrix needs of it. One implementation per
/// instruction set; a faster one (new SIMD code, or another library's) replaces an
/// implementation without touching the matrix code.
pub trait BlockKernels: Sync {
    /// The format served.
    fn format(&self) -> BlockFormat;
    /// Which implementation this is, for reports (`"avx512"`, `"portable"`).
    fn name(&self) -> &'static str;
    /// Dequantises whole blocks into `out` (exactly their values).
    fn dequantize(&self, blocks: &[u8], out: &mut [f32]) {
        blocks::dequantize(self.format(), blocks, out);
    }
    /// `sum_i w_i x_i` for one row of whole blocks covering `x`.
    ///
    /// # Panics
    /// When `x` is not whole blocks or `row` is not their bytes.
    fn dot(&self, row: &[u8], x: &[f32]) -> f32;
    /// `out[s m + r] = sum_i w_ri x_si` for `m` consecutive rows of whole blocks in `rows`
    /// and the `n` activation rows of `xs` (`out` is `[n, m]`, as a matrix product's
    /// output), by integer block sums ([`q8`]); every implementation gives the same bits,
    /// whatever `m`.
    ///
    /// # Panics
    /// When `rows` is not whole rows of the blocks covering `xs.cols()` or `out` is not
    /// `[n, m]`.
    fn dot_int8(&self, rows: &[u8], xs: &QuantizedRows, out: &mut [f32]) {
        check_int8(self.format(), rows, xs, out);
        q8::dot_rows(self.format(), rows, xs, out);
    }
}

/// Dequantise a block into a buffer on the stack, then an f32 dot product.
struct Portable(BlockFormat);

const PORTABLE: [Portable; 8] = [
    Portable(BlockFormat::ALL[0]),
    Portable(BlockFormat::ALL[1]),
    Portable(BlockFormat::ALL[2]),
    Portable(BlockFormat::ALL[3]),
    Portable(BlockFormat::ALL[4]),
    Portable(BlockFormat::ALL[5]),
    Portable(BlockFormat::ALL[6]),
    Portable(BlockFormat::ALL[7]),
];

/// Checks that `row` is exactly the blocks covering `x`.
fn check_row(format: BlockFormat, row: &[u8], x: &[f32]) {
    assert!(
        format.row_bytes(x.len()) == Some(row.len()),
        "a {format} row of {} bytes does not cover {} values",
        row.len(),
        x.len()
    );
}

/// Checks that `rows` are whole rows of the blocks covering `xs`' rows and `out` has one
/// value per packed row and activation row.
fn check_int8(format: BlockFormat, rows: &[u8], xs: &QuantizedRows, out: &[f32]) {
    let bytes = format.row_bytes(xs.cols()).unwrap_or(0);
    assert!(
        bytes > 0
            && rows.len().is_multiple_of(bytes)
            && out.len() == rows.len() / bytes * xs.rows(),
        "{} bytes of {format} rows and {} outputs do not fit {} rows of {} values",
        rows.len(),
        out.len(),
        xs.rows(),
        xs.cols()
    );
}

impl BlockKernels for Portable {
    fn format(&self) -> BlockFormat {
        self.0
    }

    fn name(&self) -> &'static str {
        "portable"
    }

    fn dot(&self, row: &[u8], x: &[f32]) -> f32 {
        check_row(self.0, row, x);
        let (elems, bytes) = (self.0.block_elems(), self.0.block_bytes());
        let mut values = [0.0f32; 256];
        let values = &mut values[..elems];
        row.chunks_exact(bytes)
            .zip(x.chunks_exact(elems))
            .map(|(block, x)| {
                blocks::dequantize(self.0, block, values);
                crate::simd::dot(values, x)
            })
            .sum()
    }
}

/// Blocks dequantised in AVX-512 registers ([`avx512`]).
#[cfg(target_arch = "x86_64")]
struct Avx512(BlockFormat);

#[cfg(target_arch = "x86_64")]
const AVX512: [Avx512; 8] = [
    Avx512(BlockFormat::ALL[0]),
    Avx512(BlockFormat::ALL[1]),
    Avx512(BlockFormat::ALL[2]),
    Avx512(BlockFormat::ALL[3]),
    Avx512(BlockFormat::ALL[4]),
    Avx512(BlockFormat::ALL[5]),
    Avx512(BlockFormat::ALL[6]),
    Avx512(BlockFormat::ALL[7]),
];

#[cfg(target_arch = "x86_64")]
impl BlockKernels for Avx512 {
    fn format(&self) -> BlockFormat {
        self.0
    }

    fn name(&self) -> &'static str {
        "avx512"
    }

    fn dot(&self, row: &[u8], x: &[f32]) -> f32 {
        check_row(self.0, row, x);
        // SAFETY: only handed out when `avx512::available()`; the row covers x (checked).
        unsafe { avx512::dot(self.0, row, x) }
    }

    fn dequantize(&self, blocks: &[u8], out: &mut [f32]) {
        let (elems, bytes) = (self.0.block_elems(), self.0.block_bytes());
        assert!(
            blocks.len().is_multiple_of(bytes) && out.len() == blocks.len() / bytes * elems,
            "{} bytes of {} blocks do not fill {} values",
            blocks.len(),
            self.0,
            out.len()
        );
        // SAFETY: only handed out when `avx512::available()`; sizes checked above.
        unsafe { avx512::dequantize(self.0, blocks, out) }
    }

    fn dot_int8(&self, rows: &[u8], xs: &QuantizedRows, out: &mut [f32]) {
        check_int8(self.0, rows, xs, out);
        if vnni::available() {
            // SAFETY: the processor runs the kernels (checked); sizes checked above.
            unsafe { vnni::dot(self.0, rows, xs, out) }
        } else {
            q8::dot_rows(self.0, rows, xs, out);
        }
    }
}

/// Packed rows that do not fit their declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// The row width is not whole blocks of the format.
    PartialBlock {
        /// The format.
        format: BlockFormat,
        /// Values per row.
        cols: usize,
    },
    /// The data is not `rows` rows of the format.
    Length {
        /// The format.
        format: BlockFormat,
        /// Rows declared.
        rows: usize,
        /// Values per row.
        cols: usize,
        /// Bytes given.
        bytes: usize,
    },
    /// Parts of one matrix have different row widths.
    Widths {
        /// The first part's width.
        first: usize,
        /// The differing width.
        other: usize,
    },
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::PartialBlock { format, cols } => write!(
                f,
                "rows of {cols} values are not whole {format} blocks of {}",
                format.block_elems()
            ),
            PackError::Length {
                format,
                rows,
                cols,
                bytes,
            } => write!(
                f,
                "{bytes} bytes are not {rows} {format} rows of {cols} values"
            ),
            PackError::Widths { first, other } => write!(
                f,
                "the parts of one matrix have rows of {first} and {other} values"
            ),
        }
    }
}

impl std::error::Error for PackError {}

/// Rows of one block format, as stored: row `r` is bytes `r * row_bytes..`.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRows {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl PackedRows {
    /// `rows` rows of `cols` values in `format`, checking the sizes (never trusting them).
    pub fn new(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, PackError> {
        let row_bytes = format
            .row_bytes(cols)
            .ok_or(PackError::PartialBlock { format, cols })?;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(PackError::Length {
                format,
                rows,
                cols,
                bytes: data.len(),
            });
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
        })
    }

    /// The format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// The rows reordered: row `i` of the result is row `source(i)` of these (a permutation
    /// of whole rows, as llama.cpp's q/k row order is undone).
    ///
    /// # Panics
    /// When `source` gives a row out of range.
    pub fn reorder_rows(&self, source: impl Fn(usize) -> usize) -> Self {
        let mut data = Vec::with_capacity(self.data.len());
        for i in 0..self.rows {
            data.extend_from_slice(self.row(source(i)));
        }
        Self { data, ..*self }
    }
}

/// A `[rows, cols]` matrix stored as packed parts stacked by rows (fused projections whose
/// parts a file stores in different formats, as Q4_K_M files mix Q4_K and Q6_K).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    parts: Vec<PackedRows>,
    cols: usize,
}

impl PackedMatrix {
    /// The parts stacked in order; they must share the row width.
    pub fn new(parts: Vec<PackedRows>) -> Result<Self, PackError> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(PackError::Widths {
                first: cols,
                other: p.cols,
            });
        }
        Ok(Self { parts, cols })
    }

    /// Rows (outputs).
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// Values per row (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The parts.
    pub fn parts(&self) -> &[PackedRows] {
        &self.parts
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// Dequantises rows `from..to` into `out` (`(to - from) * cols` values).
    ///
    /// # Panics
    /// When the range is out of bounds or `out` has another length.
    pub fn dequantize_rows(&self, from: usize, to: usize, out: &mut [f32]) {
        assert!(from <= to && to <= self.rows() && out.len() == (to - from) * self.cols);
        let mut first = 0;
        let mut out = out;
        for part in &self.parts {
            let (lo, hi) = (from.max(first), to.min(first + part.rows));
            if lo < hi {
                let n = part.row_bytes();
                let bytes = &part.data[(lo - first) * n..(hi - first) * n];
                let (head, rest) = std::mem::take(&mut out).split_at_mut((hi - lo) * self.cols);
                part.format.kernels().dequantize(bytes, head);
                out = rest;
            }
            first += part.rows;
        }
    }

    /// Every value, `[rows, cols]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows() * self.cols];
        self.dequantize_rows(0, self.rows(), &mut out);
        out
    }

    /// `y = W x + b` for one activation row `x` (`[cols]`), `y`: `[rows]`, threaded over
    /// output rows on the decoding pool like [`crate::gemv`] (and with its weight hints).
    ///
    /// # Panics
    /// When `x`, `bias` or `y` do not fit the matrix.
    pub fn gemv(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        assert!(x.len() == self.cols && y.len() == self.rows());
        assert!(bias.is_none_or(|b| b.len() == y.len()));
        let mut first = 0;
        for part in &self.parts {
            let (out, b) = (
                &mut y[first..first + part.rows],
                bias.map(|b| &b[first..first + part.rows]),
            );
            part_gemv(part, x, b, out);
            first += part.rows;
        }
    }

    /// `Y = X W^T + b` for `xs` `[n, cols]` row-major: `[n, rows]`. Rows of `W` are
    /// dequantised a panel at a time (at most [`PANEL_BYTES`] of f32) and multiplied by the
    /// f32 GEMM ([`crate::gemm`]), so prefill runs at the dense kernel's speed plus one
    /// dequantisation of each weight.
    ///
    /// # Panics
    /// When `xs` is not whole rows of `cols` or `bias` is not `[rows]`.
    pub fn matmul(&self, xs: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        if xs.len() <= MULTI_VECTOR_ROWS * self.cols {
            return self.gemv_rows(xs, bias);
        }
        let panel = (PANEL_BYTES / 4 / self.cols.max(1)).max(16);
        self.matmul_in_panels(xs, bias, panel)
    }

    /// [`Self::matmul`] with panels of `panel` rows (at least 16).
    fn matmul_in_panels(&self, xs: &[f32], bias: Option<&[f32]>, panel: usize) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols);
        assert!(cols > 0 && xs.len().is_multiple_of(cols));
        assert!(bias.is_none_or(|b| b.len() == rows));
        let n = xs.len() / cols;
        let mut y = vec![0.0f32; n * rows];
        let panel = panel.max(16);
        let mut weights = vec![0.0f32; panel.min(rows) * cols];
        let mut from = 0;
        while from < rows {
            let to = (from + panel).min(rows);
            let w = &mut weights[..(to - from) * cols];
            w.par_chunks_mut(cols * 16)
                .enumerate()
                .for_each(|(i, chunk)| {
                    let r = from + 16 * i;
                    self.dequantize_rows(r, r + chunk.len() / cols, chunk);
                });
            let part = crate::gemm_new(w, xs, cols, bias.map(|b| &b[from..to]));
            if from == 0 && to == rows {
                return part;
            }
            for (dst, src) in y.chunks_exact_mut(rows).zip(part.chunks_exact(to - from)) {
                dst[from..to].copy_from_slice(src);
            }
            from = to;
        }
        y
    }
}

impl PackedMatrix {
    /// `Y = X W^T + b` for a few activation rows `xs` (`[n, cols]`): the multi-vector
    /// product of batched decoding. Each weight row is dequantised once (into a buffer the
    /// caches hold) and multiplied with every activation row, so a step of n sequences
    /// reads the weights once, not n times. Threaded over weight rows like [`Self::gemv`].
    ///
    /// # Panics
    /// When `xs` is not whole rows of `cols` or `bias` is not `[rows]`.
    pub fn gemv_rows(&self, xs: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols);
        assert!(cols > 0 && xs.len().is_multiple_of(cols));
        assert!(bias.is_none_or(|b| b.len() == rows));
        let n = xs.len() / cols;
        let mut y = vec![0.0f32; n * rows];
        let dst = SharedOut(y.as_mut_ptr());
        let mut first = 0;
        for part in &self.parts {
            let kernels = part.format.kernels();
            row_tasks(part.rows, 4, &|from, end| {
                let mut w = vec![0.0f32; 4 * cols];
                for r in (from..end).step_by(4) {
                    let k = 4.min(end - r);
                    let n = part.row_bytes();
                    let w = &mut w[..k * cols];
                    kernels.dequantize(&part.data[r * n..(r + k) * n], w);
                    crate::gemv::block_times(w, xs, cols, |a, s, dot| {
                        let o = first + r + a;
                        let b = bias.map_or(0.0, |b| b[o]);
                        // SAFETY: output (s, o) is written by the one task owning row r + a.
                        unsafe { *dst.ptr().add(s * rows + o) = dot + b };
                    });
                }
            });
            first += part.rows;
        }
        y
    }
}

impl PackedMatrix {
    /// `y = W x + b` for one activation row like [`Self::gemv`], with `x` quantised to
    /// int8 blocks ([`quantize_rows`]) and integer products ([`Self::gemv_quantized`]).
    ///
    /// # Panics
    /// When `x`, `bias` or `y` do not fit the matrix.
    pub fn gemv_int8(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        assert!(x.len() == self.cols);
        self.gemv_quantized(&quantize_rows(x, self.cols), bias, y);
    }

    /// `Y = X W^T + b` for a few activation rows `xs` (`[n, cols]`) like
    /// [`Self::gemv_rows`], with the rows quantised to int8 blocks ([`quantize_rows`]) and
    /// integer products ([`Self::gemv_quantized`]): `[n, rows]`.
    ///
    /// # Panics
    /// When `xs` is not whole rows of `cols` or `bias` is not `[rows]`.
    pub fn gemv_rows_int8(&self, xs: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let xs = quantize_rows(xs, self.cols);
        let mut ys = vec![0.0f32; xs.rows() * self.rows()];
        self.gemv_quantized(&xs, bias, &mut ys);
        ys
    }

    /// `ys = X W^T + b` (`[n, rows]`) for activation rows already quantised (one
    /// [`quantize_rows`] serves every matrix reading the same input, as q, k and v do).
    /// Each packed weight row is read once and multiplied with every activation row
    /// ([`BlockKernels::dot_int8`] on each task's rows at once), threaded over weight rows
    /// like [`Self::gemv_rows`] (and with [`Self::gemv`]'s weight hints). Row `s` of the
    /// result has the bits of the same product of row `s` alone.
    ///
    /// # Panics
    /// When `xs` does not have `cols` values per row, or `bias` or `ys` do not fit.
    pub fn gemv_quantized(&self, xs: &QuantizedRows, bias: Option<&[f32]>, ys: &mut [f32]) {
        let (rows, n) = (self.rows(), xs.rows());
        assert!(xs.cols() == self.cols && ys.len() == n * rows);
        assert!(bias.is_none_or(|b| b.len() == rows));
        let dst = SharedOut(ys.as_mut_ptr());
        let mut first = 0;
        for part in &self.parts {
            let kernels = part.format.kernels();
            part_rows(part, 4, &|from, to| {
                let (bytes, m) = (part.row_bytes(), to - from);
                let mut dots = vec![0.0f32; m * n];
                kernels.dot_int8(&part.data[from * bytes..to * bytes], xs, &mut dots);
                let at = first + from;
                for (s, dots) in dots.chunks_exact(m).enumerate() {
                    // SAFETY: outputs (s, at..at + m) are written by the one task owning
                    // rows at..at + m.
                    let y =
                        unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(s * rows + at), m) };
                    match bias {
                        Some(b) => {
                            for ((y, &dot), &b) in y.iter_mut().zip(dots).zip(&b[at..]) {
                                *y = dot + b;
                            }
                        }
                        None => y.copy_from_slice(dots),
                    }
                }
            });
            first += part.rows;
        }
    }
}

/// Most activation rows [`PackedMatrix::matmul`] multiplies row by row
/// ([`PackedMatrix::gemv_rows`]) before it dequantises panels for the GEMM.
pub const MULTI_VECTOR_ROWS: usize = 16;

/// Most bytes of f32 weights [`PackedMatrix::matmul`] dequantises at once.
pub const PANEL_BYTES: usize = 16 << 20;

/// Most output rows per packed GEMV task.
const MAX_ROWS_PER_TASK: usize = 128;

/// Runs `task(from, to)` on the decoding pool for tasks of whole rows covering `0..rows`:
/// about eight tasks per thread, each a multiple of `step` rows (but the last), of 4 to
/// [`MAX_ROWS_PER_TASK`].
fn row_tasks(rows: usize, step: usize, task: &(dyn Fn(usize, usize) + Sync)) {
    let tasks = 8 * rayon::current_num_threads();
    let per_task = rows
        .div_ceil(tasks)
        .next_multiple_of(step)
        .clamp(4, MAX_ROWS_PER_TASK);
    crate::pool::run(rows.div_ceil(per_task), &|t| {
        task(t * per_task, ((t + 1) * per_task).min(rows))
    });
}

/// Runs `rows(from, to)` over the rows of `part`, threaded like [`row_tasks`] with the
/// weight hints of [`crate::gemv`] (the rows' outputs are the caller's).
fn part_rows(part: &PackedRows, step: usize, rows: &(dyn Fn(usize, usize) + Sync)) {
    let next = crate::gemv::follow(part.data.as_ptr(), part.data.len());
    row_tasks(part.rows, step, rows);
    crate::gemv::request(next);
}

/// One part's GEMV: tasks of whole rows over the decoding pool.
fn part_gemv(part: &PackedRows, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let kernels = part.format.kernels();
    let dst = SharedOut(y.as_mut_ptr());
    part_rows(part, 1, &|from, to| {
        for r in from..to {
            let y = kernels.dot(part.row(r), x) + bias.map_or(0.0, |b| b[r]);
            // SAFETY: output r is written by the one task owning row r.
            unsafe { *dst.ptr().add(r) = y };
        }
    });
}

#[cfg(test)]
mod tests;
