//! An io_uring with a backlog: entries that do not fit in the submission ring wait in order
//! and go in as completions free room. Shared by the raw engine's and the keel engine's queues.

use std::collections::VecDeque;
use std::io;

use io_uring::{IoUring, squeue};

pub(super) struct SubmitRing {
    pub ring: IoUring,
    backlog: VecDeque<squeue::Entry>,
}

impl SubmitRing {
    /// A ring of `entries` submission entries (a power of two) and four times as many
    /// completion entries, with `eventfd` signalled on completions.
    pub fn new(entries: u32, eventfd: i32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .setup_coop_taskrun()
            .build(entries)?;
        ring.submitter().register_eventfd(eventfd)?;
        Ok(Self {
            ring,
            backlog: VecDeque::new(),
        })
    }

    /// Queues `entry`, submitting what the ring holds when it is full.
    ///
    /// # Safety
    /// Every buffer and file the entry names must stay valid until its completion is reaped.
    pub unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return;
        }
        // SAFETY: the caller keeps the entry's buffers and files alive (see above).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.submit();
            // SAFETY: as above.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.backlog.push_back(entry);
            }
        }
    }

    /// Moves backlog entries into the submission ring while there is room.
    pub fn flush_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            // SAFETY: entries reach the backlog only through `push`, whose caller vouched for
            // their buffers.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.backlog.push_front(entry);
                break;
            }
        }
    }

    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Whether entries wait to be handed to the kernel.
    pub fn has_queued(&mut self) -> bool {
        !self.backlog.is_empty() || !self.ring.submission().is_empty()
    }

    /// Hands the kernel everything queued (retrying an interrupted call; a busy ring is
    /// retried at the next reap).
    pub fn submit(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return,
                Err(e) => {
                    log::error!("io_uring submit: {e}");
                    return;
                }
            }
        }
    }

    /// Flushes the backlog, then blocks until at least one completion is ready.
    pub fn wait_one(&mut self) {
        self.wait_for(1);
    }

    /// Flushes the backlog, then blocks until at least `n` completions are ready: one sleep
    /// for a batch's writes instead of one per write.
    pub fn wait_for(&mut self, n: usize) {
        self.flush_backlog();
        if let Err(e) = self.ring.submit_and_wait(n.max(1))
            && e.raw_os_error() != Some(libc::EINTR)
        {
            log::error!("io_uring wait: {e}");
        }
    }
}
