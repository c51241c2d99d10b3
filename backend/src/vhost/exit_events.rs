//! The worker threads' exit events, closed when the connection's backend goes away.
//!
//! vhost-user-backend 0.24 asks the backend for one exit event per worker thread, registers the
//! consumer half with the thread's epoll through `into_raw_fd()` and never closes it: every
//! connection would leave one descriptor per worker thread behind. A daemon that serves
//! reconnecting or hostile frontends then runs out of descriptors after a few thousand
//! connections and can no longer start a session for a well-behaved one. [`ExitEvents`]
//! remembers those descriptors and closes them when it is dropped, which is when the backend
//! of the connection is dropped, i.e. after every worker thread that polled them is gone.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// Exit events handed to the crate; their consumer descriptors are closed on drop.
#[derive(Debug, Default)]
pub struct ExitEvents {
    consumers: Mutex<Vec<RawFd>>,
}

impl ExitEvents {
    /// A new exit event for one worker thread. The caller gives it to the crate, which keeps
    /// the consumer's descriptor (as a raw fd) until this `ExitEvents` closes it.
    pub fn create(&self) -> io::Result<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer.as_raw_fd());
        Ok((consumer, notifier))
    }
}

impl Drop for ExitEvents {
    fn drop(&mut self) {
        let fds = std::mem::take(self.consumers.get_mut().unwrap_or_else(|e| e.into_inner()));
        for fd in fds {
            // SAFETY: `fd` is the consumer half of an exit event created by `create`. The crate
            // turned it into a raw fd (giving up ownership) and never closes it; nothing else
            // knows the number. `ExitEvents` lives in the connection's backend, which every
            // worker thread's epoll handler holds, so when it is dropped those threads and
            // their epoll sets are gone and the descriptor is unused.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's id of the eventfd open at `fd`, if one is (another thread may reuse a
    /// closed number, so the number alone says nothing).
    fn eventfd_id(fd: RawFd) -> Option<String> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("eventfd-id:"))
            .map(|id| id.trim().to_string())
    }

    #[test]
    fn consumers_handed_out_as_raw_fds_are_closed_on_drop() {
        use std::os::fd::IntoRawFd;
        let events = ExitEvents::default();
        let (consumer, notifier) = events.create().unwrap();
        // What vhost-user-backend does with it.
        let fd = consumer.into_raw_fd();
        notifier.notify().unwrap();
        let id = eventfd_id(fd).expect("an open eventfd");
        drop(notifier);
        drop(events);
        assert_ne!(eventfd_id(fd), Some(id), "fd {fd} still open");
    }
}
