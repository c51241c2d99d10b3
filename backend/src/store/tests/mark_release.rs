//! Emptied data segments released by a durable flush mark (`log::mark_release`): reused
//! before any checkpoint, they survive a crash at every point of the release and after new
//! data landed in them; a mark not yet durable releases nothing; a container without
//! `INCOMPAT_MARKED_REPLAY` releases only by checkpoint.

use super::{new_store, noise, small_opts, store_opts};
use crate::store::CreateOptions;
use crate::store::log::superblock::INCOMPAT_MARKED_REPLAY;
use crate::store::{Op, Store};
use crate::testing::{CrashMode, FaultyDevice, SplitMix};
use std::sync::Arc;

/// LBAs the scenario writes (the small container has 256).
const LBAS: u64 = 128;
/// Blocks per batch: a segment's worth, so overwriting one batch's LBAs empties a segment.
const BATCH: u64 = 16;

/// The small container with a journal long enough that no checkpoint comes between the
/// records that named the freed segment's old blocks and the crash.
fn opts() -> CreateOptions {
    CreateOptions {
        journal_bytes: Some(2 << 20),
        ..small_opts()
    }
}

fn block(lba: u64, version: u32) -> Vec<u8> {
    noise(4096, lba << 32 | u64::from(version))
}

/// What the disk must read after each batch: the version of every LBA (0: never written).
type Model = Vec<u32>;

/// One batch of `BATCH` blocks from `first`, all at `version`.
fn write(s: &Store, model: &mut Model, first: u64, version: u32) -> crate::store::Result<()> {
    let data: Vec<Vec<u8>> = (first..first + BATCH).map(|l| block(l, version)).collect();
    let ops: Vec<Op<'_>> = (first..first + BATCH)
        .zip(&data)
        .map(|(l, d)| Op::Write {
            offset: l * 4096,
            data: d,
        })
        .collect();
    s.write_batch(0, &ops)?;
    for l in first..first + BATCH {
        model[l as usize] = version;
    }
    Ok(())
}

/// The segment holding `lba`'s block.
fn segment_of(s: &Store, lba: u64) -> u64 {
    let pba = s.read_lock(&s.state).maps.lookup(lba).unwrap().1.pba;
    s.geo.segment_of(crate::store::compress::block_of(pba))
}

/// What a run did: the model after every batch, and the first of them a flush covered last.
struct Run {
    states: Vec<Model>,
    flushed: usize,
    /// The segment the first mark release freed, and whether new data landed in it.
    freed: Option<u64>,
    reused: bool,
}

/// Fills the disk's working set, empties one segment, releases it by a mark, then writes on
/// (flushing now and then, so the writers release further segments by marks themselves)
/// until new data has landed in it, and some more. Stops at the first error (an injected
/// fault), leaving the run as it was.
fn scenario(s: &Store) -> Run {
    let mut model = vec![0u32; LBAS as usize];
    let mut run = Run {
        states: vec![model.clone()],
        flushed: 0,
        freed: None,
        reused: false,
    };
    let mut version = 1;
    let mut step = |s: &Store, run: &mut Run, first: u64, flush: bool| -> bool {
        if write(s, &mut model, first, version).is_err() {
            return false;
        }
        version += 1;
        run.states.push(model.clone());
        if flush {
            if s.flush().is_err() {
                return false;
            }
            run.flushed = run.states.len() - 1;
        }
        true
    };
    for first in (0..LBAS).step_by(BATCH as usize) {
        if !step(s, &mut run, first, false) {
            return run;
        }
    }
    let victim = segment_of(s, 0);
    // Overwritten whole: the first batch's segment is empty, not yet flushed.
    if !step(s, &mut run, 0, false) {
        return run;
    }
    match s.release_by_mark() {
        Ok(n) if n > 0 => run.freed = Some(victim),
        _ => return run,
    }
    let mut after = 0;
    for i in 1..400u64 {
        let first = (i * 3 % (LBAS / BATCH)) * BATCH;
        if !step(s, &mut run, first, i % 3 == 0) {
            return run;
        }
        let live = s.read_lock(&s.state).sut.live(victim);
        run.reused |= live > 0;
        if run.reused {
            after += 1;
            if after == 6 {
                break;
            }
        }
    }
    // An unflushed batch at the end: it may come back or not.
    step(s, &mut run, 2 * BATCH, false);
    run
}

/// The version every LBA of the recovered store reads as.
fn versions(s: &Store) -> Result<Model, String> {
    (0..LBAS)
        .map(|l| {
            let mut b = vec![0u8; 4096];
            s.read(l * 4096, &mut b)
                .map_err(|e| format!("lba {l}: {e}"))?;
            if b.iter().all(|x| *x == 0) {
                return Ok(0);
            }
            (1..5000)
                .find(|v| block(l, *v) == b)
                .ok_or_else(|| format!("lba {l} reads data never written"))
        })
        .collect()
}

/// Opens the image a crash left and checks it holds the state after some batch at or after
/// the last flush, and fsck is clean.
fn check_recovered(image: Vec<u8>, run: &Run, what: &str) {
    let dev = Arc::new(FaultyDevice::from_image(image));
    let s = Store::open(dev, store_opts())
        .unwrap_or_else(|e| panic!("{what}: open after the crash: {e}"));
    let got = versions(&s).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        run.states[run.flushed..].contains(&got),
        "{what}: the disk is no state at or after the last flush (batch {} of {}); {}",
        run.flushed,
        run.states.len() - 1,
        s.recovery_report()
    );
    let fsck = s.fsck();
    assert!(fsck.is_clean(), "{what}: {:?}", fsck.problems);
}

/// A segment freed by a mark is reused before any checkpoint; a crash at every device write
/// of the run (the release's mark record among them), in every mode, loses nothing flushed.
/// Replay applies the records that named the segment's old blocks without reading them: were
/// it to check them, it would find the new data there and drop flushed records.
#[test]
fn a_segment_freed_by_a_mark_is_reused_and_a_crash_anywhere_loses_nothing_flushed() {
    let (dev, s) = new_store(&opts());
    assert_ne!(
        s.lock(&s.journal).superblock.incompat & INCOMPAT_MARKED_REPLAY,
        0,
        "new containers replay by marks"
    );
    let writes0 = dev.stats().writes;
    let clean = scenario(&s);
    assert!(
        clean.freed.is_some() && clean.reused,
        "the freed segment was reused"
    );
    assert!(s.stats().mark_releases >= 1);
    assert_eq!(
        s.stats().checkpoints,
        1,
        "only the one before the first record: replay covers the whole run"
    );
    let total = dev.stats().writes - writes0;
    drop(s);
    check_recovered(
        {
            dev.crash(CrashMode::DropAll);
            dev.contents()
        },
        &clean,
        "whole run",
    );
    let mut rng = SplitMix::new(0x6d61726b);
    let mut cuts = 0;
    for cut in 0..total {
        let (dev, s) = new_store(&opts());
        dev.fail_writes_after(Some(cut));
        let run = scenario(&s);
        drop(s);
        dev.fail_writes_after(None);
        for mode in [
            CrashMode::DropAll,
            CrashMode::TornPrefix,
            CrashMode::RandomSubset,
        ] {
            let image = dev.crash_image(mode, &mut rng);
            check_recovered(image, &run, &format!("cut at write {cut}, {mode:?}"));
        }
        cuts += usize::from(run.reused);
    }
    assert!(
        cuts > 0,
        "some cuts came after new data landed in the reused segment"
    );
}

/// Empties the first batch's segment of a fresh store with the working set written; returns
/// the store, its device and that segment.
fn one_emptied() -> (Arc<FaultyDevice>, Store, u64) {
    let (dev, s) = new_store(&small_opts());
    let mut model = vec![0u32; LBAS as usize];
    for first in (0..LBAS).step_by(BATCH as usize) {
        write(&s, &mut model, first, 1).unwrap();
    }
    let victim = segment_of(&s, 0);
    write(&s, &mut model, 0, 2).unwrap();
    assert!(
        s.read_lock(&s.state)
            .sut
            .pending_segments()
            .iter()
            .any(|p| p.0 == victim)
    );
    (dev, s, victim)
}

fn is_pending(s: &Store, seg: u64) -> bool {
    (s.read_lock(&s.state).sut.pending_segments().iter()).any(|p| p.0 == seg)
}

/// The release frees nothing unless both its flushes completed: the first makes the records
/// durable, the second the mark that says so.
#[test]
fn a_mark_not_yet_flushed_releases_nothing() {
    for flushes_ok in [0, 1] {
        let (dev, s, victim) = one_emptied();
        let free = s.free_segments();
        dev.fail_flushes_after(Some(flushes_ok));
        assert!(
            s.release_by_mark().is_err(),
            "flush {} fails",
            flushes_ok + 1
        );
        assert!(is_pending(&s, victim), "flushes ok: {flushes_ok}");
        assert_eq!(s.free_segments(), free);
        let j = s.lock(&s.journal);
        assert!(j.mark_durable < j.applied_lsn);
        if flushes_ok == 1 {
            assert!(j.mark_reserved >= j.applied_lsn - 1, "the mark was written");
        }
        drop(j);
        dev.fail_flushes_after(None);
        assert_eq!(s.release_by_mark().unwrap(), 1);
        assert!(!is_pending(&s, victim));
    }
}

/// A guest FLUSH after a record carrying a mark makes that mark durable: the release then
/// needs no flush of its own.
#[test]
fn a_guest_flush_makes_the_marks_before_it_durable() {
    let (dev, s, victim) = one_emptied();
    s.flush().unwrap();
    // The flush's own mark: written after it, durable only after the next flush.
    s.flush().unwrap();
    let flushes = dev.stats().flushes;
    assert_eq!(s.release_by_mark().unwrap(), 1);
    assert!(!is_pending(&s, victim));
    assert_eq!(dev.stats().flushes, flushes, "no flush of its own");
}

/// Without `INCOMPAT_MARKED_REPLAY` nothing is released by a mark: a checkpoint does it, and
/// that checkpoint gives the container the bit.
#[test]
fn a_container_without_the_bit_releases_only_by_checkpoint() {
    let (dev, s, victim) = one_emptied();
    s.lock(&s.journal).superblock.incompat &= !INCOMPAT_MARKED_REPLAY;
    let flushes = dev.stats().flushes;
    assert_eq!(s.release_by_mark().unwrap(), 0);
    assert_eq!(dev.stats().flushes, flushes, "no mark cycle");
    assert!(is_pending(&s, victim));
    let freed = s.stats().segments_freed;
    s.release_emptied().unwrap();
    assert!(!is_pending(&s, victim));
    assert!(s.stats().segments_freed > freed);
    assert_eq!(s.stats().mark_releases, 0);
    assert_ne!(
        s.lock(&s.journal).superblock.incompat & INCOMPAT_MARKED_REPLAY,
        0,
        "gained at the checkpoint"
    );
}

/// The background cleaner releases what it empties by marks: with random overwrites of a
/// few disks' worth, it frees segments by marks, and the disk reads as written.
#[test]
fn the_background_cleaner_releases_by_marks() {
    use crate::store::{CleanerConfig, CleanerHandle, SpaceOptions, StoreOptions};
    let (dev, s) = new_store(&small_opts());
    drop(s);
    let opts = StoreOptions {
        space: SpaceOptions {
            wait: std::time::Duration::from_secs(10),
            ..Default::default()
        },
        ..store_opts()
    };
    let s = Arc::new(Store::open(dev, opts).unwrap());
    let cleaner = CleanerHandle::spawn(Arc::clone(&s), CleanerConfig::default()).unwrap();
    let mut model = vec![0u32; LBAS as usize];
    let mut rng = SplitMix::new(11);
    for version in 1..2000 {
        let lba = rng.below(LBAS);
        let d = block(lba, version);
        s.write_batch(
            0,
            &[Op::Write {
                offset: lba * 4096,
                data: &d,
            }],
        )
        .unwrap();
        model[lba as usize] = version;
        if s.stats().segments_freed_by_marks >= 8 {
            break;
        }
    }
    drop(cleaner);
    let st = s.stats();
    assert!(st.segments_cleaned > 0, "the cleaner worked");
    assert!(
        st.mark_releases > 0 && st.segments_freed_by_marks > 0,
        "{st:?}"
    );
    assert_eq!(versions(&s).unwrap(), model);
    assert!(s.fsck().is_clean());
}
