//! Store write benchmark: random 4 KiB writes in batches (one virtqueue kick each) to a
//! container opened with O_DIRECT, overwriting the disk `--passes` times so the cleaner
//! has to work. Prints IOPS, metadata writes per guest write and write amplification.
//!
//! With ENCRYPTED = 1 the container is encrypted (AES-256-XTS, a fixed benchmark key); the
//! process's CPU time per guest write is printed too, as the cost of the cipher shows there
//! even when other work on the machine moves the IOPS.
//!
//! COMPRESSION (none, lz4 or zstd; none by default) makes a compressed container. DATA says
//! what the writes hold: `counter` (the default: the block's number, then zeroes, which
//! compresses to almost nothing) or `random` (noise from a 64 MiB pool of distinct blocks,
//! which does not compress: the cost of trying). Compare the CPU time per guest write.
//!
//! cargo run --release -p keel-backend --example store_bench -- [PATH] [SIZE_MIB] [BATCH] [PASSES] [WRITERS] [ENCRYPTED] [COMPRESSION] [DATA]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use keel_backend::store::compress::Codec;
use keel_backend::store::seal::Key;
use keel_backend::store::{CleanerConfig, CleanerHandle, CreateOptions, Op, Store, StoreOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Bytes of distinct noise the random writes draw from.
const POOL_BYTES: usize = 64 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = PathBuf::from(
        args.first()
            .map_or("/var/tmp/keel-bench.keel", |s| s.as_str()),
    );
    let size_mib: u64 = args.get(1).map_or(Ok(1024), |s| s.parse())?;
    let batch: usize = args.get(2).map_or(Ok(32), |s| s.parse())?;
    let passes: u64 = args.get(3).map_or(Ok(2), |s| s.parse())?;
    let writers: usize = args.get(4).map_or(Ok(1), |s| s.parse())?;
    let encrypted = args.get(5).is_some_and(|s| s == "1");
    let compression = Codec::parse(args.get(6).map_or("none", |s| s.as_str()))?;
    let random = match args.get(7).map_or("counter", |s| s.as_str()) {
        "counter" => false,
        "random" => true,
        other => return Err(format!("unknown data {other:?} (use counter or random)").into()),
    };
    // Made before the clock starts: each write copies the next blocks of it.
    let pool: Vec<u8> = if random {
        let mut rng = fastrand::Rng::with_seed(0xda7a);
        (0..POOL_BYTES).map(|_| rng.u8(..)).collect()
    } else {
        Vec::new()
    };
    let key = encrypted
        .then(|| {
            let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(113) ^ 0x3c).collect();
            Key::from_bytes(&raw)
        })
        .transpose()?;

    let _ = std::fs::remove_file(&path);
    let create = CreateOptions {
        encryption: key.clone(),
        compression,
        ..CreateOptions::new(size_mib << 20)
    };
    let geo = Store::create_path(&path, &create)?;
    let opts = StoreOptions {
        writers,
        key,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open_path(&path, opts.clone())?);
    let cleaner = CleanerHandle::spawn(store.clone(), CleanerConfig::default())?;
    let blocks = geo.capacity / 4096;
    let total_batches = blocks * passes / batch as u64;
    let per_writer = total_batches / writers as u64;
    println!(
        "container {} ({} MiB disk, {} MiB file), batch {batch}, {passes} passes, {writers} writer(s), compression {}, {} data, O_DIRECT",
        path.display(),
        size_mib,
        geo.container_bytes() >> 20,
        Codec::name_of(compression),
        if random { "random" } else { "counter" }
    );
    let t0 = Instant::now();
    let cpu0 = cpu_secs();
    std::thread::scope(|s| {
        for w in 0..writers {
            let store = store.clone();
            let pool = &pool;
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(0x5eed + w as u64);
                let mut data = vec![0u8; batch * 4096];
                for b in 0..per_writer {
                    for (i, chunk) in data.chunks_mut(4096).enumerate() {
                        let n = b * batch as u64 + i as u64;
                        if random {
                            // Writers take turns through the pool.
                            let k = (n * writers as u64 + w as u64) as usize;
                            let at = (k % (POOL_BYTES / 4096)) * 4096;
                            chunk.copy_from_slice(&pool[at..at + 4096]);
                        } else {
                            chunk[..8].copy_from_slice(&n.to_le_bytes());
                            chunk[8] = w as u8;
                        }
                    }
                    let offs: Vec<u64> = (0..batch).map(|_| rng.u64(0..blocks) * 4096).collect();
                    let ops: Vec<Op<'_>> = offs
                        .iter()
                        .zip(data.chunks(4096))
                        .map(|(o, d)| Op::Write {
                            offset: *o,
                            data: d,
                        })
                        .collect();
                    if let Err(e) = store.write_batch(w, &ops) {
                        eprintln!("writer {w}: {e}");
                        return;
                    }
                    if b % 64 == 63 {
                        let _ = store.flush();
                    }
                }
            });
        }
    });
    store.flush()?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    drop(cleaner);
    let st = store.stats();
    println!(
        "wrote {} guest blocks in {:.2} s: {:.0} IOPS, {:.1} MiB/s",
        st.guest_writes,
        secs,
        st.guest_writes as f64 / secs,
        st.guest_write_bytes as f64 / secs / (1 << 20) as f64
    );
    println!(
        "process CPU time {cpu:.2} s: {:.2} us per guest write{}",
        cpu * 1e6 / st.guest_writes.max(1) as f64,
        if encrypted { " (encrypted)" } else { "" }
    );
    println!(
        "metadata writes per guest write: {:.4} (journal {}, checkpoint {} in {} checkpoints)",
        st.metadata_writes_per_guest_write(),
        st.journal_writes,
        st.checkpoint_writes,
        st.checkpoints
    );
    println!(
        "write amplification: {:.3} (data {} MiB, journal {} MiB, checkpoints {} MiB, cleaner {} MiB; guest {} MiB)",
        st.write_amplification(),
        st.data_write_bytes >> 20,
        st.journal_write_bytes >> 20,
        st.checkpoint_write_bytes >> 20,
        st.cleaner_write_bytes >> 20,
        st.guest_write_bytes >> 20
    );
    println!(
        "cleaner: {} segments cleaned, {} blocks moved",
        st.segments_cleaned, st.cleaner_moves
    );
    let info = store.info();
    println!(
        "free segments {} of {}, journal {} KiB in use, data mapped / stored {:.2}",
        info.free_segments,
        info.data_segments,
        info.journal_used_bytes >> 10,
        info.compression_ratio
    );
    drop(store);
    let t1 = Instant::now();
    let store = Store::open_path(&path, opts)?;
    let r = store.recovery_report().clone();
    println!(
        "reopen: {:.1} ms, {} journal records replayed ({})",
        t1.elapsed().as_secs_f64() * 1000.0,
        r.records_replayed,
        r.stopped_because
    );
    let t2 = Instant::now();
    let f = store.fsck();
    println!(
        "fsck: {} problems, {} data blocks verified in {:.2} s",
        f.problems.len(),
        f.data_blocks_verified,
        t2.elapsed().as_secs_f64()
    );
    drop(store);
    std::fs::remove_file(&path)?;
    Ok(())
}

/// CPU time of the whole process (every writer, the cleaner, the checkpoints), in seconds.
fn cpu_secs() -> f64 {
    cpu_time::cpu_secs(libc::CLOCK_PROCESS_CPUTIME_ID)
}
