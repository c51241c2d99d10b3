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

use crate::bytes::{Reader, Writer};
use crate::guest::{GuardedMemory, PAGE};

/// The ring region: guest [0, 64 KiB), always present.
pub const RING_REGION_SIZE: u64 = 0x1_0000;
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
/// Free space in the ring region for headers, data, tables.
pub const DATA: u64 = 0x3000;
/// Size of the raw engine's image file.
pub const RAW_CAPACITY: u64 = 1 << 20;
/// Largest queue: 2^MAX_QUEUE_LOG2 descriptors.
pub const MAX_QUEUE_LOG2: u8 = 8;
const MAX_EXTRA_REGIONS: u8 = 3;
const MAX_BLOBS: u8 = 8;
const MAX_BLOB_LEN: u16 = 4096;

/// Bits of the first input byte.
pub mod flag {
    pub const WRITE_THROUGH: u8 = 1 << 0;
    pub const READ_ONLY: u8 = 1 << 1;
    pub const DISCARD: u8 = 1 << 2;
    pub const WRITE_ZEROES: u8 = 1 << 3;
    pub const EVENT_IDX: u8 = 1 << 4;
    /// Serve with the raw engine on a 1 MiB temp file instead of the null engine.
    pub const RAW: u8 = 1 << 5;
    /// Ring addresses come from the input instead of the fixed layout.
    pub const RING_ADDRS: u8 = 1 << 6;
    /// The available index comes from the input instead of following the heads.
    pub const AVAIL_IDX: u8 = 1 << 7;
}

/// How an extra guest region is placed.
#[derive(Clone, Copy, Debug)]
pub enum RegionAt {
    /// Right after the previous region (a range may straddle the two).
    Adjacent,
    /// At guest page `n`.
    Page(u32),
    /// Near the top of the 64-bit guest address space, `n` pages below the highest page.
    Top(u32),
}

/// How a guest address is written in the input: relative forms let mutations stay near the
/// interesting places (region edges) instead of landing in the unmapped void.
#[derive(Clone, Copy, Debug)]
pub enum Addr {
    Raw(u64),
    /// `DATA + offset` in the ring region.
    Data(u64),
    /// Start of region `i` (sorted by address) plus a wrapping offset.
    RegionStart(u8, u64),
    /// End of region `i` plus a wrapping offset (use `0u64.wrapping_sub(n)` to go below it).
    RegionEnd(u8, u64),
}

/// One split-ring descriptor as the guest writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: Addr,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// Everything a fuzz input describes.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub flags: u8,
    pub queue_log2: u8,
    /// Null engine capacity (rounded down to a sector); the raw engine has [`RAW_CAPACITY`].
    pub capacity: u64,
    pub seg_max: u16,
    pub max_discard_seg: u8,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_seg: u8,
    pub max_write_zeroes_sectors: u32,
    pub regions: Vec<(RegionAt, u8)>,
    /// Descriptor table, available ring, used ring (with [`flag::RING_ADDRS`]).
    pub ring_addrs: [Addr; 3],
    pub descriptors: Vec<Desc>,
    pub next_avail: u16,
    pub avail_idx: u16,
    pub heads: Vec<u16>,
    pub used_event: u16,
    /// Bytes written into guest memory before the queue is served.
    pub blobs: Vec<(Addr, Vec<u8>)>,
}

impl Scenario {
    /// A scenario with the fixed layout, one 16-page data region at 1 MiB, no descriptors.
    pub fn new(flags: u8, queue_log2: u8) -> Self {
        Self {
            flags,
            queue_log2,
            capacity: 1 << 30,
            seg_max: 126,
            max_discard_seg: 32,
            max_discard_sectors: 1 << 21,
            max_write_zeroes_seg: 32,
            max_write_zeroes_sectors: 1 << 21,
            regions: vec![(RegionAt::Page(0x100), 15)],
            ring_addrs: [
                Addr::Raw(DESC_TABLE),
                Addr::Raw(AVAIL_RING),
                Addr::Raw(USED_RING),
            ],
            descriptors: Vec::new(),
            next_avail: 0,
            avail_idx: 0,
            heads: Vec::new(),
            used_event: 0,
            blobs: Vec::new(),
        }
    }

    pub fn queue_size(&self) -> u16 {
        1 << (self.queue_log2 % (MAX_QUEUE_LOG2 + 1))
    }

    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader::new(data);
        let flags = r.u8();
        let queue_log2 = r.u8();
        let capacity = r.u64();
        let seg_max = r.u16();
        let max_discard_seg = r.u8();
        let max_discard_sectors = r.u32();
        let max_write_zeroes_seg = r.u8();
        let max_write_zeroes_sectors = r.u32();
        let n_regions = r.u8() % (MAX_EXTRA_REGIONS + 1);
        let regions = (0..n_regions)
            .map(|_| {
                let kind = r.u8();
                let value = r.u32();
                let pages = r.u8();
                let at = match kind % 3 {
                    0 => RegionAt::Adjacent,
                    1 => RegionAt::Page(value),
                    _ => RegionAt::Top(value),
                };
                (at, pages)
            })
            .collect();
        let ring_addrs = if flags & flag::RING_ADDRS != 0 {
            [read_addr(&mut r), read_addr(&mut r), read_addr(&mut r)]
        } else {
            [
                Addr::Raw(DESC_TABLE),
                Addr::Raw(AVAIL_RING),
                Addr::Raw(USED_RING),
            ]
        };
        let mut s = Self {
            flags,
            queue_log2,
            capacity,
            seg_max,
            max_discard_seg,
            max_discard_sectors,
            max_write_zeroes_seg,
            max_write_zeroes_sectors,
            regions,
            ring_addrs,
            descriptors: Vec::new(),
            next_avail: 0,
            avail_idx: 0,
            heads: Vec::new(),
            used_event: 0,
            blobs: Vec::new(),
        };
        let n_desc = usize::from(r.u8()).min(usize::from(s.queue_size()));
        s.descriptors = (0..n_desc)
            .map(|_| Desc {
                addr: read_addr(&mut r),
                len: r.u32(),
                flags: r.u16(),
                next: r.u16(),
            })
            .collect();
        s.next_avail = r.u16();
        let n_heads = r.u8();
        s.heads = (0..n_heads).map(|_| r.u16()).collect();
        s.avail_idx = if flags & flag::AVAIL_IDX != 0 {
            r.u16()
        } else {
            s.next_avail.wrapping_add(u16::from(n_heads))
        };
        s.used_event = r.u16();
        let n_blobs = r.u8() % (MAX_BLOBS + 1);
        for _ in 0..n_blobs {
            let addr = read_addr(&mut r);
            let len = r.u16() % (MAX_BLOB_LEN + 1);
            s.blobs.push((addr, r.bytes(usize::from(len)).to_vec()));
        }
        s
    }

    /// The bytes [`decode`](Self::decode) turns back into `self` (for seed inputs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags)
            .u8(self.queue_log2)
            .u64(self.capacity)
            .u16(self.seg_max)
            .u8(self.max_discard_seg)
            .u32(self.max_discard_sectors)
            .u8(self.max_write_zeroes_seg)
            .u32(self.max_write_zeroes_sectors)
            .u8(self.regions.len() as u8);
        for &(at, pages) in &self.regions {
            let (kind, value) = match at {
                RegionAt::Adjacent => (0, 0),
                RegionAt::Page(n) => (1, n),
                RegionAt::Top(n) => (2, n),
            };
            w.u8(kind).u32(value).u8(pages);
        }
        if self.flags & flag::RING_ADDRS != 0 {
            for a in self.ring_addrs {
                write_addr(&mut w, a);
            }
        }
        w.u8(self.descriptors.len() as u8);
        for d in &self.descriptors {
            write_addr(&mut w, d.addr);
            w.u32(d.len).u16(d.flags).u16(d.next);
        }
        w.u16(self.next_avail).u8(self.heads.len() as u8);
        for &h in &self.heads {
            w.u16(h);
        }
        if self.flags & flag::AVAIL_IDX != 0 {
            w.u16(self.avail_idx);
        }
        w.u16(self.used_event).u8(self.blobs.len() as u8);
        for (addr, bytes) in &self.blobs {
            write_addr(&mut w, *addr);
            w.u16(bytes.len() as u16).bytes(bytes);
        }
        w.out
    }

    /// Guest ranges: the ring region, then the extra regions as placed.
    pub fn guest_ranges(&self) -> Vec<(GuestAddress, usize)> {
        let mut ranges = vec![(GuestAddress(0), RING_REGION_SIZE as usize)];
        let mut prev_end = RING_REGION_SIZE;
        for &(at, pages) in &self.regions {
            let size = (u64::from(pages % 16) + 1) * PAGE;
            let top_page = !(PAGE - 1);
            let start = match at {
                RegionAt::Adjacent => prev_end,
                RegionAt::Page(n) => u64::from(n) * PAGE,
                RegionAt::Top(n) => top_page - size - u64::from(n % 64) * PAGE,
            };
            ranges.push((GuestAddress(start), size as usize));
            prev_end = start.saturating_add(size);
        }
        ranges
    }
}

fn read_addr(r: &mut Reader<'_>) -> Addr {
    let kind = r.u8();
    let value = r.u64();
    let region = kind >> 2;
    match kind & 3 {
        0 => Addr::Raw(value),
        1 => Addr::Data(value),
        2 => Addr::RegionStart(region, value),
        _ => Addr::RegionEnd(region, value),
    }
}

fn write_addr(w: &mut Writer, a: Addr) {
    let (kind, value) = match a {
        Addr::Raw(v) => (0, v),
        Addr::Data(v) => (1, v),
        Addr::RegionStart(i, v) => (2 | (i << 2), v),
        Addr::RegionEnd(i, v) => (3 | (i << 2), v),
    };
    w.u8(kind).u64(value);
}

/// Resolves an [`Addr`] against the guest's regions (sorted by address).
fn resolve(a: Addr, regions: &[(u64, u64)]) -> u64 {
    let region = |i: u8| regions[usize::from(i) % regions.len()];
    match a {
        Addr::Raw(v) => v,
        Addr::Data(v) => DATA + v % (RING_REGION_SIZE - DATA),
        Addr::RegionStart(i, v) => region(i).0.wrapping_add(v),
        Addr::RegionEnd(i, v) => {
            let (start, len) = region(i);
            start.wrapping_add(len).wrapping_add(v)
        }
    }
}

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
