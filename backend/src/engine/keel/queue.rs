//! One virtqueue worker's half of the keel engine.
//!
//! A kick's writes, discards and write-zeroes become one store batch (one journal record):
//! the store plans it ([`Store::plan_batch`]), the queue's io_uring issues the writes the plan
//! names, and the store applies the plan while they are in flight ([`Store::apply_plan`]);
//! without a ring (a container that is not a plain file or block device) the store writes it
//! through its device ([`Store::write_batch`]). Then the kick's FLUSHes complete; then its
//! reads start, handed to the device in doubling groups. Reads complete asynchronously on
//! the ring, or at once without one.
//!
//! With a ring and a write-back cache (the guest did not ask for write-through), a batch is
//! answered as soon as its writes are issued and its map changes applied, and its writes are
//! left in flight: while the device writes it, the guest gets its answers and sends the next
//! kick, which is parsed, copied, planned (checksummed, sealed, compressed) and started
//! meanwhile, whatever its size. Up to [`MAX_BATCHES`] batches (and [`MAX_BYTES_IN_FLIGHT`]
//! of their data) are in flight per queue: on a full disk a batch's writes can wait
//! milliseconds in the device's queue behind the cleaner's, and with two in flight the guest
//! waited for them (docs/benchmarks.md, "More batches in flight"). A FLUSH waits for them
//! (and fails if they failed), as a disk's volatile cache would; so do reads, a write-through
//! batch and closing.
//! Batches are finished in the order they were started.
//!
//! A queue never blocks on the store while a batch of its own is in flight: the store may be
//! waiting for that batch (a checkpoint, a segment that needs the cleaner, a release by a
//! mark, a snapshot, a read of a block being written all wait for records in flight), and
//! only this thread finishes it. So a batch planned with a batch in flight is planned with
//! [`Store::try_plan_batch`], which refuses where it would wait; the queue then finishes its
//! batches in flight and plans it with [`Store::plan_batch`], waiting as needed.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::ring::{MAX_BATCHES, QueueRing};
use super::store_err;
use crate::engine::{Completion, EngineError, IoOp, IoRequest, QueueEngine};
use crate::store::layout::BLOCK_SIZE;
use crate::store::{AlignedBuf, InFlight, Op, Store, StoreError};

#[cfg(test)]
mod tests;

/// Submission entries the ring is sized for (reads in flight beyond it wait in a backlog).
const RING_DEPTH: u32 = 256;

/// Bytes of data the batches in flight on a queue hold at most: a kick that would take more
/// finishes the oldest first.
const MAX_BYTES_IN_FLIGHT: usize = 8 << 20;

pub(super) struct KeelQueue {
    store: Arc<Store>,
    writer: usize,
    read_only: bool,
    ring: Option<QueueRing>,
    /// Requests finished without the ring.
    done: Vec<Completion>,
    /// Block-aligned copies of the batch's write data (the store writes whole blocks straight
    /// from them), reused across batches.
    data: Vec<AlignedBuf>,
    /// The batches left in flight on the ring, oldest first, each with the data buffers its
    /// writes read and the bytes of data they hold.
    flying: VecDeque<(InFlight, Vec<AlignedBuf>, usize)>,
    /// Data buffers of finished batches, for the next batches: with `data` and those in
    /// flight, up to [`MAX_BATCHES`] + 1 sets rotate.
    spare: Vec<Vec<AlignedBuf>>,
    /// [`MAX_BYTES_IN_FLIGHT`], or another bound in tests.
    max_bytes_in_flight: usize,
    scratch: Vec<u8>,
}

impl KeelQueue {
    pub fn new(store: &Arc<Store>, writer: usize, read_only: bool) -> io::Result<Self> {
        Ok(Self {
            store: Arc::clone(store),
            writer,
            read_only,
            ring: QueueRing::new(store, RING_DEPTH)?,
            done: Vec::new(),
            data: Vec::new(),
            flying: VecDeque::with_capacity(MAX_BATCHES),
            spare: Vec::new(),
            max_bytes_in_flight: MAX_BYTES_IN_FLIGHT,
            scratch: Vec::new(),
        })
    }

    /// Ends the batches in flight whose writes are done, oldest first, without waiting.
    fn land(&mut self) {
        while !self.flying.is_empty() {
            match self.ring.as_mut().and_then(QueueRing::oldest_result) {
                Some(written) => self.finish_oldest(written),
                None => return,
            }
        }
    }

    /// Waits for the oldest batch in flight, if any, and ends it.
    fn settle_oldest(&mut self) {
        if self.flying.is_empty() {
            return;
        }
        let written = match self.ring.as_mut() {
            Some(ring) => ring.wait_oldest(),
            None => Ok(()),
        };
        self.finish_oldest(written);
    }

    /// Waits for every batch in flight and ends them, oldest first.
    fn settle(&mut self) {
        while !self.flying.is_empty() {
            self.settle_oldest();
        }
    }

    /// The bytes of data of the batches in flight.
    fn bytes_in_flight(&self) -> usize {
        self.flying.iter().map(|(_, _, bytes)| bytes).sum()
    }

    fn finish_oldest(&mut self, written: io::Result<()>) {
        let Some((batch, buffers, _)) = self.flying.pop_front() else {
            return;
        };
        if let Err(e) = self.store.finish_batch(batch, written) {
            // The store is failed now: later requests and the next FLUSH report it.
            log::error!("a batch's writes failed after it was answered: {e}");
        }
        // Its buffers are free again, for a batch to come.
        self.spare.push(buffers);
    }

    /// The store operations of one mutating request (`data` holds its bytes for a write).
    fn ops_of<'a>(op: &IoOp, data: &'a [u8], out: &mut Vec<Op<'a>>) {
        match op {
            IoOp::Write { offset, .. } => out.push(Op::Write {
                offset: *offset,
                data,
            }),
            IoOp::Discard { ranges } => out.extend(ranges.iter().map(|r| Op::Discard {
                offset: r.offset,
                len: r.len,
            })),
            // The store unmaps zeroed whole blocks either way, so UNMAP changes nothing here.
            IoOp::WriteZeroes { ranges } => out.extend(ranges.iter().map(|z| Op::WriteZeroes {
                offset: z.range.offset,
                len: z.range.len,
            })),
            IoOp::Read { .. } | IoOp::Flush => {}
        }
    }

    /// Commits every write, discard and write-zeroes of the batch as one metadata transaction.
    /// If the store refuses the batch, each request is retried alone so that only the ones at
    /// fault fail.
    fn commit_mutations(&mut self, reqs: &[&IoRequest]) -> Vec<Result<(), EngineError>> {
        let mut data = std::mem::take(&mut self.data);
        let lens = copy_data(reqs, &mut data);
        // The data is copied: now the oldest batches must be done if every slot is taken, or
        // if this one's data would take the queue past its bound.
        let bytes: usize = lens.iter().sum();
        while self.flying.len() >= MAX_BATCHES
            || (!self.flying.is_empty()
                && self.bytes_in_flight() + bytes > self.max_bytes_in_flight)
        {
            self.settle_oldest();
        }
        let durable = reqs
            .iter()
            .any(|r| matches!(r.op, IoOp::Write { durable: true, .. }));
        match self.commit_copied(reqs, &data, &lens, durable) {
            Ok(batch) => {
                // Started: its buffers fly with it; the next batch fills a spare set.
                self.flying.push_back((batch, data, bytes));
                self.data = self.spare.pop().unwrap_or_default();
                reqs.iter().map(|_| Ok(())).collect()
            }
            Err(results) => {
                self.data = data;
                results
            }
        }
    }

    /// Commits the batch whose data was copied into `data` (`lens`: each request's bytes).
    /// `Ok` when it was started, to be left in flight (answered at once; the caller keeps
    /// `data` until it is finished), else the requests' results, written.
    fn commit_copied(
        &mut self,
        reqs: &[&IoRequest],
        data: &[AlignedBuf],
        lens: &[usize],
        durable: bool,
    ) -> Result<InFlight, Vec<Result<(), EngineError>>> {
        let mut ops = Vec::with_capacity(reqs.len());
        for ((req, buf), len) in reqs.iter().zip(data).zip(lens) {
            Self::ops_of(&req.op, &buf[..*len], &mut ops);
        }
        if durable || self.ring.is_none() {
            // Written through: every batch before it first.
            self.settle();
        }
        if !durable && self.ring.is_some() {
            let (store, writer) = (Arc::clone(&self.store), self.writer);
            let mut started = None;
            if !self.flying.is_empty() {
                // With a batch of ours in flight the plan may not wait (see the module's doc).
                if let Some(ring) = self.ring.as_mut() {
                    started = try_start_on_ring(&store, writer, ring, &ops).ok().flatten();
                }
                if started.is_none() {
                    // Refused (or failed): with nothing of ours in flight, plan it as before.
                    self.settle();
                }
            }
            let started = match (started, self.ring.as_mut()) {
                (Some(batch), _) => Ok(batch),
                (None, Some(ring)) => start_on_ring(&store, writer, ring, &ops),
                (None, None) => Err(StoreError::Failed),
            };
            match started {
                Ok(batch) => return Ok(batch),
                // Retried one by one below, waiting for each.
                Err(_) if reqs.len() > 1 => {}
                Err(e) => return Err(vec![Err(store_err(reqs[0].op.name(), e))]),
            }
        }
        let store = &*self.store;
        let (writer, mut ring) = (self.writer, self.ring.as_mut());
        let mut write = |ops: &[Op<'_>]| write_now(store, writer, ring.as_deref_mut(), ops);
        let finish = |r: Result<(), StoreError>, op| {
            r.and_then(|()| if durable { store.flush() } else { Ok(()) })
                .map_err(|e| store_err(op, e))
        };
        Err(match write(&ops) {
            Ok(()) => {
                let r = finish(Ok(()), "write");
                reqs.iter()
                    .map(|_| r.as_ref().map_err(clone_err).copied())
                    .collect()
            }
            Err(_) if reqs.len() > 1 => reqs
                .iter()
                .zip(data)
                .zip(lens)
                .map(|((req, buf), len)| {
                    let mut one = Vec::new();
                    Self::ops_of(&req.op, &buf[..*len], &mut one);
                    finish(write(&one), req.op.name())
                })
                .collect(),
            Err(e) => vec![Err(store_err(reqs[0].op.name(), e))],
        })
    }

    /// Reads one request's range at once, without the ring.
    fn read_now(&mut self, req: &mut IoRequest) -> Result<(), EngineError> {
        let IoOp::Read { offset } = req.op else {
            return Ok(());
        };
        self.scratch.resize(req.buffers.len(), 0);
        self.store
            .read(offset, &mut self.scratch)
            .map_err(|e| store_err("read", e))?;
        req.buffers.write_from(&self.scratch);
        Ok(())
    }
}

impl Drop for KeelQueue {
    /// The batches in flight are finished before their buffers go.
    fn drop(&mut self) {
        self.settle();
    }
}

/// Copies each request's write data into a block-aligned buffer of `data` (grown as needed);
/// returns each request's length in bytes.
fn copy_data(reqs: &[&IoRequest], data: &mut Vec<AlignedBuf>) -> Vec<usize> {
    let mut lens = Vec::with_capacity(reqs.len());
    data.truncate(reqs.len());
    for (i, req) in reqs.iter().enumerate() {
        let len = match req.op {
            IoOp::Write { .. } => req.buffers.len(),
            _ => 0,
        };
        let blocks = len.div_ceil(BLOCK_SIZE);
        match data.get_mut(i) {
            Some(b) if b.len() >= blocks * BLOCK_SIZE => {}
            Some(b) => *b = AlignedBuf::scratch(blocks),
            None => data.push(AlignedBuf::scratch(blocks)),
        }
        req.buffers.read_into(&mut data[i][..len]);
        lens.push(len);
    }
    lens
}

/// Plans a batch, issues its writes on `ring` and applies it: the batch is left in flight on
/// the ring, to finish once its writes are done. The plan may wait: no batch of the caller's
/// may be in flight.
fn start_on_ring(
    store: &Store,
    writer: usize,
    ring: &mut QueueRing,
    ops: &[Op<'_>],
) -> Result<InFlight, StoreError> {
    let plan = store.plan_batch(writer, ops)?;
    start_planned(store, ring, plan)
}

/// [`start_on_ring`] with a plan that never waits (the caller has a batch in flight):
/// `None` where it would.
fn try_start_on_ring(
    store: &Store,
    writer: usize,
    ring: &mut QueueRing,
    ops: &[Op<'_>],
) -> Result<Option<InFlight>, StoreError> {
    match store.try_plan_batch(writer, ops)? {
        Some(plan) => start_planned(store, ring, plan).map(Some),
        None => Ok(None),
    }
}

/// Issues a planned batch's writes on `ring` and applies it.
fn start_planned(
    store: &Store,
    ring: &mut QueueRing,
    plan: crate::store::WritePlan<'_>,
) -> Result<InFlight, StoreError> {
    let started = ring.start_writes(&plan.writes());
    // Every reserved record is applied, whatever became of its writes: later ones wait for it.
    let batch = store.apply_plan(plan);
    match started {
        Ok(()) => Ok(batch),
        Err(e) => {
            let failed = StoreError::Io(io::Error::new(e.kind(), e.to_string()));
            // Fails the store: none of the batch's writes was issued.
            let _ = store.finish_batch(batch, Err(e));
            Err(failed)
        }
    }
}

/// Writes one batch and returns once it (and every record before it) is written: on the
/// ring when there is one, else through the store's device.
fn write_now(
    store: &Store,
    writer: usize,
    ring: Option<&mut QueueRing>,
    ops: &[Op<'_>],
) -> Result<(), StoreError> {
    let Some(ring) = ring else {
        return store.write_batch(writer, ops);
    };
    let batch = start_on_ring(store, writer, ring, ops)?;
    let written = ring.wait_oldest();
    store.finish_batch_in_order(batch, written)
}

/// Engine errors carry an `io::Error`, which is not `Clone`: rebuild one with the same text.
fn clone_err(e: &EngineError) -> EngineError {
    match e {
        EngineError::Io { op, source } => EngineError::Io {
            op,
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => EngineError::Io {
            op: "write",
            source: io::Error::other(other.to_string()),
        },
    }
}

impl QueueEngine for KeelQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let mut mutations = Vec::new();
        let mut flushes = Vec::new();
        for req in batch.iter() {
            match req.op {
                IoOp::Read { .. } => {}
                IoOp::Flush => flushes.push(req.token),
                _ if self.read_only => self.done.push(Completion {
                    token: req.token,
                    result: Err(EngineError::ReadOnly { op: req.op.name() }),
                }),
                _ => mutations.push(req),
            }
        }
        if !mutations.is_empty() {
            let results = self.commit_mutations(&mutations);
            for (req, result) in mutations.iter().zip(results) {
                self.done.push(Completion {
                    token: req.token,
                    result,
                });
            }
        }
        if !flushes.is_empty() {
            // One flush covers every write answered before it, on any queue.
            self.settle();
            let r = self.store.flush().map_err(|e| store_err("flush", e));
            for token in flushes {
                self.done.push(Completion {
                    token,
                    result: r.as_ref().map_err(clone_err).copied(),
                });
            }
        }
        // Reads go to the device in doubling groups, after the kick's 1st, 2nd, 4th, 8th...
        // read: the device starts on the first while the rest are still being looked up, for
        // about log2(n) submissions per kick. One submission per kick left the device idle
        // until every read was planned (the block layer sends a submission's reads together).
        if batch.iter().any(|r| matches!(r.op, IoOp::Read { .. })) {
            // A read may want blocks the batch in flight is writing.
            self.settle();
        }
        let mut started: usize = 0;
        for mut req in batch.drain(..) {
            if !matches!(req.op, IoOp::Read { .. }) {
                continue;
            }
            match self.ring.as_mut() {
                Some(ring) => {
                    ring.start_read(req);
                    started += 1;
                    if started.is_power_of_two() {
                        ring.submit_queued();
                    }
                }
                None => {
                    let result = self.read_now(&mut req);
                    self.done.push(Completion {
                        token: req.token,
                        result,
                    });
                }
            }
        }
        if let Some(ring) = self.ring.as_mut() {
            ring.submit_queued();
        }
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        done.append(&mut self.done);
        if let Some(ring) = self.ring.as_mut() {
            ring.reap(done);
        }
        self.land();
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        if !self.done.is_empty() {
            self.reap(done);
            return;
        }
        if let Some(ring) = self.ring.as_mut() {
            ring.wait(done);
        }
        self.land();
    }

    fn in_flight(&self) -> usize {
        self.done.len() + self.ring.as_ref().map_or(0, QueueRing::in_flight)
    }

    fn completion_fd(&self) -> Option<RawFd> {
        self.ring.as_ref().map(QueueRing::completion_fd)
    }

    fn ack_completion_fd(&mut self) {
        if let Some(ring) = self.ring.as_mut() {
            ring.ack_completion_fd();
        }
    }
}
