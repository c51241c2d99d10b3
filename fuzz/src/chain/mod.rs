//! Descriptor chains from a hostile guest: decoded from fuzz bytes, laid out in guest memory as a
//! split virtqueue, popped with virtio-queue and served the way keeld's queue worker serves them
//! (parse, then the null or raw engine, then status and used ring).
//!
//! Every chain must end as a parsed request or a refused one; a panic, a hang, or a host access
//! outside the guest's regions (a guard-page fault, or an iovec the checks below catch) is a bug.
//! Beyond "no crash", each parsed request is checked against the rules it was accepted under:
//! inside the capacity, within the segment limits, buffers inside guest memory.

use std::cell::RefCell;
use std::sync::Arc;

use keel_backend::engine::null::NullEngine;
use keel_backend::engine::raw::{RawEngine, RawOptions};
use keel_backend::engine::{self, Completion, Engine, GuestMemory, IoOp, IoRequest, QueueEngine};
use keel_backend::vhost::inflight::HeadChain;
use keel_backend::vhost::request::{self, Limits, Rejected, Request, RequestKind};
use keel_protocol::{ID_BYTES, SECTOR_SIZE, Status};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::guest::GuardedMemory;

mod scenario;

use scenario::resolve;
pub use scenario::*;

/// What one run did, for tests and the seed check.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// False when the input described no usable memory map or queue.
    pub served: bool,
    pub chains: usize,
    pub parsed: usize,
    pub rejected: usize,
    pub engine_ok: usize,
    pub engine_err: usize,
    /// Status bytes written, in completion order, with the chain head.
    pub statuses: Vec<(u16, Status)>,
}

/// Runs one fuzz input. Panics only on a broken invariant (which is the finding).
pub fn run(data: &[u8]) -> Outcome {
    run_scenario(&Scenario::decode(data))
}

pub fn run_scenario(s: &Scenario) -> Outcome {
    let mut out = Outcome::default();
    let Some(guest) = GuardedMemory::new(&s.guest_ranges()) else {
        return out;
    };
    let mem = Arc::clone(guest.memory());
    let regions: Vec<(u64, u64)> = {
        let mut r: Vec<_> = s
            .guest_ranges()
            .iter()
            .map(|&(a, l)| (a.0, l as u64))
            .collect();
        r.sort_unstable();
        r
    };
    let size = s.queue_size();
    let [desc_table, avail, used] = s.ring_addrs.map(|a| resolve(a, &regions));
    lay_out(s, &mem, &regions, size, desc_table, avail);

    let Ok(mut queue) = Queue::new(size) else {
        return out;
    };
    queue.set_size(size);
    if queue
        .try_set_desc_table_address(GuestAddress(desc_table))
        .is_err()
        || queue
            .try_set_avail_ring_address(GuestAddress(avail))
            .is_err()
        || queue.try_set_used_ring_address(GuestAddress(used)).is_err()
    {
        return out;
    }
    queue.set_event_idx(s.flags & flag::EVENT_IDX != 0);
    queue.set_next_avail(s.next_avail);
    queue.set_next_used(s.next_avail);
    queue.set_ready(true);
    out.served = true;

    with_engine(s, |engine, queue_engine| {
        let limits = limits(s, engine.capacity());
        serve(s, &guest, &mem, &mut queue, &limits, queue_engine, &mut out);
    });
    assert_eq!(
        Arc::strong_count(&mem),
        2,
        "guest memory still referenced after every request finished"
    );
    drop(mem);
    drop(guest);
    out
}

/// Writes descriptors, the available ring and the blobs into guest memory. Writes that fall
/// outside guest memory are skipped: the guest simply could not have made them.
fn lay_out(
    s: &Scenario,
    mem: &GuestMemory,
    regions: &[(u64, u64)],
    size: u16,
    desc_table: u64,
    avail: u64,
) {
    for (i, d) in s.descriptors.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&resolve(d.addr, regions).to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        let at = desc_table.wrapping_add(16 * i as u64);
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }
    let _ = mem.write_obj(s.avail_idx, GuestAddress(avail.wrapping_add(2)));
    for (i, &head) in s.heads.iter().enumerate() {
        let slot = (usize::from(s.next_avail) + i) % usize::from(size);
        let at = avail.wrapping_add(4 + 2 * slot as u64);
        let _ = mem.write_obj(head, GuestAddress(at));
    }
    let event = avail.wrapping_add(4 + 2 * u64::from(size));
    let _ = mem.write_obj(s.used_event, GuestAddress(event));
    for (addr, bytes) in &s.blobs {
        let _ = mem.write_slice(bytes, GuestAddress(resolve(*addr, regions)));
    }
}

fn limits(s: &Scenario, capacity: u64) -> Limits {
    let read_only = s.flags & flag::READ_ONLY != 0;
    Limits {
        capacity,
        // The daemon's own clamp (queue_size - 2, at least 1, at most 1022).
        seg_max: u32::from(s.seg_max).clamp(1, 1022),
        max_discard_seg: u32::from(s.max_discard_seg).max(1),
        max_discard_sectors: s.max_discard_sectors.max(1),
        max_write_zeroes_seg: u32::from(s.max_write_zeroes_seg).max(1),
        max_write_zeroes_sectors: s.max_write_zeroes_sectors.max(1),
        read_only,
        discard: s.flags & flag::DISCARD != 0 && !read_only,
        write_zeroes: s.flags & flag::WRITE_ZEROES != 0 && !read_only,
    }
}

/// A raw disk kept for the whole fuzzing process: opening a file and an io_uring per input
/// would cost more than the input itself.
struct RawDisk {
    _dir: tempfile::TempDir,
    engine: Arc<RawEngine>,
    queue: Box<dyn QueueEngine>,
}

thread_local! {
    static RAW: RefCell<Option<RawDisk>> = const { RefCell::new(None) };
}

fn open_raw() -> RawDisk {
    let dir = tempfile::tempdir().expect("temp dir for the raw engine");
    let opts = RawOptions {
        path: dir.path().join("disk.img"),
        size: Some(RAW_CAPACITY),
        resize: false,
        read_only: false,
        direct: true,
        queue_depth: 256,
    };
    let engine = Arc::new(RawEngine::open(&opts).expect("raw engine on a temp file"));
    let queue = engine.queue(0).expect("raw engine queue");
    RawDisk {
        _dir: dir,
        engine,
        queue,
    }
}

fn with_engine(s: &Scenario, f: impl FnOnce(&dyn Engine, &mut dyn QueueEngine)) {
    if s.flags & flag::RAW != 0 {
        RAW.with(|cell| {
            let mut slot = cell.borrow_mut();
            let disk = slot.get_or_insert_with(open_raw);
            f(disk.engine.as_ref(), disk.queue.as_mut());
        });
    } else {
        let capacity = s.capacity - s.capacity % SECTOR_SIZE;
        let engine = NullEngine::new(capacity, s.flags & flag::READ_ONLY != 0);
        let mut queue = engine.queue(0).expect("null queue");
        f(&engine, queue.as_mut());
    }
}

/// What the worker remembers of a request handed to the engine.
struct Pending {
    head: u16,
    status: GuestAddress,
    used_len: u32,
}

/// Serves the ring once, like keeld's queue worker: pop every chain, parse, answer or submit,
/// wait for the engine, write statuses, fill the used ring, decide on a notification.
fn serve(
    s: &Scenario,
    guest: &GuardedMemory,
    mem: &Arc<GuestMemory>,
    queue: &mut Queue,
    limits: &Limits,
    engine: &mut dyn QueueEngine,
    out: &mut Outcome,
) {
    let write_through = s.flags & flag::WRITE_THROUGH != 0;
    let mut batch = Vec::new();
    let mut pending = Vec::new();
    let mut answered = Vec::new();
    let size = usize::from(queue.size());
    let table = GuestAddress(queue.desc_table());
    let ring = queue.size();
    if let Ok(iter) = queue.iter(&**mem) {
        for chain in iter {
            out.chains += 1;
            assert!(out.chains <= size, "more chains than the queue holds");
            let head = chain.head_index();
            // A chain run again after a restart is walked from its head: it must be the same.
            let walked: Vec<_> = HeadChain::new(mem, table, ring, head)
                .map(|d| (d.addr(), d.len(), d.flags(), d.next()))
                .collect();
            let popped: Vec<_> = chain
                .clone()
                .map(|d| (d.addr(), d.len(), d.flags(), d.next()))
                .collect();
            assert_eq!(walked, popped, "walking chain {head} from its head differs");
            match request::parse(head, chain, mem, limits, write_through) {
                Ok(req) => {
                    out.parsed += 1;
                    check_request(&req, limits, write_through, guest, mem);
                    let Request {
                        head,
                        status,
                        kind,
                        used_len,
                        writes: _,
                    } = req;
                    match kind {
                        RequestKind::Io { op, buffers } => {
                            batch.push(IoRequest {
                                token: pending.len() as u64,
                                op,
                                buffers,
                            });
                            pending.push(Some(Pending {
                                head,
                                status,
                                used_len,
                            }));
                        }
                        RequestKind::GetId { mut buffers } => {
                            let serial = *b"keel-fuzz-serial\0\0\0\0";
                            let n = buffers.len().min(ID_BYTES);
                            assert_eq!(buffers.write_from(&serial[..n]), n);
                            write_status(mem, status, Status::Ok);
                            out.statuses.push((head, Status::Ok));
                            answered.push((head, used_len));
                        }
                    }
                }
                Err(rej) => {
                    out.rejected += 1;
                    check_rejected(&rej, mem);
                    let used = match rej.status {
                        Some(addr) => {
                            write_status(mem, addr, rej.error.status());
                            out.statuses.push((rej.head, rej.error.status()));
                            1
                        }
                        None => 0,
                    };
                    answered.push((rej.head, used));
                }
            }
        }
    }
    for (head, len) in answered {
        let _ = queue.add_used(&**mem, head, len);
    }
    let submitted = batch.len();
    engine.submit(&mut batch);
    assert!(batch.is_empty(), "engine left requests in the batch");
    let mut done: Vec<Completion> = Vec::new();
    engine.reap(&mut done);
    engine::drain(engine, &mut done);
    assert_eq!(
        done.len(),
        submitted,
        "every submitted request completes once"
    );
    for c in done {
        let p = pending
            .get_mut(c.token as usize)
            .and_then(Option::take)
            .expect("completion for a token that was submitted and not yet completed");
        let (status, len) = match c.result {
            Ok(()) => {
                out.engine_ok += 1;
                (Status::Ok, p.used_len)
            }
            Err(_) => {
                out.engine_err += 1;
                (Status::IoErr, 1)
            }
        };
        write_status(mem, p.status, status);
        out.statuses.push((p.head, status));
        let _ = queue.add_used(&**mem, p.head, len);
    }
    let _ = queue.needs_notification(&**mem);
    let _ = queue.enable_notification(&**mem);
}

fn write_status(mem: &GuestMemory, addr: GuestAddress, status: Status) {
    mem.write_obj(status.to_raw(), addr)
        .expect("status address was checked by the parser");
}

fn check_rejected(rej: &Rejected, mem: &GuestMemory) {
    if let Some(addr) = rej.status {
        assert!(
            mem.check_range(addr, 1),
            "rejected with a status outside memory"
        );
    }
    let st = rej.error.status();
    assert!(matches!(st, Status::IoErr | Status::Unsupp), "{st:?}");
}

/// Checks a parsed request against the rules it was accepted under.
fn check_request(
    req: &Request,
    limits: &Limits,
    write_through: bool,
    guest: &GuardedMemory,
    mem: &GuestMemory,
) {
    assert!(
        mem.check_range(req.status, 1),
        "status outside guest memory"
    );
    let in_capacity = |offset: u64, len: u64| {
        offset.is_multiple_of(SECTOR_SIZE)
            && len.is_multiple_of(SECTOR_SIZE)
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= limits.capacity)
    };
    match &req.kind {
        RequestKind::Io { op, buffers } => {
            assert!(
                guest.contains_iovecs(buffers.iovecs()),
                "iovec outside guest memory: {op:?}"
            );
            let len = buffers.len() as u64;
            let bytes: u64 = buffers.iovecs().iter().map(|v| v.iov_len as u64).sum();
            assert_eq!(bytes, len, "iovec lengths disagree with the buffer length");
            match op {
                IoOp::Read { offset } => {
                    assert!(in_capacity(*offset, len), "read {offset}+{len}");
                    // The dirty log marks what a read wrote from these ranges: they must cover
                    // the buffers exactly.
                    let logged: u64 = req.writes.iter().map(|&(_, n)| u64::from(n)).sum();
                    assert_eq!(
                        logged, len,
                        "the ranges to log differ from the read's buffers"
                    );
                    let want = u32::try_from(len + 1).unwrap_or(u32::MAX);
                    assert_eq!(req.used_len, want);
                }
                IoOp::Write { offset, durable } => {
                    assert!(!limits.read_only, "write accepted on a read-only disk");
                    assert!(in_capacity(*offset, len), "write {offset}+{len}");
                    assert_eq!(*durable, write_through);
                    assert_eq!(req.used_len, 1);
                }
                IoOp::Flush => {
                    assert_eq!(len, 0);
                    assert_eq!(req.used_len, 1);
                }
                IoOp::Discard { ranges } => {
                    assert!(limits.discard && !limits.read_only);
                    assert!(!ranges.is_empty());
                    assert!(ranges.len() <= limits.max_discard_seg as usize);
                    for r in ranges {
                        assert!(in_capacity(r.offset, r.len), "discard {r:?}");
                        assert!(r.len <= u64::from(limits.max_discard_sectors) * SECTOR_SIZE);
                    }
                }
                IoOp::WriteZeroes { ranges } => {
                    assert!(limits.write_zeroes && !limits.read_only);
                    assert!(!ranges.is_empty());
                    assert!(ranges.len() <= limits.max_write_zeroes_seg as usize);
                    for z in ranges {
                        assert!(in_capacity(z.range.offset, z.range.len), "zeroes {z:?}");
                        let max = u64::from(limits.max_write_zeroes_sectors) * SECTOR_SIZE;
                        assert!(z.range.len <= max);
                    }
                }
            }
        }
        RequestKind::GetId { buffers } => {
            assert!(guest.contains_iovecs(buffers.iovecs()), "get-id iovec");
            assert!(!buffers.is_empty());
            let want = buffers.len().min(ID_BYTES) as u32 + 1;
            assert_eq!(req.used_len, want);
        }
    }
}
