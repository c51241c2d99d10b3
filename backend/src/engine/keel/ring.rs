//! A keel queue's own io_uring on the container.
//!
//! The ring issues the store's data-path I/O; the store names it and never sees the ring.
//! Reads run asynchronously: each guest read becomes a [`ReadPlan`] and one entry per device
//! run, and completes when its last run is in and its checksums pass, so a deep guest queue
//! keeps as many device reads in flight. A write batch's writes (the data runs and journal
//! record its `WritePlan` names) are pushed together and submitted in one system call
//! ([`QueueRing::start_writes`]); the queue applies the plan while they are in flight, then
//! waits for them or leaves them in flight to finish later. Up to [`MAX_BATCHES`] batches may
//! be in flight; each entry is tagged with its batch, and the batches are handed back in the
//! order they were started. Read completions that arrive meanwhile are kept.
//!
//! On an encrypted container the descriptor holds ciphertext: the store hands a batch's writes
//! over sealed (it checksums the ciphertext), and a read's buffers go to the store as they
//! were read, which checks and then opens them. The ring itself never sees the key.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types};
use slab::Slab;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::engine::file_ops::{self, Direction};
use crate::engine::{Completion, EngineError, IoOp, IoRequest};
use crate::store::{AlignedBuf, Gather, ReadPlan, Store};

use super::store_err;
use crate::engine::submit_ring::SubmitRing;

/// The container is registered as fixed file 0.
const CONTAINER: types::Fixed = types::Fixed(0);
/// User-data bit that marks a write of a batch in flight; the batch's number sits above
/// bit 32, the write's index below.
const BATCH_TAG: u64 = 1 << 62;
/// Write batches a ring keeps in flight at most.
pub(super) const MAX_BATCHES: usize = 8;

/// A guest read whose device runs are in flight.
struct ReadInFlight {
    req: IoRequest,
    plan: ReadPlan,
    bufs: Vec<AlignedBuf>,
    pending: usize,
    error: Option<io::Error>,
}

/// The writes of a batch started with [`QueueRing::start_writes`], until it is taken back.
struct BatchWrites {
    /// Its number (the user data's bits above 32, wrapping).
    id: u32,
    /// Kept until every write is done: the kernel reads them.
    iovecs: Vec<Vec<libc::iovec>>,
    offsets: Vec<u64>,
    results: Vec<Option<i32>>,
    left: usize,
    /// How its writes went, once all are done.
    outcome: Option<io::Result<()>>,
}

// SAFETY: the iovecs point into buffers the queue owns (its data buffers and the store's
// in-flight batch), which move between threads with it; they are only handed to the kernel,
// never dereferenced here.
unsafe impl Send for BatchWrites {}

pub(super) struct QueueRing {
    ring: SubmitRing,
    /// Started batches not taken back yet, oldest first.
    batches: VecDeque<BatchWrites>,
    next_batch: u32,
    eventfd: EventFd,
    fd: RawFd,
    store: Arc<Store>,
    reads: Slab<ReadInFlight>,
    done: Vec<Completion>,
    scratch: Vec<u8>,
}

impl QueueRing {
    /// A ring on the store's container, or `None` if the container's device is not a plain
    /// descriptor.
    pub fn new(store: &Arc<Store>, depth: u32) -> io::Result<Option<Self>> {
        let Some(fd) = store.raw_device().raw_fd() else {
            return Ok(None);
        };
        let entries = depth.clamp(64, 4096).next_power_of_two();
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        let ring = SubmitRing::new(entries, eventfd.as_raw_fd())?;
        ring.ring.submitter().register_files(&[fd])?;
        Ok(Some(Self {
            ring,
            batches: VecDeque::with_capacity(MAX_BATCHES),
            next_batch: 0,
            eventfd,
            fd,
            store: Arc::clone(store),
            reads: Slab::new(),
            done: Vec::new(),
            scratch: Vec::new(),
        }))
    }

    pub fn completion_fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    pub fn ack_completion_fd(&mut self) {
        let _ = self.eventfd.read();
    }

    /// Guest reads in flight plus completions not yet handed out, plus one for each started
    /// batch not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.reads.len() + self.done.len() + self.batches.len()
    }

    /// How the oldest started batch's writes went, once they are all done (collects first);
    /// the batch is then taken back.
    pub fn oldest_result(&mut self) -> Option<io::Result<()>> {
        self.drain_completions();
        self.batches.front()?.outcome.as_ref()?;
        self.batches.pop_front().and_then(|b| b.outcome)
    }

    /// Blocks until the oldest started batch's writes are all done; how they went (`Ok` with
    /// none started). The batch is taken back.
    pub fn wait_oldest(&mut self) -> io::Result<()> {
        loop {
            if let Some(r) = self.oldest_result() {
                return r;
            }
            let Some(b) = self.batches.front() else {
                return Ok(());
            };
            // One sleep for all its writes still out. Completions already reaped do not count
            // toward the wait, so it cannot outlast the batch.
            self.ring.wait_for(b.left);
        }
    }

    /// Starts a guest read.
    pub fn start_read(&mut self, req: IoRequest) {
        let IoOp::Read { offset } = req.op else {
            return;
        };
        let plan = match self.store.plan_read(offset, req.buffers.len() as u64) {
            Ok(p) => p,
            Err(e) => {
                self.done.push(Completion {
                    token: req.token,
                    result: Err(store_err("read", e)),
                });
                return;
            }
        };
        let bufs = plan.buffers();
        let offsets: Vec<u64> = plan.runs().iter().map(|r| r.offset()).collect();
        let key = self.reads.insert(ReadInFlight {
            req,
            plan,
            bufs,
            pending: offsets.len(),
            error: None,
        });
        if offsets.is_empty() {
            self.finish_read(key);
            return;
        }
        for (i, offset) in offsets.into_iter().enumerate() {
            let b = &mut self.reads[key].bufs[i];
            let entry = opcode::Read::new(CONTAINER, b.as_mut_ptr(), b.len() as u32)
                .offset(offset)
                .build()
                .user_data(read_tag(key, i));
            self.push(entry);
        }
    }

    /// Hands the kernel everything pushed so far.
    pub fn submit(&mut self) {
        self.ring.flush_backlog();
        self.ring.submit();
    }

    /// [`submit`](Self::submit), without a system call when nothing was pushed since.
    pub fn submit_queued(&mut self) {
        if self.ring.has_queued() {
            self.submit();
        }
    }

    /// Collects finished reads without blocking.
    pub fn reap(&mut self, done: &mut Vec<Completion>) {
        self.drain_completions();
        done.append(&mut self.done);
    }

    /// Blocks until some read finishes (if one is in flight), then collects.
    pub fn wait(&mut self, done: &mut Vec<Completion>) {
        if self.done.is_empty()
            && (!self.reads.is_empty() || self.batches.iter().any(|b| b.left > 0))
            && self.ring.ring.completion().is_empty()
        {
            self.ring.wait_one();
        }
        self.reap(done);
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: every entry points into a buffer owned by `self.reads` (kept until its
        // completion is reaped) or into the iovecs of `self.batches` and the buffers they name
        // (kept until all its writes are reaped: see `start_writes`); the registered
        // descriptor belongs to the store's device, which `self.store` keeps open.
        unsafe { self.ring.push(entry) };
    }

    /// Handles every completion in the ring.
    fn drain_completions(&mut self) {
        let mut n = 0;
        loop {
            let Some(cqe) = self.ring.ring.completion().next() else {
                if self.ring.ring.submission().cq_overflow() {
                    self.submit();
                    if !self.ring.ring.completion().is_empty() {
                        continue;
                    }
                }
                break;
            };
            n += 1;
            self.complete(&cqe);
        }
        if n > 0 && self.ring.has_backlog() {
            self.submit();
        }
    }

    fn complete(&mut self, cqe: &cqueue::Entry) {
        let data = cqe.user_data();
        if data & BATCH_TAG != 0 {
            let id = ((data & !BATCH_TAG) >> 32) as u32;
            self.batch_write_done(id, (data & 0xffff_ffff) as usize, cqe.result());
            return;
        }
        let (key, run) = ((data >> 32) as usize, (data & 0xffff_ffff) as usize);
        let fd = self.fd;
        let Some(r) = self.reads.get_mut(key) else {
            log::error!("io_uring completion for unknown read {key}");
            return;
        };
        let Some(buf) = r.bufs.get_mut(run) else {
            return;
        };
        let res = cqe.result();
        let offset = r.plan.runs()[run].offset();
        let read = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else if (res as usize) < buf.len() {
            read_rest(fd, buf, offset, res as usize)
        } else {
            Ok(())
        };
        if let Err(e) = read {
            r.error.get_or_insert(e);
        }
        r.pending -= 1;
        if r.pending == 0 {
            self.finish_read(key);
        }
    }

    fn batch_write_done(&mut self, id: u32, i: usize, res: i32) {
        let fd = self.fd;
        let Some(b) = self.batches.iter_mut().find(|b| b.id == id) else {
            log::error!("io_uring completion for a write of batch {id}, not in flight");
            return;
        };
        match b.results.get_mut(i) {
            Some(slot @ None) => {
                *slot = Some(res);
                b.left -= 1;
            }
            _ => return,
        }
        if b.left > 0 {
            return;
        }
        let mut outcome = Ok(());
        for ((iov, offset), res) in b.iovecs.iter().zip(&b.offsets).zip(&b.results) {
            let res = res.unwrap_or(-libc::EIO);
            let r = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else if (res as usize) < iov.iter().map(|v| v.iov_len).sum::<usize>() {
                write_rest(fd, iov, *offset, res as usize)
            } else {
                Ok(())
            };
            if let Err(e) = r {
                outcome = Err(e);
                break;
            }
        }
        b.outcome = Some(outcome);
    }

    /// Issues a batch's writes (every write its plan names) without waiting for any. Every
    /// buffer named must stay valid until the batch is taken back ([`oldest_result`] or
    /// [`wait_oldest`], once the batches started before it are). An error means none was
    /// issued: [`MAX_BATCHES`] are in flight already.
    ///
    /// [`oldest_result`]: Self::oldest_result
    /// [`wait_oldest`]: Self::wait_oldest
    pub fn start_writes(&mut self, writes: &[Gather<'_>]) -> io::Result<()> {
        if self.batches.len() >= MAX_BATCHES {
            return Err(io::Error::other(format!(
                "{MAX_BATCHES} batches are in flight on this queue already"
            )));
        }
        let id = self.next_batch;
        self.next_batch = id.wrapping_add(1);
        let iovecs = iovecs_of(writes);
        for (i, ((offset, _), iov)) in writes.iter().zip(&iovecs).enumerate() {
            let tag = BATCH_TAG | (u64::from(id) << 32) | i as u64;
            self.push(write_entry(iov, *offset).user_data(tag));
        }
        self.batches.push_back(BatchWrites {
            id,
            offsets: writes.iter().map(|(o, _)| *o).collect(),
            results: vec![None; writes.len()],
            left: writes.len(),
            outcome: writes.is_empty().then_some(Ok(())),
            iovecs,
        });
        self.submit();
        Ok(())
    }

    fn finish_read(&mut self, key: usize) {
        let mut r = self.reads.remove(key);
        let result = match r.error.take() {
            Some(source) => Err(EngineError::Io { op: "read", source }),
            None if let Some(run) = self.store.finished_run(&r.plan, &mut r.bufs) => run
                .map(|bytes| {
                    r.req.buffers.write_from(bytes);
                })
                .map_err(|e| store_err("read", e)),
            None => {
                self.scratch.resize(r.req.buffers.len(), 0);
                match self
                    .store
                    .finish_read(&r.plan, &mut r.bufs, &mut self.scratch)
                {
                    Ok(()) => {
                        r.req.buffers.write_from(&self.scratch);
                        Ok(())
                    }
                    Err(e) => Err(store_err("read", e)),
                }
            }
        };
        self.done.push(Completion {
            token: r.req.token,
            result,
        });
    }
}

impl Drop for QueueRing {
    /// Waits for every read and write the kernel still holds: its buffers and guest memory
    /// must outlive the kernel's use of them.
    fn drop(&mut self) {
        while !self.batches.is_empty() {
            if let Err(e) = self.wait_oldest() {
                log::error!("a batch's writes failed as its queue closed: {e}");
            }
        }
        let mut sink = Vec::new();
        while !self.reads.is_empty() {
            self.wait(&mut sink);
            sink.clear();
        }
    }
}

/// The iovecs of each gathered write.
fn iovecs_of(writes: &[Gather<'_>]) -> Vec<Vec<libc::iovec>> {
    writes
        .iter()
        .map(|(_, parts)| {
            parts
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_ptr().cast_mut().cast(),
                    iov_len: p.len(),
                })
                .collect()
        })
        .collect()
}

/// One write of `iov` at byte `offset` (a plain write for a single part).
fn write_entry(iov: &[libc::iovec], offset: u64) -> squeue::Entry {
    match iov {
        [one] => opcode::Write::new(CONTAINER, one.iov_base.cast(), one.iov_len as u32)
            .offset(offset)
            .build(),
        many => opcode::Writev::new(CONTAINER, many.as_ptr(), many.len() as u32)
            .offset(offset)
            .build(),
    }
}

fn read_tag(key: usize, run: usize) -> u64 {
    ((key as u64) << 32) | (run as u64 & 0xffff_ffff)
}

/// Finishes a short read of `buf` at `offset` of which `done` bytes arrived.
fn read_rest(fd: RawFd, buf: &mut [u8], offset: u64, done: usize) -> io::Result<()> {
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // `buf` is a live, writable buffer for the whole call.
    file_ops::transfer_all(fd, &iov, offset, done, Direction::Read)
}

/// Finishes a short write of `iov` at `offset` of which `done` bytes went out.
fn write_rest(fd: RawFd, iov: &[libc::iovec], offset: u64, done: usize) -> io::Result<()> {
    // The buffers `iov` names stay valid for the whole call; a write only reads them.
    file_ops::transfer_all(fd, iov, offset, done, Direction::Write { dsync: false })
}
