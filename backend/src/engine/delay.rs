//! Added latency in front of any engine (a disk's `delay_us`), like SPDK's delay bdev.
//!
//! Requests go to the real engine at once; their completions are held back until between half and
//! one and a half times `delay` after submission (spread by token, so they come back out of order,
//! as from a real device). It lets a test or a capacity plan see how a guest and keeld behave on a slow
//! device (timeouts, queue depth, requests in flight when keeld is killed) with real data.
//!
//! The worker sleeps on one completion fd: here an epoll set holding the real engine's fd (if
//! any) and a timerfd armed for the earliest held completion.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use super::wake::TimedWake;

use super::{Completion, IoRequest, QueueEngine, Token};

/// A queue half whose completions come `delay` after submission.
pub struct DelayQueue {
    inner: Box<dyn QueueEngine>,
    delay: Duration,
    /// Deadlines of the requests the real engine has not finished, in submission order.
    submitted: VecDeque<(Token, Instant)>,
    /// Completions the real engine reported, waiting for their deadline.
    held: Vec<(Completion, Instant)>,
    scratch: Vec<Completion>,
    wake: TimedWake,
}

impl DelayQueue {
    pub fn new(inner: Box<dyn QueueEngine>, delay: Duration) -> io::Result<Self> {
        let wake = TimedWake::new(inner.completion_fd())?;
        Ok(Self {
            inner,
            delay,
            submitted: VecDeque::new(),
            held: Vec::new(),
            scratch: Vec::new(),
            wake,
        })
    }

    /// Moves what the real engine finished into `held`, stamped with its deadline.
    fn collect(&mut self, block: bool) {
        if block {
            self.inner.wait(&mut self.scratch);
        } else {
            self.inner.reap(&mut self.scratch);
        }
        for c in self.scratch.drain(..) {
            let pos = self.submitted.iter().position(|&(t, _)| t == c.token);
            let deadline = pos
                .and_then(|i| self.submitted.remove(i))
                .map_or_else(Instant::now, |(_, deadline)| deadline);
            self.held.push((c, deadline));
        }
    }

    /// Hands over held completions whose deadline passed; re-arms the timer for the next one.
    fn release(&mut self, done: &mut Vec<Completion>) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].1 <= now {
                done.push(self.held.swap_remove(i).0);
            } else {
                i += 1;
            }
        }
        let next = self.held.iter().map(|&(_, d)| d).min();
        let arm = next.map(|d| {
            d.saturating_duration_since(now)
                .max(Duration::from_micros(1))
        });
        match arm {
            Some(wait) => self.wake.arm(wait),
            None => self.wake.disarm(),
        }
    }
}

impl QueueEngine for DelayQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let now = Instant::now();
        let delay = self.delay;
        self.submitted.extend(
            batch
                .iter()
                .map(|r| (r.token, now + spread(delay, r.token))),
        );
        self.inner.submit(batch);
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        self.collect(false);
        self.release(done);
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        let before = done.len();
        while done.len() == before && self.in_flight() > 0 {
            if self.held.is_empty() {
                self.collect(true);
            } else if let Some(wait) = self
                .held
                .iter()
                .map(|&(_, d)| d.saturating_duration_since(Instant::now()))
                .min()
            {
                std::thread::sleep(wait);
                self.collect(false);
            }
            self.release(done);
        }
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
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

/// `delay` scaled by a factor in [0.5, 1.5) that depends on `token` alone.
fn spread(delay: Duration, token: Token) -> Duration {
    // splitmix64's finaliser: neighbouring tokens get unrelated factors.
    let mut x = token.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    delay.mul_f64(0.5 + (x >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::null::NullEngine;
    use crate::engine::{Engine, GuestBuffers, IoOp};

    #[test]
    fn delays_spread_between_half_and_one_and_a_half_times() {
        let d = Duration::from_millis(20);
        let spreads: Vec<Duration> = (0..1000).map(|t| spread(d, t)).collect();
        assert!(spreads.iter().all(|&s| s >= d / 2 && s < d * 3 / 2));
        let early = spreads.iter().filter(|&&s| s < d).count();
        assert!(
            (400..600).contains(&early),
            "{early} of 1000 below the mean"
        );
        // Consecutive requests do not come back in order.
        assert!(spreads.windows(2).filter(|w| w[1] < w[0]).count() > 300);
    }

    #[test]
    fn completions_come_no_sooner_than_half_the_delay_and_all_of_them_come() {
        let engine = NullEngine::new(1 << 20, false);
        let delay = Duration::from_millis(30);
        let mut q = DelayQueue::new(engine.queue(0).unwrap(), delay).unwrap();
        let start = Instant::now();
        let mut batch: Vec<IoRequest> = (0..3)
            .map(|token| IoRequest {
                token,
                op: IoOp::Flush,
                buffers: GuestBuffers::empty(),
            })
            .collect();
        q.submit(&mut batch);
        let mut done = Vec::new();
        q.reap(&mut done);
        assert!(done.is_empty(), "held back");
        assert_eq!(q.in_flight(), 3);
        // The completion fd becomes readable when the delay passes.
        let mut pfd = libc::pollfd {
            fd: q.completion_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
        q.ack_completion_fd();
        q.reap(&mut done);
        assert!(start.elapsed() >= delay / 2);
        // The fd may fire for the earliest of the three: wait for the rest.
        crate::engine::drain(&mut q, &mut done);
        let mut tokens: Vec<Token> = done.iter().map(|c| c.token).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, [0, 1, 2]);
        assert_eq!(q.in_flight(), 0);
        // wait() blocks until the delay passes too.
        let mut batch = vec![IoRequest {
            token: 9,
            op: IoOp::Flush,
            buffers: GuestBuffers::empty(),
        }];
        let t = Instant::now();
        q.submit(&mut batch);
        done.clear();
        crate::engine::drain(&mut q, &mut done);
        assert!(t.elapsed() >= delay / 2);
        assert_eq!(done.len(), 1);
    }
}
