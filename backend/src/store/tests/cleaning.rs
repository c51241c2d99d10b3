//! What the cleaner does and what it costs: its counters, and that discarded blocks are never
//! copied.

use super::super::Op;
use super::{new_store, small_opts};

const BLOCK: usize = 4096;

/// A block whose bytes say which LBA and which round wrote it.
pub(super) fn block(lba: u64, round: u8) -> Vec<u8> {
    let mut b = vec![round; BLOCK];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

pub(super) fn write_block(s: &super::Store, lba: u64, round: u8) {
    let data = block(lba, round);
    s.write_batch(
        0,
        &[Op::Write {
            offset: lba * BLOCK as u64,
            data: &data,
        }],
    )
    .unwrap();
}

pub(super) fn read_block(s: &super::Store, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    s.read(lba * BLOCK as u64, &mut b).unwrap();
    b
}

/// Guest writes on a full disk with no background cleaner: the writers clean for themselves,
/// and every counter of that work adds up.
#[test]
fn counters_account_for_cleaning_done_by_writers() {
    let opts = small_opts();
    let (_dev, s) = new_store(&opts);
    let blocks = opts.capacity / BLOCK as u64;
    let seg_bytes = opts.segment_bytes;
    // Uniform random overwrites (xorshift), four times the disk.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..4 * blocks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        write_block(&s, x % blocks, (i / blocks) as u8 + 1);
    }
    let st = s.stats();
    assert!(st.segment_waits > 0, "the writers ran out of segments");
    assert!(st.segment_wait_us > 0);
    assert!(st.writer_cleaned > 0, "and cleaned for themselves");
    assert_eq!(
        st.writer_cleaned, st.segments_cleaned,
        "no other cleaner ran"
    );
    // A victim is read by the runs of its live blocks: every moved block, at most all of it.
    assert!(st.cleaner_read_bytes <= st.segments_cleaned * seg_bytes);
    assert!(st.cleaner_read_bytes >= st.cleaner_moves * BLOCK as u64);
    assert_eq!(st.cleaner_write_bytes, st.cleaner_moves * BLOCK as u64);
    assert!(st.segments_freed + st.segments_freed_by_marks >= st.segments_cleaned / 2);
    assert!(
        st.mark_releases > 0 && st.segments_freed_by_marks > 0,
        "writers release what they cleaned by marks"
    );
    assert!(st.checkpoints > 0 && st.checkpoint_max_us <= st.checkpoint_us);
    assert!(st.write_amplification() > 1.0);
    for lba in 0..blocks {
        let b = read_block(&s, lba);
        assert!(b[8] == 0 || b[..8] == lba.to_le_bytes(), "LBA {lba}");
    }
}

/// A sparse victim is read by its live blocks only: after every block but one in eight was
/// overwritten, cleaning reads (and moves) exactly those, and they read back unchanged.
#[test]
fn a_sparse_victim_is_read_by_its_live_blocks() {
    let opts = small_opts();
    let (_dev, s) = new_store(&opts);
    let seg_blocks = opts.segment_bytes / BLOCK as u64;
    let lbas = 4 * seg_blocks;
    for lba in 0..lbas {
        write_block(&s, lba, 1);
    }
    for lba in (0..lbas).filter(|l| l % 8 != 0) {
        write_block(&s, lba, 2);
    }
    let before = s.stats();
    let (mut moved, mut live) = (0, 0);
    while let Some(r) = s.clean_step().unwrap() {
        assert!(r.live <= seg_blocks / 8, "segment {}: {r:?}", r.segment);
        moved += r.moved;
        live += r.live;
    }
    let st = s.stats();
    assert_eq!(moved, lbas / 8, "the round-1 blocks left, one in eight");
    let read = st.cleaner_read_bytes - before.cleaner_read_bytes;
    if super::test_compression().is_none() {
        assert_eq!(
            read,
            live * BLOCK as u64,
            "live blocks eight apart are read one by one, nothing else"
        );
    } else {
        // Packed blocks: fewer blocks than VBAs, wherever the packing put them.
        assert!(read >= live * BLOCK as u64 && read < 4 * opts.segment_bytes);
    }
    s.checkpoint().unwrap();
    for lba in 0..lbas {
        let round = if lba % 8 == 0 { 1 } else { 2 };
        assert_eq!(read_block(&s, lba), block(lba, round), "LBA {lba}");
    }
}

/// A guest TRIM frees its blocks: cleaning after the second half of the disk was discarded
/// copies only blocks of the first half.
#[test]
fn discarded_blocks_are_never_copied() {
    let opts = small_opts();
    let (_dev, s) = new_store(&opts);
    let blocks = opts.capacity / BLOCK as u64;
    let half = blocks / 2;
    // Interleaved, so that every segment holds as many blocks of each half.
    for i in 0..half {
        write_block(&s, i, 1);
        write_block(&s, half + i, 1);
    }
    s.write_batch(
        0,
        &[Op::Discard {
            offset: half * BLOCK as u64,
            len: half * BLOCK as u64,
        }],
    )
    .unwrap();
    let seg_blocks = opts.segment_bytes / BLOCK as u64;
    let mut cleaned = 0;
    while let Some(r) = s.clean_step().unwrap() {
        assert_eq!(
            (r.live, r.moved),
            (seg_blocks / 2, seg_blocks / 2),
            "segment {}: only its first-half blocks are live and moved",
            r.segment
        );
        cleaned += 1;
    }
    assert!(
        cleaned >= half / seg_blocks - 1,
        "{cleaned} segments cleaned"
    );
    let st = s.stats();
    assert_eq!(st.cleaner_moves, cleaned * seg_blocks / 2);
    s.checkpoint().unwrap();
    for lba in 0..half {
        assert_eq!(read_block(&s, lba), block(lba, 1));
    }
    for lba in half..blocks {
        assert!(read_block(&s, lba).iter().all(|b| *b == 0), "LBA {lba}");
    }
}

/// The cleaner appends the blocks it relocates to open segments of its own: relocated data is
/// colder than the guest's new writes, and a segment that mixed them would be cleaned again
/// soon for the new data's sake.
#[test]
fn relocated_blocks_never_share_a_segment_with_guest_writes() {
    let (_dev, s) = new_store(&small_opts());
    let geo = s.geometry();
    let pba_of = |lba: u64| s.read_lock(&s.state).maps.lookup(lba).unwrap().1.pba;
    for lba in 0..64 {
        write_block(&s, lba, 1);
    }
    // Every other block overwritten: the first segments are half dead, victims.
    for lba in (0..64).step_by(2) {
        write_block(&s, lba, 2);
    }
    let before: Vec<u64> = (1..64).step_by(2).map(pba_of).collect();
    // One victim: its 8 live blocks fill half a segment, which the next appends would share.
    let report = s.clean_step().unwrap().expect("something to clean");
    assert_eq!(report.moved, 8);
    for lba in 100..140 {
        write_block(&s, lba, 3);
    }
    let relocated: std::collections::BTreeSet<u64> = (1..64)
        .step_by(2)
        .zip(&before)
        .map(|(lba, old)| (pba_of(lba), *old))
        .filter(|(new, old)| new != old)
        .map(|(new, _)| geo.segment_of(new))
        .collect();
    let guest: std::collections::BTreeSet<u64> = (0..64)
        .step_by(2)
        .chain(100..140)
        .map(|lba| geo.segment_of(pba_of(lba)))
        .collect();
    assert!(!relocated.is_empty(), "the cleaner moved blocks");
    assert!(
        relocated.is_disjoint(&guest),
        "relocated into {relocated:?}, guest writes in {guest:?}"
    );
    for lba in (1..64).step_by(2) {
        assert_eq!(read_block(&s, lba), block(lba, 1));
    }
}
