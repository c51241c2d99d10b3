//! The dirty log sees every write keeld makes into guest memory: each test snapshots guest RAM,
//! lets the worker serve with logging on, and checks that every page that changed is marked.
//! A path that writes guest memory without marking it (a new request type, a new engine, a ring
//! field) fails here.

use std::sync::Mutex;

use super::tests::{DATA, chain, context, context_with, guest_memory, ready_ring};
use super::*;
use crate::engine::raw::{RawEngine, RawOptions};
use crate::vhost::dirty_log::tests::sealed_log_file;
use crate::vhost::dirty_log::{DirtyLog, LOG_PAGE};
use keel_protocol::{RequestHeader, RequestType};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

/// Guest RAM of `guest_memory()`: 2 MiB.
const RAM: usize = 0x20_0000;

/// A session whose frontend turned logging on, with a log covering the guest's 2 MiB.
fn logging_session() -> Arc<SessionState> {
    let session = SessionState::default();
    let bytes = (RAM as u64 / LOG_PAGE / 8).max(1);
    session
        .dirty
        .set_base(DirtyLog::open(sealed_log_file(bytes), bytes, 0).unwrap());
    assert!(session.dirty.set_log_all(true));
    Arc::new(session)
}

fn snapshot(mem: &GuestMemory) -> Vec<u8> {
    let mut all = vec![0u8; RAM];
    mem.read_slice(&mut all, GuestAddress(0)).unwrap();
    all
}

/// Pages that differ between `before` and guest memory now.
fn changed_pages(before: &[u8], mem: &GuestMemory) -> Vec<u64> {
    let after = snapshot(mem);
    (0..RAM / LOG_PAGE as usize)
        .filter(|&p| {
            let r = p * LOG_PAGE as usize..(p + 1) * LOG_PAGE as usize;
            before[r.clone()] != after[r]
        })
        .map(|p| p as u64)
        .collect()
}

fn assert_all_marked(changed: &[u64], session: &SessionState) {
    let log = session.dirty.active().unwrap();
    let missed: Vec<String> = changed
        .iter()
        .filter(|&&p| !log.is_dirty(p * LOG_PAGE))
        .map(|p| format!("{:#x}", p * LOG_PAGE))
        .collect();
    assert!(
        missed.is_empty(),
        "pages written but not logged: {missed:?}"
    );
}

/// Writes a request header for `t` at `addr`.
fn header(mem: &GuestMemory, addr: u64, t: RequestType, sector: u64) -> u64 {
    let h = RequestHeader {
        request_type: t,
        sector,
    };
    mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
    addr
}

/// Slot `n`'s header page; its data starts one page later and its status byte is in the last
/// page of the slot.
fn slot(n: u64) -> u64 {
    DATA + n * 0x10000
}

/// Every kind of chain keeld answers: reads (one across page boundaries), a write, a flush,
/// get-id and an unknown type (refused, status only): 16 descriptors, a full ring.
fn every_kind_of_chain(mem: &GuestMemory, q: &MockSplitQueue<'_, GuestMemory>) {
    mem.write_slice(&vec![0xffu8; 0x60000], GuestAddress(DATA))
        .unwrap();
    let status = |n: u64| slot(n) + 0xf000;
    let mut descs = Vec::new();
    let mut add = |parts: &[(u64, u32, bool)]| {
        let base = descs.len() as u16;
        descs.extend(chain(base, parts));
    };
    add(&[
        (header(mem, slot(0), RequestType::Read, 0), 16, false),
        (slot(0) + 0x1000, 4096, true),
        (status(0), 1, true),
    ]);
    // 8 KiB from the middle of a page: three pages.
    add(&[
        (header(mem, slot(1), RequestType::Read, 8), 16, false),
        (slot(1) + 0x1800, 8192, true),
        (status(1), 1, true),
    ]);
    add(&[
        (header(mem, slot(2), RequestType::Write, 64), 16, false),
        (slot(2) + 0x1000, 4096, false),
        (status(2), 1, true),
    ]);
    add(&[
        (header(mem, slot(3), RequestType::Flush, 0), 16, false),
        (status(3), 1, true),
    ]);
    add(&[
        (header(mem, slot(4), RequestType::GetId, 0), 16, false),
        (slot(4) + 0x1000, 20, true),
        (status(4), 1, true),
    ]);
    add(&[
        (
            header(mem, slot(5), RequestType::Unsupported(99), 0),
            16,
            false,
        ),
        (status(5), 1, true),
    ]);
    q.add_desc_chains(&descs, 0).unwrap();
}

fn serve_and_check(ctx: Arc<DiskContext>, event_idx: bool) {
    let atomic = guest_memory();
    let guard = atomic.memory();
    let mem: &GuestMemory = &guard;
    let q = MockSplitQueue::new(mem, 16);
    every_kind_of_chain(mem, &q);
    let vring = ready_ring(&atomic, &q, 0, event_idx);
    let session = logging_session();
    let engine = ctx.engine.queue(0).unwrap();
    let mut worker = QueueWorker::new(0, ctx, Arc::clone(&session), atomic.clone(), engine);
    let before = snapshot(mem);
    worker.process(&vring, false);
    worker.drain_all();
    assert_eq!(q.used().idx().load(), 6, "every chain is answered");

    let changed = changed_pages(&before, mem);
    // Read data (1 + 3 pages), six status pages, the get-id page, the used ring.
    assert!(
        changed.len() >= 12,
        "the test writes too little: {changed:?}"
    );
    assert_all_marked(&changed, &session);
    // And only what was written: the request headers and the written data stay clean.
    let log = session.dirty.active().unwrap();
    for clean in [slot(0), slot(2) + 0x1000, slot(3), slot(5)] {
        assert!(!log.is_dirty(clean), "{clean:#x} was not written");
    }
}

#[test]
fn every_write_of_the_null_engine_and_the_worker_is_logged() {
    serve_and_check(context(), false);
}

#[test]
fn event_index_writes_are_logged_too() {
    serve_and_check(context(), true);
}

#[test]
fn reads_the_kernel_puts_in_guest_memory_are_logged() {
    // The raw engine reads through io_uring straight into guest buffers, with the default
    // O_DIRECT: vm-memory never sees these writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
    let engine = RawEngine::open(&RawOptions {
        path,
        size: Some(1 << 20),
        resize: false,
        read_only: false,
        direct: true,
        queue_depth: 32,
    })
    .unwrap();
    serve_and_check(context_with(Arc::new(engine)), false);
}

/// An engine that holds reads until the test lets them finish, then fills them with 0x5a.
#[derive(Clone, Default)]
struct HeldReads(Arc<Mutex<(Vec<IoRequest>, bool)>>);

impl QueueEngine for HeldReads {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        self.0.lock().unwrap().0.append(batch);
    }
    fn reap(&mut self, done: &mut Vec<Completion>) {
        let mut held = self.0.lock().unwrap();
        if !held.1 {
            return;
        }
        for mut r in held.0.drain(..) {
            if matches!(r.op, IoOp::Read { .. }) {
                r.buffers.write_from(&vec![0x5a; r.buffers.len()]);
            }
            done.push(Completion {
                token: r.token,
                result: Ok(()),
            });
        }
    }
    fn wait(&mut self, done: &mut Vec<Completion>) {
        self.reap(done);
    }
    fn in_flight(&self) -> usize {
        self.0.lock().unwrap().0.len()
    }
}

#[test]
fn a_read_taken_before_logging_started_is_logged_when_it_lands() {
    let atomic = guest_memory();
    let guard = atomic.memory();
    let mem: &GuestMemory = &guard;
    let q = MockSplitQueue::new(mem, 16);
    every_kind_of_chain(mem, &q);
    let vring = ready_ring(&atomic, &q, 0, false);
    let session = Arc::new(SessionState::default());
    let engine = HeldReads::default();
    let mut worker = QueueWorker::new(
        0,
        context(),
        Arc::clone(&session),
        atomic.clone(),
        Box::new(engine.clone()),
    );
    worker.process(&vring, false);
    assert!(q.used().idx().load() < 6, "the reads are held");

    // The migration starts now; then the reads land.
    let bytes = (RAM as u64 / LOG_PAGE / 8).max(1);
    session
        .dirty
        .set_base(DirtyLog::open(sealed_log_file(bytes), bytes, 0).unwrap());
    session.dirty.set_log_all(true);
    let before = snapshot(mem);
    engine.0.lock().unwrap().1 = true;
    worker.process(&vring, true);
    assert_eq!(q.used().idx().load(), 6);
    let changed = changed_pages(&before, mem);
    assert!(changed.len() >= 5, "read data and used ring: {changed:?}");
    assert_all_marked(&changed, &session);
}

#[test]
fn nothing_is_marked_once_the_frontend_turns_logging_off() {
    let atomic = guest_memory();
    let guard = atomic.memory();
    let mem: &GuestMemory = &guard;
    let q = MockSplitQueue::new(mem, 16);
    every_kind_of_chain(mem, &q);
    let vring = ready_ring(&atomic, &q, 0, false);
    let session = logging_session();
    let log = session.dirty.active().unwrap();
    session.dirty.set_log_all(false);
    let ctx = context();
    let engine = ctx.engine.queue(0).unwrap();
    let mut worker = QueueWorker::new(0, ctx, Arc::clone(&session), atomic.clone(), engine);
    worker.process(&vring, false);
    assert_eq!(q.used().idx().load(), 6);
    assert!(
        (0..RAM as u64 / LOG_PAGE).all(|p| !log.is_dirty(p * LOG_PAGE)),
        "logging is off"
    );
}
