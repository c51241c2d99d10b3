//! A queue's engine half behind its disk's limits: requests the buckets hold back wait here, in
//! order, and a timer wakes the worker when the first of them may go.
//!
//! The worker sleeps on one completion fd: an epoll set holding the real engine's fd (if any)
//! and the timer, as the delay queue does.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::wake::TimedWake;

use super::{Cost, DiskQos, Kind};
use crate::engine::{Completion, IoOp, IoRequest, QueueEngine};

/// Shortest timer: a wakeup lets a millisecond's worth through at once instead of one request
/// per wakeup at high limits.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Longest timer: a parked request looks at the limits again this often, so a limit raised
/// live frees it soon even after a long debt.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What `req` costs the buckets.
pub fn cost(req: &IoRequest) -> Cost {
    let (kind, bytes) = match req.op {
        IoOp::Read { .. } => (Kind::Read, req.buffers.len() as u64),
        IoOp::Write { .. } => (Kind::Write, req.buffers.len() as u64),
        IoOp::Discard { .. } | IoOp::WriteZeroes { .. } => (Kind::Write, 0),
        IoOp::Flush => (Kind::Free, 0),
    };
    Cost { kind, bytes }
}

/// A queue half that lets requests reach `inner` as fast as its disk's limits allow.
pub struct ThrottledQueue {
    inner: Box<dyn QueueEngine>,
    qos: Arc<DiskQos>,
    /// The limits' version last seen, and whether they limited anything then.
    version: u64,
    limited: bool,
    /// Requests held back, oldest first.
    parked: VecDeque<IoRequest>,
    /// Since when `parked` has not been empty.
    parked_since: Option<Instant>,
    /// When the first parked request may go: a worker that polls looks at the buckets again
    /// only then, not on every turn.
    next_try: Option<Instant>,
    /// Requests let through in one release, handed to `inner` together.
    ready: Vec<IoRequest>,
    wake: TimedWake,
}

impl ThrottledQueue {
    pub fn new(inner: Box<dyn QueueEngine>, qos: Arc<DiskQos>) -> io::Result<Self> {
        let wake = TimedWake::new(inner.completion_fd())?;
        let mut q = Self {
            inner,
            qos,
            version: u64::MAX,
            limited: false,
            parked: VecDeque::new(),
            parked_since: None,
            next_try: None,
            ready: Vec::new(),
            wake,
        };
        q.refresh();
        Ok(q)
    }

    /// Notices a change of the limits: one load when nothing changed.
    fn refresh(&mut self) {
        let v = self.qos.version.load(Ordering::Acquire);
        if v != self.version {
            self.version = v;
            self.limited = self.qos.lock().1.is_limited();
        }
    }

    /// Lets through the parked requests the buckets allow (all of them without limits), in
    /// order, and arms the timer for the first one left.
    fn release(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let mut wait = None;
        if self.limited {
            let mut guard = self.qos.lock();
            let now = self.qos.now_ns();
            while let Some(front) = self.parked.front() {
                match guard.1.admit(cost(front), now) {
                    Ok(()) => self.ready.extend(self.parked.pop_front()),
                    Err(ns) => {
                        wait = Some(Duration::from_nanos(ns));
                        break;
                    }
                }
            }
        } else {
            self.ready.extend(self.parked.drain(..));
        }
        if !self.ready.is_empty() {
            self.inner.submit(&mut self.ready);
        }
        match wait {
            Some(w) => {
                // Taken before the timer is set, so the timer never fires before it.
                let w = w.clamp(MIN_WAIT, MAX_WAIT);
                self.next_try = Some(Instant::now() + w);
                self.wake.arm(w);
            }
            None => {
                self.next_try = None;
                self.unpark_done();
            }
        }
    }

    /// Nothing is parked any more: the time it was goes to the disk's counter, and the timer
    /// stops.
    fn unpark_done(&mut self) {
        if let Some(since) = self.parked_since.take() {
            self.qos
                .throttled_ns
                .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        self.wake.disarm();
    }
}

impl QueueEngine for ThrottledQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        self.refresh();
        if !self.limited && self.parked.is_empty() {
            self.inner.submit(batch);
            return;
        }
        let arrived = batch.len();
        self.parked.extend(batch.drain(..));
        self.release();
        // The batch's requests that did not go at once: they are at the back of the queue.
        let held = self.parked.len().min(arrived) as u64;
        if held > 0 {
            self.qos
                .throttled_requests
                .fetch_add(held, Ordering::Relaxed);
            self.parked_since.get_or_insert_with(Instant::now);
        }
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        if !self.parked.is_empty() {
            self.refresh();
            let due = !self.limited || self.next_try.is_none_or(|t| Instant::now() >= t);
            if due {
                self.release();
            }
        }
        self.inner.reap(done);
    }

    /// Blocks for a completion. Used when the queue is being drained (the frontend stops the
    /// ring or goes away): what is parked goes to the engine now, whatever the limits.
    fn wait(&mut self, done: &mut Vec<Completion>) {
        if !self.parked.is_empty() {
            self.ready.extend(self.parked.drain(..));
            self.inner.submit(&mut self.ready);
            self.unpark_done();
        }
        self.inner.wait(done);
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.parked.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.wake.fd())
    }

    fn ack_completion_fd(&mut self) {
        // The timer's readiness ends when `release` re-arms or clears it (timerfd_settime resets
        // the expiry count); the real engine's must be cleared here.
        self.inner.ack_completion_fd();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::null::NullEngine;
    use crate::engine::{Engine, GuestBuffers};
    use keel_protocol::control::DiskLimits;

    fn discards(tokens: std::ops::Range<u64>) -> Vec<IoRequest> {
        tokens
            .map(|token| IoRequest {
                token,
                op: IoOp::Discard { ranges: Vec::new() },
                buffers: GuestBuffers::empty(),
            })
            .collect()
    }

    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd that outlives the call.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    }

    #[test]
    fn without_limits_requests_go_straight_through() {
        let engine = NullEngine::new(1 << 20, false);
        let qos = Arc::new(DiskQos::new(&super::super::unlimited()));
        let mut q = ThrottledQueue::new(engine.queue(0).unwrap(), qos).unwrap();
        q.submit(&mut discards(0..100));
        let mut done = Vec::new();
        q.reap(&mut done);
        assert_eq!(done.len(), 100);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn requests_over_the_limit_wait_for_the_timer_in_order_and_none_fails() {
        let engine = NullEngine::new(1 << 20, false);
        let limits = DiskLimits {
            write_iops_limit: 100,
            ..super::super::unlimited()
        };
        let qos = Arc::new(DiskQos::new(&limits));
        let mut q = ThrottledQueue::new(engine.queue(0).unwrap(), Arc::clone(&qos)).unwrap();
        // The bucket holds 5 requests (50 ms at 100/s): the other 5 are parked.
        q.submit(&mut discards(0..10));
        let mut done = Vec::new();
        q.reap(&mut done);
        assert_eq!(done.len(), 5);
        assert_eq!(q.in_flight(), 5);
        assert_eq!(qos.throttled_requests(), 5);
        // Requests arriving behind parked ones wait behind them.
        q.submit(&mut discards(10..12));
        assert_eq!(qos.throttled_requests(), 7);
        let fd = q.completion_fd().unwrap();
        while done.len() < 12 {
            assert!(readable(fd, 1000), "the timer wakes the worker");
            q.ack_completion_fd();
            q.reap(&mut done);
        }
        let tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
        assert_eq!(tokens, (0..12).collect::<Vec<_>>());
        assert!(done.iter().all(|c| c.result.is_ok()));
        assert!(qos.throttled() > Duration::ZERO);
        assert!(!readable(fd, 0), "the timer stops once nothing waits");
    }

    #[test]
    fn lifting_the_limit_frees_parked_requests_and_draining_ignores_limits() {
        let engine = NullEngine::new(1 << 20, false);
        let limits = DiskLimits {
            iops_limit: 1,
            ..super::super::unlimited()
        };
        let qos = Arc::new(DiskQos::new(&limits));
        let mut q = ThrottledQueue::new(engine.queue(0).unwrap(), Arc::clone(&qos)).unwrap();
        q.submit(&mut discards(0..3));
        let mut done = Vec::new();
        q.reap(&mut done);
        assert_eq!(done.len(), 1);
        qos.set(&super::super::unlimited());
        q.reap(&mut done);
        assert_eq!(done.len(), 3, "freed at the next look");

        qos.set(&limits);
        q.submit(&mut discards(3..6));
        assert!(q.in_flight() > 0);
        crate::engine::drain(&mut q, &mut done);
        assert_eq!(done.len(), 6);
    }
}
