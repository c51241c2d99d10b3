//! A raw-engine queue on its own io_uring.
//!
//! A batch becomes submission entries pushed together and one `io_uring_enter`. Each request
//! sits in a slab slot while in flight (its guest buffers with it, so guest memory stays mapped);
//! the slot index is the entry's user data. Completions raise an eventfd registered with the ring,
//! which the worker watches in its epoll set; polling workers read the completion ring directly.
//!
//! Ordering: a FLUSH is submitted with IOSQE_IO_DRAIN, so it starts only after every entry
//! submitted before it on this ring has completed; writes of other queues that completed before
//! the FLUSH are in the file already and covered by the fdatasync.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::submit_ring::SubmitRing;
use log::{error, warn};
use slab::Slab;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::file_ops::{self, Direction, IOV_MAX, PUNCH_HOLE, ZERO_RANGE};
use super::raw::RawFiles;
use super::{Completion, EngineError, IoOp, IoRequest, QueueEngine};

/// Registered-file slots.
const BUFFERED_SLOT: u32 = 0;
const DIRECT_SLOT: u32 = 1;

struct InFlight {
    req: IoRequest,
    /// Submission entries not yet completed (a discard of several ranges has several).
    pending: u32,
    /// Whether the read/write went to the O_DIRECT descriptor (it is retried buffered on EINVAL).
    direct: bool,
    error: Option<EngineError>,
}

pub(super) struct UringQueue {
    ring: SubmitRing,
    eventfd: EventFd,
    files: Arc<RawFiles>,
    slots: Slab<InFlight>,
    /// Requests finished without the ring (errors, fallbacks), reported at the next reap.
    done: Vec<Completion>,
}

impl UringQueue {
    /// Whether this kernel lets the process create an io_uring.
    pub fn available() -> bool {
        match IoUring::new(4) {
            Ok(_) => true,
            Err(e) => {
                warn!("io_uring is unavailable: {e}");
                false
            }
        }
    }

    pub fn new(files: Arc<RawFiles>, depth: u32) -> io::Result<Self> {
        let entries = depth.clamp(32, 4096).next_power_of_two();
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        let ring = SubmitRing::new(entries, eventfd.as_raw_fd())?;
        let direct = files.direct.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        ring.ring
            .submitter()
            .register_files(&[files.buffered.as_raw_fd(), direct])?;
        Ok(Self {
            ring,
            eventfd,
            files,
            slots: Slab::with_capacity(entries as usize),
            done: Vec::new(),
        })
    }

    /// Builds the entries of one request (without user data); `None` if it finished already.
    fn entries_for(&mut self, req: &IoRequest) -> Result<(Vec<squeue::Entry>, bool), EngineError> {
        let op = req.op.name();
        if self.files.read_only && !matches!(req.op, IoOp::Read { .. } | IoOp::Flush) {
            return Err(EngineError::ReadOnly { op });
        }
        Ok(match &req.op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => {
                let (_, direct) = self.files.fd_for(req, *offset);
                (vec![rw_entry(req, *offset, direct)], direct)
            }
            IoOp::Flush => (
                vec![
                    opcode::Fsync::new(types::Fixed(BUFFERED_SLOT))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .flags(squeue::Flags::IO_DRAIN),
                ],
                false,
            ),
            IoOp::Discard { ranges } => (
                ranges
                    .iter()
                    .map(|r| fallocate_entry(PUNCH_HOLE, r.offset, r.len))
                    .collect(),
                false,
            ),
            IoOp::WriteZeroes { ranges } => (
                ranges
                    .iter()
                    .map(|z| {
                        let mode = if z.unmap { PUNCH_HOLE } else { ZERO_RANGE };
                        fallocate_entry(mode, z.range.offset, z.range.len)
                    })
                    .collect(),
                false,
            ),
        })
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: every entry's buffers (iovec arrays and the memory they name) belong to a
        // request held in `self.slots` until its completion is reaped, and the registered files
        // live in `self.files`; both outlive the kernel's use of the entry.
        unsafe { self.ring.push(entry) };
    }

    /// Handles one completion entry.
    fn complete_entry(&mut self, cqe: &cqueue::Entry) {
        let key = cqe.user_data() as usize;
        let res = cqe.result();
        let Some(slot) = self.slots.get_mut(key) else {
            error!("io_uring completion for unknown slot {key}");
            return;
        };
        let op = slot.req.op.name();
        let mut resubmit = None;
        match &slot.req.op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => {
                let wanted = slot.req.buffers.len();
                if res == -libc::EINVAL && slot.direct {
                    // O_DIRECT refused this alignment: go through the page cache instead.
                    slot.direct = false;
                    resubmit = Some(rw_entry(&slot.req, *offset, false));
                } else if res < 0 {
                    slot.error = Some(EngineError::Io {
                        op,
                        source: io::Error::from_raw_os_error(-res),
                    });
                } else if (res as usize) < wanted {
                    // Short transfer: finish the tail with blocking calls (rare).
                    let dir = match slot.req.op {
                        IoOp::Write { durable, .. } => Direction::Write { dsync: durable },
                        _ => Direction::Read,
                    };
                    let fd = self.files.buffered.as_raw_fd();
                    let iovecs = slot.req.buffers.iovecs();
                    if let Err(source) =
                        file_ops::transfer_all(fd, iovecs, *offset, res as usize, dir)
                    {
                        slot.error = Some(EngineError::Io { op, source });
                    }
                }
            }
            IoOp::Discard { .. } if res == -libc::EOPNOTSUPP => {
                // Discard is advisory: a file system without hole punching ignores it.
            }
            IoOp::WriteZeroes { ranges } if res == -libc::EOPNOTSUPP || res == -libc::EINVAL => {
                // Zero the ranges by slower means; done once, for all ranges, on the first error.
                let fd = self.files.buffered.as_raw_fd();
                if slot.error.is_none() {
                    for z in ranges {
                        let mode = if z.unmap { PUNCH_HOLE } else { ZERO_RANGE };
                        if let Err(source) =
                            file_ops::zero_any_way(fd, fd, mode, z.range.offset, z.range.len)
                        {
                            slot.error = Some(EngineError::Io { op, source });
                            break;
                        }
                    }
                }
            }
            _ if res < 0 => {
                slot.error.get_or_insert(EngineError::Io {
                    op,
                    source: io::Error::from_raw_os_error(-res),
                });
            }
            _ => {}
        }
        if let Some(entry) = resubmit {
            self.push(entry.user_data(key as u64));
            return;
        }
        slot.pending -= 1;
        if slot.pending == 0 {
            let slot = self.slots.remove(key);
            self.done.push(Completion {
                token: slot.req.token,
                result: slot.error.map_or(Ok(()), Err),
            });
        }
    }

    fn reap_ring(&mut self) -> usize {
        let mut n = 0;
        loop {
            let cqe = self.ring.ring.completion().next();
            let Some(cqe) = cqe else {
                // Completions the kernel kept aside when the ring was full come back only
                // through an enter; ask for them and keep reaping.
                if self.ring.ring.submission().cq_overflow() {
                    self.ring.submit();
                    if !self.ring.ring.completion().is_empty() {
                        continue;
                    }
                }
                break;
            };
            self.complete_entry(&cqe);
            n += 1;
        }
        if n > 0 && (self.ring.has_backlog() || !self.ring.ring.submission().is_empty()) {
            self.ring.flush_backlog();
            self.ring.submit();
        }
        n
    }
}

fn rw_entry(req: &IoRequest, offset: u64, direct: bool) -> squeue::Entry {
    let iovecs = req.buffers.iovecs();
    let fd = types::Fixed(if direct { DIRECT_SLOT } else { BUFFERED_SLOT });
    match req.op {
        IoOp::Write { durable, .. } => {
            opcode::Writev::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
                .offset(offset)
                .rw_flags(if durable { libc::RWF_DSYNC } else { 0 })
                .build()
        }
        _ => opcode::Readv::new(fd, iovecs.as_ptr(), iovecs.len() as u32)
            .offset(offset)
            .build(),
    }
}

fn fallocate_entry(mode: i32, offset: u64, len: u64) -> squeue::Entry {
    opcode::Fallocate::new(types::Fixed(BUFFERED_SLOT), len)
        .offset(offset)
        .mode(mode)
        .build()
}

impl QueueEngine for UringQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for req in batch.drain(..) {
            if req.buffers.iovecs().len() > IOV_MAX {
                // Too many segments for one system call: run it the slow way.
                let result = self.files.execute_blocking(&req);
                self.done.push(Completion {
                    token: req.token,
                    result,
                });
                continue;
            }
            match self.entries_for(&req) {
                Err(e) => self.done.push(Completion {
                    token: req.token,
                    result: Err(e),
                }),
                Ok((entries, _)) if entries.is_empty() => self.done.push(Completion {
                    token: req.token,
                    result: Ok(()),
                }),
                Ok((entries, direct)) => {
                    let key = self.slots.insert(InFlight {
                        req,
                        pending: entries.len() as u32,
                        direct,
                        error: None,
                    });
                    for e in entries {
                        self.push(e.user_data(key as u64));
                    }
                }
            }
        }
        self.ring.submit();
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        self.reap_ring();
        done.append(&mut self.done);
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        if self.done.is_empty() && !self.slots.is_empty() && self.ring.ring.completion().is_empty()
        {
            self.ring.wait_one();
        }
        self.reap(done);
    }

    fn in_flight(&self) -> usize {
        self.slots.len() + self.done.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    fn ack_completion_fd(&mut self) {
        let _ = self.eventfd.read();
    }
}

impl Drop for UringQueue {
    /// Waits for every request the kernel still holds: their guest buffers must stay mapped
    /// until the kernel is done with them.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while !self.slots.is_empty() {
            self.wait(&mut sink);
            sink.clear();
        }
    }
}
