//! The worker's side of the disk's frontend gate ([`crate::vhost::frontends`]): a ring is served
//! only while its frontend owns the disk.

use std::os::fd::AsRawFd;

use log::debug;
use vhost_user_backend::VringT;

use super::QueueWorker;

impl QueueWorker {
    /// Whether the disk's frontend gate lets this ring be served: another frontend may own the
    /// disk (a live migration's source, until it stops its rings).
    pub(super) fn may_serve(&mut self) -> bool {
        let frontend = self.session.frontend;
        if !self.served || !self.ctx.frontends.is_owner(frontend) {
            self.served = self
                .ctx
                .frontends
                .ring_started(&self.ctx.name, frontend, self.index);
        }
        self.served && self.engine_held()
    }

    /// Whether this keeld holds the disk's engine: always, unless the disk is handed over
    /// between keelds ([`crate::engine::handover`]). A ring started on a disk not held asks for
    /// it; its requests wait until the take wakes this ring.
    fn engine_held(&self) -> bool {
        let Some(h) = &self.ctx.handover else {
            return true;
        };
        if h.serving() {
            return true;
        }
        let ctx = std::sync::Arc::clone(&self.ctx);
        // The frontend may have stopped every ring (or left) while the take waited for the
        // lock: then the disk is given straight back instead of staying held with no ring.
        h.take(Box::new(move || {
            ctx.frontends.wake_owner();
            ctx.release_if_idle();
        }));
        false
    }

    /// The frontend stopped this ring (GET_VRING_BASE): it asks the gate again when restarted.
    pub fn ring_stopped(&mut self) {
        self.served = false;
    }

    /// Wakes this ring's worker thread (its kick), so that a ring that waited for the disk is
    /// served.
    pub fn kick(&self) {
        let Some(vring) = &self.vring else {
            return;
        };
        let state = vring.get_ref();
        let Some(kick) = state.get_kick() else {
            return;
        };
        let one = 1u64.to_ne_bytes();
        // SAFETY: the kick is an eventfd the vring owns for the whole call; an eventfd write
        // takes exactly 8 bytes, read from `one`.
        let n = unsafe { libc::write(kick.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            debug!("{} q{}: kick: {e}", self.ctx.name, self.index);
        }
    }
}
