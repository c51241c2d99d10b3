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
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

use super::backend::{DiskContext, SessionState};
use super::dirty_log::LogView;
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
    /// Guest ranges the request's completion wrote (read data), for the dirty log.
    written: request::Ranges,
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
    /// The disk's frontend gate let this ring be served (until it stops).
    served: bool,
    /// The dirty log, while a live migration has it on.
    log: LogView,
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
        let log = LogView::new(Arc::clone(&session.dirty));
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
            served: false,
            log,
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
        if self.broken || !self.may_serve() {
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
            guest_writes::mark_used_ring(state.get_queue(), &mut self.log);
            self.run_once(&mut state, &mem);
            if self.broken {
                break;
            }
            if !self.ctx.poll.is_zero() {
                self.poll(&mut state, &mut mem);
            }
            let enabled = state.get_queue_mut().enable_notification(&*mem);
            guest_writes::mark_used_ring(state.get_queue(), &mut self.log);
            match enabled {
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
            guest_writes::put_used(
                self.inflight.as_ref(),
                queue,
                mem,
                head,
                len,
                (&self.ctx.name, self.index),
                &mut self.log,
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
                            counts.read_bytes += buffers.len() as u64;
                            LatencyOp::Read
                        }
                        IoOp::Write { .. } => {
                            counts.writes += 1;
                            counts.written_bytes += buffers.len() as u64;
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
                        written: if matches!(op, IoOp::Read { .. }) {
                            req.writes
                        } else {
                            request::Ranges::new()
                        },
                    }) as u64;
                    self.batch.push(IoRequest { token, op, buffers });
                }
                RequestKind::GetId { mut buffers } => {
                    counts.get_ids += 1;
                    let n = buffers.len().min(ID_BYTES);
                    buffers.write_from(&ctx.serial[..n]);
                    guest_writes::mark_ranges(&req.writes, &mut self.log);
                    guest_writes::write_status(map, req.status, Status::Ok, &mut self.log);
                    self.answered.push((req.head, req.used_len));
                }
            },
            Err(rej) => {
                if rej.error.status() == Status::Unsupp {
                    counts.unsupported += 1;
                } else {
                    counts.invalid_requests += 1;
                }
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
                        guest_writes::write_status(map, addr, rej.error.status(), &mut self.log);
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
                    self.ctx.stats.errors.fetch_add(1, Ordering::Relaxed);
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
            // The engine has put the read data in guest memory: mark it, then the status.
            guest_writes::mark_ranges(&p.written, &mut self.log);
            guest_writes::write_status(&p.memory, p.status, status, &mut self.log);
            guest_writes::put_used(
                self.inflight.as_ref(),
                queue,
                mem,
                p.head,
                len,
                (&self.ctx.name, self.index),
                &mut self.log,
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

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar messages suppressed)")
    }
}

mod gate;
mod guest_writes;
#[cfg(test)]
mod log_tests;
#[cfg(test)]
mod tests;
