//! Cipher benchmark: what sealing a batch of 4 KiB guest blocks costs on this CPU, against
//! copying the same bytes and against the AES alone (no XTS whitening), so the share of each
//! step of the store's write-path encryption shows without a disk or a client. Then the wall
//! time of one batch sealed on one thread against shared with the helper threads (what a
//! batch waits for on its serial path), alternating, to place the split's threshold.
//!
//! Sizes around the threshold: for n in 32 64 96 128 192 256 1024; do seal_bench $n 2000; done
//!
//! cargo run --release -p keel-backend --example seal_bench -- [BLOCKS_PER_BATCH] [BATCHES]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use keel_backend::store::seal::{Key, SealFields};
use std::hint::black_box;
use std::time::Instant;

const BLOCK: usize = 4096;

/// CPU time of this thread, in seconds.
fn cpu_secs() -> f64 {
    cpu_time::cpu_secs(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let per_batch: usize = args.first().map_or(Ok(32), |s| s.parse())?;
    let batches: usize = args.get(1).map_or(Ok(20_000), |s| s.parse())?;
    let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(73) ^ 0x5a).collect();
    let key = Key::from_bytes(&raw)?;
    let sealer = SealFields::new(&key, [7; 16]).unlock(Some(&key))?;
    let aes = aes::Aes256::new_from_slice(&raw[..32]).expect("32-byte key");

    // Guest blocks live in separate buffers, as a batch's requests do.
    let guest: Vec<Vec<u8>> = (0..per_batch)
        .map(|b| (0..BLOCK).map(|i| (i * 31 + b * 7) as u8).collect())
        .collect();
    let sources: Vec<&[u8]> = guest.iter().map(|g| &g[..]).collect();
    let mut dst = vec![0u8; per_batch * BLOCK];
    let blocks = (per_batch * batches) as f64;

    let report = |what: &str, secs: f64| {
        println!(
            "{what:<36} {:>8.0} CPU ns per 4 KiB block  {:>6.2} GB/s of CPU time",
            secs * 1e9 / blocks,
            blocks * BLOCK as f64 / secs / 1e9
        );
    };

    let t = cpu_secs();
    for _ in 0..batches {
        for (d, s) in dst.chunks_mut(BLOCK).zip(&sources) {
            d.copy_from_slice(s);
        }
        black_box(&mut dst);
    }
    report("copy (no cipher)", cpu_secs() - t);

    let t = cpu_secs();
    for _ in 0..batches {
        for (d, s) in dst.chunks_mut(BLOCK).zip(&sources) {
            d.copy_from_slice(s);
        }
        let (units, _) = dst.as_chunks_mut::<16>();
        aes.encrypt_blocks(Array::cast_slice_from_core_mut(units));
        black_box(&mut dst);
    }
    report("copy + AES alone (ECB)", cpu_secs() - t);

    let t = cpu_secs();
    for n in 0..batches {
        sealer.seal_from(&sources, &mut dst, (1000 + n as u64) * BLOCK as u64)?;
        black_box(&mut dst);
    }
    report("seal_from (XTS, PBA tweaks)", cpu_secs() - t);

    let t = cpu_secs();
    for n in 0..batches {
        let base = (1u128 << 64) | (n as u128 * 4099);
        sealer.seal_each_from(&sources, &mut dst, |i| base + i as u128 * 17)?;
        black_box(&mut dst);
    }
    report("seal_each_from (XTS, VBA tweaks)", cpu_secs() - t);

    let t = cpu_secs();
    for n in 0..batches {
        sealer.open(&mut dst, (1000 + n as u64) * BLOCK as u64)?;
        black_box(&mut dst);
    }
    report("open (XTS decrypt in place)", cpu_secs() - t);

    let t = cpu_secs();
    for n in 0..batches {
        for (i, b) in dst.chunks(BLOCK).enumerate() {
            black_box(crc32c::crc32c_append(n as u32 ^ i as u32, b));
        }
    }
    report("crc32c (for scale)", cpu_secs() - t);

    // Wall time of one batch, one thread against shared (from any size on), alternating
    // batch by batch, each after a pause as between a queue's batches (a fill's 4 MiB kicks
    // come every few milliseconds), so a helper is woken from sleep as it is in keeld.
    let one = SealFields::new(&key, [7; 16])
        .unlock(Some(&key))?
        .split_from(usize::MAX);
    let shared = SealFields::new(&key, [7; 16])
        .unlock(Some(&key))?
        .split_from(1);
    let pause = std::time::Duration::from_millis(2);
    let timed = (batches / 10).clamp(50, 1000);
    let mut walls: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for n in 0..timed {
        for (s, wall) in [&one, &shared].into_iter().zip(walls.iter_mut()) {
            std::thread::sleep(pause);
            let base = (1u128 << 64) | (n as u128 * 4099);
            let t = Instant::now();
            s.seal_each_from(&sources, &mut dst, |i| base + i as u128 * 17)?;
            wall.push(t.elapsed().as_secs_f64() * 1e6);
            black_box(&mut dst);
        }
    }
    for (what, wall) in ["one thread", "shared"].into_iter().zip(walls.iter_mut()) {
        wall.sort_by(f64::total_cmp);
        println!(
            "seal_each_from, {what:<10} {per_batch:>5} blocks: {:>8.1} us per batch (wall, median of {timed}; p90 {:.1})",
            wall[timed / 2],
            wall[timed * 9 / 10]
        );
    }
    Ok(())
}
