//! Model check: random batches of writes (sub-block too), discards, write-zeroes, flushes,
//! checkpoints, cleaner runs, snapshots and reopens against a plain byte array.

use super::{new_store, small_opts};
use crate::store::{Op, Store};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Req {
    Write { sector: u64, sectors: u64, fill: u8 },
    Discard { sector: u64, sectors: u64 },
    Zeroes { sector: u64, sectors: u64 },
}

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<Req>),
    Flush,
    Checkpoint,
    Clean,
    Reopen,
    Snapshot,
    DeleteSnapshot(usize),
    Revert(usize),
    /// One chunk of a deleted snapshot's blocks given back.
    Reclaim,
    /// Snapshot trees' dirty leaves written ahead of the checkpoint.
    Prewrite,
    /// A checkpoint frozen while these batches commit past its freeze point, then taken to
    /// a stage (`live::STAGES`): short of committed, a flush and a crash follow.
    Live(Vec<Vec<Req>>, usize),
}

const SECTORS: u64 = (1 << 20) / 512;

fn req() -> impl Strategy<Value = Req> {
    let range = (0..SECTORS).prop_flat_map(|s| (Just(s), 1..=(SECTORS - s).min(40)));
    prop_oneof![
        6 => (range.clone(), any::<u8>()).prop_map(|((sector, sectors), fill)| Req::Write { sector, sectors, fill }),
        1 => range.clone().prop_map(|(sector, sectors)| Req::Discard { sector, sectors }),
        1 => range.prop_map(|(sector, sectors)| Req::Zeroes { sector, sectors }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => proptest::collection::vec(req(), 1..8).prop_map(Step::Batch),
        2 => Just(Step::Flush),
        2 => Just(Step::Checkpoint),
        3 => Just(Step::Clean),
        1 => Just(Step::Reopen),
        1 => Just(Step::Snapshot),
        1 => (0usize..4).prop_map(Step::DeleteSnapshot),
        1 => (0usize..4).prop_map(Step::Revert),
        2 => Just(Step::Reclaim),
        2 => Just(Step::Prewrite),
        3 => (proptest::collection::vec(proptest::collection::vec(req(), 1..4), 0..5), 0usize..4)
            .prop_map(|(b, stage)| Step::Live(b, stage)),
    ]
}

/// The data and the ops of a batch.
fn datas_of(reqs: &[Req]) -> Vec<Vec<u8>> {
    reqs.iter()
        .map(|r| match r {
            Req::Write {
                sector,
                sectors,
                fill,
            } => pattern(*sector, *sectors, *fill),
            _ => Vec::new(),
        })
        .collect()
}

fn ops_of<'a>(reqs: &[Req], datas: &'a [Vec<u8>]) -> Vec<Op<'a>> {
    reqs.iter()
        .zip(datas)
        .map(|(r, d)| match *r {
            Req::Write { sector, .. } => Op::Write {
                offset: sector * 512,
                data: d,
            },
            Req::Discard { sector, sectors } => Op::Discard {
                offset: sector * 512,
                len: sectors * 512,
            },
            Req::Zeroes { sector, sectors } => Op::WriteZeroes {
                offset: sector * 512,
                len: sectors * 512,
            },
        })
        .collect()
}

/// What a committed batch does to the model.
fn apply_to_model(model: &mut [u8], reqs: &[Req], datas: &[Vec<u8>]) {
    for (r, d) in reqs.iter().zip(datas) {
        match *r {
            Req::Write { sector, .. } => {
                let o = (sector * 512) as usize;
                model[o..o + d.len()].copy_from_slice(d);
            }
            Req::Discard { sector, sectors } | Req::Zeroes { sector, sectors } => {
                let o = (sector * 512) as usize;
                model[o..o + (sectors * 512) as usize].fill(0);
            }
        }
    }
}

/// Data for a write: the fill byte mixed with the sector number, so misplaced sectors show.
/// One fill in four gives noise instead (seeded by the sector), so a compressed container
/// holds both packed and raw blocks.
fn pattern(sector: u64, sectors: u64, fill: u8) -> Vec<u8> {
    let mut v = vec![fill; (sectors * 512) as usize];
    for (i, chunk) in v.chunks_mut(512).enumerate() {
        let s = sector + i as u64;
        if fill % 4 == 3 {
            let mut x = s.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(fill) | 1;
            for b in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        chunk[..8].copy_from_slice(&s.to_le_bytes());
    }
    v
}

fn check(store: &Store, model: &[u8]) -> Result<(), TestCaseError> {
    let mut got = vec![0u8; model.len()];
    store
        .read(0, &mut got)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    if got != model {
        let first = got.iter().zip(model).position(|(a, b)| a != b).unwrap_or(0);
        return Err(TestCaseError::fail(format!(
            "disk differs from the model at byte {first}"
        )));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(steps in proptest::collection::vec(step(), 1..60)) {
        let opts = small_opts();
        let (dev, mut store) = new_store(&opts);
        let mut model = vec![0u8; 1 << 20];
        let mut snaps: Vec<(u64, Vec<u8>)> = Vec::new();
        for s in steps {
            match s {
                Step::Batch(reqs) => {
                    let datas = datas_of(&reqs);
                    match store.write_batch(0, &ops_of(&reqs, &datas)) {
                        Ok(()) => {}
                        // Snapshots pin old versions, so a small container may fill up; a
                        // failed batch changes nothing. Without snapshots it is a bug.
                        Err(crate::store::StoreError::NoSpace) if !snaps.is_empty() => {
                            let (id, _) = snaps.remove(0);
                            store.delete_snapshot(id).unwrap();
                            check(&store, &model)?;
                            continue;
                        }
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                    apply_to_model(&mut model, &reqs, &datas);
                }
                Step::Flush => store.flush().unwrap(),
                Step::Checkpoint => store.checkpoint().unwrap(),
                Step::Clean => match store.clean_step() {
                    Ok(_) => {}
                    // With snapshots pinning a full container, the cleaner has nowhere to
                    // move blocks to; it fails and changes nothing (checked below).
                    Err(crate::store::StoreError::NoSpace) if !snaps.is_empty() => {
                        check(&store, &model)?;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("clean: {e}"))),
                },
                Step::Reopen => {
                    drop(store);
                    store = Store::open(dev.clone(), crate::store::tests::store_opts()).unwrap();
                }
                Step::Snapshot => {
                    if snaps.len() < 4 {
                        let id = store.create_snapshot("s").unwrap();
                        snaps.push((id, model.clone()));
                    }
                }
                Step::DeleteSnapshot(i) => {
                    if i < snaps.len() {
                        let (id, _) = snaps.remove(i);
                        store.delete_snapshot(id).unwrap();
                    }
                }
                Step::Revert(i) => {
                    if let Some((id, img)) = snaps.get(i) {
                        store.revert_to_snapshot(*id).unwrap();
                        model = img.clone();
                    }
                }
                Step::Reclaim => {
                    store.reclaim_step().unwrap();
                }
                Step::Prewrite => {
                    store.prewrite_frozen().unwrap();
                }
                Step::Live(batches, stage) => {
                    let frozen = super::live::freeze(&store).unwrap();
                    for reqs in &batches {
                        // Room for the batch without a checkpoint: one would wait for this one.
                        if !super::live::room_for_a_batch(&store) {
                            break;
                        }
                        let datas = datas_of(reqs);
                        match store.write_batch(0, &ops_of(reqs, &datas)) {
                            Ok(()) => apply_to_model(&mut model, reqs, &datas),
                            Err(crate::store::StoreError::NoSpace) if !snaps.is_empty() => {}
                            Err(e) => return Err(TestCaseError::fail(e.to_string())),
                        }
                    }
                    let stage = super::live::STAGES[stage];
                    store.flush().unwrap();
                    super::live::finish(&store, frozen, stage).unwrap();
                    if stage != super::live::Stage::Committed {
                        // Cut short by a crash: everything was flushed, so all of it stays.
                        drop(store);
                        dev.crash(crate::testing::CrashMode::DropAll);
                        store = Store::open(dev.clone(), crate::store::tests::store_opts()).unwrap();
                    }
                }
            }
            check(&store, &model)?;
        }
        let listed: Vec<u64> = store.list_snapshots().iter().map(|s| s.seq).collect();
        prop_assert_eq!(listed, snaps.iter().map(|s| s.0).collect::<Vec<_>>());
        let report = store.fsck();
        prop_assert!(report.is_clean(), "fsck: {:?}", report.problems);
        drop(store);
        let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
        check(&store, &model)?;
        let report = store.fsck();
        prop_assert!(report.is_clean(), "fsck after reopen: {:?}", report.problems);
        // With every deleted snapshot's blocks given back, a block no tree holds is a leak.
        store.reclaim_all().unwrap();
        prop_assert_eq!(store.info().deleting_snapshots, 0);
        check(&store, &model)?;
        let report = store.fsck();
        prop_assert!(report.is_clean(), "fsck after the deletes finished: {:?}", report.problems);
    }
}

/// Overwriting the whole disk many times only works if the cleaner and checkpoints
/// give space back; discard must drop the usage counts.
#[test]
fn sustained_overwrites_reclaim_space() {
    let (_dev, store) = new_store(&small_opts());
    let mut model = vec![0u8; 1 << 20];
    for round in 0..12u64 {
        for blk in 0..256u64 {
            let d = pattern(blk * 8, 8, round as u8);
            store
                .write_batch(
                    1,
                    &[Op::Write {
                        offset: blk * 4096,
                        data: &d,
                    }],
                )
                .unwrap();
            model[(blk * 4096) as usize..((blk + 1) * 4096) as usize].copy_from_slice(&d);
        }
    }
    check(&store, &model).unwrap();
    let before = store.info().used_data_bytes;
    assert_eq!(before, 1 << 20);
    store
        .write_batch(
            0,
            &[Op::Discard {
                offset: 0,
                len: 1 << 19,
            }],
        )
        .unwrap();
    assert_eq!(
        store.info().used_data_bytes,
        1 << 19,
        "discard gives space back"
    );
    let st = store.stats();
    assert!(st.checkpoints > 0);
    assert!(st.segments_cleaned > 0 || st.checkpoints > 0);
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A container without spare space answers NoSpace, keeps serving reads, stays consistent.
#[test]
fn full_container_says_no_space_and_keeps_reading() {
    let (dev, store) = new_store(&small_opts());
    let d = vec![7u8; 1 << 20];
    store
        .write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &d[..1 << 18],
            }],
        )
        .unwrap();
    // Snapshots pin every version, so repeated overwrites must eventually run out of space.
    let mut hit = false;
    for i in 0..64u64 {
        if i % 2 == 0 && store.create_snapshot("pin").is_err() {
            hit = true;
            break;
        }
        // Noise: a compressed container fills up as fast.
        let fill = pattern(0, 2048, (4 * i + 3) as u8);
        match store.write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &fill[..1 << 18],
            }],
        ) {
            Ok(()) => {}
            Err(crate::store::StoreError::NoSpace) => {
                hit = true;
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(hit, "the container never filled up");
    let mut b = vec![0u8; 4096];
    store.read(0, &mut b).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
    drop(store);
    let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// One 4 KiB write of `fill` at block `blk`.
/// A 16 MiB container (4096 blocks, 16 LBA leaves when full) with 256 KiB segments and a
/// 1 MiB journal.
fn mid_opts() -> crate::store::CreateOptions {
    crate::store::CreateOptions {
        capacity: 16 << 20,
        segment_bytes: 256 << 10,
        journal_bytes: Some(1 << 20),
        overprovision_percent: 50,
        encryption: crate::store::tests::test_key(),
        compression: crate::store::tests::test_compression(),
    }
}

/// Finishes every pending delete; returns the block versions given back (VBAs: in a
/// compressed run a packed block stays while any of its slots is held).
fn reclaimed_blocks(store: &Store) -> u64 {
    let vbas = |s: &Store| {
        let st = s.read_lock(&s.state);
        st.maps.vba.entries(st.maps.vba_root).len() as u64
    };
    let before = vbas(store);
    store.reclaim_all().unwrap();
    before - vbas(store)
}

/// Writes the first `blocks` blocks with 7s, 64 blocks per batch.
fn fill_with_sevens(store: &Store, blocks: u64) {
    let data = vec![7u8; 64 * 4096];
    for first in (0..blocks).step_by(64) {
        let op = Op::Write {
            offset: first * 4096,
            data: &data,
        };
        store.write_batch(0, &[op]).unwrap();
    }
}

/// Block 7 written, snapshot a, block 7 rewritten, snapshot b, then the running point reverted
/// to a: the history after which a later tree can hold what the one before it dropped.
fn reverted_past_a_second_version(store: &Store) -> (u64, u64) {
    write_block(store, 7, 1);
    let a = store.create_snapshot("a").unwrap();
    write_block(store, 7, 2);
    let b = store.create_snapshot("b").unwrap();
    store.revert_to_snapshot(a).unwrap();
    (a, b)
}

/// Deletes a snapshot and gives its blocks back at once, as the cleaner would soon after.
fn delete(store: &Store, id: u64) -> crate::store::Result<()> {
    store.delete_snapshot(id)?;
    store.reclaim_all()
}

fn write_block(store: &Store, blk: u64, fill: u8) {
    let d = pattern(blk * 8, 8, fill);
    store
        .write_batch(
            0,
            &[Op::Write {
                offset: blk * 4096,
                data: &d,
            }],
        )
        .unwrap();
}

/// After a revert the running point descends from an older snapshot, not the newest: deleting
/// that older one must keep the blocks the running point still maps, and the running point's
/// next write must not leave the node it copied behind (fsck counts every node's block).
#[test]
fn deleting_the_snapshot_a_revert_went_back_to_keeps_its_blocks() {
    let (dev, store) = new_store(&small_opts());
    let mut model = vec![0u8; 1 << 20];
    write_block(&store, 7, 1);
    model[7 * 4096..8 * 4096].copy_from_slice(&pattern(7 * 8, 8, 1));
    let a = store.create_snapshot("a").unwrap();
    write_block(&store, 7, 2);
    write_block(&store, 9, 2);
    let _b = store.create_snapshot("b").unwrap();
    store.revert_to_snapshot(a).unwrap();
    delete(&store, a).unwrap();
    check(&store, &model).unwrap();
    write_block(&store, 0, 3);
    model[..4096].copy_from_slice(&pattern(0, 8, 3));
    check(&store, &model).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
    drop(store);
    let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
    check(&store, &model).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "after reopen: {:?}", r.problems);
}

/// After a revert to an older snapshot and its delete, blocks of it live on only in the running
/// point; a snapshot taken then is their last holder once the running point overwrites them,
/// and deleting it must free them (they lie below its own range). Both found by the crash test.
#[test]
fn blocks_inherited_through_a_revert_are_freed_by_the_delete_of_their_last_holder() {
    let (dev, store) = new_store(&small_opts());
    let (a, _b) = reverted_past_a_second_version(&store);
    delete(&store, a).unwrap();
    // Block 7 (version 1) is now held by the running point alone: b has version 2.
    let c = store.create_snapshot("c").unwrap();
    write_block(&store, 7, 3);
    delete(&store, c).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "delete of the last holder: {:?}", r.problems);
    drop(store);
    let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "after reopen: {:?}", r.problems);
}

/// The same inherited block, dropped by a revert instead: the revert frees it.
#[test]
fn a_revert_frees_blocks_only_the_running_point_held() {
    let (_dev, store) = new_store(&small_opts());
    let (a, b) = reverted_past_a_second_version(&store);
    delete(&store, a).unwrap();
    let used = store.info().used_data_bytes;
    store.revert_to_snapshot(b).unwrap();
    assert_eq!(
        store.info().used_data_bytes,
        used - 4096,
        "version 1 of block 7 was the running point's alone"
    );
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A block whose snapshots were all deleted is the running point's alone again: overwriting
/// it frees it (the usage table and the maps agree, nothing leaks).
#[test]
fn overwriting_a_block_its_snapshots_no_longer_hold_frees_it() {
    let (_dev, store) = new_store(&small_opts());
    write_block(&store, 3, 1);
    let a = store.create_snapshot("a").unwrap();
    let _b = store.create_snapshot("b").unwrap();
    delete(&store, a).unwrap();
    let used = store.info().used_data_bytes;
    write_block(&store, 3, 2);
    assert_eq!(
        store.info().used_data_bytes,
        used + 4096,
        "b still holds the old block"
    );
    let (_dev, store) = new_store(&small_opts());
    write_block(&store, 3, 1);
    let a = store.create_snapshot("a").unwrap();
    let b = store.create_snapshot("b").unwrap();
    store.revert_to_snapshot(a).unwrap();
    delete(&store, b).unwrap();
    delete(&store, a).unwrap();
    let used = store.info().used_data_bytes;
    write_block(&store, 3, 2);
    assert_eq!(
        store.info().used_data_bytes,
        used,
        "the old block was freed"
    );
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A thousand snapshots, with writes between them, fit the container's checkpoint and come
/// back after a reopen with the data each froze; the write path keeps working after them.
#[test]
fn a_thousand_snapshots_survive_a_reopen() {
    // Each snapshot pins one block version and one copied leaf, and metadata segments are not
    // cleaned: room for them all, and segments that hold a root of 1000 snapshots.
    let (dev, store) = new_store(&crate::store::CreateOptions {
        capacity: 16 << 20,
        segment_bytes: 256 << 10,
        journal_bytes: Some(1 << 20),
        ..small_opts()
    });
    for i in 0..1000u64 {
        let d = pattern((i % 8) * 8, 8, (i % 251) as u8);
        let w = [Op::Write {
            offset: (i % 8) * 4096,
            data: &d,
        }];
        if let Err(e) = store.write_batch(0, &w) {
            panic!(
                "write {i}: {e}; {} free segments",
                store.info().free_segments
            );
        }
        if let Err(e) = store.create_snapshot(&format!("s{i}")) {
            panic!(
                "snapshot {i}: {e}; {} free segments",
                store.info().free_segments
            );
        }
    }
    write_block(&store, 0, 0xee);
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
    drop(store);
    let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
    let snaps = store.list_snapshots();
    assert_eq!(snaps.len(), 1000);
    assert_eq!(snaps[999].name, "s999");
    // Snapshot 500 froze block 500 % 8 = 4 with fill 500 % 251.
    use crate::store::admin::diff::TreeRef;
    let d = store
        .diff(TreeRef::Empty, TreeRef::Snapshot(snaps[500].seq))
        .unwrap();
    let b4 = d.blocks.iter().find(|b| b.lba == 4).unwrap();
    let mut got = vec![0u8; 4096];
    store.read_vbas(&[b4.vba.unwrap()], &mut got).unwrap();
    assert_eq!(got, pattern(4 * 8, 8, (500 % 251) as u8));
    let r = store.fsck();
    assert!(r.is_clean(), "after reopen: {:?}", r.problems);
    write_block(&store, 1, 1);
}

/// Random small writes, then whole-disk sequential overwrites, over and over: every checkpoint
/// rewrites the nodes that changed, and the ones that did not would keep their metadata
/// segments alive forever unless the cleaner gathers them. No write may fail for lack of space
/// on a disk without snapshots.
#[test]
fn random_then_sequential_overwrites_never_run_out_of_space() {
    // Enough blocks for dozens of leaves, small segments, a short journal (many checkpoints),
    // little spare room: without gathering metadata segments this fails in the second round.
    let opts = crate::store::CreateOptions {
        capacity: 16 << 20,
        overprovision_percent: 10,
        ..small_opts()
    };
    let (_dev, store) = new_store(&opts);
    let blocks = 4096u64;
    let mut rng = crate::testing::SplitMix::new(99);
    for round in 0..8u8 {
        for _ in 0..3000 {
            let blk = rng.below(blocks);
            write_block(&store, blk, round);
        }
        for chunk in 0..blocks / 64 {
            let d = pattern(chunk * 512, 512, round ^ 0x80);
            store
                .write_batch(
                    0,
                    &[Op::Write {
                        offset: chunk * 64 * 4096,
                        data: &d,
                    }],
                )
                .unwrap_or_else(|e| panic!("round {round}, chunk {chunk}: {e}"));
        }
    }
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A container from before journaled deletes: its first delete takes a checkpoint and marks it
/// as using them; later deletes are journal records that a reopen replays.
#[test]
fn deletes_upgrade_an_older_container_and_survive_a_reopen() {
    use crate::store::log::superblock::{INCOMPAT_BACKGROUND_DELETES, INCOMPAT_JOURNAL_DELETES};
    let (dev, store) = new_store(&small_opts());
    {
        let mut j = store.lock(&store.journal);
        j.superblock.incompat &= !(INCOMPAT_JOURNAL_DELETES | INCOMPAT_BACKGROUND_DELETES);
        store.checkpoint_locked(&mut j).unwrap();
    }
    // Opened as a container from before both features: no record of reverts either.
    drop(store);
    let store = Store::open(dev.clone(), crate::store::tests::store_opts()).unwrap();
    assert!(store.read_lock(&store.state).maps.running_reverted);
    write_block(&store, 1, 1);
    let a = store.create_snapshot("a").unwrap();
    write_block(&store, 1, 2);
    let b = store.create_snapshot("b").unwrap();
    write_block(&store, 1, 3);
    let c = store.create_snapshot("c").unwrap();
    store.delete_snapshot(a).unwrap();
    let bit = |s: &Store| s.lock(&s.journal).superblock.incompat & INCOMPAT_JOURNAL_DELETES;
    assert_ne!(bit(&store), 0, "the first delete marks the container");
    assert_ne!(
        store.lock(&store.journal).superblock.incompat & INCOMPAT_BACKGROUND_DELETES,
        0
    );
    let records = store.lock(&store.journal).cursor.records;
    store.delete_snapshot(b).unwrap();
    assert_eq!(
        store.lock(&store.journal).cursor.records,
        records + 2,
        "the second delete is one journal record (and the mark of the flush that follows it)"
    );
    drop(store);
    let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
    let ids: Vec<u64> = store.list_snapshots().iter().map(|s| s.seq).collect();
    assert_eq!(ids, [c], "the replayed delete of b");
    assert_ne!(bit(&store), 0);
    assert_eq!(
        store.info().deleting_snapshots,
        2,
        "a from the checkpoint, b from the replay"
    );
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(
        reclaimed_blocks(&store),
        2,
        "versions 1 and 2 of block 1 were a's and b's alone"
    );
    assert_eq!(store.info().deleting_snapshots, 0);
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// Deleting the oldest of several snapshots on a full disk looks only at the blocks the next
/// tree changed (what it may hold alone), not at the whole disk, and frees exactly those.
#[test]
fn a_delete_looks_only_at_what_the_snapshot_may_hold_alone() {
    let (_dev, store) = new_store(&mid_opts());
    let blocks = 4096u64;
    fill_with_sevens(&store, blocks);
    let a = store.create_snapshot("a").unwrap();
    for b in [3u64, 900, 2000] {
        write_block(&store, b, 1);
    }
    let _b = store.create_snapshot("b").unwrap();
    for b in [5u64, 901] {
        write_block(&store, b, 2);
    }
    store.delete_snapshot(a).unwrap();
    let plan = store
        .read_lock(&store.state)
        .maps
        .reclaim_candidates(a)
        .unwrap();
    assert_eq!(
        plan.owned.len() + plan.inherited.len(),
        3,
        "the blocks b rewrote, of {blocks} on the disk"
    );
    assert_eq!(
        reclaimed_blocks(&store),
        3,
        "a's versions of blocks 3, 900 and 2000 were its alone"
    );
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A block the next snapshot dropped can come back through a revert: a snapshot taken after
/// the revert holds it, so deleting the first one must keep it. Without the revert, nothing
/// later than the next snapshot is asked.
#[test]
fn a_block_a_revert_brought_back_survives_the_delete_of_its_first_holder() {
    let (dev, store) = new_store(&small_opts());
    let (a, _b) = reverted_past_a_second_version(&store);
    // c holds version 1 of block 7 again; b does not.
    let c = store.create_snapshot("c").unwrap();
    write_block(&store, 7, 3);
    let want = pattern(7 * 8, 8, 1);
    delete(&store, a).unwrap();
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
    // Reopened, the revert is still known, and c still reads version 1.
    drop(store);
    let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
    let d = store
        .diff(
            crate::store::admin::diff::TreeRef::Empty,
            crate::store::admin::diff::TreeRef::Snapshot(c),
        )
        .unwrap();
    let vba = d
        .blocks
        .iter()
        .find(|b| b.lba == 7)
        .and_then(|b| b.vba)
        .unwrap();
    let mut got = vec![0u8; 4096];
    store.read_vbas(&[vba], &mut got).unwrap();
    assert_eq!(got, want, "c's block 7 is version 1");
    let r = store.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

/// A snapshot's dirty leaves written ahead are not written again by the next checkpoint, and
/// the container reads back the same after a reopen.
#[test]
fn leaves_written_ahead_shorten_the_checkpoint() {
    // The same history twice, with and without writing ahead: (leaves written ahead,
    // blocks the checkpoint then wrote).
    let run = |ahead: bool| {
        let (dev, store) = new_store(&mid_opts());
        let mut model = vec![7u8; 16 << 20];
        // Every block mapped (16 leaves), then all clean.
        fill_with_sevens(&store, 4096);
        store.checkpoint().unwrap();
        // Fewer writes than a checkpoint takes (one record each), over every leaf.
        for b in (0..4096u64).step_by(41) {
            write_block(&store, b, 1);
            model[b as usize * 4096..(b as usize + 1) * 4096].copy_from_slice(&pattern(
                b * 8,
                8,
                1,
            ));
        }
        store.create_snapshot("a").unwrap();
        let written = if ahead {
            let n = store.prewrite_frozen().unwrap();
            assert_eq!(
                store.prewrite_frozen().unwrap(),
                0,
                "nothing new was frozen"
            );
            n
        } else {
            0
        };
        write_block(&store, 5, 2);
        model[5 * 4096..6 * 4096].copy_from_slice(&pattern(5 * 8, 8, 2));
        let before = store.stats().checkpoint_write_bytes;
        store.checkpoint().unwrap();
        let blocks = (store.stats().checkpoint_write_bytes - before) / 4096;
        let r = store.fsck();
        assert!(r.is_clean(), "{:?}", r.problems);
        drop(store);
        let store = Store::open(dev, crate::store::tests::store_opts()).unwrap();
        check(&store, &model[..]).unwrap();
        let r = store.fsck();
        assert!(r.is_clean(), "after reopen: {:?}", r.problems);
        (written as u64, blocks)
    };
    let (written, with) = run(true);
    let (_, without) = run(false);
    assert_eq!(written, 16, "the snapshot's 16 dirty leaves");
    assert_eq!(
        with + written,
        without,
        "the checkpoint skipped exactly those"
    );
}
