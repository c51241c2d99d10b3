//! The background cleaner's read-ahead (`log::clean_ahead`): the victim read during one step
//! is written by the next, stays pinned until then, and never brings back a block the guest
//! overwrote in between.

use super::cleaning::{block, read_block, write_block};
use super::{new_store, small_opts};
use crate::store::Store;
use crate::store::log::clean_ahead::CleanAhead;
use crate::store::log::io_class::IoClass;
use crate::testing::FaultyDevice;
use std::sync::Arc;

const BLOCK: usize = 4096;

/// A small store holding four segments of blocks of which one in four survives an overwrite
/// (sparse victims), and how many LBAs they cover.
fn sparse_victims() -> (Arc<FaultyDevice>, Store, u64) {
    let opts = small_opts();
    let (dev, s) = new_store(&opts);
    let lbas = 4 * opts.segment_bytes / BLOCK as u64;
    for lba in 0..lbas {
        write_block(&s, lba, 1);
    }
    for lba in (0..lbas).filter(|l| l % 4 != 0) {
        write_block(&s, lba, 2);
    }
    (dev, s, lbas)
}

#[test]
fn the_victim_read_ahead_is_written_by_the_next_step_without_undoing_guest_writes() {
    let (_dev, s, lbas) = sparse_victims();
    std::thread::scope(|scope| read_ahead_then_overwrite(&s, lbas, CleanAhead::new(scope, &s)));
    let report = s.fsck();
    assert!(report.is_clean(), "{report:?}");
}

fn read_ahead_then_overwrite(s: &Store, lbas: u64, mut ahead: CleanAhead<'_>) {
    let before = s.stats();
    let first = ahead
        .step(s, IoClass::Normal, true)
        .unwrap()
        .expect("a victim");
    let next = ahead.read_ahead();
    assert_eq!(next.len(), 1, "the next victim was read meanwhile");
    let next = next[0];
    assert_ne!(next, first.segment, "never the victim being written");
    assert!(s.pins.is_pinned(next), "read ahead, pinned until written");
    assert!(!s.pins.is_pinned(first.segment));
    let st = s.stats();
    assert_eq!(st.segments_cleaned - before.segments_cleaned, 1);
    assert!(
        st.cleaner_read_bytes - before.cleaner_read_bytes > first.live * BLOCK as u64,
        "two victims read"
    );
    // The guest overwrites half of what survived, everywhere: some of it in the victim read
    // ahead, after its read.
    for lba in (0..lbas).step_by(8) {
        write_block(s, lba, 3);
    }
    let second = ahead
        .step(s, IoClass::Normal, false)
        .unwrap()
        .expect("the victim read ahead");
    assert_eq!(second.segment, next);
    assert!(ahead.read_ahead().is_empty());
    assert!(!s.pins.is_pinned(next));
    assert!(
        second.moved < second.live,
        "the blocks overwritten since the read are not moved: {second:?}"
    );
    assert!(second.moved > 0, "the others are: {second:?}");
    for lba in 0..lbas {
        let want = match lba {
            l if l % 8 == 0 => 3,
            l if l % 4 == 0 => 1,
            _ => 2,
        };
        assert_eq!(read_block(s, lba), block(lba, want), "LBA {lba}");
    }
}

#[test]
fn a_victim_read_ahead_and_never_written_is_let_go() {
    let (_dev, s, lbas) = sparse_victims();
    let next = std::thread::scope(|scope| {
        let mut ahead = CleanAhead::new(scope, &s);
        ahead
            .step(&s, IoClass::Normal, true)
            .unwrap()
            .expect("a victim");
        ahead.read_ahead()
    });
    assert_eq!(next.len(), 1);
    assert!(!s.pins.is_pinned(next[0]), "unpinned when dropped");
    // Nothing of it was moved: it is still a victim, and cleaning goes on to the end.
    let mut cleaned = vec![];
    while let Some(r) = s.clean_step().unwrap() {
        cleaned.push(r.segment);
    }
    assert!(cleaned.contains(&next[0]), "{cleaned:?}");
    for lba in 0..lbas {
        let want = if lba % 4 == 0 { 1 } else { 2 };
        assert_eq!(read_block(&s, lba), block(lba, want), "LBA {lba}");
    }
}

#[test]
fn one_reader_serves_every_step_until_no_victim_is_left() {
    let (_dev, s, lbas) = sparse_victims();
    let cleaned = std::thread::scope(|scope| {
        let mut ahead = CleanAhead::new(scope, &s);
        let mut cleaned = vec![];
        while let Some(r) = ahead.step(&s, IoClass::Normal, true).unwrap() {
            cleaned.push(r.segment);
            assert!(ahead.reads_ahead(), "the same reader, step after step");
            let next = ahead.read_ahead();
            assert!(!next.contains(&r.segment), "never the victim just written");
            assert!(next.iter().all(|&n| s.pins.is_pinned(n)));
        }
        assert!(ahead.read_ahead().is_empty(), "nothing left to read ahead");
        cleaned
    });
    assert!(cleaned.len() >= 4, "every sparse victim: {cleaned:?}");
    let mut distinct = cleaned.clone();
    distinct.dedup();
    assert_eq!(distinct, cleaned, "each victim written once in a row");
    assert!(cleaned.iter().all(|&seg| !s.pins.is_pinned(seg)));
    for lba in 0..lbas {
        let want = if lba % 4 == 0 { 1 } else { 2 };
        assert_eq!(read_block(&s, lba), block(lba, want), "LBA {lba}");
    }
    let report = s.fsck();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_failed_read_ahead_loses_no_step_and_the_next_reads_in_turn() {
    let (dev, s, lbas) = sparse_victims();
    std::thread::scope(|scope| {
        let mut ahead = CleanAhead::new(scope, &s);
        let first = ahead.step(&s, IoClass::Normal, true).unwrap().unwrap();
        let next = ahead.read_ahead();
        assert_eq!(next.len(), 1);
        // Reads fail while the victim read ahead is written (its writes succeed), so the
        // read after it fails.
        dev.set_fail_reads(true);
        let second = ahead
            .step(&s, IoClass::Normal, true)
            .unwrap()
            .expect("the victim read ahead is written");
        assert_eq!(second.segment, next[0]);
        assert!(ahead.read_ahead().is_empty(), "the read ahead failed");
        assert!(ahead.reads_ahead(), "the reader survives a failed read");
        dev.set_fail_reads(false);
        let third = ahead
            .step(&s, IoClass::Normal, true)
            .unwrap()
            .expect("a victim, read in turn");
        assert!(![first.segment, second.segment].contains(&third.segment));
        assert_eq!(ahead.read_ahead().len(), 1, "and the next read ahead again");
    });
    for lba in 0..lbas {
        let want = if lba % 4 == 0 { 1 } else { 2 };
        assert_eq!(read_block(&s, lba), block(lba, want), "LBA {lba}");
    }
    let report = s.fsck();
    assert!(report.is_clean(), "{report:?}");
}
