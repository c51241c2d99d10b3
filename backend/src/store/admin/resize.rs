//! Growing a container's disk into the spare data space it was created with, stopped or online.
//!
//! A container's segments are sized at creation: capacity plus spare (20% by default, see
//! [`spare`](crate::store::log::spare)) plus the segments reserved for checkpoints and the cleaner. A
//! container that may grow (a file opened with `max_size`, or offline by `keel resize`) grows
//! with its disk so that the spare keeps its percentage: the cleaner works as it did. One that
//! may not grows its disk in place as long as what is left still gives the cleaner
//! [`MIN_SPARE_PERCENT`] of spare space. Shrinking is refused: the guest's data past the new
//! end would go.
//!
//! The new capacity is written in the superblock by a checkpoint before any write may reach it,
//! so a crash leaves either the old size or the new one with everything below it. Online, the
//! store then takes the new capacity for its bounds checks, its reserve of segments and the
//! segment usage table's; offline ([`Store::grow_in_place`]) the store is consumed.

use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, Geometry};
use std::sync::atomic::Ordering;

use crate::store::Store;

pub use crate::store::log::spare::MIN_SPARE_PERCENT;

/// The segments (all of them) a container with `geo`'s layout needs for a disk of `capacity`
/// bytes with `spare_percent` of spare space.
fn segments_needed(geo: &Geometry, capacity: u64, spare_percent: u64) -> u64 {
    let grown = Geometry { capacity, ..*geo };
    let blocks = capacity / BLOCK;
    let data = (blocks + (blocks * spare_percent).div_ceil(100)).div_ceil(geo.seg_blocks)
        + grown.reserved_segments()
        + 4;
    geo.first_data_segment() + data
}

/// Whether geometry `geo` has room for a disk of `capacity` bytes.
fn fits(geo: &Geometry, capacity: u64) -> bool {
    segments_needed(geo, capacity, MIN_SPARE_PERCENT) <= geo.segments
}

impl Store {
    /// The container's spare space, in whole percent of its disk's capacity.
    pub fn spare_percent(&self) -> u64 {
        crate::store::log::spare::spare_percent(&self.geometry())
    }

    /// The largest capacity this container can grow to in place (at least the current one).
    pub fn max_capacity_in_place(&self) -> u64 {
        let geo = self.geometry();
        // Capacity is monotone in the space it needs: binary search over whole blocks.
        let (mut lo, mut hi) = (geo.capacity / BLOCK, geo.container_bytes() / BLOCK);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(&geo, mid * BLOCK) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo.max(geo.capacity / BLOCK) * BLOCK
    }

    /// Grows the disk to `capacity` bytes (rounded up to 4 KiB) and makes it durable; the
    /// store is closed afterwards, reopen it to use the new size. Returns the new capacity.
    pub fn grow_in_place(self, capacity: u64) -> Result<u64> {
        self.grow(capacity)
    }

    /// Grows the disk to `capacity` bytes (rounded up to 4 KiB) while it is in use: writes up
    /// to the new end are accepted once this returns. Returns the new capacity.
    pub fn grow(&self, capacity: u64) -> Result<u64> {
        self.ensure_ok()?;
        let now = self.capacity();
        let capacity = capacity.div_ceil(BLOCK) * BLOCK;
        if capacity < now {
            return Err(StoreError::Invalid(format!(
                "the disk holds {now} bytes: shrinking to {capacity} is refused (the data past \
                 the new end would be lost); only growing is allowed"
            )));
        }
        if capacity == now {
            return Ok(now);
        }
        // A container that may grow (`max_size`) first takes the segments the new size needs
        // with the spare it has; if it may not grow that far, those that leave the least.
        let geo = self.geometry();
        let keep = segments_needed(&geo, capacity, self.spare_percent().max(MIN_SPARE_PERCENT));
        let least = segments_needed(&geo, capacity, MIN_SPARE_PERCENT);
        if keep > geo.segments && keep <= self.max_segments() {
            self.grow_container(keep)?;
        } else if capacity > self.max_capacity_in_place() && least <= self.max_segments() {
            self.grow_container(least)?;
        }
        let max = self.max_capacity_in_place();
        if capacity > max {
            return Err(StoreError::Invalid(format!(
                "this container has room for a disk of at most {max} bytes (keeping \
                 {MIN_SPARE_PERCENT}% spare for the cleaner); for {capacity} the container \
                 itself must grow: give the disk a max_size that allows it, or create a larger \
                 one and copy the disk into it (keel diff PATH @empty @running --export FILE, \
                 keel create NEW --size SIZE, keel apply FILE NEW)"
            )));
        }
        let mut j = self.quiet_journal();
        j.superblock.geometry.capacity = capacity;
        if let Err(e) = self.checkpoint_locked(&mut j) {
            j.superblock.geometry.capacity = now;
            return Err(e);
        }
        drop(j);
        self.dev.flush()?;
        self.write_lock(&self.state).sut.set_capacity(capacity);
        self.capacity.store(capacity, Ordering::Release);
        log::info!("disk grown from {now} to {capacity} bytes");
        Ok(capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Op;
    use crate::store::admin::diff::TreeRef;
    use crate::store::tests::{new_store, small_opts};
    use crate::store::{Store, StoreOptions};

    #[test]
    fn grows_into_the_spare_space_and_keeps_data_and_snapshots() {
        let (dev, s) = new_store(&small_opts());
        let old = s.capacity();
        let data = vec![0x77u8; BLOCK as usize];
        s.write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &data,
            }],
        )
        .unwrap();
        let snap = s.create_snapshot("before").unwrap();
        let max = s.max_capacity_in_place();
        assert!(max > old, "25% overprovision leaves room to grow: {max}");
        assert!(max < s.geometry().data_segments() * s.geometry().seg_blocks * BLOCK);

        let grown = s.grow_in_place(max).unwrap();
        assert_eq!(grown, max);

        let s = Store::open(dev.clone(), crate::store::tests::store_opts()).unwrap();
        assert_eq!(s.capacity(), max);
        // The new end is writable; the old data and the snapshot are intact.
        let last = max - BLOCK;
        s.write_batch(
            0,
            &[Op::Write {
                offset: last,
                data: &data,
            }],
        )
        .unwrap();
        let mut buf = vec![0u8; BLOCK as usize];
        s.read(last, &mut buf).unwrap();
        assert_eq!(buf, data);
        s.read(0, &mut buf).unwrap();
        assert_eq!(buf, data);
        let d = s.diff(TreeRef::Snapshot(snap), TreeRef::Running).unwrap();
        assert_eq!(d.blocks.len(), 1);
        assert_eq!(d.blocks[0].lba, last / BLOCK);
        let f = s.fsck();
        assert!(f.is_clean(), "{:?}", f.problems);
    }

    #[test]
    fn grows_online_and_the_new_end_survives_a_reopen() {
        let (dev, s) = new_store(&small_opts());
        let old = s.capacity();
        let data = vec![0x5au8; BLOCK as usize];
        let at_new_end = |s: &Store, offset| {
            s.write_batch(
                0,
                &[Op::Write {
                    offset,
                    data: &data,
                }],
            )
        };
        assert!(
            at_new_end(&s, old).is_err(),
            "beyond the end before growing"
        );
        let max = s.max_capacity_in_place();
        assert_eq!(s.grow(max).unwrap(), max);
        assert_eq!((s.capacity(), s.geometry().capacity), (max, max));
        at_new_end(&s, max - BLOCK).unwrap();
        at_new_end(&s, old).unwrap();
        assert!(at_new_end(&s, max).is_err(), "beyond the new end");
        let f = s.fsck();
        assert!(f.is_clean(), "{:?}", f.problems);
        drop(s);
        let s = Store::open(dev, crate::store::tests::store_opts()).unwrap();
        assert_eq!(s.capacity(), max);
        let mut buf = vec![0u8; BLOCK as usize];
        s.read(max - BLOCK, &mut buf).unwrap();
        assert_eq!(buf, data);
        s.read(old, &mut buf).unwrap();
        assert_eq!(buf, data);
        assert!(s.fsck().is_clean());
    }

    #[test]
    fn refuses_shrinking_and_growing_past_the_spare_space() {
        let (_dev, s) = new_store(&small_opts());
        let old = s.capacity();
        let max = s.max_capacity_in_place();
        let (dev2, s2) = new_store(&small_opts());
        let e = s2.grow_in_place(old - BLOCK).unwrap_err().to_string();
        assert!(e.contains("shrinking") && e.contains("refused"), "{e}");
        let s2 = Store::open(dev2.clone(), crate::store::tests::store_opts()).unwrap();
        assert_eq!(
            s2.grow_in_place(old).unwrap(),
            old,
            "same size: nothing to do"
        );
        let e = s.grow_in_place(max + BLOCK).unwrap_err().to_string();
        assert!(e.contains(&format!("at most {max} bytes")), "{e}");
        assert!(e.contains("container itself must grow"), "{e}");
        let s2 = Store::open(dev2, crate::store::tests::store_opts()).unwrap();
        assert_eq!(s2.capacity(), old);
    }

    #[test]
    fn a_container_that_may_grow_keeps_its_spare_percentage() {
        use crate::store::SpaceOptions;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spare.keel");
        let mut create = small_opts();
        create.overprovision_percent = 50;
        Store::create_path(&path, &create).unwrap();
        let may_grow = StoreOptions {
            space: SpaceOptions {
                max_container_bytes: Some(1 << 30),
                ..SpaceOptions::default()
            },
            ..crate::store::tests::store_opts()
        };
        let s = Store::open_path(&path, may_grow.clone()).unwrap();
        let spare = s.spare_percent();
        assert!(spare >= 50, "{spare}");
        let twice = 2 * s.capacity();
        assert_eq!(s.grow(twice).unwrap(), twice);
        assert!(
            s.spare_percent() >= 50,
            "{}% after growing",
            s.spare_percent()
        );
        drop(s);
        let s = Store::open_path(&path, may_grow).unwrap();
        assert_eq!(s.capacity(), twice);
        assert!(s.spare_percent() >= 50);
        assert!(s.fsck().is_clean());
        drop(s);
        // One that may not grow gives its disk part of its spare, down to the minimum.
        let s = Store::open_path(&path, crate::store::tests::store_opts()).unwrap();
        let max = s.max_capacity_in_place();
        assert!(max > twice);
        s.grow(max).unwrap();
        let left = s.spare_percent();
        assert!((MIN_SPARE_PERCENT..50).contains(&left), "{left}%");
    }
}
