//! The machine's read bandwidth, the bound of memory-bound decoding.
//!
//! ```text
//! cargo run --release -p cake-kernels --example bandwidth
//! ```

fn main() {
    let bytes_per_second = cake_kernels::read_bandwidth(512 << 20, 5);
    println!("read bandwidth {:.1} GB/s", bytes_per_second / 1e9);
}
