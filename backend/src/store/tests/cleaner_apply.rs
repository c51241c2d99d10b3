//! A cleaner's move is applied to the maps before its copies are written: guest batches
//! reserved behind it apply in LSN order, and must not wait for the megabytes it writes.

use super::hold::Hold;
use super::{opts_for, small_opts};
use crate::device::BlockDevice;
use crate::store::{Op, Store};
use crate::testing::FaultyDevice;
use std::sync::{Arc, mpsc};
use std::time::Duration;

/// The thread whose writes [`HeldWrites`] holds.
const CLEANER: &str = "cleaner-held";

/// A device that holds the first write of the [`CLEANER`] thread until the test lets it go.
struct HeldWrites {
    inner: Arc<FaultyDevice>,
    hold: Hold,
}

impl BlockDevice for HeldWrites {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if std::thread::current().name() == Some(CLEANER) {
            self.hold.hold(false);
        }
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
}

fn block(lba: u64, round: u8) -> Vec<u8> {
    let mut b = vec![round; 4096];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

fn write(s: &Store, lba: u64, round: u8) {
    let data = block(lba, round);
    let ops = [Op::Write {
        offset: lba * 4096,
        data: &data,
    }];
    s.write_batch(0, &ops).unwrap();
}

/// The cleaner is held at the first write of its copies; a guest batch planned meanwhile is
/// applied (its reads see it) without waiting for them, and everything reads back once they
/// land.
#[test]
fn a_guest_batch_behind_a_cleaners_move_does_not_wait_for_its_copies() {
    let opts = small_opts();
    let inner = Arc::new(FaultyDevice::new(
        opts.geometry().unwrap().container_bytes(),
    ));
    Store::format(inner.as_ref(), &opts).unwrap();
    let dev = Arc::new(HeldWrites {
        inner: Arc::clone(&inner),
        hold: Hold::default(),
    });
    let s = Arc::new(Store::open(dev.clone(), opts_for(&opts)).unwrap());
    // Half the disk once, then all but every fourth block of it again: the first segments
    // are sparse, and free segments are left (the cleaner's first write is then its copies).
    let blocks = opts.capacity / 4096 / 2;
    for lba in 0..blocks {
        write(&s, lba, 1);
    }
    for lba in (0..blocks).filter(|l| l % 4 != 0) {
        write(&s, lba, 2);
    }
    s.checkpoint().unwrap();
    let cleaner = {
        let (s, dev) = (Arc::clone(&s), Arc::clone(&dev));
        std::thread::Builder::new()
            .name(CLEANER.into())
            .spawn(move || {
                let r = s.clean_step();
                dev.hold.done();
                r
            })
            .unwrap()
    };
    assert!(
        dev.hold.wait_held(),
        "the cleaner wrote nothing: {:?}",
        cleaner.join()
    );
    {
        let j = s.journal.lock().unwrap();
        assert!(
            j.cursor.next_lsn - 1 > j.written_lsn,
            "the cleaner's record is reserved and not written"
        );
    }
    // The guest's batch goes behind it: planned, written by the caller, applied.
    let fresh = block(1, 9);
    let plan = s
        .plan_batch(
            0,
            &[Op::Write {
                offset: 4096,
                data: &fresh,
            }],
        )
        .unwrap();
    for (at, parts) in plan.writes() {
        let whole: Vec<u8> = parts.concat();
        inner.write_at(&whole, at).unwrap();
    }
    // Should it wait for the held copies, let them go after a while so the test ends.
    let (applied, waited) = mpsc::channel::<()>();
    let watchdog = {
        let dev = Arc::clone(&dev);
        std::thread::spawn(move || {
            let stuck = waited.recv_timeout(Duration::from_secs(20)).is_err();
            dev.hold.release();
            stuck
        })
    };
    let batch = s.apply_plan(plan);
    // The watchdog is gone if it gave up.
    let _ = applied.send(());
    let stuck = watchdog.join().unwrap();
    s.finish_batch(batch, Ok(())).unwrap();
    let report = cleaner.join().unwrap().unwrap().expect("a victim");
    assert!(
        !stuck,
        "the guest's batch waited for the cleaner's copies to be written"
    );
    assert!(report.moved > 0, "{report:?}");
    let mut b = vec![0u8; 4096];
    s.read(4096, &mut b).unwrap();
    assert_eq!(b, fresh);
    for lba in (0..blocks).filter(|&l| l != 1) {
        s.read(lba * 4096, &mut b).unwrap();
        let round = if lba % 4 == 0 { 1 } else { 2 };
        assert_eq!(b, block(lba, round), "lba {lba}");
    }
    assert!(s.fsck().is_clean());
}
