//! Helpers shared by Keel's whole-system tests and benchmarks.

pub mod bench;
pub mod bench_args;
pub mod campaign;
pub mod ceph;
pub mod client;
pub mod disk_dir;
pub mod keeld;
pub mod qcow2;
pub mod raw_frontend;

/// Deterministic pseudo-random bytes (xorshift) for data that must read back exactly.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
