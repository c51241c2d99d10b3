//! Space accounting, thresholds, growth of a container file and waiting for space.

use super::{new_store, small_opts};
use crate::store::CreateOptions;
use crate::store::layout::BLOCK;
use crate::store::{Op, SpaceOptions, Store, StoreError, StoreOptions};
use keel_protocol::control::{SpaceReport, SpaceState};
use std::sync::Arc;
use std::time::Duration;

/// Space is counted in physical blocks, and these tests fill them with blocks of one byte:
/// without compression even in a compressed run, so each guest block takes one.
fn raw_opts() -> CreateOptions {
    CreateOptions {
        compression: None,
        ..small_opts()
    }
}

fn write_blocks(s: &Store, first: u64, count: u64, fill: u8) -> crate::store::Result<()> {
    let data = vec![fill; (count * BLOCK) as usize];
    s.write_batch(
        0,
        &[Op::Write {
            offset: first * BLOCK,
            data: &data,
        }],
    )
}

fn assert_adds_up(r: &SpaceReport) {
    assert_eq!(
        r.live_bytes
            + r.snapshot_bytes
            + r.metadata_bytes
            + r.reclaimable_bytes
            + r.free_bytes
            + r.spare_bytes,
        r.data_bytes,
        "{r:?}"
    );
}

#[test]
fn the_figures_add_up_and_a_snapshot_pins_exactly_the_overwritten_blocks() {
    let (_dev, s) = new_store(&raw_opts());
    let empty = s.space();
    assert_adds_up(&empty);
    assert_eq!((empty.live_bytes, empty.snapshot_bytes), (0, 0));
    assert_eq!(empty.state, SpaceState::Ok);
    let geo = s.geometry();
    assert_eq!(
        empty.data_bytes,
        geo.data_segments() * geo.seg_blocks * BLOCK
    );
    assert_eq!(
        empty.spare_bytes,
        s.reserved_segments() * geo.seg_blocks * BLOCK
    );

    write_blocks(&s, 0, 64, 1).unwrap();
    let written = s.space();
    assert_adds_up(&written);
    assert_eq!(
        (written.live_bytes, written.snapshot_bytes),
        (64 * BLOCK, 0)
    );

    let snap = s.create_snapshot("before").unwrap();
    assert_eq!(s.space().snapshot_bytes, 0, "a snapshot alone pins nothing");
    write_blocks(&s, 10, 10, 2).unwrap();
    write_blocks(&s, 100, 5, 3).unwrap();
    let pinned = s.space();
    assert_adds_up(&pinned);
    assert_eq!(pinned.live_bytes, 69 * BLOCK, "the disk maps 64 + 5 blocks");
    assert_eq!(
        pinned.snapshot_bytes,
        10 * BLOCK,
        "the 10 overwritten blocks"
    );
    let info = s.info();
    assert_eq!(
        pinned.free_bytes + pinned.spare_bytes,
        info.free_segments * info.segment_bytes
    );

    s.delete_snapshot(snap).unwrap();
    s.reclaim_all().unwrap();
    let deleted = s.space();
    assert_adds_up(&deleted);
    assert_eq!(
        (deleted.live_bytes, deleted.snapshot_bytes),
        (69 * BLOCK, 0)
    );
}

#[test]
fn the_state_follows_the_thresholds() {
    let opts = SpaceOptions::default();
    assert_eq!(crate::store::state_for(84.9, &opts), SpaceState::Ok);
    assert_eq!(crate::store::state_for(85.0, &opts), SpaceState::Low);
    assert_eq!(crate::store::state_for(95.0, &opts), SpaceState::Critical);

    let (dev, s) = new_store(&raw_opts());
    drop(s);
    let s = Store::open(
        dev,
        StoreOptions {
            space: SpaceOptions {
                warn_percent: 50,
                critical_percent: 80,
                ..SpaceOptions::default()
            },
            ..crate::store::tests::store_opts()
        },
    )
    .unwrap();
    let cap = s.capacity() / BLOCK;
    let mut seen = vec![s.watch_space()];
    write_blocks(&s, 0, cap, 1).unwrap();
    seen.push(s.watch_space());
    for round in 0..8u8 {
        if s.create_snapshot(&format!("s{round}")).is_err()
            || write_blocks(&s, 0, cap / 4, round).is_err()
        {
            break;
        }
        seen.push(s.watch_space());
        assert_eq!(s.space().state, *seen.last().unwrap());
    }
    seen.dedup();
    assert_eq!(
        seen,
        [SpaceState::Ok, SpaceState::Low, SpaceState::Critical],
        "{:?}",
        s.space()
    );
}

/// A container file with `max_size` set grows while snapshots pin more than it held, and no
/// write fails; the grown container reopens with its data, snapshots and new size.
#[test]
fn a_container_file_grows_up_to_max_size_instead_of_failing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.keel");
    let create = raw_opts();
    Store::create_path(&path, &create).unwrap();
    let start = std::fs::metadata(&path).unwrap().len();
    let max = 4 * start;
    let opts = || StoreOptions {
        space: SpaceOptions {
            max_container_bytes: Some(max),
            ..SpaceOptions::default()
        },
        ..crate::store::tests::store_opts()
    };
    let s = Store::open_path(&path, opts()).unwrap();
    let cap = s.capacity() / BLOCK;
    // Three full versions of the disk, two pinned by snapshots: more than the file held.
    for round in 0..3u8 {
        if round > 0 {
            s.create_snapshot(&format!("v{round}")).unwrap();
        }
        for chunk in 0..4 {
            write_blocks(&s, chunk * cap / 4, cap / 4, round + 1).unwrap();
        }
    }
    let r = s.space();
    assert_adds_up(&r);
    assert!(r.container_bytes > start, "{r:?}");
    assert!(r.container_bytes <= max, "{r:?}");
    assert_eq!(r.max_container_bytes, Some(max / (64 << 10) * (64 << 10)));
    assert_eq!(r.snapshot_bytes, 2 * cap * BLOCK);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), r.container_bytes);
    assert!(s.fsck().is_clean(), "{:?}", s.fsck().problems);
    drop(s);

    let s = Store::open_path(&path, opts()).unwrap();
    assert_eq!(s.geometry().container_bytes(), r.container_bytes);
    let mut b = vec![0u8; BLOCK as usize];
    s.read((cap - 1) * BLOCK, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 3));
    assert_eq!(s.list_snapshots().len(), 2);
    assert!(s.fsck().is_clean(), "{:?}", s.fsck().problems);
}

/// Fills a container: the disk once, then a snapshot pins it while it is overwritten until
/// no space is left (writes do not wait: the store's default). Returns it and the snapshot.
fn full_store() -> (Store, u64) {
    let (_dev, s) = new_store(&raw_opts());
    let cap = s.capacity() / BLOCK;
    write_blocks(&s, 0, cap, 1).unwrap();
    let snap = s.create_snapshot("pin").unwrap();
    let mut full = false;
    for lba in 0..cap {
        match write_blocks(&s, lba, 1, 2) {
            Ok(()) => {}
            Err(StoreError::NoSpace) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full, "the container never filled: {:?}", s.space());
    assert_eq!(s.space().space_waits, 0);
    (s, snap)
}

#[test]
fn a_write_waiting_for_space_goes_through_when_a_snapshot_is_deleted() {
    let (s, snap) = full_store();
    s.set_space_wait(Duration::from_secs(600));
    let s = Arc::new(s);
    let last = s.capacity() / BLOCK - 1;
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || write_blocks(&s, last, 1, 9))
    };
    while s.space().space_waits == 0 && !writer.is_finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.space().space_waits, 1, "the write did not wait");
    s.delete_snapshot(snap).unwrap();
    writer.join().unwrap().unwrap();
    let mut b = vec![0u8; BLOCK as usize];
    s.read(last * BLOCK, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 9));
    assert!(s.fsck().is_clean());
}

#[test]
fn a_write_fails_once_its_wait_is_over_and_the_next_one_fails_at_once() {
    let (s, snap) = full_store();
    s.set_space_wait(Duration::from_millis(200));
    let last = s.capacity() / BLOCK - 1;
    assert!(matches!(
        write_blocks(&s, last, 1, 9),
        Err(StoreError::NoSpace)
    ));
    assert_eq!(s.space().space_waits, 1);
    assert!(matches!(
        write_blocks(&s, last, 1, 9),
        Err(StoreError::NoSpace)
    ));
    assert_eq!(
        s.space().space_waits,
        1,
        "no second wait while nothing came back"
    );
    s.delete_snapshot(snap).unwrap();
    write_blocks(&s, last, 1, 9).unwrap();
    assert!(s.fsck().is_clean());
}

/// A crash at every device write of a growth (the checkpoint's blocks, its superblock), with
/// the unflushed writes dropped or a torn prefix of them kept, leaves either the old container
/// or the grown one: its data and snapshot intact, fsck clean, and the next growth works.
#[test]
fn a_crash_during_growth_leaves_the_old_container_or_the_grown_one() {
    use crate::testing::{CrashMode, FaultyDevice, SplitMix};
    let opts = raw_opts();
    let start = opts.geometry().unwrap();
    let grow_opts = || StoreOptions {
        space: SpaceOptions {
            max_container_bytes: Some(4 * start.container_bytes()),
            ..SpaceOptions::default()
        },
        ..crate::store::tests::store_opts()
    };
    let cap = opts.capacity / BLOCK;
    let mut rng = SplitMix::new(7);
    let (mut saw_old, mut saw_new) = (false, false);
    for fail_after in 0..12u64 {
        for mode in [CrashMode::DropAll, CrashMode::TornPrefix] {
            let dev = Arc::new(FaultyDevice::new(start.container_bytes()));
            Store::format(dev.as_ref(), &opts).unwrap();
            let s = Store::open(dev.clone(), grow_opts()).unwrap();
            write_blocks(&s, 0, cap, 1).unwrap();
            let snap = s.create_snapshot("keep").unwrap();
            write_blocks(&s, 0, cap / 2, 2).unwrap();
            s.flush().unwrap();
            // (The overwrite may have grown it already.)
            let before = s.geometry().segments;
            dev.fail_writes_after(Some(fail_after));
            let _ = s.grow_container(before + 16);
            let img = dev.crash_image(mode, &mut rng);
            drop(s);

            let dev = Arc::new(FaultyDevice::from_image(img));
            let s = Store::open(dev, grow_opts()).unwrap();
            let segments = s.geometry().segments;
            assert!(segments == before || segments == before + 16, "{segments}");
            saw_old |= segments == before;
            saw_new |= segments > before;
            let f = s.fsck();
            assert!(
                f.is_clean(),
                "after {fail_after} writes, {mode:?}: {:?}",
                f.problems
            );
            let mut b = vec![0u8; (cap * BLOCK) as usize];
            s.read(0, &mut b).unwrap();
            let half = (cap / 2 * BLOCK) as usize;
            assert!(b[..half].iter().all(|x| *x == 2) && b[half..].iter().all(|x| *x == 1));
            assert_eq!(s.list_snapshots()[0].seq, snap);
            assert_eq!(s.grow_container(before + 32).unwrap(), before + 32);
            write_blocks(&s, 0, cap, 3).unwrap();
            assert!(s.fsck().is_clean());
        }
    }
    assert!(
        saw_old && saw_new,
        "crash points on both sides of the commit"
    );
}

/// Growing the disk past what its container holds grows the container first when `max_size`
/// allows it; the new end is writable and survives a reopen.
#[test]
fn growing_the_disk_past_its_container_grows_the_container_within_max_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resize.keel");
    Store::create_path(&path, &raw_opts()).unwrap();
    let start = std::fs::metadata(&path).unwrap().len();
    let opts = |max| StoreOptions {
        space: SpaceOptions {
            max_container_bytes: Some(max),
            ..SpaceOptions::default()
        },
        ..crate::store::tests::store_opts()
    };
    let s = Store::open_path(&path, opts(start)).unwrap();
    let twice = 2 * s.capacity();
    let e = s.grow(twice).unwrap_err().to_string();
    assert!(e.contains("max_size"), "{e}");
    drop(s);

    let s = Store::open_path(&path, opts(4 * start)).unwrap();
    assert_eq!(s.grow(twice).unwrap(), twice);
    assert!(std::fs::metadata(&path).unwrap().len() > start);
    write_blocks(&s, twice / BLOCK - 1, 1, 5).unwrap();
    drop(s);
    let s = Store::open_path(&path, opts(4 * start)).unwrap();
    assert_eq!(s.capacity(), twice);
    let mut b = vec![0u8; BLOCK as usize];
    s.read(twice - BLOCK, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 5));
    assert!(s.fsck().is_clean(), "{:?}", s.fsck().problems);
}
