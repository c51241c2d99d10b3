//! Seeded crash tests of a live import at the store level. Each run begins an import from a
//! simulated source (blocks of data and holes) and interleaves what keeld does while one
//! runs: the copier's steps (`fill_absent` of the step's data blocks, then the cursor moved),
//! the guest's batches as the import queue sends them (whole blocks, a sector merged into a
//! block first brought in from the source, zero blocks for a discard), flushes, checkpoints
//! and cleaner steps, sometimes with an injected write failure; then pulls the plug and
//! recovers. After each recovery the disk as the import serves it (the container below the
//! cursor or where it maps a block, the source elsewhere) must equal the state after some
//! guest batch at or after the last completed flush, the cursor must not be behind the last
//! checkpoint's, and fsck must be clean. At the end the copy runs to the end and the
//! container alone, reopened, must hold the disk.
//!
//! `KEEL_IMPORT_STORE_SEED=<n>` replays one run; `KEEL_IMPORT_STORE_POINTS=<n>` sets how many.

use super::import_disk::{BLOCK, BLOCKS, DISK, STEP, crash_and_reopen, open, range, served};
use super::small_opts;
use crate::store::{Op, Store};
use crate::testing::{FaultyDevice, SplitMix};
use std::sync::Arc;

/// A source of `BLOCKS` blocks: a third holes, the rest distinct per-block data.
fn make_source(rng: &mut SplitMix) -> Vec<u8> {
    let mut source = vec![0u8; DISK];
    for (b, chunk) in source.chunks_mut(BLOCK).enumerate() {
        if rng.chance(1, 3) {
            continue;
        }
        let tag = rng.next_u64() | 1;
        for (i, word) in chunk.chunks_mut(8).enumerate() {
            word.copy_from_slice(&(tag ^ ((b as u64) << 32) ^ i as u64).to_le_bytes());
        }
    }
    source
}

fn hash(block: &[u8]) -> u64 {
    ((crc32c::crc32c(block) as u64) << 32) | crc32c::crc32c_append(0x5eed, block) as u64
}

fn hashes(image: &[u8]) -> Vec<u64> {
    image.chunks(BLOCK).map(hash).collect()
}

/// One copier step from `cursor`, as the copier does it: the step's data blocks written if
/// absent, then the cursor moved past the step.
fn copier_step(store: &Store, source: &[u8], cursor: u64) -> Result<u64, String> {
    let end = (cursor + STEP).min(BLOCKS);
    let blocks: Vec<(u64, &[u8])> = (cursor..end)
        .map(|lba| (lba, &source[range(lba)]))
        .filter(|(_, b)| b.iter().any(|x| *x != 0))
        .collect();
    if !blocks.is_empty() {
        store
            .fill_absent(1, &blocks)
            .map_err(|e| format!("fill_absent: {e}"))?;
    }
    store.advance_import(end);
    Ok(end)
}

/// One guest request as the import queue sends it to the store, applied to `model` (the
/// served disk). `Err` when the store failed it.
fn guest_request(
    store: &Store,
    source: &[u8],
    model: &mut [u8],
    rng: &mut SplitMix,
    tag: u64,
) -> Result<(), ()> {
    // Mostly a hot area, so writes meet the copier and each other.
    let span = if rng.chance(3, 4) { 32 } else { BLOCKS };
    let lba = rng.below(span);
    match rng.below(4) {
        // A sector: the block is brought in from the source first when it is still there.
        0 => {
            let cursor = store.import_cursor().unwrap_or(0);
            if lba >= cursor && !store.is_mapped(lba) {
                store
                    .fill_absent(0, &[(lba, &source[range(lba)])])
                    .map_err(|_| ())?;
            }
            let sector = rng.below(8) as usize * 512;
            let data = vec![(tag as u8) | 1; 512];
            let at = lba as usize * BLOCK + sector;
            model[at..at + 512].copy_from_slice(&data);
            store
                .write_batch(
                    0,
                    &[Op::Write {
                        offset: at as u64,
                        data: &data,
                    }],
                )
                .map_err(|_| ())
        }
        // A discard: zero blocks, written (unmapped they would read the source).
        1 => {
            let zeroes = vec![0u8; BLOCK];
            model[range(lba)].fill(0);
            store
                .write_batch(
                    0,
                    &[Op::Write {
                        offset: lba * BLOCK as u64,
                        data: &zeroes,
                    }],
                )
                .map_err(|_| ())
        }
        _ => {
            let blocks = (1 + rng.below(3)).min(BLOCKS - lba);
            let mut data = vec![0u8; blocks as usize * BLOCK];
            for (i, word) in data.chunks_mut(8).enumerate() {
                word.copy_from_slice(&(tag ^ (lba << 40) ^ i as u64).to_le_bytes());
            }
            let at = lba as usize * BLOCK;
            model[at..at + data.len()].copy_from_slice(&data);
            store
                .write_batch(
                    0,
                    &[Op::Write {
                        offset: at as u64,
                        data: &data,
                    }],
                )
                .map_err(|_| ())
        }
    }
}

/// Runs crash cycles for one seed; returns the crashes, or the first violation.
fn run(seed: u64) -> Result<u64, String> {
    let mut rng = SplitMix::new(seed);
    let opts = small_opts();
    let geo = opts.geometry().map_err(|e| e.to_string())?;
    let fresh = FaultyDevice::new(geo.container_bytes());
    Store::format(&fresh, &opts).map_err(|e| e.to_string())?;
    let mut dev = Arc::new(fresh);
    let source = make_source(&mut rng);
    open(&dev)?
        .begin_import(DISK as u64)
        .map_err(|e| format!("begin_import: {e}"))?;
    let mut model = source.clone();
    // The cursor the last completed checkpoint wrote: a recovery resumes at it or later.
    let mut durable_cursor = 0;
    let mut crashes = 0;
    for cycle in 0..4u64 {
        let store = open(&dev).map_err(|e| format!("cycle {cycle}: {e}"))?;
        let mut cursor = store.import_cursor().unwrap_or(BLOCKS);
        let mut model_hashes = hashes(&model);
        let mut allowed = vec![model_hashes.clone()];
        if rng.chance(1, 4) {
            dev.fail_writes_after(Some(rng.below(40)));
        }
        for step in 0..1 + rng.below(30) {
            let ok = match rng.below(12) {
                0..=4 => {
                    let tag = seed ^ (cycle << 48) ^ (step << 32);
                    let res = guest_request(&store, &source, &mut model, &mut rng, tag);
                    // A failed request may or may not have reached the disk.
                    model_hashes = hashes(&model);
                    allowed.push(model_hashes.clone());
                    res.is_ok()
                }
                5..=7 if cursor < BLOCKS => match copier_step(&store, &source, cursor) {
                    Ok(next) => {
                        cursor = next;
                        true
                    }
                    Err(_) => false,
                },
                8 => {
                    let ok = store.flush().is_ok();
                    if ok {
                        allowed = vec![model_hashes.clone()];
                    }
                    ok
                }
                9 => {
                    let ok = store.checkpoint().is_ok();
                    if ok {
                        allowed = vec![model_hashes.clone()];
                        durable_cursor = cursor;
                    }
                    ok
                }
                _ => store.clean_step().is_ok(),
            };
            if !ok {
                break;
            }
        }
        let (store, at) = crash_and_reopen(store, &mut dev, &mut rng, cycle)?;
        crashes += 1;
        let recovered = store
            .import_cursor()
            .ok_or_else(|| format!("{at}: the import is no longer marked running"))?;
        if recovered < durable_cursor {
            return Err(format!(
                "{at}: the cursor went back to {recovered}, behind the checkpointed {durable_cursor}"
            ));
        }
        let image = served(&store, &source).map_err(|e| format!("{at}: {e}"))?;
        let got = hashes(&image);
        if !allowed.contains(&got) {
            let flushed = &allowed[0];
            let bad: Vec<String> = (0..BLOCKS as usize)
                .filter(|b| flushed[*b] != got[*b])
                .take(8)
                .map(|b| {
                    let what = if got[b] == hash(&source[range(b as u64)]) {
                        "the source's"
                    } else {
                        "other"
                    };
                    format!("{b} ({what})")
                })
                .collect();
            return Err(format!(
                "{at}: the served disk matches none of the {} allowed states; blocks \
                 differing from the flushed one: {bad:?} (cursor {recovered})",
                allowed.len()
            ));
        }
        let report = store.fsck();
        if !report.is_clean() {
            return Err(format!("{at}: fsck: {:?}", report.problems));
        }
        model = image;
        durable_cursor = recovered;
    }
    // The copy runs to the end; the container alone then holds the disk.
    let store = open(&dev)?;
    let mut cursor = store.import_cursor().unwrap_or(BLOCKS);
    while cursor < BLOCKS {
        cursor = copier_step(&store, &source, cursor)?;
    }
    store
        .flush()
        .and_then(|()| store.finish_import())
        .map_err(|e| format!("finishing: {e}"))?;
    drop(store);
    let store = open(&dev)?;
    if !store.import_finished() || store.import_cursor().is_some() {
        return Err("the finished import is not recorded".into());
    }
    let mut image = vec![0u8; DISK];
    store
        .read(0, &mut image)
        .map_err(|e| format!("read: {e}"))?;
    if let Some(b) = (0..BLOCKS).find(|b| image[range(*b)] != model[range(*b)]) {
        return Err(format!(
            "after the import finished, block {b} differs from the disk"
        ));
    }
    let report = store.fsck();
    if !report.is_clean() {
        return Err(format!(
            "after the import finished: fsck: {:?}",
            report.problems
        ));
    }
    Ok(crashes)
}

#[test]
fn import_crash_points_recover_to_a_flushed_prefix_over_the_source() {
    let crashes = crate::store::tests::run_crash_points(
        "import crash run",
        ("KEEL_IMPORT_STORE_POINTS", "KEEL_IMPORT_STORE_SEED"),
        100,
        (0x696d_706f_0000, &[]),
        run,
    );
    eprintln!("{crashes} import crash points recovered");
}
