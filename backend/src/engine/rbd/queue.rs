//! An rbd queue: every request becomes librbd aio calls straight on guest memory (readv/writev
//! with the request's iovecs; librbd does not copy writes either). librbd calls a completion
//! callback on its own finisher thread; the callback only records (slot, return code) in a list
//! shared with the queue and raises the queue's eventfd, which the worker watches in its epoll
//! set. No thread per request.
//!
//! A read's or write's guest buffers (and with them the guest memory mapping) belong to its
//! callback's argument: they stay mapped until librbd calls back, whether or not the guest has
//! had its answer and whether or not the queue still exists. Once the cluster has blocklisted
//! the client (`watchdog.rs` finds out), every request still out is answered IOERR at once and
//! forgotten by the queue; librbd keeps what it holds of them, for ever if it never calls back.
//!
//! A write-through write (the guest turned its cache off) is answered when its aio write
//! completes if librbd's cache is off (the default, `direct = true`): the OSDs then acknowledge a
//! write only once it is on their stable storage. With the cache on, the write is followed by an
//! aio flush and answered when the flush is done. A discard or write-zeroes of several ranges is one aio call
//! per range, answered when the last one is.

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use slab::Slab;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::Blocklist;
use super::ffi::{Api, CompletionT};
use super::image::Image;
use super::watchdog::{QueueWatch, Watchdog};
use crate::engine::{Completion, EngineError, GuestBuffers, IoOp, IoRequest, QueueEngine, Token};

/// What the completion callbacks share with the queue.
struct Shared {
    api: Arc<Api>,
    /// (slot, librbd return value) of finished aio calls, not yet taken by the queue.
    finished: Mutex<Vec<(usize, isize)>>,
    eventfd: EventFd,
    /// The counters the watchdog reads.
    watch: Arc<QueueWatch>,
}

/// The argument of one aio call's callback.
struct CallbackArg {
    shared: Arc<Shared>,
    slot: usize,
    /// The call is a write: counted in `QueueWatch::writes_out`.
    write: bool,
    /// The guest memory librbd reads from or writes to, kept mapped until the callback.
    _buffers: Option<GuestBuffers>,
}

/// Runs on librbd's finisher thread when an aio call completes. It must not panic (it is
/// called from C) and must not block for long (it holds up other completions).
unsafe extern "C" fn on_complete(c: CompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the Box::into_raw of a CallbackArg made for this completion alone
    // (`RbdQueue::start`); librbd calls the callback once, so it is taken back once.
    let arg = unsafe { Box::from_raw(arg.cast::<CallbackArg>()) };
    let api = &arg.shared.api;
    // SAFETY: `c` is the completion this callback belongs to; it is released here, once, after
    // its value was read, and used nowhere else after the aio call was started.
    let rc = unsafe {
        let rc = (api.rbd_aio_get_return_value)(c);
        (api.rbd_aio_release)(c);
        rc
    };
    let watch = &arg.shared.watch;
    if arg.write {
        watch.writes_out.fetch_sub(1, Ordering::AcqRel);
    }
    watch.progress.fetch_add(1, Ordering::AcqRel);
    let first = {
        let mut finished = arg
            .shared
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        finished.push((arg.slot, rc));
        finished.len() == 1
    };
    // Only the first result of a list needs a wake-up: the queue takes the whole list at once,
    // after its wake-up, so later pushes are taken with it or find the list empty again. This
    // spares librbd's finisher thread (which runs every callback in turn) a system call per
    // request under load. A full counter still leaves the fd readable, all the worker needs.
    if first {
        let _ = arg.shared.eventfd.write(1);
    }
}

struct InFlight {
    token: Token,
    op: &'static str,
    /// Aio calls not yet completed.
    pending: u32,
    /// A write-through write whose flush is still to be issued.
    flush_after: bool,
    error: Option<EngineError>,
    /// Already answered (IOERR, the client being blocklisted): only librbd's callbacks are
    /// still awaited, and nothing is reported when they come.
    answered: bool,
}

pub(super) struct RbdQueue {
    image: Arc<Image>,
    blocklist: Arc<Blocklist>,
    read_only: bool,
    /// librbd's cache is on: write-through writes need a flush after them.
    cache: bool,
    shared: Arc<Shared>,
    slots: Slab<InFlight>,
    /// Slots already answered (`InFlight::answered`).
    answered: usize,
    /// Requests finished without librbd (refused, empty), reported at the next reap.
    done: Vec<Completion>,
    /// The disk's watchdog, kept running while this queue exists (even if the engine is
    /// gone): a write librbd keeps is only answered through it. Dropped after `Drop::drop`.
    _watchdog: Option<Arc<Watchdog>>,
}

/// The answer to a request of a blocklisted client.
fn blocklisted(op: &'static str) -> EngineError {
    io_error(op, -(libc::ESHUTDOWN as isize))
}

fn io_error(op: &'static str, rc: isize) -> EngineError {
    EngineError::Io {
        op,
        source: io::Error::from_raw_os_error(-rc as i32),
    }
}

impl RbdQueue {
    pub fn new(
        image: Arc<Image>,
        blocklist: Arc<Blocklist>,
        api: Arc<Api>,
        watchdog: Option<Arc<Watchdog>>,
        read_only: bool,
        cache: bool,
    ) -> io::Result<Self> {
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        let watch = Arc::new(QueueWatch {
            writes_out: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            wake: eventfd.try_clone()?,
        });
        if let Some(w) = &watchdog {
            w.watch(&watch);
        }
        Ok(Self {
            image,
            blocklist,
            read_only,
            cache,
            shared: Arc::new(Shared {
                api,
                finished: Mutex::new(Vec::new()),
                eventfd,
                watch,
            }),
            slots: Slab::new(),
            answered: 0,
            done: Vec::new(),
            _watchdog: watchdog,
        })
    }

    /// Starts one aio call for `slot`; `call` receives the completion to pass to librbd.
    /// `buffers` (a read's or write's) are kept until librbd calls back; `write` counts the
    /// call in the writes out that the watchdog looks at.
    fn start(
        &self,
        slot: usize,
        buffers: Option<GuestBuffers>,
        write: bool,
        call: &dyn Fn(CompletionT) -> c_int,
    ) -> Result<(), isize> {
        let api = &self.shared.api;
        let arg = Box::into_raw(Box::new(CallbackArg {
            shared: Arc::clone(&self.shared),
            slot,
            write,
            _buffers: buffers,
        }));
        let mut c: CompletionT = std::ptr::null_mut();
        // SAFETY: `c` is a valid out-pointer; `arg` stays valid until the callback takes it back
        // (or until we do below, if the call is refused and the callback never runs).
        let rc = unsafe { (api.rbd_aio_create_completion)(arg.cast(), on_complete, &mut c) };
        if rc < 0 {
            // SAFETY: no completion exists, so nothing else will take `arg` back.
            drop(unsafe { Box::from_raw(arg) });
            return Err(rc as isize);
        }
        let watch = &self.shared.watch;
        if write {
            watch.writes_out.fetch_add(1, Ordering::AcqRel);
        }
        let rc = call(c);
        if rc < 0 {
            if write {
                watch.writes_out.fetch_sub(1, Ordering::AcqRel);
            }
            // SAFETY: librbd refused the call before taking the completion: its callback will not
            // run, so the completion and its argument are released here, once.
            unsafe {
                (api.rbd_aio_release)(c);
                drop(Box::from_raw(arg));
            }
            return Err(rc as isize);
        }
        Ok(())
    }

    /// Starts the aio calls of `req`, in `slot`: how many started, and the return code of the
    /// call librbd refused, if one was (the ones before it still complete).
    fn issue(&self, slot: usize, req: IoRequest) -> (u32, Option<isize>) {
        let api = &self.shared.api;
        let image = self.image.raw();
        let einval = -(libc::EINVAL as isize);
        let mut started = 0;
        let mut run = |buffers: Option<GuestBuffers>,
                       write: bool,
                       call: &dyn Fn(CompletionT) -> c_int|
         -> Result<(), isize> {
            self.start(slot, buffers, write, call)?;
            started += 1;
            Ok(())
        };
        let result = match &req.op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => {
                // librbd keeps the iovec array of a read (it copies into it at completion) and
                // the guest pages of a write (zero-copy): both stay put, owned by the callback's
                // argument, until librbd calls back (the array is on the heap and does not move
                // with the buffers).
                let iov = req.buffers.iovecs();
                let (iov, len) = (iov.as_ptr(), iov.len());
                let write = matches!(req.op, IoOp::Write { .. });
                match c_int::try_from(len) {
                    Err(_) => Err(einval),
                    Ok(cnt) => run(Some(req.buffers), write, &|c| {
                        // SAFETY: the iovecs name guest memory checked when the request was
                        // parsed; the buffers (the iovec array and the mapping of that memory)
                        // belong to the call's callback argument, dropped only after librbd
                        // calls back; the image outlives the queue.
                        unsafe {
                            if write {
                                (api.rbd_aio_writev)(image, iov, cnt, *offset, c)
                            } else {
                                (api.rbd_aio_readv)(image, iov, cnt, *offset, c)
                            }
                        }
                    }),
                }
            }
            // SAFETY: the image is open for the queue's whole life.
            IoOp::Flush => run(None, false, &|c| unsafe { (api.rbd_aio_flush)(image, c) }),
            IoOp::Discard { ranges } => ranges.iter().try_for_each(|r| {
                // SAFETY: as above; the range was checked against the capacity.
                run(None, false, &|c| unsafe {
                    (api.rbd_aio_discard)(image, r.offset, r.len, c)
                })
            }),
            IoOp::WriteZeroes { ranges } => ranges.iter().try_for_each(|z| {
                let len = usize::try_from(z.range.len).map_err(|_| einval)?;
                // SAFETY: as above.
                run(None, false, &|c| unsafe {
                    (api.rbd_aio_write_zeroes)(image, z.range.offset, len, c, 0, 0)
                })
            }),
        };
        (started, result.err())
    }

    fn finish(&mut self, slot: usize) {
        let s = self.slots.remove(slot);
        if s.answered {
            self.answered -= 1;
            return;
        }
        self.done.push(Completion {
            token: s.token,
            result: s.error.map_or(Ok(()), Err),
        });
    }

    /// Answers IOERR every request still out, once the client is known blocklisted: no write
    /// of it can land any more, and librbd may never call a zero-copy write back. The slots
    /// stay until librbd does, if it ever does.
    fn fail_blocklisted(&mut self) {
        for (_, s) in self.slots.iter_mut().filter(|(_, s)| !s.answered) {
            s.answered = true;
            self.answered += 1;
            self.done.push(Completion {
                token: s.token,
                result: Err(blocklisted(s.op)),
            });
        }
    }

    /// Requests out and not yet answered.
    fn unanswered(&self) -> usize {
        self.slots.len() - self.answered
    }

    /// Takes the callbacks' results and finishes the requests they complete.
    fn collect(&mut self) {
        let finished = std::mem::take(
            &mut *self
                .shared
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (slot, rc) in finished {
            let Some(s) = self.slots.get_mut(slot) else {
                log::error!("rbd completion for unknown slot {slot}");
                continue;
            };
            if rc < 0 && s.error.is_none() {
                self.blocklist.note(-rc as i32);
                s.error = Some(io_error(s.op, rc));
            }
            s.pending -= 1;
            if s.pending > 0 {
                continue;
            }
            if s.flush_after && s.error.is_none() && !s.answered {
                s.flush_after = false;
                s.pending = 1;
                let image = self.image.raw();
                let api = Arc::clone(&self.shared.api);
                // SAFETY: the image is open for the queue's whole life.
                let flush = self.start(slot, None, false, &|c| unsafe {
                    (api.rbd_aio_flush)(image, c)
                });
                if let Err(rc) = flush {
                    let s = &mut self.slots[slot];
                    s.error = Some(io_error("flush", rc));
                    self.finish(slot);
                }
                continue;
            }
            self.finish(slot);
        }
        if self.blocklist.is_set() {
            self.fail_blocklisted();
        }
    }

    fn wait_readable(&self) {
        let mut pfd = libc::pollfd {
            fd: self.shared.eventfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; an interrupted or failed poll only means we look again.
        unsafe { libc::poll(&mut pfd, 1, -1) };
        let _ = self.shared.eventfd.read();
    }
}

impl QueueEngine for RbdQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        for req in batch.drain(..) {
            let op = req.op.name();
            let writes = !matches!(req.op, IoOp::Read { .. } | IoOp::Flush);
            let empty =
                matches!(req.op, IoOp::Read { .. } | IoOp::Write { .. }) && req.buffers.is_empty();
            let refuse = if writes && self.read_only {
                Some(Err(EngineError::ReadOnly { op }))
            } else if empty {
                Some(Ok(()))
            } else if self.blocklist.is_set() {
                Some(Err(blocklisted(op)))
            } else {
                None
            };
            if let Some(result) = refuse {
                self.done.push(Completion {
                    token: req.token,
                    result,
                });
                continue;
            }
            let flush_after = self.cache && matches!(req.op, IoOp::Write { durable: true, .. });
            let slot = self.slots.insert(InFlight {
                token: req.token,
                op,
                pending: 0,
                flush_after,
                error: None,
                answered: false,
            });
            let (started, refused) = self.issue(slot, req);
            let s = &mut self.slots[slot];
            if let Some(rc) = refused {
                s.error = Some(io_error(op, rc));
            }
            // Callbacks may have run already: their results are collected only by this thread,
            // after the count is in place.
            s.pending = started;
            if started == 0 {
                self.finish(slot);
            }
        }
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        self.collect();
        done.append(&mut self.done);
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        self.collect();
        if self.done.is_empty() && self.unanswered() > 0 {
            self.wait_readable();
        }
        self.reap(done);
    }

    fn in_flight(&self) -> usize {
        self.unanswered() + self.done.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.shared.eventfd.as_raw_fd())
    }

    fn ack_completion_fd(&mut self) {
        let _ = self.shared.eventfd.read();
    }
}

impl Drop for RbdQueue {
    /// Waits for every request not yet answered, so none is lost. Those answered already (the
    /// client blocklisted) are not waited for: their callbacks own their guest buffers and the
    /// shared state, which stay until librbd calls back, if it ever does.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        while self.unanswered() > 0 {
            self.wait(&mut sink);
            sink.clear();
        }
    }
}
