//! Store write benchmark: random 4 KiB writes in batches (one virtqueue kick each) to a
//! container opened with O_DIRECT, overwriting the disk `--passes` times so the cleaner
//! has to work. Prints IOPS, metadata writes per guest write and write amplification.
//!
//! cargo run --release -p keel-backend --example store_bench -- [PATH] [SIZE_MIB] [BATCH] [PASSES] [WRITERS]

use keel_backend::store::{CleanerConfig, CleanerHandle, CreateOptions, Op, Store, StoreOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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

    let _ = std::fs::remove_file(&path);
    let geo = Store::create_path(&path, &CreateOptions::new(size_mib << 20))?;
    let opts = StoreOptions {
        writers,
        ..StoreOptions::default()
    };
    let store = Arc::new(Store::open_path(&path, opts.clone())?);
    let cleaner = CleanerHandle::spawn(store.clone(), CleanerConfig::default())?;
    let blocks = geo.capacity / 4096;
    let total_batches = blocks * passes / batch as u64;
    let per_writer = total_batches / writers as u64;
    println!(
        "container {} ({} MiB disk, {} MiB file), batch {batch}, {passes} passes, {writers} writer(s), O_DIRECT",
        path.display(),
        size_mib,
        geo.container_bytes() >> 20
    );
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let store = store.clone();
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(0x5eed + w as u64);
                let mut data = vec![0u8; batch * 4096];
                for b in 0..per_writer {
                    for (i, chunk) in data.chunks_mut(4096).enumerate() {
                        chunk[..8].copy_from_slice(&(b * batch as u64 + i as u64).to_le_bytes());
                        chunk[8] = w as u8;
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
        "free segments {} of {}, journal {} KiB in use",
        info.free_segments,
        info.data_segments,
        info.journal_used_bytes >> 10
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
