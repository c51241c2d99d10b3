//! A queue worker: serves one virtqueue on its own thread.
//!
//! On every wakeup (a guest kick or engine completions) the worker takes **every** available
//! chain off the ring, parses them, submits the well-formed ones to its engine queue as one batch,
//! puts whatever has finished on the used ring, and notifies the guest once. Guest notifications
//! stay disabled while it works and are re-enabled (re-checking the ring, so no kick is lost)
//! only before it sleeps. With a polling window it keeps checking the ring and the engine for that
//! long after the last activity before sleeping, trading CPU for latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keel_protocol::{ID_BYTES, Status};
use log::{debug, info, warn};
use slab::Slab;
use vhost_user_backend::{VringMutex, VringStateMutGuard, VringT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use super::backend::{DiskContext, SessionState};
use super::inflight::{HeadChain, QueueInflight};
use super::request::{self, Limits, RequestError, RequestKind};
use super::sigbus;
use super::stats::{BatchCounts, LatencyOp, LocalLatency};
use crate::engine::{Completion, GuestMemory, IoOp, IoRequest, QueueEngine};

/// How long a polling worker spins flat out after its last work before it starts yielding
/// the CPU between checks (the usual gap between a completion and the guest's next request).
const PURE_SPIN: Duration = Duration::from_micros(10);

/// The vring type Keel's backend uses.
pub type Vring = VringMutex<GuestMemoryAtomic<GuestMemory>>;
type VringGuard<'a> = <Vring as VringStateMutGuard<'a, GuestMemoryAtomic<GuestMemory>>>::G;

/// A request handed to the engine and not yet completed.
struct Pending {
    head: u16,
    status: GuestAddress,
    used_len: u32,
    /// The memory map the request was parsed against (its status byte lives there).
    memory: Arc<GuestMemory>,
    /// When the request was taken off the ring (one clock read per batch).
    taken: Instant,
    /// Which latency histogram its completion goes to.
    kind: LatencyOp,
}

pub struct QueueWorker {
    index: usize,
    ctx: Arc<DiskContext>,
    session: Arc<SessionState>,
    memory: GuestMemoryAtomic<GuestMemory>,
    engine: Box<dyn QueueEngine>,
    pending: Slab<Pending>,
    batch: Vec<IoRequest>,
    done: Vec<Completion>,
    /// Chains answered without the engine (get-id, refused requests): (head, used length).
    answered: Vec<(u16, u32)>,
    /// The ring served, kept from the first wakeup so a drain can complete onto it.
    vring: Option<Vring>,
    /// The available ring made no sense (e.g. its index ran more than a ring ahead): the ring
    /// is not served again until the frontend resets it, instead of spinning on it forever.
    broken: bool,
    /// This ring's part of the frontend's inflight area, when it keeps one.
    inflight: Option<QueueInflight>,
    /// The session's inflight generation `inflight` was taken from.
    inflight_generation: u64,
    /// Guest pages replaced after their file was truncated, as last reported.
    replaced_pages: u64,
    /// What requests are checked against, refreshed every wakeup (the disk may grow).
    limits: Limits,
    /// This ring's share of the disk's in-flight gauge, as last published.
    published_in_flight: u64,
}

impl QueueWorker {
    pub fn new(
        index: usize,
        ctx: Arc<DiskContext>,
        session: Arc<SessionState>,
        memory: GuestMemoryAtomic<GuestMemory>,
        engine: Box<dyn QueueEngine>,
    ) -> Self {
        let depth = usize::from(ctx.queue_size);
        Self {
            index,
            session,
            memory,
            engine,
            pending: Slab::with_capacity(depth),
            batch: Vec::with_capacity(depth),
            done: Vec::with_capacity(depth),
            answered: Vec::with_capacity(depth),
            vring: None,
            broken: false,
            inflight: None,
            inflight_generation: 0,
            replaced_pages: sigbus::replaced_pages(),
            limits: ctx.limits_now(),
            published_in_flight: 0,
            ctx,
        }
    }

    /// The fd to add to this worker's epoll set, if its engine completes asynchronously.
    pub fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.engine.completion_fd()
    }

    /// Serves the ring after a kick or a completion wakeup.
    pub fn process(&mut self, vring: &Vring, completion_wakeup: bool) {
        if completion_wakeup {
            self.engine.ack_completion_fd();
        }
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        let mut state = vring.get_mut();
        if !state.get_queue().ready() {
            self.broken = false;
            return;
        }
        if self.broken {
            return;
        }
        let mut mem = self.memory.memory().into_inner();
        self.adopt_inflight(&mut state, &mem);
        self.report_replaced_pages();
        loop {
            if let Err(e) = state.get_queue_mut().disable_notification(&*mem) {
                debug!(
                    "{} q{}: disable notification: {e}",
                    self.ctx.name, self.index
                );
            }
            self.run_once(&mut state, &mem);
            if self.broken {
                break;
            }
            if !self.ctx.poll.is_zero() {
                self.poll(&mut state, &mut mem);
            }
            match state.get_queue_mut().enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!(
                        "{} q{}: enable notification: {e}",
                        self.ctx.name, self.index
                    );
                    break;
                }
            }
        }
    }

    /// Says so when guest memory was truncated under keeld (see `sigbus`). The count is the
    /// process's; the worker that notices first reports it.
    fn report_replaced_pages(&mut self) {
        let now = sigbus::replaced_pages();
        if now != self.replaced_pages {
            warn!(
                "{} q{}: the frontend truncated guest memory under a mapped region: {} pages \
                 now read as zeroes ({now} in all)",
                self.ctx.name,
                self.index,
                now - self.replaced_pages
            );
            self.replaced_pages = now;
        }
    }

    /// One round: hand the guest what finished, take the ring's chains, submit, hand over what
    /// finished meanwhile. Finished requests go out first so that the guest can refill its
    /// queue while this round submits. Returns whether any work was done.
    fn run_once(&mut self, state: &mut VringGuard<'_>, mem: &Arc<GuestMemory>) -> bool {
        let earlier = self.complete(state, mem);
        if earlier > 0 {
            self.notify(state, mem);
        }
        let took = self.take_available(state, mem);
        let completed = self.complete(state, mem);
        if took + completed > 0 {
            self.notify(state, mem);
        }
        earlier + took + completed > 0
    }

    /// Keeps serving without sleeping until `poll` passes with nothing to do.
    fn poll(&mut self, state: &mut VringGuard<'_>, mem: &mut Arc<GuestMemory>) {
        let mut last_busy = Instant::now();
        let mut deadline = last_busy + self.ctx.poll;
        loop {
            // The frontend may change the memory table while we spin (e.g. a client mapping its
            // buffers after start): always parse against the current map.
            let current = self.memory.memory();
            if !std::ptr::eq(&*current, &**mem) {
                *mem = current.into_inner();
            }
            let queue = state.get_queue();
            if !queue.ready() {
                return;
            }
            let avail = queue
                .avail_idx(&**mem, Ordering::Acquire)
                .is_ok_and(|idx| idx.0 != queue.next_avail());
            let busy = (avail || self.engine.in_flight() > 0) && self.run_once(state, mem);
            let now = Instant::now();
            if busy {
                last_busy = now;
                deadline = now + self.ctx.poll;
            } else if now >= deadline {
                return;
            } else if now.duration_since(last_busy) < PURE_SPIN {
                std::hint::spin_loop();
            } else {
                // Idle for a while: let another runnable thread on this CPU (often the guest's
                // vCPU or the client on a busy host) go first instead of starving it for a time
                // slice, while still checking the ring between its turns.
                std::thread::yield_now();
            }
        }
    }

    /// Pops every available chain, answers what needs no engine, submits the rest as one batch.
    /// Returns the number of chains taken.
    fn take_available(&mut self, state: &mut VringGuard<'_>, mem: &Arc<GuestMemory>) -> usize {
        let ctx = Arc::clone(&self.ctx);
        let ctx = &ctx;
        self.limits = ctx.limits_now();
        let write_through = self.session.write_through.load(Ordering::Relaxed);
        let mut counts = BatchCounts::default();
        let queue = state.get_queue_mut();
        let iter = match queue.iter(&**mem) {
            Ok(iter) => iter,
            Err(e) => {
                warn!(
                    "{} q{}: cannot read the available ring: {e}",
                    ctx.name, self.index
                );
                if matches!(e, virtio_queue::Error::InvalidAvailRingIndex) {
                    warn!(
                        "{} q{}: the available index is corrupt; the ring is not served until \
                         the frontend resets it",
                        ctx.name, self.index
                    );
                    self.broken = true;
                }
                return 0;
            }
        };
        // The map requests are parsed against. The frontend may have added a memory region
        // (and the guest used it) between our load of the map and our read of the ring: a
        // request that looks outside guest memory is parsed once more against the current map.
        let mut map = Arc::clone(mem);
        let taken = Instant::now();
        for chain in iter {
            let head = chain.head_index();
            if let Some(track) = &mut self.inflight {
                track.begin(head);
            }
            self.take_chain(head, chain, &mut map, taken, write_through, &mut counts);
        }
        self.hand_over(queue, mem);
        ctx.stats.record_batch(&counts);
        counts.requests as usize
    }

    /// Puts the chains answered without the engine on the used ring and submits the batch.
    fn hand_over(&mut self, queue: &mut Queue, mem: &GuestMemory) {
        for (head, len) in self.answered.drain(..) {
            put_used(
                self.inflight.as_ref(),
                queue,
                mem,
                head,
                len,
                &self.ctx,
                self.index,
            );
        }
        if !self.batch.is_empty() {
            self.engine.submit(&mut self.batch);
        }
        self.publish_in_flight();
    }

    /// Brings the disk's in-flight gauge in step with this ring's requests at the engine: one
    /// shared add per batch, only when the count changed.
    fn publish_in_flight(&mut self) {
        let now = self.pending.len() as u64;
        let gauge = &self.ctx.stats.in_flight;
        match now.cmp(&self.published_in_flight) {
            std::cmp::Ordering::Greater => {
                gauge.fetch_add(now - self.published_in_flight, Ordering::Relaxed);
            }
            std::cmp::Ordering::Less => {
                gauge.fetch_sub(self.published_in_flight - now, Ordering::Relaxed);
            }
            std::cmp::Ordering::Equal => {}
        }
        self.published_in_flight = now;
    }

    /// Parses one chain taken off the ring (or handed back after a restart) and queues it for
    /// the engine, or answers it at once (get-id, refused requests).
    fn take_chain<I>(
        &mut self,
        head: u16,
        descs: I,
        map: &mut Arc<GuestMemory>,
        taken: Instant,
        write_through: bool,
        counts: &mut BatchCounts,
    ) where
        I: Iterator<Item = Descriptor> + Clone,
    {
        let ctx = &self.ctx;
        counts.requests += 1;
        let again = descs.clone();
        let mut parsed = request::parse(head, descs, map, &self.limits, write_through);
        if let Err(rej) = &parsed
            && matches!(rej.error, RequestError::OutsideGuestMemory(_))
        {
            let current = self.memory.memory();
            if !std::ptr::eq(&*current, &**map) {
                *map = current.into_inner();
                parsed = request::parse(head, again, map, &self.limits, write_through);
            }
        }
        match parsed {
            Ok(req) => match req.kind {
                RequestKind::Io { op, buffers } => {
                    let kind = match &op {
                        IoOp::Read { .. } => {
                            counts.reads += 1;
                            counts.bytes_read += buffers.len() as u64;
                            LatencyOp::Read
                        }
                        IoOp::Write { .. } => {
                            counts.writes += 1;
                            counts.bytes_written += buffers.len() as u64;
                            LatencyOp::Write
                        }
                        IoOp::Flush => {
                            counts.flushes += 1;
                            LatencyOp::Flush
                        }
                        IoOp::Discard { .. } => {
                            counts.discards += 1;
                            LatencyOp::Other
                        }
                        IoOp::WriteZeroes { .. } => {
                            counts.write_zeroes += 1;
                            LatencyOp::Other
                        }
                    };
                    let token = self.pending.insert(Pending {
                        head: req.head,
                        status: req.status,
                        used_len: req.used_len,
                        memory: Arc::clone(map),
                        taken,
                        kind,
                    }) as u64;
                    self.batch.push(IoRequest { token, op, buffers });
                }
                RequestKind::GetId { mut buffers } => {
                    counts.get_ids += 1;
                    let n = buffers.len().min(ID_BYTES);
                    buffers.write_from(&ctx.serial[..n]);
                    write_status(map, req.status, Status::Ok);
                    self.answered.push((req.head, req.used_len));
                }
            },
            Err(rej) => {
                counts.rejected += 1;
                if let Some(suppressed) = ctx.log_limit.allow() {
                    warn!(
                        "{} q{}: refused request (descriptor {}): {}{}",
                        ctx.name,
                        self.index,
                        rej.head,
                        rej.error,
                        suppressed_note(suppressed)
                    );
                }
                let used = match rej.status {
                    Some(addr) => {
                        write_status(map, addr, rej.error.status());
                        1
                    }
                    None => 0,
                };
                self.answered.push((rej.head, used));
            }
        }
    }

    /// Takes up the inflight area the frontend handed over (if it changed since the last
    /// wakeup): the chains it marks were taken by an earlier keeld that died before answering
    /// them, so they run again, oldest first, and the ring continues after them.
    fn adopt_inflight(&mut self, state: &mut VringGuard<'_>, mem: &Arc<GuestMemory>) {
        let generation = self.session.inflight.generation();
        if generation == self.inflight_generation {
            return;
        }
        self.inflight_generation = generation;
        self.inflight = self
            .session
            .inflight
            .region()
            .and_then(|region| QueueInflight::new(region, self.index as u16));
        let Some(track) = &mut self.inflight else {
            return;
        };
        if !self.pending.is_empty() {
            // The area arrived while this keeld serves the ring: nothing to recover, but what
            // is in flight now must be marked.
            for (_, p) in &self.pending {
                track.begin(p.head);
            }
            return;
        }
        let queue = state.get_queue_mut();
        let used = queue.next_used();
        let heads = track.recover(used, queue.size());
        debug!(
            "{} q{}: inflight area taken up: used index {used}, {} requests to run again",
            self.ctx.name,
            self.index,
            heads.len()
        );
        queue.set_next_avail(used.wrapping_add(heads.len() as u16));
        if heads.is_empty() {
            return;
        }
        info!(
            "{} q{}: running {} requests again that were in flight when keeld stopped",
            self.ctx.name,
            self.index,
            heads.len()
        );
        let table = GuestAddress(queue.desc_table());
        let size = queue.size();
        self.limits = self.ctx.limits_now();
        let write_through = self.session.write_through.load(Ordering::Relaxed);
        let mut counts = BatchCounts::default();
        let mut map = Arc::clone(mem);
        let taken = Instant::now();
        for head in heads {
            let chain = HeadChain::new(mem, table, size, head);
            self.take_chain(head, chain, &mut map, taken, write_through, &mut counts);
        }
        self.hand_over(state.get_queue_mut(), mem);
        self.ctx
            .stats
            .resubmitted
            .fetch_add(counts.requests, Ordering::Relaxed);
        self.ctx.stats.record_batch(&counts);
    }

    /// Moves finished engine requests to the used ring. Returns how many.
    fn complete(&mut self, state: &mut VringGuard<'_>, mem: &Arc<GuestMemory>) -> usize {
        if self.engine.in_flight() == 0 {
            return 0;
        }
        self.engine.reap(&mut self.done);
        self.finish(state, mem)
    }

    fn finish(&mut self, state: &mut VringGuard<'_>, mem: &Arc<GuestMemory>) -> usize {
        let n = self.done.len();
        let queue = state.get_queue_mut();
        let now = Instant::now();
        let mut latency: [LocalLatency; LatencyOp::COUNT] = Default::default();
        for c in self.done.drain(..) {
            let Some(p) = self.pending.try_remove(c.token as usize) else {
                warn!(
                    "{} q{}: completion for unknown token {}",
                    self.ctx.name, self.index, c.token
                );
                continue;
            };
            let (status, len) = match c.result {
                Ok(()) => (Status::Ok, p.used_len),
                Err(e) => {
                    self.ctx.stats.io_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.ctx.log_limit.allow() {
                        warn!(
                            "{} q{}: I/O error: {e}{}",
                            self.ctx.name,
                            self.index,
                            suppressed_note(suppressed)
                        );
                    }
                    (Status::IoErr, 1)
                }
            };
            latency[p.kind as usize].record(now.saturating_duration_since(p.taken));
            write_status(&p.memory, p.status, status);
            put_used(
                self.inflight.as_ref(),
                queue,
                mem,
                p.head,
                len,
                &self.ctx,
                self.index,
            );
        }
        self.ctx.stats.merge_latency(&latency);
        self.publish_in_flight();
        n
    }

    fn notify(&mut self, state: &mut VringGuard<'_>, mem: &Arc<GuestMemory>) {
        match state.get_queue_mut().needs_notification(&**mem) {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                self.ctx.stats.notifications.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = state.signal_used_queue() {
                    debug!("{} q{}: notify: {e}", self.ctx.name, self.index);
                }
            }
        }
    }

    /// Finishes every in-flight request and puts it on the used ring (the frontend is stopping
    /// the ring, or the connection is ending).
    pub fn drain_all(&mut self) {
        if self.engine.in_flight() == 0 {
            return;
        }
        crate::engine::drain(self.engine.as_mut(), &mut self.done);
        let Some(vring) = self.vring.clone() else {
            self.done.clear();
            self.pending.clear();
            self.publish_in_flight();
            return;
        };
        let mut state = vring.get_mut();
        let mem = self.memory.memory().into_inner();
        if self.finish(&mut state, &mem) > 0 {
            self.notify(&mut state, &mem);
        }
    }
}

impl Drop for QueueWorker {
    /// A worker that goes away takes its share of the in-flight gauge with it.
    fn drop(&mut self) {
        self.pending.clear();
        self.publish_in_flight();
    }
}

/// Puts a chain on the used ring, keeping the inflight area (if any) in step.
fn put_used(
    inflight: Option<&QueueInflight>,
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
    ctx: &DiskContext,
    index: usize,
) {
    if let Some(track) = inflight {
        track.before_used(head);
    }
    if let Err(e) = queue.add_used(mem, head, len) {
        warn!("{} q{index}: add_used: {e}", ctx.name);
    }
    if let Some(track) = inflight {
        track.after_used(head, queue.next_used());
    }
}

fn write_status(mem: &GuestMemory, addr: GuestAddress, status: Status) {
    // The parser checked the address; a failure here means the map changed, and the guest that
    // changed it gets no status, which is all it could expect.
    let _ = mem.write_obj(status.to_raw(), addr);
}

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar messages suppressed)")
    }
}

#[cfg(test)]
mod tests {
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

    const DATA: u64 = 0x10_0000;

    fn context() -> Arc<DiskContext> {
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
        };
        let engine = Arc::new(NullEngine::new(1 << 20, false));
        Arc::new(DiskContext::new(&cfg, engine, Arc::default()))
    }

    /// Descriptors of one chain starting at table index `base`: (addr, len, device-writable).
    fn chain(base: u16, parts: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
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
    fn guest_memory() -> GuestMemoryAtomic<GuestMemory> {
        GuestMemoryAtomic::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap())
    }

    /// A started, enabled ring over `q`'s tables, continuing at `next_avail` and the used
    /// index `q` shows (as a frontend's SET_VRING_BASE and SET_VRING_ADDR leave it).
    fn ready_ring(
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
        let mut worker =
            QueueWorker::new(0, Arc::clone(&ctx), Arc::default(), atomic.clone(), engine);
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
            (s.reads, s.writes, s.get_ids, s.rejected),
            (1, 1, 1, 2),
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
        let mut worker =
            QueueWorker::new(0, Arc::clone(&ctx), Arc::default(), atomic.clone(), engine);

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
}
