//! Whole-store tests: a model check with proptest, seeded crash tests on a
//! fault-injecting device, and corruption of every kind of block.

mod concurrent;
mod corruption;
mod crash;
mod model;

use super::testing::FaultyDevice;
use super::{CreateOptions, Store, StoreOptions};
use std::sync::Arc;

/// A small container: 1 MiB disk (256 blocks), 64 KiB segments, a 128 KiB journal.
pub(super) fn small_opts() -> CreateOptions {
    CreateOptions {
        capacity: 1 << 20,
        segment_bytes: 64 << 10,
        journal_bytes: Some(128 << 10),
        overprovision_percent: 25,
    }
}

pub(super) fn new_store(opts: &CreateOptions) -> (Arc<FaultyDevice>, Store) {
    let geo = opts.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), opts).unwrap();
    let store = Store::open(dev.clone(), StoreOptions::default()).unwrap();
    (dev, store)
}

#[test]
fn write_read_reopen() {
    use super::Op;
    let (dev, s) = new_store(&small_opts());
    let a = vec![0xabu8; 8192];
    let b = vec![0x11u8; 512];
    s.write_batch(
        0,
        &[
            Op::Write {
                offset: 4096,
                data: &a,
            },
            Op::Write {
                offset: 4096 + 512,
                data: &b,
            },
        ],
    )
    .unwrap();
    let mut r = vec![0u8; 3 * 4096];
    s.read(0, &mut r).unwrap();
    assert!(r[..4096].iter().all(|x| *x == 0));
    assert_eq!(r[4096], 0xab);
    assert!(r[4096 + 512..4096 + 1024].iter().all(|x| *x == 0x11));
    assert_eq!(r[4096 + 1024], 0xab);
    assert!(r[3 * 4096 - 1] == 0xab);
    s.flush().unwrap();
    let st = s.stats();
    assert_eq!((st.batches, st.journal_writes, st.guest_writes), (1, 1, 2));
    drop(s);
    let s = Store::open(dev.clone(), StoreOptions::default()).unwrap();
    assert_eq!(s.recovery_report().records_replayed, 1);
    let mut r2 = vec![0u8; 3 * 4096];
    s.read(0, &mut r2).unwrap();
    assert_eq!(r, r2);
    s.checkpoint().unwrap();
    drop(s);
    let s = Store::open(dev, StoreOptions::default()).unwrap();
    assert_eq!(s.recovery_report().records_replayed, 0);
    let mut r3 = vec![0u8; 3 * 4096];
    s.read(0, &mut r3).unwrap();
    assert_eq!(r, r3);
    let f = s.fsck();
    assert!(f.is_clean(), "{:?}", f.problems);
    assert_eq!(f.lba_entries, 2);
}
