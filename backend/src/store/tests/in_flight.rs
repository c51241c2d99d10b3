//! Batches answered before their writes are done (a [`WritePlan`](crate::store::WritePlan)
//! applied while its writes are held): readers, FLUSH and failures while the writes are in
//! flight.

use super::{new_store, small_opts};
use crate::store::{Gather, InFlight, Op, Store, StoreError};
use crate::testing::FaultyDevice;
use std::io;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

/// Holds a batch's writes (copies of their bytes) until the test lands them on the device,
/// and where in memory each part was (a device reads them until the writes are done).
#[derive(Default)]
struct HeldIo {
    writes: Vec<(u64, Vec<u8>)>,
    parts: Vec<(usize, usize)>,
}

impl HeldIo {
    fn start_writes(&mut self, writes: &[Gather<'_>]) {
        for (offset, parts) in writes {
            self.writes.push((*offset, parts.concat()));
            self.parts
                .extend(parts.iter().map(|p| (p.as_ptr() as usize, p.len())));
        }
    }

    /// Writes the held blocks, as they are, to `dev` (the container's bytes as stored).
    fn land(&mut self, dev: &dyn crate::device::BlockDevice) -> io::Result<()> {
        self.writes
            .drain(..)
            .try_for_each(|(offset, bytes)| dev.write_at(&bytes, offset))
    }
}

/// Plans a batch on writer 0, has `io` hold its writes and applies it: the batch is answered,
/// its writes not done.
fn start_batch(s: &Store, ops: &[Op<'_>], io: &mut HeldIo) -> crate::store::Result<InFlight> {
    let plan = s.plan_batch(0, ops)?;
    io.start_writes(&plan.writes());
    Ok(s.apply_plan(plan))
}

fn write_op(lba: u64, data: &[u8]) -> Op<'_> {
    Op::Write {
        offset: lba * 4096,
        data,
    }
}

/// How long a thread that should be blocked is given to (wrongly) finish.
const BLOCKED: Duration = Duration::from_millis(50);

/// Runs `f` on `s` in a thread that must stay blocked until the batch in flight lands: checks
/// that it does, lands it with `land`, and returns what `f` returned.
fn blocked_until_landed<T: Send + 'static>(
    s: &Arc<Store>,
    what: &str,
    f: impl FnOnce(&Store) -> T + Send + 'static,
    land: impl FnOnce(),
) -> T {
    let (tx, rx) = mpsc::channel();
    let worker = {
        let s = Arc::clone(s);
        std::thread::spawn(move || {
            let r = f(&s);
            tx.send(()).unwrap();
            r
        })
    };
    assert!(
        rx.recv_timeout(BLOCKED).is_err(),
        "{what} went ahead of the batch's writes"
    );
    land();
    worker.join().unwrap()
}

#[test]
fn a_read_of_a_started_batch_waits_for_its_writes() {
    let (_dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    s.write_batch(0, &[write_op(0, &[0x11; 4096])]).unwrap();
    let new = vec![0x22u8; 4096];
    let mut io = HeldIo::default();
    let batch = start_batch(&s, &[write_op(0, &new)], &mut io).unwrap();
    let read = |s: &Store| {
        let mut b = vec![0u8; 4096];
        s.read(0, &mut b).map(|()| b[0])
    };
    let seen = blocked_until_landed(&s, "the read", read, || {
        io.land(s.raw_device()).unwrap();
        s.finish_batch(batch, Ok(())).unwrap();
    });
    assert_eq!(seen.unwrap(), 0x22);
    assert!(s.fsck().is_clean());
}

#[test]
fn a_flush_waits_for_a_started_batch_and_then_covers_it() {
    let (dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    let data = vec![0x33u8; 8192];
    let mut io = HeldIo::default();
    let batch = start_batch(&s, &[write_op(2, &data)], &mut io).unwrap();
    let flushed = blocked_until_landed(&s, "the flush", Store::flush, || {
        io.land(s.raw_device()).unwrap();
        s.finish_batch(batch, Ok(())).unwrap();
    });
    flushed.unwrap();
    // Whatever the device did not make durable before the flush is lost; the batch is not.
    let crashed = Arc::new(FaultyDevice::from_image(dev.contents()));
    let s = Store::open(crashed, crate::store::tests::store_opts()).unwrap();
    let mut b = vec![0u8; 8192];
    s.read(2 * 4096, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 0x33));
}

#[test]
fn a_failed_write_after_the_answer_fails_the_next_flush_and_every_request() {
    let (_dev, s) = new_store(&small_opts());
    let mut io = HeldIo::default();
    let batch = start_batch(&s, &[write_op(1, &[0x44; 4096])], &mut io).unwrap();
    let failed = s.finish_batch(batch, Err(io::Error::from_raw_os_error(libc::EIO)));
    assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
    assert!(s.flush().is_err(), "a FLUSH after a lost write succeeded");
    assert!(s.write_batch(0, &[write_op(3, &[1; 4096])]).is_err());
}

#[test]
fn a_started_batch_never_reaches_the_disk_without_its_writes() {
    let (dev, s) = new_store(&small_opts());
    s.write_batch(0, &[write_op(0, &[0x55; 4096])]).unwrap();
    s.flush().unwrap();
    let mut io = HeldIo::default();
    let batch = start_batch(&s, &[write_op(0, &[0x66; 4096])], &mut io).unwrap();
    // Power lost before the writes landed: the batch is gone, the flushed data is not.
    let crashed = Arc::new(FaultyDevice::from_image(dev.contents()));
    io.land(s.raw_device()).unwrap();
    s.finish_batch(batch, Ok(())).unwrap();
    let s = Store::open(crashed, crate::store::tests::store_opts()).unwrap();
    let mut b = vec![0u8; 4096];
    s.read(0, &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 0x55));
    assert!(s.fsck().is_clean());
}

/// A device reads a started batch's buffers until its writes are done, so every part must be
/// in the caller's buffers or in the batch itself, never in memory the store frees when
/// the plan is applied (blocks merged from partial writes).
#[test]
fn every_buffer_a_started_batch_writes_from_outlives_the_call() {
    let (_dev, s) = new_store(&small_opts());
    s.write_batch(0, &[write_op(2, &[0x77; 4096])]).unwrap();
    let whole = crate::store::AlignedBuf::blocks(1);
    let partial = vec![0x88u8; 512];
    let ops = [
        write_op(0, &whole),
        Op::Write {
            offset: 2 * 4096 + 1024,
            data: &partial,
        },
    ];
    let mut io = HeldIo::default();
    let batch = start_batch(&s, &ops, &mut io).unwrap();
    let caller = whole.as_ptr() as usize..whole.as_ptr() as usize + whole.len();
    for &(ptr, len) in &io.parts {
        assert!(
            caller.contains(&ptr) || batch.holds(ptr as *const u8, len),
            "a part at {ptr:#x} (+{len}) is in memory the batch does not keep"
        );
    }
    io.land(s.raw_device()).unwrap();
    s.finish_batch(batch, Ok(())).unwrap();
    let mut b = vec![0u8; 4096];
    s.read(2 * 4096, &mut b).unwrap();
    assert!(b[..1024].iter().all(|x| *x == 0x77));
    assert!(b[1024..1536].iter().all(|x| *x == 0x88));
    assert!(b[1536..].iter().all(|x| *x == 0x77));
}

/// A plan dropped before its writes were issued (a caller that gave up on it) fails the store
/// instead of leaving later batches and FLUSHes waiting for a record that never comes.
#[test]
fn a_plan_dropped_before_its_writes_fails_the_store() {
    let (_dev, s) = new_store(&small_opts());
    s.write_batch(0, &[write_op(0, &[0x11; 4096])]).unwrap();
    let plan = s.plan_batch(0, &[write_op(1, &[0x99; 4096])]).unwrap();
    assert!(!plan.writes().is_empty());
    drop(plan);
    assert!(
        s.is_failed(),
        "a record reserved and never written went unnoticed"
    );
    assert!(s.flush().is_err(), "a FLUSH covered a batch never written");
    assert!(s.write_batch(1, &[write_op(2, &[1; 4096])]).is_err());
}
