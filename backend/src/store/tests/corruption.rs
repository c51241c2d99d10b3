//! Damaged containers: flipped bits in superblocks, tree nodes, the SUT, the checkpoint
//! root, journal records and data blocks give clear errors, never a panic.

use super::{new_store, small_opts};
use crate::device::BlockDevice;
use crate::store::layout::BLOCK;
use crate::store::testing::{FaultyDevice, SplitMix};
use crate::store::{Op, Store, StoreError, StoreOptions, read};
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
    Store::open(dev.clone(), StoreOptions::default())
}

#[test]
fn flipped_superblocks() {
    let dev = populated();
    let gen_now = open(&dev).unwrap().info().checkpoint_generation;
    // Damage the current copy: the other one (one generation older) is used instead.
    let current_slot = gen_now % 2;
    dev.corrupt(current_slot * BLOCK + 40, 0x01);
    match open(&dev) {
        Ok(s) => {
            assert_eq!(s.info().checkpoint_generation, gen_now - 1);
            assert!(s.recovery_report().other_superblock.is_some());
        }
        Err(e) => assert!(matches!(e, StoreError::Corrupt { .. }), "{e}"),
    }
    // Both copies damaged: a clear error.
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
        let st = read(&s.state);
        let node = st.maps.lba.node(st.maps.running).disk.unwrap();
        (node, st.ckpt_blocks[0], *st.ckpt_blocks.last().unwrap())
    };
    for (pba, what) in [
        (node, "tree node"),
        (sut, "segment usage table"),
        (root, "checkpoint"),
    ] {
        let img = dev.image();
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
    s.flush().unwrap();
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
    s.flush().unwrap();
    let pbas: Vec<u64> = (4..12)
        .map(|lba| read(&s.state).maps.lookup(lba).unwrap().1.pba)
        .collect();
    assert!(
        pbas.windows(2).all(|w| w[1] == w[0] + 1),
        "one run: {pbas:?}"
    );
    drop(s);
    dev.corrupt(pbas[5] * BLOCK + 100, 0x40);
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
    let pba = read(&s.state).maps.lookup(3).unwrap().1.pba;
    dev.corrupt(pba * BLOCK + 4000, 0x02);
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
        let d = Arc::new(FaultyDevice::from_image(base.image()));
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
