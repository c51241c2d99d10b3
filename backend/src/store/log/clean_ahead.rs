//! The background cleaner's steps overlapped: the next victim is read while the copies of the
//! last are written, so the device serves the cleaner's reads and its writes together instead
//! of one after the other. In the full-disk random writes a step read for about 4 ms, then
//! copied and wrote for about 6, in series, and the guest (paced to the cleaner) went no faster
//! than the blocks those steps won back (docs/benchmarks.md, "More batches in flight, the next
//! victim read ahead").
//!
//! The two halves of a step share nothing but the store: the read-ahead victim stays pinned
//! until its own step writes it, and that step drops every move the guest overtook meanwhile,
//! so reading it early only costs copies that may have died since.

use super::cleaner::{CleanReport, ReadVictims};
use super::io_class::{ClassGuard, IoClass};
use crate::store::Store;
use crate::store::error::Result;

/// The victim read for the cleaner's next step, if any.
#[derive(Default)]
pub(in crate::store) struct CleanAhead {
    next: Option<ReadVictims>,
}

impl CleanAhead {
    /// One cleaning step of one victim: writes the one read ahead (or reads one now) and, with
    /// `read_next`, reads the next one on a thread of its own (its I/O in `class` too) while
    /// this one's copies are written. Nothing when no segment holds garbage worth reclaiming.
    pub fn step(
        &mut self,
        store: &Store,
        class: IoClass,
        read_next: bool,
    ) -> Result<Option<CleanReport>> {
        let max_live = store.clean_max_live();
        let current = match self.next.take() {
            Some(read) => read,
            None => match store.read_victims(1, max_live, 0, &[])? {
                Some(read) => read,
                None => return Ok(None),
            },
        };
        let write = |current| {
            let mut cw = store.lock(&store.cleaner_writer);
            store
                .write_victims(&mut cw, current)
                .map(|r| r.into_iter().next())
        };
        if !read_next {
            return write(current);
        }
        let exclude = current.segments();
        let (written, next) = std::thread::scope(|s| {
            let reader = std::thread::Builder::new()
                .name("keel-clean-read".into())
                .spawn_scoped(s, || {
                    let _class = ClassGuard::enter(class);
                    store.read_victims(1, max_live, 0, &exclude)
                });
            let written = write(current);
            let next = match reader.map(|h| h.join()) {
                Ok(Ok(Ok(next))) => next,
                Ok(Ok(Err(e))) => {
                    log::warn!("cleaner: reading the next victim ahead: {e}");
                    None
                }
                Ok(Err(_)) => {
                    log::error!("cleaner: the thread reading ahead panicked");
                    None
                }
                Err(e) => {
                    log::debug!("cleaner: no thread to read ahead ({e})");
                    None
                }
            };
            (written, next)
        });
        self.next = next;
        written
    }

    /// The segments of the victim read ahead (none if none is).
    #[cfg(test)]
    pub fn read_ahead(&self) -> Vec<u64> {
        self.next
            .as_ref()
            .map(ReadVictims::segments)
            .unwrap_or_default()
    }
}
