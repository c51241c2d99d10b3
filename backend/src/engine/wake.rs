//! The one descriptor a queue wrapper that holds requests back (a delay, a rate limit) gives
//! the worker to sleep on: an epoll set of a timer, armed for the next held request, and the
//! wrapped engine's own completion descriptor, if it has one.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

pub struct TimedWake {
    timer: TimerFd,
    epoll: Epoll,
    armed: bool,
}

impl TimedWake {
    /// A wake-up on the timer or on `inner_fd` (the wrapped engine's completion descriptor).
    pub fn new(inner_fd: Option<RawFd>) -> io::Result<Self> {
        let timer = TimerFd::new()?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )?;
        if let Some(fd) = inner_fd {
            epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 1))?;
        }
        Ok(Self {
            timer,
            epoll,
            armed: false,
        })
    }

    /// The descriptor the worker polls.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Wakes the worker once `after` has passed. Re-arming resets the timer's expiry count, so
    /// its readiness ends without a read.
    pub fn arm(&mut self, after: Duration) {
        // A zero duration would disarm a timerfd: wake at once instead.
        let after = after.max(Duration::from_nanos(1));
        if let Err(e) = self.timer.reset(after, None) {
            log::warn!("cannot arm a queue's wake-up timer: {e}");
        }
        self.armed = true;
    }

    /// Nothing is held back any more: the timer stops (and its readiness ends).
    pub fn disarm(&mut self) {
        if self.armed {
            if let Err(e) = self.timer.clear() {
                log::warn!("cannot stop a queue's wake-up timer: {e}");
            }
            self.armed = false;
        }
    }
}
