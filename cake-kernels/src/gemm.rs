//! The projections' matrix product over many tokens: `y = x W^T + b`, with `W` stored
//! `[out, in]` as the models keep it (the layout the decoding GEMV reads).
//!
//! On processors with AVX-512 the product runs its own kernel, built so that nothing but
//! the activations is ever repacked:
//! - a chunk of tokens (about 1.25 MiB) is packed once into panels of
//!   32 tokens, `[in][32]`, so that one input feature of 32 tokens is two
//!   vectors;
//! - each task takes 12 weight rows (contiguous in `W`, kept in L1 while the
//!   chunk's panels stream past them) and, per input feature, broadcasts each row's weight
//!   against the panel's two vectors: 24 accumulators, one fused multiply-add chain per
//!   output;
//! - so each output is `fma(w[k-1], x[k-1], .. fma(w[0], x[0], 0))`, summed in input order
//!   whatever the chunking and threading: the same bits for any number of tokens or
//!   threads, and the bits of the plain loop the tests compare with.
//!
//! Elsewhere it is the `gemm` crate's threaded product (what the CPU backend's own
//! `matmul` runs), whose sums are blocked differently.

/// `y[t, o] = sum_i x[t, i] w[o, i] + bias[o]` for `w`: `[out, in]`, `x`: `[tokens, in]`,
/// `y`: `[tokens, out]`, row-major, `in = inp`. With AVX-512, its own kernel (tiles of
/// weight rows over packed panels of tokens) sums each output as one fused multiply-add
/// chain in input order: the same bits for any number of tokens or threads. Elsewhere,
/// the `gemm` crate's threaded product.
///
/// # Panics
/// When the lengths do not fit those shapes (`inp` must be positive).
pub fn gemm(w: &[f32], x: &[f32], inp: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    assert!(inp > 0, "the input width must be positive");
    let (out, tokens) = (w.len() / inp, x.len() / inp);
    assert!(
        w.len() == out * inp && x.len() == tokens * inp && y.len() == tokens * out,
        "w: [out, in], x: [tokens, in], y: [tokens, out]"
    );
    assert!(bias.is_none_or(|b| b.len() == out), "one bias per output");
    if tokens == 0 || out == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the processor has AVX-512F; the shapes were checked above.
        return unsafe { avx512::gemm(w, x, inp, avx512::Output::Plain(bias), y.as_mut_ptr()) };
    }
    portable(w, x, inp, bias, y);
}

/// [`gemm()`] into a new `[tokens, out]` buffer (`tokens = x.len() / inp`), which the AVX-512
/// kernel writes once without zero-filling it first.
///
/// # Panics
/// As [`gemm()`].
pub fn gemm_new(w: &[f32], x: &[f32], inp: usize, bias: Option<&[f32]>) -> Vec<f32> {
    assert!(inp > 0, "the input width must be positive");
    let (out, tokens) = (w.len() / inp, x.len() / inp);
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && tokens > 0
        && out > 0
        && w.len() == out * inp
        && x.len() == tokens * inp
        && bias.is_none_or(|b| b.len() == out)
    {
        let mut y = Vec::with_capacity(tokens * out);
        // SAFETY: the processor has AVX-512F; the shapes were checked above; the kernel
        // writes each of the `tokens * out` entries of `y`'s allocation once, through raw
        // pointers, before its length is set.
        unsafe {
            avx512::gemm(w, x, inp, avx512::Output::Plain(bias), y.as_mut_ptr());
            y.set_len(tokens * out);
        }
        return y;
    }
    let mut y = vec![0.0; tokens * out];
    gemm(w, x, inp, bias, &mut y);
    y
}

/// SwiGLU's middle fused into its product: for `w` `[2 inter, in]` (the gate rows, then the
/// up rows) and `x` `[tokens, in]`, returns `silu(x W_gate^T) * (x W_up^T)`, `[tokens,
/// inter]`, with the bits of [`gemm()`] followed by [`crate::simd::silu_mul`] on each row, but
/// without writing the `[tokens, 2 inter]` product out and reading it back. `None` where
/// the AVX-512 kernel does not run (another processor, or `inter` not a multiple of 8,
/// whose tail `silu_mul` computes with the scalar `exp`).
///
/// # Panics
/// When the lengths do not fit those shapes (`inp` must be positive).
pub fn gemm_silu_mul(w: &[f32], x: &[f32], inp: usize) -> Option<Vec<f32>> {
    assert!(inp > 0, "the input width must be positive");
    let (out, tokens) = (w.len() / inp, x.len() / inp);
    assert!(
        w.len() == out * inp && x.len() == tokens * inp && out.is_multiple_of(2),
        "w: [2 inter, in], x: [tokens, in]"
    );
    let inter = out / 2;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && inter.is_multiple_of(8)
        && inter > 0
        && tokens > 0
    {
        let mut y = Vec::with_capacity(tokens * inter);
        // SAFETY: the processor has AVX-512F (and the AVX2/FMA of `silu_mul`'s bits); the
        // shapes were checked above; the kernel writes each of the `tokens * inter` entries
        // of `y`'s allocation once, through raw pointers, before its length is set.
        unsafe {
            avx512::gemm(w, x, inp, avx512::Output::SiluMul, y.as_mut_ptr());
            y.set_len(tokens * inter);
        }
        return Some(y);
    }
    None
}

/// The plain definition, one fused multiply-add chain per output in input order: what the
/// AVX-512 kernel computes bit for bit (the tests' reference).
#[cfg(test)]
fn reference(w: &[f32], x: &[f32], inp: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    let out = w.len() / inp;
    for (x, y) in x.chunks_exact(inp).zip(y.chunks_exact_mut(out)) {
        for (o, (w, y)) in w.chunks_exact(inp).zip(y.iter_mut()).enumerate() {
            let sum = w
                .iter()
                .zip(x)
                .fold(0.0f32, |acc, (&w, &x)| w.mul_add(x, acc));
            *y = sum + bias.map_or(0.0, |b| b[o]);
        }
    }
}

/// The `gemm` crate's threaded product, `W` read through transposed strides.
fn portable(w: &[f32], x: &[f32], inp: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    let (out, tokens) = (w.len() / inp, x.len() / inp);
    // SAFETY: dst [tokens, out] (row stride out), lhs x [tokens, in] (row stride in), rhs
    // W^T [in, out] read from W [out, in] (column stride in, row stride 1): all in bounds
    // of the slices checked by `gemm`.
    unsafe {
        ::gemm::gemm(
            tokens,
            out,
            inp,
            y.as_mut_ptr(),
            1,
            out as isize,
            false,
            x.as_ptr(),
            1,
            inp as isize,
            w.as_ptr(),
            inp as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            ::gemm::Parallelism::Rayon(0),
        );
    }
    if let Some(b) = bias {
        for y in y.chunks_exact_mut(out) {
            for (y, &b) in y.iter_mut().zip(b) {
                *y += b;
            }
        }
    }
}

/// The AVX-512 kernel and its packing (the tiled attention's score tiles use them too).
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use rayon::prelude::*;
    use std::arch::x86_64::{
        __m512, __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
        _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_shuffle_ps,
        _mm512_storeu_ps, _mm512_unpackhi_ps, _mm512_unpacklo_ps,
    };

    use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};

    use crate::attention::SharedOut;

    /// Tokens per packed panel: two AVX-512 vectors.
    pub(crate) const PANEL: usize = 32;
    /// Weight rows per tile: 12 x 2 accumulators, leaving registers for the panel's vectors.
    pub(crate) const TILE_ROWS: usize = 12;
    /// Bytes of activations packed per chunk: under two thirds of a 2 MiB L2, so that the
    /// panels stay there while every weight tile passes over them, and large enough that a
    /// 512-token prompt of 576 features is one chunk (its weights streamed once, not twice;
    /// measured against 768 KiB together with the attention's reused score tile: prefill
    /// 512 +2%, 2K +1%, alternated five times; alone, within the machine's noise).
    const CHUNK_BYTES: usize = 1280 << 10;

    /// Most output columns per task: four tiles, so that each token's outputs are stored as
    /// three whole cache lines of `y` (tiles of 12 columns each stored alone left a line
    /// half written by one tile and half by the next; measured then, the product without
    /// its stores ran 17% faster than with them).
    const TASK_COLUMNS: usize = 48;

    /// Output columns per task for `y_width` outputs: [`TASK_COLUMNS`] where that still
    /// gives every thread four tasks or more, else a narrower multiple of 16 (a line).
    fn task_columns(y_width: usize) -> usize {
        let threads = rayon::current_num_threads();
        [TASK_COLUMNS, 32]
            .into_iter()
            .find(|&c| y_width.div_ceil(c) >= 4 * threads)
            .unwrap_or(16)
    }

    /// What a product writes from its sums.
    #[derive(Clone, Copy)]
    pub(super) enum Output<'a> {
        /// `y[t, o] = sum + bias[o]`: `y` is `[tokens, out]`.
        Plain(Option<&'a [f32]>),
        /// The weight rows are `[gate (inter) | up (inter)]` and `y[t, o] = silu(gate) *
        /// up` (SwiGLU's middle, [`crate::simd::silu_mul`]'s bits): `y` is
        /// `[tokens, inter]`, `inter` a multiple of 8.
        SiluMul,
    }

    /// The AVX-512 product (module docs): chunks of tokens one after another; in each, the
    /// panels are packed in parallel, then tasks of [`TILE_ROWS`] weight rows each write their
    /// own output columns for every token of the chunk (with [`Output::SiluMul`], half the
    /// rows of a gate, half the matching rows of the up projection).
    ///
    /// # Safety
    /// The processor must support AVX-512F; the shapes are [`super::gemm`]'s, checked there,
    /// and `y` must point to the `[tokens, out]` (or `[tokens, inter]`) writable floats of
    /// `output` (written, never read).
    pub(super) unsafe fn gemm(w: &[f32], x: &[f32], inp: usize, output: Output<'_>, y: *mut f32) {
        let (out, tokens) = (w.len() / inp, x.len() / inp);
        let chunk = (CHUNK_BYTES / (4 * inp)).max(PANEL) / PANEL * PANEL;
        let chunk = chunk.min(tokens.next_multiple_of(PANEL));
        // [chunk / PANEL][in][PANEL], kept per thread between calls (no fresh pages to
        // fault in and zero for every product); packing writes every entry it reads.
        let mut packed = PACKED.take();
        if packed.len() < chunk * inp {
            packed = Panels::zeroed(chunk * inp);
        }
        let dst = SharedOut(y);
        let y_width = match output {
            Output::Plain(_) => out,
            Output::SiluMul => out / 2,
        };
        let columns = task_columns(y_width);
        for t0 in (0..tokens).step_by(chunk) {
            let rows = chunk.min(tokens - t0);
            let panels = rows.div_ceil(PANEL);
            packed[..panels * PANEL * inp]
                .par_chunks_mut(PANEL * inp)
                .enumerate()
                .for_each(|(p, panel)| {
                    let first = t0 + p * PANEL;
                    let last = (first + PANEL).min(tokens);
                    // SAFETY: the processor has AVX-512F (the caller's).
                    unsafe { pack(&x[first * inp..last * inp], inp, panel) };
                });
            let packed = &packed;
            (0..y_width.div_ceil(columns))
                .into_par_iter()
                .for_each(|block| {
                    let c0 = block * columns;
                    let width = columns.min(y_width - c0);
                    let mut biases = [0.0f32; TASK_COLUMNS];
                    if let Output::Plain(Some(b)) = output {
                        biases[..width].copy_from_slice(&b[c0..c0 + width]);
                    }
                    // Column j's sums for the panel's tokens (with SwiGLU, the gate's; the
                    // up projection's in `ups`).
                    let mut sums = [[0.0f32; PANEL]; TASK_COLUMNS];
                    let mut ups = [[0.0f32; PANEL]; TASK_COLUMNS];
                    for p in 0..panels {
                        let panel = &packed[p * PANEL * inp..(p + 1) * PANEL * inp];
                        // The tiles write through these; the stores then read the arrays.
                        let (sums_at, ups_at) = (
                            sums.as_mut_ptr().cast::<f32>(),
                            ups.as_mut_ptr().cast::<f32>(),
                        );
                        let first = t0 + p * PANEL;
                        let tokens_here = PANEL.min(tokens - first);
                        // SAFETY: AVX-512F (the caller's). Each tile reads `n` weight rows of
                        // `inp` from c0 + j (and as many from y_width + c0 + j when paired)
                        // and `panel`'s `inp` rows of PANEL, and writes rows j..j + n of
                        // `sums` (and `ups`), j + n <= width <= TASK_COLUMNS; the store
                        // writes tokens first.. < tokens, columns c0..c0 + width < y_width of
                        // y, which no other task writes.
                        unsafe {
                            let at = dst.ptr().add(first * y_width + c0);
                            // The next panel's output lines, owned before its stores come.
                            if p + 1 < panels {
                                let next = PANEL.min(tokens - first - PANEL);
                                for t in 0..next {
                                    for j in (0..width).step_by(16) {
                                        _mm_prefetch::<_MM_HINT_ET0>(
                                            at.add((PANEL + t) * y_width + j).cast(),
                                        );
                                    }
                                }
                            }
                            match output {
                                Output::Plain(_) => {
                                    for j in (0..width).step_by(TILE_ROWS) {
                                        let n = TILE_ROWS.min(width - j);
                                        let rows = &w[(c0 + j) * inp..(c0 + j + n) * inp];
                                        tile(n, inp, rows, panel, (sums_at.add(j * PANEL), PANEL));
                                    }
                                    store_columns(width, &sums, &biases, at, y_width, tokens_here)
                                }
                                Output::SiluMul => {
                                    for j in (0..width).step_by(TILE_ROWS / 2) {
                                        let n = (TILE_ROWS / 2).min(width - j);
                                        paired_tile(
                                            n,
                                            inp,
                                            &w[(c0 + j) * inp..],
                                            y_width * inp,
                                            panel,
                                            (sums_at.add(j * PANEL), PANEL),
                                            ups_at.add(j * PANEL),
                                        );
                                    }
                                    store_silu_mul(width, &sums, &ups, at, y_width, tokens_here)
                                }
                            }
                        };
                    }
                });
        }
        PACKED.set(packed);
    }

    thread_local! {
        /// The calling thread's packed panels, reused by its next product.
        static PACKED: std::cell::Cell<Panels> = const { std::cell::Cell::new(Panels(Vec::new())) };
    }

    /// One cache line of floats, so that a `Vec` of them starts on a line.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct Line([f32; 16]);

    /// A zeroed float buffer that starts on a cache line: a panel row is 128 bytes, so each
    /// of the micro-kernel's vector loads then reads one line, never two (a load split
    /// across lines costs the load port twice).
    #[derive(Default)]
    pub(crate) struct Panels(Vec<Line>);

    impl Panels {
        /// At least `len` zeroed floats.
        pub(crate) fn zeroed(len: usize) -> Self {
            Self(vec![Line([0.0; 16]); len.div_ceil(16)])
        }

        /// How many floats it holds.
        pub(crate) fn len(&self) -> usize {
            self.0.len() * 16
        }
    }

    impl std::ops::Deref for Panels {
        type Target = [f32];
        fn deref(&self) -> &[f32] {
            // SAFETY: `Line` is `repr(C)` of 16 floats with no padding (64 bytes), so the
            // lines are `len()` contiguous, initialised floats.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.len()) }
        }
    }

    impl std::ops::DerefMut for Panels {
        fn deref_mut(&mut self) -> &mut [f32] {
            // SAFETY: as in `deref`, borrowed uniquely.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.len()) }
        }
    }

    /// `dst[t * stride + j] = sums[j][t] + biases[j]` for `j < width`, `t < tokens`: a
    /// task's outputs for one panel, turned token by token by in-register 16 x 16
    /// transposes, one masked store per token and 16 columns. (Gathers did it at 12% of
    /// the product's time on a processor whose gathers are microcoded.)
    ///
    /// # Safety
    /// The processor must support AVX-512F; `width <= TASK_COLUMNS`; `dst` must hold
    /// `tokens` rows of `width` at row stride `stride`.
    #[target_feature(enable = "avx512f")]
    unsafe fn store_columns(
        width: usize,
        sums: &[[f32; PANEL]; TASK_COLUMNS],
        biases: &[f32; TASK_COLUMNS],
        dst: *mut f32,
        stride: usize,
        tokens: usize,
    ) {
        for j0 in (0..width).step_by(16) {
            let mask = lanes(width - j0);
            // SAFETY: j0 + 16 <= TASK_COLUMNS (a multiple of 16).
            let b = unsafe { _mm512_loadu_ps(biases.as_ptr().add(j0)) };
            for half in [0, 16] {
                for (t, v) in columns(sums, j0, half)
                    .into_iter()
                    .enumerate()
                    .take(tokens.saturating_sub(half))
                {
                    // SAFETY: columns j0.. in `mask` (< width) of row half + t < tokens.
                    unsafe {
                        let at = dst.add((half + t) * stride + j0);
                        _mm512_mask_storeu_ps(at, mask, _mm512_add_ps(v, b))
                    };
                }
            }
        }
    }

    /// The first `n` lanes (all sixteen for `n >= 16`).
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 { !0 } else { (1 << n) - 1 }
    }

    /// Rows `first..first + 16` of `sums` at tokens `half..half + 16`, as one vector per
    /// token: the 16 x 16 transpose of the rows' halves.
    #[target_feature(enable = "avx512f")]
    fn columns(sums: &[[f32; PANEL]; TASK_COLUMNS], first: usize, half: usize) -> [__m512; 16] {
        // SAFETY: rows first.. first + 16 <= TASK_COLUMNS hold PANEL = half + 16 floats.
        transpose(std::array::from_fn(|r| unsafe {
            _mm512_loadu_ps(sums[first + r].as_ptr().add(half))
        }))
    }

    /// Packs `rows <= PANEL` tokens `x` (`[rows, in]`) into `panel` `[in][PANEL]`, tokens past
    /// `rows` zero: the plain loop.
    pub(super) fn pack_plain(x: &[f32], inp: usize, panel: &mut [f32]) {
        let rows = x.len() / inp;
        for (i, column) in panel.chunks_exact_mut(PANEL).enumerate() {
            for (t, v) in column.iter_mut().enumerate() {
                *v = if t < rows { x[t * inp + i] } else { 0.0 };
            }
        }
    }

    /// [`pack_plain`] of a full panel by 16 x 16 blocks transposed in registers (a tail
    /// panel and the features past the last whole block the plain way).
    ///
    /// # Safety
    /// The processor must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn pack(x: &[f32], inp: usize, panel: &mut [f32]) {
        if x.len() < PANEL * inp {
            return pack_plain(x, inp, panel);
        }
        assert!(panel.len() >= inp * PANEL, "the panel holds [in][PANEL]");
        let blocks = inp / 16 * 16;
        for half in [0, 16] {
            for i0 in (0..blocks).step_by(16) {
                // SAFETY: rows half..half+16 of x, features i0..i0+16 < inp.
                let rows = std::array::from_fn(|t| unsafe {
                    _mm512_loadu_ps(x.as_ptr().add((half + t) * inp + i0))
                });
                for (j, column) in transpose(rows).into_iter().enumerate() {
                    // SAFETY: feature i0 + j < inp, tokens half..half+16 of the panel.
                    unsafe {
                        _mm512_storeu_ps(panel.as_mut_ptr().add((i0 + j) * PANEL + half), column)
                    };
                }
            }
        }
        for i in blocks..inp {
            for t in 0..PANEL {
                panel[i * PANEL + t] = x[t * inp + i];
            }
        }
    }

    /// The 16 x 16 transpose of `r` (row `t` = `r[t]`): four rounds of shuffles, 32-bit
    /// pairs, then 64-bit pairs within 128-bit lanes, then lanes twice.
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        // t[2p], t[2p+1]: rows 2p and 2p+1 interleaved (elements 0,1 and 2,3 of each lane).
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // u[4g + c], lane L: column 4L + c of rows 4g..4g+4.
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, c) = (i / 4, i % 4);
            let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
            if c % 2 == 0 {
                _mm512_shuffle_ps::<0x44>(a, b)
            } else {
                _mm512_shuffle_ps::<0xEE>(a, b)
            }
        });
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            // Lanes of rows 0..8 and 8..16: [A0, A2, B0, B2], [A1, A3, B1, B3] and likewise
            // for C, D, where A, B, C, D = u[c], u[4 + c], u[8 + c], u[12 + c].
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
            let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
            out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
            out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
            out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
        }
        out
    }

    /// `out[r * stride + t] = sum_i weights[r, i] panel[i][t]` for the `width` rows of
    /// `weights` and the panel's [`PANEL`] tokens `t`.
    ///
    /// # Safety
    /// The processor must support AVX-512F; `weights` must hold `width <= TILE_ROWS` rows
    /// of `inp`, `panel` `inp` rows of [`PANEL`], and `out` `width` rows of [`PANEL`] at
    /// row stride `stride`.
    pub(crate) unsafe fn tile(
        width: usize,
        inp: usize,
        weights: &[f32],
        panel: &[f32],
        (out, stride): (*mut f32, usize),
    ) {
        debug_assert!(weights.len() >= width * inp && panel.len() >= inp * PANEL);
        let (w, x) = (weights.as_ptr(), panel.as_ptr());
        // SAFETY: the caller's.
        unsafe {
            match width {
                1 => rows::<1, false>(inp, w, x, (out, out), stride, 0),
                2 => rows::<2, false>(inp, w, x, (out, out), stride, 0),
                3 => rows::<3, false>(inp, w, x, (out, out), stride, 0),
                4 => rows::<4, false>(inp, w, x, (out, out), stride, 0),
                5 => rows::<5, false>(inp, w, x, (out, out), stride, 0),
                6 => rows::<6, false>(inp, w, x, (out, out), stride, 0),
                7 => rows::<7, false>(inp, w, x, (out, out), stride, 0),
                8 => rows::<8, false>(inp, w, x, (out, out), stride, 0),
                9 => rows::<9, false>(inp, w, x, (out, out), stride, 0),
                10 => rows::<10, false>(inp, w, x, (out, out), stride, 0),
                11 => rows::<11, false>(inp, w, x, (out, out), stride, 0),
                _ => rows::<TILE_ROWS, false>(inp, w, x, (out, out), stride, 0),
            }
        }
    }

    /// [`tile`] over `width <= TILE_ROWS / 2` rows of `weights` and the `width` rows
    /// `second` floats further on (a gate's rows and the up projection's matching ones): the
    /// sums of the first rows in `out`'s rows `0..width`, the others in `up`'s (same row
    /// stride).
    ///
    /// # Safety
    /// As [`tile`], for the `2 width` rows read and both outputs written.
    unsafe fn paired_tile(
        width: usize,
        inp: usize,
        weights: &[f32],
        second: usize,
        panel: &[f32],
        (out, stride): (*mut f32, usize),
        up: *mut f32,
    ) {
        debug_assert!(weights.len() >= second + width * inp && panel.len() >= inp * PANEL);
        let (w, x) = (weights.as_ptr(), panel.as_ptr());
        // SAFETY: the caller's.
        unsafe {
            match width {
                1 => rows::<2, true>(inp, w, x, (out, up), stride, second),
                2 => rows::<4, true>(inp, w, x, (out, up), stride, second),
                3 => rows::<6, true>(inp, w, x, (out, up), stride, second),
                4 => rows::<8, true>(inp, w, x, (out, up), stride, second),
                5 => rows::<10, true>(inp, w, x, (out, up), stride, second),
                _ => rows::<TILE_ROWS, true>(inp, w, x, (out, up), stride, second),
            }
        }
    }

    /// `dst[t * stride + j] = silu(gates[j][t]) * ups[j][t]` for `j < width`, `t <
    /// tokens` ([`paired_tile`]'s sums), with the operations of
    /// [`crate::simd::silu_mul`]'s vector body, lane by lane.
    ///
    /// # Safety
    /// The processor must support AVX-512F, AVX2 and FMA; `width <= TASK_COLUMNS`; `dst`
    /// must hold `tokens` rows of `width` at row stride `stride`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn store_silu_mul(
        width: usize,
        gates: &[[f32; PANEL]; TASK_COLUMNS],
        ups: &[[f32; PANEL]; TASK_COLUMNS],
        dst: *mut f32,
        stride: usize,
        tokens: usize,
    ) {
        for j0 in (0..width).step_by(16) {
            let mask = lanes(width - j0);
            for half in [0, 16] {
                let gate = columns(gates, j0, half);
                let up = columns(ups, j0, half);
                for t in 0..tokens.saturating_sub(half).min(16) {
                    let v = crate::simd::silu_mul16(gate[t], up[t]);
                    // SAFETY: columns j0.. in `mask` (< width) of row half + t < tokens.
                    unsafe { _mm512_mask_storeu_ps(dst.add((half + t) * stride + j0), mask, v) };
                }
            }
        }
    }

    /// [`tile`] (or, `PAIRED`, [`paired_tile`] with its rows from `R / 2` on `second`
    /// floats further) for `R` rows, the accumulators in registers: per input feature, two
    /// vectors of the panel and one broadcast weight per row.
    ///
    /// # Safety
    /// As [`tile`], with `width = R` (or as [`paired_tile`], with `width = R / 2`).
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, const PAIRED: bool>(
        inp: usize,
        w: *const f32,
        x: *const f32,
        (out, up): (*mut f32, *mut f32),
        stride: usize,
        second: usize,
    ) {
        let mut acc: [[__m512; 2]; R] = [[_mm512_setzero_ps(); 2]; R];
        // Row r's weights start `offsets[r]` floats into `w`.
        let offsets: [usize; R] = std::array::from_fn(|r| {
            if PAIRED && r >= R / 2 {
                second + (r - R / 2) * inp
            } else {
                r * inp
            }
        });
        // Features `i..i + N`: the row addresses are formed once for the N features, then
        // reached by constant displacements. One feature per step took about 12 address
        // instructions beside its 24 multiply-adds; four per step take about 11 for 96. Two
        // or eight per step compiled to slower loops (measured: about 56% and 78% of four's
        // rate).
        #[inline(always)]
        unsafe fn step<const R: usize, const N: usize>(
            acc: &mut [[__m512; 2]; R],
            w: *const f32,
            x: *const f32,
            offsets: &[usize; R],
        ) {
            for u in 0..N {
                // SAFETY: the caller's: features u < N of the panel rows from `x` and of
                // the weight rows from `w`.
                unsafe {
                    let lo = _mm512_loadu_ps(x.add(u * PANEL));
                    let hi = _mm512_loadu_ps(x.add(u * PANEL + 16));
                    for (acc, &at) in acc.iter_mut().zip(offsets) {
                        let a = _mm512_set1_ps(*w.add(at + u));
                        acc[0] = _mm512_fmadd_ps(a, lo, acc[0]);
                        acc[1] = _mm512_fmadd_ps(a, hi, acc[1]);
                    }
                }
            }
        }
        const UNROLL: usize = 4;
        let whole = inp / UNROLL * UNROLL;
        for i in (0..whole).step_by(UNROLL) {
            // SAFETY: features i..i + UNROLL <= inp of the panel and of each weight row.
            unsafe { step::<R, UNROLL>(&mut acc, w.add(i), x.add(i * PANEL), &offsets) };
        }
        for i in whole..inp {
            // SAFETY: feature i < inp of the panel and of each weight row.
            unsafe { step::<R, 1>(&mut acc, w.add(i), x.add(i * PANEL), &offsets) };
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = if PAIRED && r >= R / 2 {
                // SAFETY: the up rows' output holds R / 2 rows (the caller's).
                unsafe { up.add((r - R / 2) * stride) }
            } else {
                // SAFETY: `out` holds the first R (or R / 2) rows (the caller's).
                unsafe { out.add(r * stride) }
            };
            // SAFETY: each row holds PANEL = 32 floats (the caller's).
            unsafe {
                _mm512_storeu_ps(at, acc[0]);
                _mm512_storeu_ps(at.add(16), acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with varied low bits.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        crate::testing::pseudo_random(n, u64::from(seed).wrapping_mul(2_654_435_761))
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn packing_by_blocks_equals_the_plain_packing() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        for (rows, inp) in [(32, 16), (32, 37), (32, 576), (7, 40), (32, 5)] {
            let x = values(rows * inp, 4);
            let (mut want, mut got) = (vec![1.0; inp * 32], vec![2.0; inp * 32]);
            avx512::pack_plain(&x, inp, &mut want);
            // SAFETY: the processor has AVX-512F (checked above).
            unsafe { avx512::pack(&x, inp, &mut got) };
            assert_eq!(got, want, "{rows} tokens of {inp}");
        }
    }

    #[test]
    fn fused_silu_mul_gives_the_bits_of_the_product_then_silu_mul() {
        // Token counts around the panel, intermediate widths around the half tile (6).
        for (tokens, inter, inp) in [
            (1, 8, 3),
            (2, 8, 16),
            (33, 16, 64),
            (70, 24, 100),
            (40, 64, 576),
            (35, 104, 24),
            (50, 264, 16),
        ] {
            let w = values(2 * inter * inp, 5);
            let x = values(tokens * inp, 6);
            let Some(got) = gemm_silu_mul(&w, &x, inp) else {
                continue; // no AVX-512 here
            };
            let mut product = vec![0.0; tokens * 2 * inter];
            gemm(&w, &x, inp, None, &mut product);
            let mut want = vec![0.0; tokens * inter];
            for (row, dst) in product
                .chunks_exact(2 * inter)
                .zip(want.chunks_exact_mut(inter))
            {
                let (gate, up) = row.split_at(inter);
                crate::simd::silu_mul(gate, up, dst);
            }
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{tokens}x{inter}x{inp}"
            );
        }
        // Widths whose `silu_mul` tail is scalar are left to the two-step path.
        assert!(gemm_silu_mul(&values(2 * 5 * 4, 1), &values(8, 2), 4).is_none());
    }

    #[test]
    fn gemm_by_hand() {
        // w: [2, 3], x: [2, 3]
        let w = [1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        let x = [1.0, 1.0, 1.0, 2.0, 0.0, -1.0];
        let mut y = [0.0; 4];
        gemm(&w, &x, 3, Some(&[10.0, 20.0]), &mut y);
        assert_eq!(y, [16.0, 19.5, 9.0, 18.0]);
    }

    #[test]
    fn gemm_matches_the_reference_at_every_edge() {
        // Token counts around the panel and chunk sizes, widths around the tile's rows.
        let avx512 = cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx512f");
        for (tokens, out, inp) in [
            (1, 1, 1),
            (2, 5, 7),
            (31, 12, 16),
            (33, 13, 64),
            (64, 25, 9),
            (70, 11, 576),
            (1100, 30, 300), // two chunks of 1.25 MiB, the second a partial panel
            // Several tasks of 16, 32 and 48 columns, the last one partial.
            (40, 100, 20),
            (50, 500, 20),
        ] {
            let w = values(out * inp, 1);
            let x = values(tokens * inp, 2);
            let bias = values(out, 3);
            let mut want = vec![0.0; tokens * out];
            reference(&w, &x, inp, Some(&bias), &mut want);
            let mut got = vec![f32::NAN; tokens * out];
            gemm(&w, &x, inp, Some(&bias), &mut got);
            let fresh = gemm_new(&w, &x, inp, Some(&bias));
            assert_eq!(
                fresh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "gemm_new {tokens}x{out}x{inp}"
            );
            for (g, e) in got.iter().zip(&want) {
                if avx512 {
                    assert_eq!(g.to_bits(), e.to_bits(), "{tokens}x{out}x{inp}");
                } else {
                    assert!((g - e).abs() <= 1e-5 * inp as f32, "{tokens}x{out}x{inp}");
                }
            }
        }
    }
}
