//! The handover state machine with two engines on one file in one process: OFD locks conflict
//! between open file descriptions, so two [`HandoverEngine`]s here behave as two keelds would.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::device::lock::{LockMode, lock_path};
use crate::engine::null::NullEngine;
use crate::engine::{AdminError, Completion, GuestBuffers, IoOp, IoRequest};

const SIZE: u64 = 1 << 20;

/// A null engine that holds the file's lock while it (or a queue half of it) lives, as the
/// real engines do.
struct LockedNull {
    lock: Arc<File>,
    inner: NullEngine,
}

struct LockedQueue {
    _lock: Arc<File>,
    inner: Box<dyn QueueEngine>,
}

impl QueueEngine for LockedQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        self.inner.submit(batch);
    }
    fn reap(&mut self, done: &mut Vec<Completion>) {
        self.inner.reap(done);
    }
    fn wait(&mut self, done: &mut Vec<Completion>) {
        self.inner.wait(done);
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

impl Engine for LockedNull {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn describe(&self) -> String {
        "locked null".into()
    }
    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        Ok(Box::new(LockedQueue {
            _lock: Arc::clone(&self.lock),
            inner: self.inner.queue(index)?,
        }))
    }
    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

fn opener() -> Box<Opener> {
    Box::new(|cfg: &DiskConfig| {
        let path = cfg.path.clone().unwrap_or_default();
        let lock = lock_path(&path, LockMode::Exclusive)
            .map_err(|e| EngineError::Locked(e.to_string()))?;
        Ok(Arc::new(LockedNull {
            lock: Arc::new(lock),
            inner: NullEngine::new(SIZE, false),
        }) as Arc<dyn Engine>)
    })
}

fn config(dir: &Path) -> DiskConfig {
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; SIZE as usize]).unwrap();
    let table = serde_json::json!({
        "name": "d", "socket": "d.sock", "engine": "raw", "path": "disk.img",
        "handover": true,
    });
    crate::config::disk_from_json(&table, dir).unwrap()
}

fn woken() -> (Arc<AtomicBool>, Box<dyn FnOnce() + Send>) {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    (flag, Box::new(move || set.store(true, Ordering::Release)))
}

/// Waits (bounded) until `e` serves.
fn until_serving(e: &HandoverEngine) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if e.serving() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn flush_through(q: &mut dyn QueueEngine) -> Result<(), EngineError> {
    let mut batch = vec![IoRequest {
        token: 7,
        op: IoOp::Flush,
        buffers: GuestBuffers::empty(),
    }];
    q.submit(&mut batch);
    let mut done = Vec::new();
    while done.is_empty() {
        q.wait(&mut done);
    }
    assert_eq!(done[0].token, 7);
    done.remove(0).result
}

#[test]
fn a_second_keeld_stands_by_and_takes_the_disk_only_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let a = HandoverEngine::start_with(&cfg, opener()).unwrap();
    assert_eq!(a.holding(), Holding::Serving);
    let b = HandoverEngine::start_with(&cfg, opener()).unwrap();
    assert_eq!(b.holding(), Holding::Standby);
    assert_eq!(
        b.capacity(),
        SIZE,
        "a standby disk reports the image's size"
    );
    assert!(!b.serving());

    // b's frontend starts a ring while a still serves: b waits, it does not open the file.
    let (b_woken, wake) = woken();
    b.take(wake);
    assert_eq!(b.holding(), Holding::Taking);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!b.serving(), "taken while the other side holds the lock");
    assert!(!b_woken.load(Ordering::Acquire));
    assert!(a.serving());

    // a's frontend stopped every ring: a lets go, b takes over and wakes its rings.
    assert!(a.release());
    assert_eq!(a.holding(), Holding::Released);
    assert!(!a.serving());
    assert!(until_serving(&b));
    assert!(b_woken.load(Ordering::Acquire));
    assert_eq!(b.holding(), Holding::Serving);

    // A frontend restarting a's rings now (too late for a cancel) waits for b.
    let (a_woken, wake) = woken();
    a.take(wake);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!a.serving() && b.serving(), "both would write the disk");
    assert!(!a_woken.load(Ordering::Acquire));
    // Once b releases, a gets it back.
    assert!(b.release());
    assert!(until_serving(&a));
    assert!(a_woken.load(Ordering::Acquire));
    assert!(!b.serving());
    a.stop();
    b.stop();
}

#[test]
fn a_cancelled_migration_takes_the_released_disk_back() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let src = HandoverEngine::start_with(&cfg, opener()).unwrap();
    let dst = HandoverEngine::start_with(&cfg, opener()).unwrap();
    assert!(src.release(), "the source stopped the guest");
    assert!(!src.release(), "released once");
    // The migration is cancelled: the source restarts its rings before the destination
    // started any.
    let (woken_flag, wake) = woken();
    src.take(wake);
    assert!(until_serving(&src));
    assert!(woken_flag.load(Ordering::Acquire));
    assert_eq!(dst.holding(), Holding::Standby);
    assert!(!dst.serving());
}

#[test]
fn queue_halves_follow_the_disk_and_are_taken_back_at_release() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let a = HandoverEngine::start_with(&cfg, opener()).unwrap();
    let b = HandoverEngine::start_with(&cfg, opener()).unwrap();
    // Queues exist from the moment a frontend attaches, before the disk is held.
    let mut qa = a.queue(0).unwrap();
    let mut qb = b.queue(0).unwrap();
    assert!(
        qb.completion_fd().is_some(),
        "a descriptor for the worker from the start"
    );
    flush_through(qa.as_mut()).unwrap();
    let refused = flush_through(qb.as_mut()).unwrap_err();
    assert!(refused.to_string().contains("standby"), "{refused}");

    // a's queue half holds the lock (as an engine's queue does): the release takes it back,
    // or b could never lock the file.
    assert!(a.release());
    let (_, wake) = woken();
    b.take(wake);
    assert!(until_serving(&b));
    flush_through(qb.as_mut()).unwrap();
    let refused = flush_through(qa.as_mut()).unwrap_err();
    assert!(refused.to_string().contains("released"), "{refused}");
}

#[test]
fn a_disk_not_held_refuses_management_calls() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let _a = HandoverEngine::start_with(&cfg, opener()).unwrap();
    let b = HandoverEngine::start_with(&cfg, opener()).unwrap();
    assert!(matches!(
        b.admin().unwrap().list_snapshots(),
        Err(AdminError::Conflict(_))
    ));
    assert!(b.grow(SIZE * 2).is_err());
    assert!(b.snapshot("s").is_err());
    assert!(b.flush().is_ok(), "nothing to flush");
    assert!(b.describe().contains("standby"), "{}", b.describe());
}

#[test]
fn a_real_keel_container_is_checkpointed_released_and_replayed_by_the_other_side() {
    let dir = tempfile::tempdir().unwrap();
    let table = serde_json::json!({
        "name": "d", "socket": "d.sock", "engine": "keel", "path": "disk.keel",
        "size": "64M", "handover": true,
    });
    let cfg = crate::config::disk_from_json(&table, dir.path()).unwrap();
    let a = HandoverEngine::start(&cfg).unwrap();
    assert_eq!(a.holding(), Holding::Serving);
    let b = HandoverEngine::start(&cfg).unwrap();
    assert_eq!(b.holding(), Holding::Standby);
    assert_eq!(
        b.capacity(),
        64 << 20,
        "read from the superblock without the lock"
    );
    let mut qa = a.queue(0).unwrap();
    flush_through(qa.as_mut()).unwrap();
    assert!(a.release());
    let (_, wake) = woken();
    b.take(wake);
    assert!(until_serving(&b));
    assert!(b.admin().unwrap().list_snapshots().is_ok());
    // The container is b's: a cannot open it for writing, whatever it tries.
    assert!(crate::engine::open(&cfg).is_err());
}

#[test]
fn a_take_that_cannot_open_goes_back_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let a = HandoverEngine::start_with(&cfg, opener()).unwrap();
    let failing: Box<Opener> = Box::new(|cfg: &DiskConfig| {
        if lock_path(cfg.path.as_deref().unwrap(), LockMode::Exclusive).is_ok() {
            return Err(EngineError::Setup {
                path: cfg.path.clone().unwrap_or_default(),
                message: "corrupt superblock".into(),
            });
        }
        Err(EngineError::Locked("held".into()))
    });
    let b = HandoverEngine::start_with(&cfg, failing).unwrap();
    assert!(a.release());
    let (woken_flag, wake) = woken();
    b.take(wake);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.last_error().is_none() {
        assert!(Instant::now() < deadline, "the take never gave up");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(b.last_error().unwrap().contains("corrupt superblock"));
    assert_eq!(b.holding(), Holding::Standby, "back where it was");
    assert!(!b.serving());
    assert!(!woken_flag.load(Ordering::Acquire), "nothing to serve");
}

/// An engine whose lock only its open can ask for (an RBD image's exclusive lock): the files'
/// look says free, the open says held.
fn open_decides(held: Arc<AtomicBool>) -> Box<Opener> {
    Box::new(move |_: &DiskConfig| {
        if held.load(Ordering::Acquire) {
            return Err(EngineError::Locked("held by another client".into()));
        }
        Ok(Arc::new(NullEngine::new(SIZE, false)) as Arc<dyn Engine>)
    })
}

#[test]
fn an_open_that_finds_the_lock_held_means_standby_and_the_take_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let held = Arc::new(AtomicBool::new(true));
    let b = HandoverEngine::start_with(&cfg, open_decides(Arc::clone(&held))).unwrap();
    assert_eq!(
        b.holding(),
        Holding::Standby,
        "the open found the lock held"
    );
    assert_eq!(b.capacity(), SIZE);
    let (woken_flag, wake) = woken();
    b.take(wake);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(b.holding(), Holding::Taking, "still waiting for the lock");
    assert!(b.last_error().is_none(), "a held lock is not a failure");
    assert!(!woken_flag.load(Ordering::Acquire));
    held.store(false, Ordering::Release);
    assert!(until_serving(&b));
    assert_eq!(b.holding(), Holding::Serving);
    assert!(woken_flag.load(Ordering::Acquire));
}
