use super::*;
use crate::config::{DiskConfig, EngineKind};
use crate::engine::null::NullEngine;
use crate::vhost::backend::DiskContext;
use crate::vhost::inflight::InflightRegion;
use keel_protocol::{RequestHeader, RequestType};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

pub(super) const DATA: u64 = 0x10_0000;

pub(super) fn context() -> Arc<DiskContext> {
    context_with(Arc::new(NullEngine::new(1 << 20, false)))
}

/// A one-queue disk of 1 MiB on `engine`.
pub(super) fn context_with(engine: Arc<dyn crate::engine::Engine>) -> Arc<DiskContext> {
    let cfg = DiskConfig {
        name: "w".into(),
        socket: "w.sock".into(),
        engine: EngineKind::Null,
        path: None,
        mirror: Vec::new(),
        resync_chunk: crate::config::DEFAULT_RESYNC_CHUNK,
        size: Some(1 << 20),
        resize: false,
        queues: 1,
        queue_size: 16,
        read_only: false,
        serial: "WORKER".into(),
        direct: true,
        logical_block_size: 512,
        poll_us: 0,
        delay_us: 0,
        space: Default::default(),
        limits: crate::qos::unlimited(),
        import_from: None,
        import_rate: None,
        rbd: None,
        handover: false,
        key_file: None,
        compression: Default::default(),
    };
    Arc::new(DiskContext::new(&cfg, engine, Arc::default()))
}

/// Descriptors of one chain starting at table index `base`: (addr, len, device-writable).
pub(super) fn chain(base: u16, parts: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, write))| {
            let last = i + 1 == parts.len();
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { base + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect()
}

/// 2 MiB of guest memory at address 0.
pub(super) fn guest_memory() -> GuestMemoryAtomic<GuestMemory> {
    GuestMemoryAtomic::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap())
}

/// A started, enabled ring over `q`'s tables, continuing at `next_avail` and the used
/// index `q` shows (as a frontend's SET_VRING_BASE and SET_VRING_ADDR leave it).
pub(super) fn ready_ring(
    atomic: &GuestMemoryAtomic<GuestMemory>,
    q: &MockSplitQueue<'_, GuestMemory>,
    next_avail: u16,
    event_idx: bool,
) -> Vring {
    let vring = Vring::new(atomic.clone(), 16).unwrap();
    vring.set_queue_size(16);
    vring
        .set_queue_info(q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0)
        .unwrap();
    vring.set_queue_next_avail(next_avail);
    vring.set_queue_next_used(q.used().idx().load());
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

#[test]
fn one_wakeup_serves_every_chain_in_one_batch() {
    let atomic = guest_memory();
    let guard = atomic.memory();
    let mem: &GuestMemory = &guard;
    let q = MockSplitQueue::new(mem, 16);
    let hdr = |slot: u64, t: RequestType, sector: u64| {
        let addr = DATA + slot * 0x10000;
        let h = RequestHeader {
            request_type: t,
            sector,
        };
        mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        addr
    };
    let status = |slot: u64| DATA + slot * 0x10000 + 0xf000;
    let buf = |slot: u64| DATA + slot * 0x10000 + 0x1000;
    mem.write_slice(&[0xff; 4096], GuestAddress(buf(0)))
        .unwrap();
    let mut descs = Vec::new();
    // 0: read 4 KiB; 1: write 512 B; 2: get-id; 3: read beyond the end; 4: unknown type.
    descs.extend(chain(
        0,
        &[
            (hdr(0, RequestType::Read, 0), 16, false),
            (buf(0), 4096, true),
            (status(0), 1, true),
        ],
    ));
    descs.extend(chain(
        3,
        &[
            (hdr(1, RequestType::Write, 8), 16, false),
            (buf(1), 512, false),
            (status(1), 1, true),
        ],
    ));
    descs.extend(chain(
        6,
        &[
            (hdr(2, RequestType::GetId, 0), 16, false),
            (buf(2), 20, true),
            (status(2), 1, true),
        ],
    ));
    descs.extend(chain(
        9,
        &[
            (hdr(3, RequestType::Read, 2048), 16, false),
            (buf(3), 512, true),
            (status(3), 1, true),
        ],
    ));
    descs.extend(chain(
        12,
        &[
            (hdr(4, RequestType::Unsupported(99), 0), 16, false),
            (status(4), 1, true),
        ],
    ));
    q.add_desc_chains(&descs, 0).unwrap();
    for slot in 0..5 {
        mem.write_obj(0xaau8, GuestAddress(status(slot))).unwrap();
    }

    let vring = ready_ring(&atomic, &q, 0, false);

    let ctx = context();
    let engine = ctx.engine.queue(0).unwrap();
    let mut worker = QueueWorker::new(0, Arc::clone(&ctx), Arc::default(), atomic.clone(), engine);
    worker.process(&vring, false);

    assert_eq!(q.used().idx().load(), 5, "every chain is answered");
    let st = |slot| mem.read_obj::<u8>(GuestAddress(status(slot))).unwrap();
    assert_eq!([st(0), st(1), st(2), st(3), st(4)], [0, 0, 0, 1, 2]);
    let mut data = [0xeeu8; 4096];
    mem.read_slice(&mut data, GuestAddress(buf(0))).unwrap();
    assert!(data.iter().all(|&b| b == 0), "null reads return zeroes");
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(buf(2))).unwrap();
    assert_eq!(&id[..6], b"WORKER");
    assert!(id[6..].iter().all(|&b| b == 0));
    let used: Vec<(u32, u32)> = (0..5)
        .map(|i| {
            let e = q.used().ring().ref_at(i).unwrap().load();
            (e.id(), e.len())
        })
        .collect();
    assert!(used.contains(&(0, 4097)), "{used:?}");
    assert!(used.contains(&(6, 21)), "{used:?}");

    let s = ctx.stats.snapshot();
    assert_eq!(
        (s.batches, s.batched_requests, s.max_batch),
        (1, 5, 5),
        "{s:?}"
    );
    assert_eq!(
        (
            s.reads,
            s.writes,
            s.get_ids,
            s.invalid_requests,
            s.unsupported
        ),
        (1, 1, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!(s.notifications, 1, "one notification for the whole batch");
    assert_eq!(s.in_flight, 0, "every request at the engine completed");

    // Nothing new: another wakeup answers nothing and does not notify.
    worker.process(&vring, false);
    assert_eq!(q.used().idx().load(), 5);
    assert_eq!(ctx.stats.snapshot().notifications, 1);
}

#[test]
fn event_idx_notifies_only_when_the_driver_asked_and_rearms_the_ring() {
    let atomic = guest_memory();
    let guard = atomic.memory();
    let mem: &GuestMemory = &guard;
    let q = MockSplitQueue::new(mem, 16);
    let flush = |slot: u64| {
        let addr = DATA + slot * 0x1000;
        let h = RequestHeader {
            request_type: RequestType::Flush,
            sector: 0,
        };
        mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        chain(
            2 * slot as u16,
            &[(addr, 16, false), (addr + 0x800, 1, true)],
        )
    };
    // used_event lives after the avail ring's entries; avail_event after the used ring's.
    let used_event = GuestAddress(q.avail_addr().0 + 4 + 2 * 16);
    let avail_event = GuestAddress(q.used_addr().0 + 4 + 8 * 16);

    let vring = ready_ring(&atomic, &q, 0, true);
    let ctx = context();
    let engine = ctx.engine.queue(0).unwrap();
    let mut worker = QueueWorker::new(0, Arc::clone(&ctx), Arc::default(), atomic.clone(), engine);

    // The driver wants an interrupt only after used entry 5: one completion is not enough.
    mem.write_obj(5u16, used_event).unwrap();
    q.add_desc_chains(&flush(0), 0).unwrap();
    worker.process(&vring, false);
    assert_eq!(q.used().idx().load(), 1);
    assert_eq!(ctx.stats.snapshot().notifications, 0);
    // Re-armed: the driver must kick for the next entry (avail_event = next_avail).
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 1);

    // Now it asks for an interrupt at the next used entry.
    mem.write_obj(1u16, used_event).unwrap();
    q.add_desc_chains(&flush(1), 2).unwrap();
    worker.process(&vring, false);
    assert_eq!(q.used().idx().load(), 2);
    assert_eq!(ctx.stats.snapshot().notifications, 1);
    assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
}

/// An engine that finishes flushes at once and keeps writes forever (a keeld about to die).
#[derive(Default)]
struct HoldWrites {
    held: usize,
    done: Vec<Completion>,
}

impl QueueEngine for HoldWrites {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for r in batch.drain(..) {
            match r.op {
                IoOp::Write { .. } => self.held += 1,
                _ => self.done.push(Completion {
                    token: r.token,
                    result: Ok(()),
                }),
            }
        }
    }
    fn reap(&mut self, done: &mut Vec<Completion>) {
        done.append(&mut self.done);
    }
    fn wait(&mut self, done: &mut Vec<Completion>) {
        self.reap(done);
    }
    fn in_flight(&self) -> usize {
        self.held + self.done.len()
    }
}

#[test]
fn requests_in_flight_when_keeld_died_run_again_from_the_inflight_area() {
    let atomic = guest_memory();
    let guard = atomic.memory();
    let mem: &GuestMemory = &guard;
    let q = MockSplitQueue::new(mem, 16);
    let request = |slot: u64, t: RequestType, data: bool| {
        let addr = DATA + slot * 0x10000;
        let h = RequestHeader {
            request_type: t,
            sector: slot * 8,
        };
        mem.write_slice(&h.to_bytes(), GuestAddress(addr)).unwrap();
        mem.write_obj(0xaau8, GuestAddress(addr + 0xf000)).unwrap();
        let mut parts = vec![(addr, 16, false)];
        if data {
            parts.push((addr + 0x1000, 4096, false));
        }
        parts.push((addr + 0xf000, 1, true));
        parts
    };
    let status = |slot: u64| {
        mem.read_obj::<u8>(GuestAddress(DATA + slot * 0x10000 + 0xf000))
            .unwrap()
    };
    // write (descriptors 0-2), flush (3-4), write (5-7).
    let mut descs = chain(0, &request(0, RequestType::Write, true));
    descs.extend(chain(3, &request(1, RequestType::Flush, false)));
    descs.extend(chain(5, &request(2, RequestType::Write, true)));
    q.add_desc_chains(&descs, 0).unwrap();
    let ring = |next_avail: u16| ready_ring(&atomic, &q, next_avail, false);

    // The first keeld: the flush completes, both writes are still in flight when it dies.
    let area = InflightRegion::create(1, 16, 1, 16).unwrap();
    let file = area.file().try_clone().unwrap();
    let message = area.message();
    let first = Arc::new(SessionState::default());
    first.inflight.install(area);
    let first_ctx = context();
    let mut worker = QueueWorker::new(
        0,
        Arc::clone(&first_ctx),
        first,
        atomic.clone(),
        Box::new(HoldWrites::default()),
    );
    worker.process(&ring(0), false);
    assert_eq!(q.used().idx().load(), 1, "only the flush completed");
    assert_eq!(
        first_ctx.stats.snapshot().in_flight,
        2,
        "the two held writes"
    );
    assert_eq!([status(0), status(1), status(2)], [0xaa, 0, 0xaa]);
    std::mem::forget(worker);

    // The frontend reconnects to a new keeld, sets the ring base to the used index (all it
    // knows) and hands the area back.
    let ctx = context();
    let second = Arc::new(SessionState::default());
    second
        .inflight
        .install(InflightRegion::open(file, &message, 1, 16).unwrap());
    let engine = ctx.engine.queue(0).unwrap();
    let mut worker = QueueWorker::new(0, Arc::clone(&ctx), second, atomic.clone(), engine);
    let vring = ring(1);
    worker.process(&vring, false);
    assert_eq!(q.used().idx().load(), 3, "both writes ran again");
    assert_eq!([status(0), status(1), status(2)], [0, 0, 0]);
    let s = ctx.stats.snapshot();
    assert_eq!((s.writes, s.flushes, s.resubmitted), (2, 0, 2), "{s:?}");
    assert_eq!(s.in_flight, 0, "{s:?}");
    let used: Vec<u32> = (0..3)
        .map(|i| q.used().ring().ref_at(i).unwrap().load().id())
        .collect();
    assert_eq!(used, [3, 0, 5], "the flush, then the writes oldest first");

    // The ring continues after them: a new request is the next available entry.
    q.add_desc_chains(&chain(8, &request(3, RequestType::Flush, false)), 8)
        .unwrap();
    worker.process(&vring, false);
    assert_eq!(q.used().idx().load(), 4);
    assert_eq!(status(3), 0);
    assert_eq!(ctx.stats.snapshot().resubmitted, 2);
}
