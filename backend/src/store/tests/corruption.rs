//! Damaged containers: flipped bits in superblocks, tree nodes, the SUT, the checkpoint
//! root, journal records and data blocks give clear errors, never a panic.

use super::{new_store, small_opts, stored_byte};
use crate::device::BlockDevice;
use crate::store::compress::block_of;
use crate::store::layout::BLOCK;
use crate::store::{Op, Store, StoreError, StoreOptions};
use crate::testing::{FaultyDevice, SplitMix};
use std::sync::Arc;

/// A populated container with a checkpoint and a journal tail.
fn populated() -> Arc<FaultyDevice> {
    let (dev, s) = new_store(&small_opts());
    for i in 0..200u64 {
        let d = vec![(i % 251) as u8 | 1; 4096];
        s.write_batch(
            0,
            &[Op::Write {
                offset: (i * 7 % 256) * 4096,
                data: &d,
            }],
        )
        .unwrap();
        if i == 150 {
            s.checkpoint().unwrap();
        }
    }
    s.flush().unwrap();
    dev
}

fn open(dev: &Arc<FaultyDevice>) -> crate::store::Result<Store> {
    Store::open(dev.clone(), crate::store::tests::store_opts())
}

#[test]
fn flipped_superblocks() {
    let dev = populated();
    let gen_now = open(&dev).unwrap().info().checkpoint_generation;
    // Damage the copy written first: the other slot holds the same generation, so nothing is
    // rolled back, and opening rewrites the damaged copy.
    let current_slot = gen_now % 2;
    dev.corrupt(current_slot * BLOCK + 40, 0x01);
    {
        let s = open(&dev).unwrap();
        assert_eq!(s.info().checkpoint_generation, gen_now);
        assert!(s.recovery_report().other_superblock.is_some());
    }
    let s = open(&dev).unwrap();
    assert_eq!(s.info().checkpoint_generation, gen_now);
    assert_eq!(s.recovery_report().other_superblock, None, "repaired");
    drop(s);
    // Both copies damaged: a clear error.
    dev.corrupt(current_slot * BLOCK + 40, 0x01);
    dev.corrupt((1 - current_slot) * BLOCK + 100, 0x80);
    match open(&dev) {
        Err(StoreError::Corrupt { what, detail }) => {
            assert_eq!(what, "superblocks");
            assert!(detail.contains("A:") && detail.contains("B:"), "{detail}");
        }
        other => panic!("expected a superblock error, got {:?}", other.err()),
    }
}

#[test]
fn flipped_tree_node_sut_and_checkpoint_root() {
    let dev = populated();
    let (node, sut, root) = {
        let s = open(&dev).unwrap();
        s.checkpoint().unwrap();
        let st = s.read_lock(&s.state);
        let node = st.maps.lba.node(st.maps.running).disk.unwrap();
        (node, st.ckpt_blocks[0], *st.ckpt_blocks.last().unwrap())
    };
    for (pba, what) in [
        (node, "tree node"),
        (sut, "segment usage table"),
        (root, "checkpoint"),
    ] {
        let img = dev.contents();
        let d = Arc::new(FaultyDevice::from_image(img));
        d.corrupt(pba * BLOCK + 77, 0x04);
        match open(&d) {
            Err(StoreError::Corrupt { what: w, .. }) => assert_eq!(w, what),
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(_) => panic!("{what}: a damaged block was accepted"),
        }
    }
}

#[test]
fn flipped_journal_record_is_discarded_as_torn() {
    let (dev, s) = new_store(&small_opts());
    let d = vec![5u8; 4096];
    s.write_batch(
        0,
        &[Op::Write {
            offset: 0,
            data: &d,
        }],
    )
    .unwrap();
    s.write_batch(
        0,
        &[Op::Write {
            offset: 4096,
            data: &d,
        }],
    )
    .unwrap();
    // Not flushed: the second record may have been in flight at a crash, so it may be torn.
    let second_record = s.geometry().journal_start() + 1;
    drop(s);
    dev.corrupt(second_record * BLOCK + 50, 0x10);
    let s = open(&dev).unwrap();
    assert_eq!(s.recovery_report().records_replayed, 1);
    assert!(
        s.recovery_report().stopped_because.contains("torn"),
        "{}",
        s.recovery_report().stopped_because
    );
    let mut b = vec![0u8; 8192];
    s.read(0, &mut b).unwrap();
    assert_eq!(b[0], 5);
    assert_eq!(b[4096], 0);
    assert!(s.fsck().is_clean());
}

/// Replay checks a record's data a run at a time: a bad block in the middle of a run still
/// discards the record, and the blocks before and after it do not hide it.
#[test]
fn a_torn_block_inside_a_records_run_discards_the_record() {
    let (dev, s) = new_store(&small_opts());
    let write = |offset: u64, data: &[u8]| s.write_batch(0, &[Op::Write { offset, data }]);
    write(0, &[3u8; 4096]).unwrap();
    let run: Vec<u8> = (0..8 * 4096).map(|i| (i / 4096) as u8 + 10).collect();
    write(4 * 4096, &run).unwrap();
    // Not flushed: the record's data may not have landed before a crash.
    let entries: Vec<u64> = (4..12)
        .map(|lba| s.read_lock(&s.state).maps.lookup(lba).unwrap().1.pba)
        .collect();
    let pbas: Vec<u64> = entries.iter().map(|e| block_of(*e)).collect();
    // Packed blocks share a block; the run is still one.
    assert!(
        pbas.windows(2).all(|w| w[1] == w[0] + 1 || w[1] == w[0]),
        "one run: {pbas:?}"
    );
    drop(s);
    dev.corrupt(stored_byte(entries[5], 100), 0x40);
    let s = open(&dev).unwrap();
    let report = s.recovery_report();
    assert_eq!(report.records_replayed, 1);
    assert!(
        report
            .stopped_because
            .contains(&format!("data at block {} does not match", pbas[5])),
        "{}",
        report.stopped_because
    );
    let mut b = vec![0u8; 12 * 4096];
    s.read(0, &mut b).unwrap();
    assert!(b[..4096].iter().all(|x| *x == 3));
    assert!(
        b[4 * 4096..].iter().all(|x| *x == 0),
        "the torn record's writes are gone"
    );
    assert!(s.fsck().is_clean());
}

#[test]
fn flipped_data_block_fails_reads_and_fsck() {
    let (dev, s) = new_store(&small_opts());
    let d = vec![9u8; 8192];
    s.write_batch(
        0,
        &[Op::Write {
            offset: 8192,
            data: &d,
        }],
    )
    .unwrap();
    let entry = s.read_lock(&s.state).maps.lookup(3).unwrap().1.pba;
    let pba = block_of(entry);
    dev.corrupt(stored_byte(entry, 4000), 0x02);
    let mut b = vec![0u8; 4096];
    match s.read(3 * 4096, &mut b) {
        Err(StoreError::DataChecksum { lba: 3, pba: p }) => assert_eq!(p, pba),
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(s.stats().checksum_errors, 1);
    s.read(2 * 4096, &mut b).unwrap();
    let r = s.fsck();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains(&format!("data block {pba}")));
}

/// Random bit flips anywhere in the metadata of a populated container: open, read and fsck
/// may fail, but with an error, never a panic.
#[test]
fn random_metadata_damage_never_panics() {
    let base = populated();
    let meta_end = {
        let s = open(&base).unwrap();
        s.geometry().container_bytes()
    };
    let mut rng = SplitMix::new(42);
    for _ in 0..150 {
        let d = Arc::new(FaultyDevice::from_image(base.contents()));
        for _ in 0..1 + rng.below(4) {
            d.corrupt(rng.below(meta_end), 1 << rng.below(8));
        }
        if let Ok(s) = open(&d) {
            let mut b = vec![0u8; 1 << 20];
            let _ = s.read(0, &mut b);
            let _ = s.fsck();
            let w = vec![1u8; 4096];
            let _ = s.write_batch(
                0,
                &[Op::Write {
                    offset: 0,
                    data: &w,
                }],
            );
            let _ = s.checkpoint();
        }
        assert!(d.len() > 0);
    }
}

fn write_at(s: &Store, lba: u64, byte: u8) {
    let d = vec![byte; 4096];
    s.write_batch(
        0,
        &[Op::Write {
            offset: lba * 4096,
            data: &d,
        }],
    )
    .unwrap();
}

fn rewind(dev: &Arc<FaultyDevice>) -> crate::store::Result<Store> {
    let opts = StoreOptions {
        rewind: true,
        ..crate::store::tests::store_opts()
    };
    Store::open(dev.clone(), opts)
}

/// A flushed record damaged later is not a torn tail: the flush's mark after it proves it was
/// acknowledged. The container is refused (nothing changed), and a rewind opens it at the last
/// intact state, saying what was lost.
#[test]
fn a_damaged_flushed_record_is_refused_until_rewound() {
    let (dev, s) = new_store(&small_opts());
    write_at(&s, 0, 5);
    write_at(&s, 1, 6);
    s.flush().unwrap();
    let second_record = s.geometry().journal_start() + 1;
    drop(s);
    dev.corrupt(second_record * BLOCK + 50, 0x10);
    let image = dev.contents();
    match open(&dev) {
        Err(StoreError::Corrupt { what, detail }) => {
            assert_eq!(what, "journal");
            assert!(
                detail.contains("through lsn 2 was flushed") && detail.contains("--rewind"),
                "{detail}"
            );
        }
        other => panic!("expected a journal error, got {:?}", other.err()),
    }
    assert!(dev.contents() == image, "a refused open writes nothing");
    let s = rewind(&dev).unwrap();
    let report = s.recovery_report().clone();
    assert_eq!(report.records_replayed, 1);
    assert!(
        report
            .rewound
            .as_deref()
            .unwrap()
            .contains("1 flushed records")
    );
    let mut b = vec![0u8; 8192];
    s.read(0, &mut b).unwrap();
    assert_eq!(
        (b[0], b[4096]),
        (5, 0),
        "the lost write is gone, the one before it stays"
    );
    assert!(s.fsck().is_clean());
    drop(s);
    // Rewound once: the dropped records are erased, so a plain open accepts it from now on.
    let s = open(&dev).unwrap();
    assert_eq!(s.recovery_report().rewound, None);
    assert!(s.fsck().is_clean());
}

/// A flushed record whose data block is damaged: a container that checks every replayed
/// record's data (one without `INCOMPAT_MARKED_REPLAY`) refuses it the same way.
#[test]
fn a_flushed_records_damaged_data_is_refused_without_marked_replay() {
    use crate::store::log::superblock::INCOMPAT_MARKED_REPLAY;
    let (dev, s) = new_store(&small_opts());
    write_at(&s, 0, 3);
    write_at(&s, 4, 9);
    s.flush().unwrap();
    let entry = s.read_lock(&s.state).maps.lookup(4).unwrap().1.pba;
    let pba = block_of(entry);
    drop(s);
    // What a Keel from before marked replay leaves.
    let picked = crate::store::log::recovery::pick_superblock(dev.as_ref()).unwrap();
    let old = crate::store::log::superblock::Superblock {
        incompat: picked.superblock.incompat & !INCOMPAT_MARKED_REPLAY,
        ..picked.superblock
    };
    crate::store::log::persist::write_superblock(dev.as_ref(), &old).unwrap();
    dev.corrupt(stored_byte(entry, 100), 0x40);
    match open(&dev) {
        Err(StoreError::Corrupt { what, detail }) => {
            assert_eq!(what, "journal");
            assert!(
                detail.contains(&format!("data at block {pba} does not match")),
                "{detail}"
            );
        }
        other => panic!("expected a journal error, got {:?}", other.err()),
    }
}

/// With `INCOMPAT_MARKED_REPLAY` the data of records a flush mark covers is not read at open
/// (its segment may have been reused): the damage is found where it is read, loudly.
#[test]
fn a_flushed_records_damaged_data_fails_its_reads_with_marked_replay() {
    let (dev, s) = new_store(&small_opts());
    write_at(&s, 0, 3);
    write_at(&s, 4, 9);
    s.flush().unwrap();
    s.flush().unwrap();
    let entry = s.read_lock(&s.state).maps.lookup(4).unwrap().1.pba;
    drop(s);
    dev.corrupt(stored_byte(entry, 100), 0x40);
    let s = open(&dev).unwrap();
    assert_eq!(
        s.recovery_report().records_replayed,
        3,
        "{}",
        s.recovery_report()
    );
    let mut b = vec![0u8; 4096];
    s.read(0, &mut b).unwrap();
    assert_eq!(b[0], 3);
    assert!(
        matches!(
            s.read(4 * 4096, &mut b),
            Err(StoreError::DataChecksum { lba: 4, .. })
        ),
        "the damaged block fails its read"
    );
}

/// A store with LBA 0 = 1 behind one checkpoint and LBA 1 = 2 behind a newer one, and both
/// copies of the superblock as the older checkpoint left them, to put back as if the newest were
/// lost.
fn two_checkpoints_keeping_the_older_superblocks() -> (Arc<FaultyDevice>, Store, Vec<u8>) {
    let (dev, s) = new_store(&small_opts());
    write_at(&s, 0, 1);
    s.checkpoint().unwrap();
    let old_superblocks = dev.contents()[..2 * BLOCK as usize].to_vec();
    write_at(&s, 1, 2);
    s.checkpoint().unwrap();
    (dev, s, old_superblocks)
}

/// Both copies of the newest superblock lost while the journal ring still holds every record
/// since the older checkpoint: the chain runs on across checkpoints, so the older one replays
/// everything, the newest writes included.
#[test]
fn a_lost_newest_checkpoint_replays_from_the_older_one_while_the_ring_holds_it() {
    let (dev, s, old_superblocks) = two_checkpoints_keeping_the_older_superblocks();
    write_at(&s, 2, 3);
    s.flush().unwrap();
    drop(s);
    dev.write_at(&old_superblocks, 0).unwrap();
    let s = open(&dev).unwrap();
    for (lba, v) in [(0u64, 1u8), (1, 2), (2, 3)] {
        let mut b = vec![0u8; 4096];
        s.read(lba * 4096, &mut b).unwrap();
        assert_eq!(b, vec![v; 4096], "lba {lba}");
    }
    assert!(s.fsck().is_clean());
}

/// Records written over the older checkpoint's part of the ring after a newer checkpoint
/// (both copies of whose superblock were lost) prove the rollback: refused, never served as
/// older data.
#[test]
fn a_lost_newest_checkpoint_is_refused_not_rolled_back() {
    let (dev, s, old_superblocks) = two_checkpoints_keeping_the_older_superblocks();
    // One-block records, more than the ring holds: the older checkpoint's records are gone.
    let ring = s.geo.journal_blocks();
    for i in 0..ring + 4 {
        write_at(&s, 2 + i % 8, 3);
    }
    s.flush().unwrap();
    drop(s);
    dev.write_at(&old_superblocks, 0).unwrap();
    match open(&dev) {
        Err(StoreError::Corrupt { what, detail }) => {
            // The older checkpoint's tree blocks may have been reused too: refused either way.
            assert!(
                what != "journal" || detail.contains("newest checkpoint was lost"),
                "{what}: {detail}"
            );
        }
        other => panic!("expected a corruption error, got {:?}", other.err()),
    }
}

/// Intact records a crash left past a torn one (never flushed) are dropped and erased, so a
/// later recovery cannot take them for proof of damage.
#[test]
fn a_torn_tails_survivors_are_erased_at_open() {
    let (dev, s) = new_store(&small_opts());
    write_at(&s, 0, 1);
    s.flush().unwrap();
    write_at(&s, 1, 2);
    write_at(&s, 2, 3);
    let torn = {
        let j = s.lock(&s.journal);
        s.geometry().journal_start() + j.cursor.pos - 2
    };
    drop(s);
    dev.corrupt(torn * BLOCK + 60, 0x02);
    let s = open(&dev).unwrap();
    assert_eq!(
        s.recovery_report().discarded_records,
        1,
        "the record after the torn one"
    );
    let mut b = vec![0u8; 3 * 4096];
    s.read(0, &mut b).unwrap();
    assert_eq!((b[0], b[4096], b[8192]), (1, 0, 0));
    drop(s);
    let s = open(&dev).unwrap();
    assert_eq!(s.recovery_report().discarded_records, 0, "erased");
}

/// A container formatted over one that held flushed records (and their marks) finds none of
/// them: neither replayed nor taken for proof of damage.
#[test]
fn formatting_over_an_old_container_erases_its_records() {
    let (dev, s) = new_store(&small_opts());
    for lba in 0..40 {
        write_at(&s, lba, 7);
        s.flush().unwrap();
    }
    drop(s);
    Store::format(dev.as_ref(), &small_opts()).unwrap();
    let s = open(&dev).unwrap();
    let report = s.recovery_report();
    assert_eq!((report.records_replayed, report.discarded_records), (0, 0));
    let mut b = vec![1u8; 4096];
    s.read(0, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 0));
}

/// With a mark writer (as keeld runs a disk) the flush returns before its mark is written, and
/// the mark still arrives and protects the flushed records.
#[test]
fn a_mark_writer_marks_flushes_in_the_background() {
    let (dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    let marks = crate::store::MarkWriter::spawn(Arc::clone(&s)).unwrap();
    write_at(&s, 0, 5);
    write_at(&s, 1, 6);
    s.flush().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.stats().flush_marks == 0 {
        assert!(std::time::Instant::now() < deadline, "no mark was written");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // A flush with nothing new hands over nothing.
    s.flush().unwrap();
    drop(marks);
    assert_eq!(s.stats().flush_marks, 1);
    let second_record = s.geometry().journal_start() + 1;
    drop(s);
    dev.corrupt(second_record * BLOCK + 50, 0x10);
    assert!(matches!(open(&dev), Err(StoreError::Corrupt { .. })));
}

/// Under a write-and-flush load the next batch's record carries the flush's mark: no record
/// of its own, and the flushed records are still protected.
#[test]
fn the_next_batch_carries_a_due_mark() {
    let (dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    let wait = std::time::Duration::from_secs(3600);
    let marks = crate::store::MarkWriter::spawn_with_delay(Arc::clone(&s), wait).unwrap();
    write_at(&s, 0, 5);
    write_at(&s, 1, 6);
    s.flush().unwrap();
    write_at(&s, 2, 7);
    let journal_writes = s.stats().journal_writes;
    assert_eq!(s.stats().flush_marks, 0, "carried, not written by itself");
    let second_record = s.geometry().journal_start() + 1;
    drop(marks);
    assert_eq!(s.stats().journal_writes, journal_writes);
    drop(s);
    dev.corrupt(second_record * BLOCK + 50, 0x10);
    match open(&dev) {
        Err(StoreError::Corrupt { detail, .. }) => {
            assert!(detail.contains("through lsn 2 was flushed"), "{detail}")
        }
        other => panic!("expected a journal error, got {:?}", other.err()),
    }
}
