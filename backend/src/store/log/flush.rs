//! FLUSH, and the mark that records it in the journal.
//!
//! When a flush returns, every record written before it is on stable storage. A one-entry
//! record `Flushed { lsn }` then says so (see tail.rs for what recovery makes of it). The mark
//! is not flushed itself: it only has to be on the disk if the records it names are, and it is
//! written after they were flushed, so it never claims more than is true.
//!
//! A served disk runs a [`MarkWriter`]: the flush only notes the mark as due and is answered
//! as soon as the device flush returns. The next record written (a guest batch, usually
//! within microseconds under a write-and-flush load) carries the Flushed entry at no cost of
//! its own; only when none comes within [`MARK_DELAY`] does the mark writer write the mark as a
//! record by itself. Without a mark writer (offline tools, tests) the flush writes its mark.
//!
//! A flush also makes durable every mark carried by a record reserved before it: with
//! `INCOMPAT_MARKED_REPLAY` that lets emptied segments be reused (see `mark_release`).

use super::superblock;
use crate::store::log::journal::Entry;
use crate::store::log::write::Committer;
use crate::store::stats::Counters;
use crate::store::{Result, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a due mark waits for a record to carry it before it is written by itself.
pub const MARK_DELAY: Duration = Duration::from_millis(20);

impl Store {
    /// Makes every write answered so far durable: waits for the writes of batches still in
    /// flight, then flushes the device. Fails if any write failed (the store is then failed).
    /// Then the flush's mark is written, or handed to the [`MarkWriter`].
    pub fn flush(&self) -> Result<()> {
        Counters::add(&self.stats.flushes, 1);
        self.ensure_ok()?;
        // The marks records reserved so far carry are durable once this flush is done.
        let claim = self.lock(&self.journal).mark_reserved;
        let through = self.wait_written();
        self.ensure_ok()?;
        self.dev.flush()?;
        {
            let mut j = self.lock(&self.journal);
            j.mark_durable = j.mark_durable.max(claim);
        }
        if self.async_marks.load(Ordering::Acquire) {
            let mut j = self.lock(&self.journal);
            if through > j.mark_due {
                j.mark_due = through;
                self.mark_cv.notify_one();
            }
            return Ok(());
        }
        // The records are durable whatever becomes of the mark: a failed mark write fails the
        // store (the next request sees it), not this flush.
        if let Err(e) = self.mark_flushed(through) {
            log::warn!("flush mark after lsn {through} not written: {e}");
        }
        Ok(())
    }

    /// Commits a record holding only the mark `Flushed { lsn: through }`; returns its lsn.
    pub(in crate::store) fn commit_mark(&self, through: u64) -> Result<u64> {
        let committed = self.commit_with(
            vec![Entry::Flushed { lsn: through }],
            Vec::new(),
            &mut Vec::new(),
            Committer::InOrder,
        )?;
        Counters::add(&self.stats.flush_marks, 1);
        Ok(committed.lsn)
    }

    /// Writes a Flushed record for `through` unless the newest mark already covers it.
    fn mark_flushed(&self, through: u64) -> Result<()> {
        {
            let j = self.lock(&self.journal);
            if through <= j.marked_lsn
                || j.superblock.incompat & superblock::INCOMPAT_FLUSH_MARKS == 0
            {
                return Ok(());
            }
        }
        let lsn = self.commit_mark(through)?;
        let mut j = self.lock(&self.journal);
        // The mark itself needs no mark: the next flush writes one only past it.
        j.marked_lsn = j.marked_lsn.max(lsn);
        Ok(())
    }

    /// The mark a record being committed now should carry, when one is due.
    pub(in crate::store) fn mark_to_carry(&self, j: &crate::store::JournalState) -> Option<u64> {
        (self.async_marks.load(Ordering::Acquire) && j.mark_due > j.marked_lsn)
            .then_some(j.mark_due)
    }

    /// Waits until a mark has been due for `delay` with no record carrying it (or for
    /// `stop`, then whatever is due); the LSN it covers, or `None` to stop.
    fn next_mark_due(&self, stop: &AtomicBool, delay: Duration) -> Option<u64> {
        let mut j = self.lock(&self.journal);
        loop {
            let due = (j.mark_due > j.marked_lsn).then_some(j.mark_due);
            if stop.load(Ordering::Acquire) {
                return due;
            }
            j = match due {
                None => self.unpoison(self.mark_cv.wait(j)),
                Some(lsn) => {
                    let (g, waited) = self.unpoison(self.mark_cv.wait_timeout(j, delay));
                    if waited.timed_out() && g.mark_due == lsn && g.marked_lsn < lsn {
                        return Some(lsn);
                    }
                    g
                }
            };
        }
    }
}

/// The thread that writes flush marks for a served disk; stops (writing what is due) when
/// dropped.
pub struct MarkWriter {
    stop: Arc<AtomicBool>,
    store: Arc<Store>,
    thread: Option<JoinHandle<()>>,
}

impl MarkWriter {
    pub fn spawn(store: Arc<Store>) -> std::io::Result<Self> {
        Self::spawn_with_delay(store, MARK_DELAY)
    }

    /// [`spawn`](Self::spawn) with a due mark waiting `delay` for a record to carry it.
    pub fn spawn_with_delay(store: Arc<Store>, delay: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, worker) = (Arc::clone(&stop), Arc::clone(&store));
        let thread = std::thread::Builder::new()
            .name("keel-marks".into())
            .spawn(move || {
                while let Some(through) = worker.next_mark_due(&flag, delay) {
                    let stopping = flag.load(Ordering::Acquire);
                    if let Err(e) = worker.mark_flushed(through) {
                        log::warn!("flush mark after lsn {through} not written: {e}");
                        // The store has failed; nothing more will be flushed.
                        let mut j = worker.lock(&worker.journal);
                        j.marked_lsn = j.marked_lsn.max(through);
                    }
                    if stopping {
                        break;
                    }
                }
            })?;
        store.async_marks.store(true, Ordering::Release);
        Ok(Self {
            stop,
            store,
            thread: Some(thread),
        })
    }
}

impl Drop for MarkWriter {
    fn drop(&mut self) {
        self.store.async_marks.store(false, Ordering::Release);
        {
            let _j = self.store.lock(&self.store.journal);
            self.stop.store(true, Ordering::Release);
            self.store.mark_cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
