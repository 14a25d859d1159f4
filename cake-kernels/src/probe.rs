//! Read-bandwidth probes: the bound a memory-bound decoding step cannot beat.

use crate::simd;

/// The machine's read bandwidth in bytes per second: the best of `rounds` passes of all
/// threads summing a `bytes`-sized buffer (far larger than the caches), the bound a
/// memory-bound decoding step cannot beat. One probe of a [`BandwidthProbe`].
pub fn read_bandwidth(bytes: usize, rounds: usize) -> f64 {
    BandwidthProbe::new(bytes).measure(rounds)
}

/// A read-bandwidth probe whose buffer is allocated (and its pages touched) once, so that
/// it can sample the bandwidth many times during a benchmark: on a shared machine the
/// bandwidth moves between phases (one 2-core EPYC read 35 GB/s in most runs and 55-65 in
/// some), so one probe before a run is not the bandwidth its decoding steps saw.
pub struct BandwidthProbe {
    data: Vec<f32>,
}

impl BandwidthProbe {
    /// A probe over `bytes` (at least 256 KiB) of memory.
    pub fn new(bytes: usize) -> Self {
        Self {
            data: vec![1.0f32; (bytes / 4).max(1 << 16)],
        }
    }

    /// Bytes per second: the best of `rounds` passes of all threads over the buffer.
    pub fn measure(&self, rounds: usize) -> f64 {
        use rayon::prelude::*;
        let data = &self.data;
        let chunk = data.len().div_ceil(rayon::current_num_threads().max(1) * 4);
        let mut best = f64::INFINITY;
        let mut checksum = 0.0f32;
        for _ in 0..rounds.max(1) {
            let start = std::time::Instant::now();
            checksum += data.par_chunks(chunk).map(|c| simd::dot(c, c)).sum::<f32>();
            best = best.min(start.elapsed().as_secs_f64());
        }
        std::hint::black_box(checksum);
        (data.len() * 4) as f64 / best
    }
}
