//! Checkpoints that do not stop the world: the maps are frozen at the newest record (the
//! journal is held only for that), then encoded and written out of place while new records
//! go on into the journal ring past the freeze point (see `journal_ring`). Batches wait for a
//! checkpoint only while it freezes, or when the ring is full.
//!
//! The copy-on-write trees make the frozen version cheap: freezing gives every dirty node its
//! block, encodes the usage table and the root, and pins the trees (as a snapshot would); a
//! record applied afterwards copies any node it changes, so the nodes the checkpoint names
//! stay as they were frozen while it encodes them, a chunk at a time under the maps' lock. Segments emptied after the freeze stay
//! pending until the next checkpoint (records after the freeze point may still name their
//! blocks), and the chain of records runs on across the checkpoint: a crash before its
//! superblock lands replays from the previous checkpoint through every record after it.
//!
//! A served disk's cleaner thread takes the checkpoints a full-enough journal asks for
//! ([`Store::take_checkpoint_request`]); without one, the batch that finds the journal past
//! its threshold takes it.

use super::persist;
use crate::store::error::{Result, StoreError};
use crate::store::io::DeviceIo;
use crate::store::layout::BLOCK;
use crate::store::stats::Counters;
use crate::store::{JournalState, Store};
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Store {
    /// Folds the journal into the maps on disk: freezes the maps at the newest record and
    /// writes them while new records go on. Returns once the checkpoint committed.
    pub fn checkpoint(&self) -> Result<()> {
        self.ensure_ok()?;
        let j = self.lock(&self.journal);
        let j = self.wait_checkpoint_done(j);
        if j.fresh_chain {
            drop(j);
            let mut j = self.quiet_journal();
            return self.checkpoint_locked(&mut j);
        }
        self.checkpoint_live(j).map(drop)
    }

    /// A checkpoint that holds the journal only while it freezes the maps; the caller saw no
    /// checkpoint freezing or running. Returns the journal lock, taken again once it committed.
    pub(in crate::store) fn checkpoint_live<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
    ) -> Result<MutexGuard<'a, JournalState>> {
        let t0 = Instant::now();
        j.freezing = true;
        j = self.wait_quiet(j);
        let frozen = self
            .ensure_ok()
            .and_then(|()| persist::freeze(self, &mut j, false));
        j.freezing = false;
        j.checkpointing = frozen.is_ok();
        drop(j);
        self.journal_cv.notify_all();
        let held = t0.elapsed();
        let frozen = frozen.map_err(|e| self.checkpoint_failed(e))?;
        let written = persist::write_frozen(self, &frozen, &mut DeviceIo(self.dev.as_ref()));
        let mut j = self.lock(&self.journal);
        j.checkpointing = false;
        let done = match written {
            Ok(w) => {
                persist::commit(self, &mut j, frozen);
                self.note_checkpoint(&j, &w, held, t0);
                Ok(())
            }
            Err(e) => Err(self.checkpoint_failed(e)),
        };
        self.journal_cv.notify_all();
        done.map(|()| j)
    }

    /// What a failed checkpoint means: running out of metadata space is found before
    /// anything changes and is not fatal; anything else fails the store.
    pub(in crate::store) fn checkpoint_failed(&self, e: StoreError) -> StoreError {
        if !matches!(e, StoreError::NoSpace) {
            self.fail(&e);
        }
        e
    }

    /// Asks the thread that takes checkpoints in the background for one.
    pub(in crate::store) fn request_checkpoint(&self) {
        if !self.checkpoint_due.swap(true, Ordering::AcqRel) {
            self.wake_cleaner();
        }
    }

    /// Whether the journal asked for a checkpoint since the last call (the cleaner thread,
    /// which takes them while it runs, then does).
    pub fn take_checkpoint_request(&self) -> bool {
        self.checkpoint_due.swap(false, Ordering::AcqRel)
    }

    /// Whether a thread takes checkpoints in the background (set while a cleaner runs).
    pub(in crate::store) fn set_background_checkpoints(&self, on: bool) {
        self.background_checkpoints.store(on, Ordering::Release);
    }

    /// Ring blocks in use from which the journal asks for a checkpoint.
    pub(in crate::store) fn checkpoint_threshold(&self) -> u64 {
        self.geo.journal_blocks() * self.opts.checkpoint_percent.clamp(1, 100) as u64 / 100
    }

    /// Whether a record of `blocks` blocks can be reserved now without waiting: the chain
    /// needs no first checkpoint, none is freezing, the ring has room, and the journal is not
    /// past its threshold with no thread to take that checkpoint in the background (the
    /// record would take it). What a plan that may not wait checks
    /// ([`Waits::Refused`](super::write::Waits::Refused)).
    pub(in crate::store) fn reserves_now(&self, j: &JournalState, blocks: u64) -> bool {
        let background = self.background_checkpoints.load(Ordering::Acquire);
        let due = j.ring.used >= self.checkpoint_threshold() && !j.checkpointing;
        !j.fresh_chain
            && !j.freezing
            && j.ring.place(j.cursor.pos, blocks).is_some()
            && (!due || background)
    }

    /// Places a record of `blocks` blocks in the journal ring: its block offset inside the
    /// region and the blocks it adds to the ring's live part. A journal past its threshold
    /// asks for a checkpoint (or takes one, with no background thread); a full one waits for
    /// the checkpoint running, or takes one. The time the batch waited is counted.
    pub(in crate::store) fn place_record<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
        blocks: u64,
        threshold: u64,
    ) -> Result<(MutexGuard<'a, JournalState>, (u64, u64))> {
        let background = self.background_checkpoints.load(Ordering::Acquire);
        let mut waited: Option<Instant> = None;
        let placed = loop {
            self.ensure_ok()?;
            if j.freezing && !self.poisoned() {
                waited.get_or_insert_with(Instant::now);
                j = self.unpoison(self.journal_cv.wait(j));
                continue;
            }
            let fits = j.ring.place(j.cursor.pos, blocks);
            let due = j.ring.used >= threshold && !j.checkpointing;
            if due && background {
                self.request_checkpoint();
            }
            match fits {
                Some(p) if !due || background => break p,
                _ if j.checkpointing && !self.poisoned() => {
                    waited.get_or_insert_with(Instant::now);
                    j = self.unpoison(self.journal_cv.wait(j));
                }
                _ => {
                    waited.get_or_insert_with(Instant::now);
                    j = self.checkpoint_live(j)?;
                }
            }
        };
        if let Some(t0) = waited {
            Counters::add(&self.stats.checkpoint_waits, 1);
            Counters::add_since(&self.stats.checkpoint_wait_us, t0);
        }
        Ok((j, placed))
    }

    /// Waits (releasing the journal lock meanwhile) until no checkpoint is freezing or
    /// running (a lock found poisoned ends the wait).
    pub(in crate::store) fn wait_checkpoint_done<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
    ) -> MutexGuard<'a, JournalState> {
        while (j.freezing || j.checkpointing) && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        j
    }

    /// Waits (releasing the journal lock meanwhile) until no record is in flight and no
    /// checkpoint is freezing or running (a lock found poisoned ends the wait).
    pub(in crate::store) fn wait_idle<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
    ) -> MutexGuard<'a, JournalState> {
        while (j.in_flight > 0 || j.freezing || j.checkpointing) && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        j
    }

    /// The journal lock with no record in flight and no other checkpoint running: what a
    /// checkpoint that holds the journal throughout (and the operations that take one) needs.
    pub(in crate::store) fn quiet_journal(&self) -> MutexGuard<'_, JournalState> {
        self.wait_idle(self.lock(&self.journal))
    }

    /// Counts a committed checkpoint (`t0`: when it started).
    /// `held`: how long it held the journal (new records waited).
    pub(in crate::store) fn note_checkpoint(
        &self,
        j: &JournalState,
        written: &persist::Written,
        held: std::time::Duration,
        t0: std::time::Instant,
    ) {
        self.note_space_freed();
        Counters::add(&self.stats.checkpoints, 1);
        let us = held.as_micros() as u64;
        Counters::add(&self.stats.checkpoint_us, us);
        Counters::max(&self.stats.checkpoint_max_us, us);
        Counters::add(&self.stats.checkpoint_writes, written.writes);
        Counters::add(&self.stats.checkpoint_write_bytes, written.bytes);
        log::debug!(
            "checkpoint generation {}: {} blocks in {:?} (the journal held {:?}, encoding {:?})",
            j.superblock.generation,
            written.bytes / BLOCK,
            t0.elapsed(),
            held,
            written.encoding
        );
    }
}
