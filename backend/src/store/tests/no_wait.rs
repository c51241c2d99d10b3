//! Plans that never wait ([`Store::try_plan_batch`]), what a queue with a batch of its own in
//! flight plans with: they plan when there is room, and refuse, leaving the container
//! consistent, where planning would wait.

use super::{new_store, noise, opts_for, small_opts};
use crate::store::layout::BLOCK;
use crate::store::log::batch;
use crate::store::log::write::Waits;
use crate::store::{CreateOptions, Op, Store, StoreError};
use crate::testing::FaultyDevice;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What each block written last holds: the version of its bytes ([`bytes`]).
type Model = BTreeMap<u64, u64>;

/// Version `v` of `count` blocks from `lba` (no two blocks or versions alike, and they do
/// not compress: one physical block each in a compressed run too).
fn bytes(lba: u64, count: u64, v: u64) -> Vec<u8> {
    (lba..lba + count)
        .flat_map(|b| noise(BLOCK as usize, (b << 24) | v))
        .collect()
}

/// Writes `count` blocks from `lba` in one batch that may wait, as a new version.
fn write(s: &Store, model: &mut Model, lba: u64, count: u64) {
    let v = model.values().max().map_or(1, |v| v + 1);
    let data = bytes(lba, count, v);
    let op = Op::Write {
        offset: lba * BLOCK,
        data: &data,
    };
    s.write_batch(0, &[op]).unwrap();
    model.extend((lba..lba + count).map(|b| (b, v)));
}

/// Every block reads as the model says.
fn check(s: &Store, model: &Model) {
    let mut b = vec![0u8; BLOCK as usize];
    for (&lba, &v) in model {
        s.read(lba * BLOCK, &mut b).unwrap();
        assert!(b == bytes(lba, 1, v), "block {lba}, version {v}");
    }
}

/// The container after a flush, opened again from its bytes: fsck-clean, reading as `model`.
fn check_reopened(s: &Store, dev: &FaultyDevice, create: &CreateOptions, model: &Model) {
    s.flush().unwrap();
    assert!(s.fsck().is_clean(), "{:?}", s.fsck());
    let image = Arc::new(FaultyDevice::from_image(dev.contents()));
    let again = Store::open(image, opts_for(create)).unwrap();
    assert!(again.fsck().is_clean(), "{:?}", again.fsck());
    check(&again, model);
}

/// The next record's LSN and VBA: what a batch that reserved would have moved.
fn next_lsn_and_vba(s: &Store) -> (u64, u64) {
    let lsn = s.lock(&s.journal).cursor.next_lsn;
    (lsn, s.read_lock(&s.state).maps.next_vba)
}

fn free_in_writer(s: &Store) -> u64 {
    s.lock(&s.writers[0]).free()
}

/// Issues a plan's writes through the device, applies and finishes it.
fn run(s: &Store, plan: crate::store::WritePlan<'_>) {
    for (offset, parts) in plan.writes() {
        s.raw_device().write_at(&parts.concat(), offset).unwrap();
    }
    let batch = s.apply_plan(plan);
    s.finish_batch(batch, Ok(())).unwrap();
}

/// Plans `count` blocks from `lba` with `waits` (skipping the checks done up front),
/// holding writer 0.
fn prepare(s: &Store, lba: u64, data: &[u8], waits: Waits) -> crate::store::Result<()> {
    let ops = [Op::Write {
        offset: lba * BLOCK,
        data,
    }];
    let no_read = &mut |_, _: &mut [u8]| Err(StoreError::Invalid("whole blocks".into()));
    let plan = batch::plan(&ops, s.capacity(), no_read)?;
    let w = s.lock(&s.writers[0]);
    s.prepare((0, w), plan, 1, waits).map(|p| run(s, p))
}

#[test]
fn plans_without_waiting_when_there_is_room() {
    let create = small_opts();
    let (dev, s) = new_store(&create);
    let mut model = Model::new();
    write(&s, &mut model, 0, 4);
    let data = bytes(10, 8, 99);
    let ops = [Op::Write {
        offset: 10 * BLOCK,
        data: &data,
    }];
    let plan = s
        .try_plan_batch(0, &ops)
        .unwrap()
        .expect("room for the batch");
    run(&s, plan);
    model.extend((10..18).map(|b| (b, 99)));
    check(&s, &model);
    assert_eq!(s.stats().plans_refused, 0);
    check_reopened(&s, &dev, &create, &model);
}

#[test]
fn refuses_until_a_fresh_chain_has_its_first_checkpoint() {
    let create = small_opts();
    let (dev, s) = new_store(&create);
    let before = next_lsn_and_vba(&s);
    let data = bytes(0, 1, 1);
    let ops = [Op::Write {
        offset: 0,
        data: &data,
    }];
    assert!(s.try_plan_batch(0, &ops).unwrap().is_none());
    assert_eq!(next_lsn_and_vba(&s), before, "nothing reserved or taken");
    assert_eq!(s.stats().checkpoints, 0, "the refusal took no checkpoint");
    let mut model = Model::new();
    write(&s, &mut model, 0, 1);
    let plan = s
        .try_plan_batch(0, &ops)
        .unwrap()
        .expect("planned once it has one");
    run(&s, plan);
    check(&s, &model);
    check_reopened(&s, &dev, &create, &model);
}

#[test]
fn refuses_a_partial_block_which_it_would_have_to_read() {
    let create = small_opts();
    let (dev, s) = new_store(&create);
    let mut model = Model::new();
    write(&s, &mut model, 1, 2);
    let before = next_lsn_and_vba(&s);
    let sector = vec![0x5au8; 512];
    let partial = [
        Op::Write {
            offset: BLOCK + 512,
            data: &sector,
        },
        Op::Discard {
            offset: 2 * BLOCK,
            len: 1024,
        },
    ];
    for op in partial {
        assert!(s.try_plan_batch(0, &[op]).unwrap().is_none(), "{op:?}");
    }
    assert_eq!(next_lsn_and_vba(&s), before, "nothing reserved or taken");
    assert_eq!(s.stats().plans_refused, 2);
    // Planned again, waiting allowed, it merges the blocks as ever.
    s.write_batch(0, &partial).unwrap();
    let mut b = vec![0u8; BLOCK as usize];
    s.read(BLOCK, &mut b).unwrap();
    let mut want = bytes(1, 1, model[&1]);
    want[512..1024].fill(0x5a);
    assert!(b == want);
    model.remove(&1);
    model.remove(&2);
    check_reopened(&s, &dev, &create, &model);
}

#[test]
fn refuses_when_the_journal_wants_a_checkpoint_first() {
    let create = small_opts();
    let (dev, s) = new_store(&create);
    let mut model = Model::new();
    // No background thread takes checkpoints here: past the threshold, the next record
    // would take one.
    let full = |s: &Store| s.lock(&s.journal).ring.used >= s.checkpoint_threshold();
    let mut lba = 0;
    while !full(&s) {
        assert!(lba < 64, "the journal never reached its threshold");
        write(&s, &mut model, lba, 1);
        lba += 1;
    }
    let checkpoints = s.stats().checkpoints;
    let (before, free) = (next_lsn_and_vba(&s), free_in_writer(&s));
    let data = bytes(100, 2, 500);
    let ops = [Op::Write {
        offset: 100 * BLOCK,
        data: &data,
    }];
    assert!(s.try_plan_batch(0, &ops).unwrap().is_none());
    assert_eq!(next_lsn_and_vba(&s), before, "nothing reserved or taken");
    assert_eq!(free_in_writer(&s), free, "no block taken");
    // Refused after its blocks were taken (the journal filled meanwhile): they are dead
    // space, and the container stays consistent.
    let late = prepare(&s, 100, &data, Waits::Refused);
    assert!(matches!(late, Err(StoreError::WouldWait)), "{late:?}");
    assert_eq!(
        s.lock(&s.journal).cursor.next_lsn,
        before.0,
        "no record reserved"
    );
    assert_eq!(
        s.stats().checkpoints,
        checkpoints,
        "the refusals took no checkpoint"
    );
    s.write_batch(0, &ops).unwrap();
    assert_eq!(s.stats().checkpoints, checkpoints + 1);
    model.extend((100..102).map(|b| (b, 500)));
    check(&s, &model);
    check_reopened(&s, &dev, &create, &model);
}

#[test]
fn refuses_when_no_segment_is_free_without_making_room() {
    let create = small_opts();
    let (dev, s) = new_store(&create);
    let seg = s.geometry().seg_blocks;
    let blocks = s.capacity() / BLOCK;
    let mut model = Model::new();
    // Half-segment batches over and over: the writer's segment is half full, then full.
    let stuck = |s: &Store, left: u64| {
        s.read_lock(&s.state).sut.free_for_guests() == 0 && free_in_writer(s) == left
    };
    let mut i = 0;
    while !stuck(&s, seg / 2) {
        assert!(i < 40 * blocks / seg, "the free segments never ran out");
        write(&s, &mut model, (i * seg / 2) % blocks, seg / 2);
        i += 1;
    }
    let before = next_lsn_and_vba(&s);
    let data = bytes(0, seg, 700);
    let ops = [Op::Write {
        offset: 0,
        data: &data,
    }];
    assert!(s.try_plan_batch(0, &ops).unwrap().is_none());
    assert_eq!(next_lsn_and_vba(&s), before, "nothing reserved or taken");
    assert_eq!(free_in_writer(&s), seg / 2, "no block taken");
    let cleaned = s.stats().writer_cleaned;
    // Refused once the writer's segment is used up: those blocks are dead space.
    let late = prepare(&s, 0, &data, Waits::Refused);
    assert!(matches!(late, Err(StoreError::WouldWait)), "{late:?}");
    assert_eq!(
        free_in_writer(&s),
        0,
        "the open segment's blocks were taken"
    );
    assert_eq!(
        s.lock(&s.journal).cursor.next_lsn,
        before.0,
        "no record reserved"
    );
    assert_eq!(
        s.stats().writer_cleaned,
        cleaned,
        "the refusals cleaned nothing"
    );
    assert!(s.ensure_ok().is_ok());
    let stats = s.stats();
    assert_eq!((stats.plans_refused, stats.plans_refused_late), (1, 0));
    // Planned again, waiting allowed, it makes room.
    s.write_batch(0, &ops).unwrap();
    model.extend((0..seg).map(|b| (b, 700)));
    check(&s, &model);
    check_reopened(&s, &dev, &create, &model);
}
