//! The free space kept for checkpoints, sized from the trees as they are: on a full disk guest
//! writes and the cleaner get the room the container's worst case would hold back, every
//! checkpoint still finds room, and trees that grow (a snapshot's copies) raise the reserve.

use super::{noise, read_all};
use crate::store::tests::opts_for;
use crate::store::{CleanerConfig, CleanerHandle, CreateOptions, Op, SpaceOptions, Store};
use crate::testing::{FaultyDevice, SplitMix};
use std::sync::Arc;
use std::time::Duration;

const BLOCK: usize = 4096;

/// 16 MiB in 64 KiB segments: small trees against a worst case of 18 segments.
fn create() -> CreateOptions {
    CreateOptions {
        capacity: 16 << 20,
        segment_bytes: 64 << 10,
        journal_bytes: Some(256 << 10),
        overprovision_percent: 25,
        encryption: super::test_key(),
        compression: super::test_compression(),
    }
}

fn open(dev: &Arc<FaultyDevice>, create: &CreateOptions) -> Arc<Store> {
    let opts = crate::store::StoreOptions {
        space: SpaceOptions {
            wait: Duration::from_secs(10),
            ..Default::default()
        },
        ..opts_for(create)
    };
    Arc::new(Store::open(dev.clone(), opts).unwrap())
}

/// Writes block `lba` with incompressible data (so that compressed runs fill the disk too).
fn write(s: &Store, model: &mut [u8], lba: u64, seed: u64) {
    let data = noise(BLOCK, seed);
    let at = lba as usize * BLOCK;
    model[at..at + BLOCK].copy_from_slice(&data);
    s.write_batch(
        0,
        &[Op::Write {
            offset: lba * BLOCK as u64,
            data: &data,
        }],
    )
    .unwrap();
}

#[test]
fn a_full_disk_uses_the_room_small_trees_leave_and_checkpoints_keep_theirs() {
    let create = create();
    let geo = create.geometry().unwrap();
    let worst = geo.reserved_segments();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), &create).unwrap();
    let blocks = create.capacity / BLOCK as u64;
    let mut model = vec![0u8; create.capacity as usize];
    let s = open(&dev, &create);
    for lba in 0..blocks {
        write(&s, &mut model, lba, lba);
    }
    let full = s.reserved_segments();
    assert!(
        full < worst,
        "a full disk's trees need less than the worst case: {full} of {worst}"
    );

    // Overwrite twice over at random with the cleaner at work: every batch finds room, free
    // space goes below what the worst case would hold back, and checkpoints keep committing.
    let cleaner = CleanerHandle::spawn(
        Arc::clone(&s),
        CleanerConfig {
            pause: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .unwrap();
    let checkpoints = s.stats().checkpoints;
    let mut rng = SplitMix::new(23);
    let mut least_free = u64::MAX;
    for i in 0..2 * blocks {
        write(&s, &mut model, rng.below(blocks), blocks + i);
        least_free = least_free.min(s.free_segments());
    }
    drop(cleaner);
    assert!(
        least_free < worst,
        "guest writes used room the worst case holds back: at least {least_free} free, {worst} held"
    );
    assert!(s.stats().checkpoints > checkpoints, "checkpoints went on");
    assert_eq!(read_all(&s, model.len()), model);

    // A snapshot: the running tree's first changes copy the nodes it shares, and the reserve
    // grows with them.
    s.create_snapshot("before").unwrap();
    let before = s.reserved_segments();
    for i in 0..blocks / 8 {
        write(&s, &mut model, rng.below(blocks), 3 * blocks + i);
    }
    let after = s.reserved_segments();
    assert!(
        after > before,
        "copied nodes raise the reserve: {before} before, {after} after"
    );
    assert!(after <= worst);
    s.checkpoint().unwrap();
    let f = s.fsck();
    assert!(f.is_clean(), "{:?}", f.problems);
    s.flush().unwrap();
    drop(s);

    // Known again at open, from the trees loaded.
    let s = open(&dev, &create);
    assert_eq!(s.reserved_segments(), after);
    assert_eq!(read_all(&s, model.len()), model);
}
