//! A panic while a store lock is held fails the store: later requests return an error instead
//! of being served from state the panic may have left half-updated, and shutdown still works.

use super::{new_store, small_opts};
use crate::store::{CleanerConfig, CleanerHandle, MarkWriter, Op, Store, StoreError};
use std::sync::{Arc, mpsc};

/// Which of the store's locks a test poisons (a panic under a read guard poisons nothing: it
/// cannot have changed what the lock guards).
#[derive(Debug, Clone, Copy)]
enum Poison {
    Journal,
    StateWrite,
    Writer,
    Unwritten,
}

/// Panics on a thread of its own while holding `which`, leaving it poisoned.
fn poison(s: &Store, which: Poison) {
    let panicked = std::thread::scope(|scope| {
        scope
            .spawn(|| match which {
                Poison::Journal => {
                    let _j = s.journal.lock();
                    panic!("injected panic holding the journal lock");
                }
                Poison::StateWrite => {
                    let _st = s.state.write();
                    panic!("injected panic holding the state lock");
                }
                Poison::Writer => {
                    let _w = s.writers[0].lock();
                    panic!("injected panic holding a writer slot");
                }
                Poison::Unwritten => s.unwritten.add(
                    1,
                    std::iter::from_fn(|| -> Option<_> {
                        panic!("injected panic while listing unwritten blocks")
                    }),
                ),
            })
            .join()
            .is_err()
    });
    assert!(panicked, "{which:?}: the injected panic did not happen");
}

fn write(s: &Store, offset: u64, byte: u8) -> crate::store::Result<()> {
    let data = vec![byte; 4096];
    s.write_batch(
        0,
        &[Op::Write {
            offset,
            data: &data,
        }],
    )
}

fn assert_failed<T: std::fmt::Debug>(which: Poison, call: &str, r: crate::store::Result<T>) {
    assert!(
        matches!(r, Err(StoreError::Failed)),
        "{which:?}: {call} after the poison answered {r:?}"
    );
}

/// Every lock a guest request or snapshot takes, poisoned in turn on a container file opened
/// with the defaults (O_DIRECT), with the background cleaner and mark writer running: every
/// later write, read, flush and snapshot call fails, the store says it failed, the store and
/// its threads shut down without a panic, and the container reopens with the data flushed
/// before the poison.
#[test]
fn a_poisoned_lock_fails_every_later_request_and_the_store_still_closes() {
    for which in [
        Poison::Journal,
        Poison::StateWrite,
        Poison::Writer,
        Poison::Unwritten,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poison.keel");
        Store::create_path(&path, &small_opts()).unwrap();
        let s = Arc::new(Store::open_path(&path, crate::store::tests::store_opts()).unwrap());
        let cleaner = CleanerHandle::spawn(Arc::clone(&s), CleanerConfig::default()).unwrap();
        let marks = MarkWriter::spawn(Arc::clone(&s)).unwrap();
        write(&s, 8192, 0x5a).unwrap();
        s.flush().unwrap();
        assert!(!s.is_failed());

        poison(&s, which);

        assert!(
            s.is_failed(),
            "{which:?}: the store does not report itself failed"
        );
        let why = s.failure().expect("a failed store says why");
        assert!(why.contains("poisoned"), "{which:?}: failure reads {why:?}");
        assert_failed(which, "write", write(&s, 0, 1));
        let mut buf = vec![0u8; 4096];
        assert_failed(which, "read", s.read(8192, &mut buf));
        assert_failed(which, "flush", s.flush());
        assert_failed(which, "snapshot", s.create_snapshot("after"));
        assert_failed(which, "checkpoint", s.checkpoint());
        assert!(s.is_failed());

        drop(marks);
        drop(cleaner);
        let s = Arc::into_inner(s).expect("the background threads let go of the store");
        drop(s);

        let s = Store::open_path(&path, crate::store::tests::store_opts()).unwrap();
        assert!(!s.is_failed());
        s.read(8192, &mut buf).unwrap();
        assert!(
            buf.iter().all(|b| *b == 0x5a),
            "{which:?}: flushed data lost"
        );
    }
}

/// A panic poisons the journal while a batch is in flight and a reader waits for that batch's
/// blocks: the next request fails instead of waiting for a batch that may never finish, the
/// waiting reader is released with the same error, and the batch's late completion fails too.
#[test]
fn a_poisoned_lock_releases_waits_for_batches_in_flight() {
    let (_dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    let data = vec![7u8; 4096];
    // Applied, its writes never landing: a queue whose batch is in flight.
    let plan = s
        .plan_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &data,
            }],
        )
        .unwrap();
    let batch = s.apply_plan(plan);
    let (tx, rx) = mpsc::channel();
    let reader = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            tx.send(()).unwrap();
            let mut buf = vec![0u8; 4096];
            s.read(0, &mut buf)
        })
    };
    rx.recv().unwrap();
    poison(&s, Poison::Journal);

    assert_failed(Poison::Journal, "flush", s.flush());
    assert_failed(Poison::Journal, "checkpoint", s.checkpoint());
    assert_failed(Poison::Journal, "waiting read", reader.join().unwrap());
    assert_failed(
        Poison::Journal,
        "late batch end",
        s.finish_batch(batch, Ok(())),
    );
    assert!(s.is_failed());
    drop(Arc::into_inner(s).expect("nothing else holds the store"));
}
