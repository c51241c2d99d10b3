//! One virtqueue worker's half of the keel engine.
//!
//! A kick's writes, discards and write-zeroes become one store batch (one journal record),
//! written through the queue's io_uring when the container is a plain file or block device
//! and through the store's device otherwise; then the kick's FLUSHes complete; then its reads
//! start, handed to the device in doubling groups. Reads complete asynchronously on the ring,
//! or at once without one.
//!
//! With a ring and a write-back cache (the guest did not ask for write-through), a batch is
//! answered as soon as its writes are issued and its map changes applied, and its writes are
//! left in flight: while the device writes it, the guest gets its answers and sends the next
//! kick, which is parsed and copied meanwhile. A FLUSH waits for them (and fails if they
//! failed), as a disk's volatile cache would. One batch is in flight per queue: the queue
//! finishes it before it starts another, reads, or flushes, so a queue never blocks on the
//! store while the store may be waiting for its batch.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use super::ring::QueueRing;
use super::store_err;
use crate::engine::{Completion, EngineError, IoOp, IoRequest, QueueEngine};
use crate::store::layout::BLOCK_SIZE;
use crate::store::{AlignedBuf, BatchIo, DeviceIo, InFlight, Op, Store, StoreError};

/// Submission entries the ring is sized for (reads in flight beyond it wait in a backlog).
const RING_DEPTH: u32 = 256;

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
    /// The batch left in flight on the ring, and the data buffers its writes read (the two
    /// sets of buffers change places whenever a batch is started).
    flying: Option<InFlight>,
    flying_data: Vec<AlignedBuf>,
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
            flying: None,
            flying_data: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Ends the batch left in flight once its writes are done, without waiting.
    fn land(&mut self) {
        if self.flying.is_none() {
            return;
        }
        if let Some(written) = self.ring.as_mut().and_then(QueueRing::batch_result) {
            self.finish_flying(written);
        }
    }

    /// Waits for the batch left in flight, if any, and ends it.
    fn settle(&mut self) {
        if self.flying.is_none() {
            return;
        }
        let written = match self.ring.as_mut() {
            Some(ring) => ring.wait_batch(),
            None => Ok(()),
        };
        self.finish_flying(written);
    }

    fn finish_flying(&mut self, written: io::Result<()>) {
        let Some(batch) = self.flying.take() else {
            return;
        };
        if let Err(e) = self.store.finish_batch(batch, written) {
            // The store is failed now: later requests and the next FLUSH report it.
            log::error!("a batch's writes failed after it was answered: {e}");
        }
        // Its buffers (still in `flying_data`) are free again: the next batch started takes
        // them back in exchange for its own.
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
        let mut lens = Vec::with_capacity(reqs.len());
        self.data.truncate(reqs.len());
        for (i, req) in reqs.iter().enumerate() {
            let len = match req.op {
                IoOp::Write { .. } => req.buffers.len(),
                _ => 0,
            };
            let blocks = len.div_ceil(BLOCK_SIZE);
            match self.data.get_mut(i) {
                Some(b) if b.len() >= blocks * BLOCK_SIZE => {}
                Some(b) => *b = AlignedBuf::scratch(blocks),
                None => self.data.push(AlignedBuf::scratch(blocks)),
            }
            req.buffers.read_into(&mut self.data[i][..len]);
            lens.push(len);
        }
        // The data is copied: now the batch before it must be done (the store may need it).
        self.settle();
        let mut ops = Vec::with_capacity(reqs.len());
        for ((req, buf), len) in reqs.iter().zip(&self.data).zip(&lens) {
            Self::ops_of(&req.op, &buf[..*len], &mut ops);
        }
        let durable = reqs
            .iter()
            .any(|r| matches!(r.op, IoOp::Write { durable: true, .. }));
        if !durable && let Some(ring) = self.ring.as_mut() {
            match self.store.start_batch(self.writer, &ops, ring) {
                Ok(batch) => {
                    self.flying = Some(batch);
                    drop(ops);
                    std::mem::swap(&mut self.data, &mut self.flying_data);
                    return reqs.iter().map(|_| Ok(())).collect();
                }
                // Retried one by one below, waiting for each.
                Err(_) if reqs.len() > 1 => {}
                Err(e) => return vec![Err(store_err(reqs[0].op.name(), e))],
            }
        }
        let store = &*self.store;
        let mut device_io = DeviceIo(store.raw_device());
        let io: &mut dyn BatchIo = match self.ring.as_mut() {
            Some(r) => r,
            None => &mut device_io,
        };
        let finish = |r: Result<(), StoreError>, op| {
            r.and_then(|()| if durable { store.flush() } else { Ok(()) })
                .map_err(|e| store_err(op, e))
        };
        match store.write_batch_with(self.writer, &ops, io) {
            Ok(()) => {
                let r = finish(Ok(()), "write");
                reqs.iter()
                    .map(|_| r.as_ref().map_err(clone_err).copied())
                    .collect()
            }
            Err(_) if reqs.len() > 1 => reqs
                .iter()
                .zip(&self.data)
                .zip(&lens)
                .map(|((req, buf), len)| {
                    let mut one = Vec::new();
                    Self::ops_of(&req.op, &buf[..*len], &mut one);
                    let r = store.write_batch_with(self.writer, &one, io);
                    finish(r, req.op.name())
                })
                .collect(),
            Err(e) => vec![Err(store_err(reqs[0].op.name(), e))],
        }
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
    /// The batch in flight is finished before its buffers go.
    fn drop(&mut self) {
        self.settle();
    }
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
