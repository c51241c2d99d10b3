//! Releasing emptied data segments by a durable flush mark instead of a checkpoint.
//!
//! In a container with [`INCOMPAT_MARKED_REPLAY`], replay does not check the data of the
//! records a Flushed mark in the chain covers (see `chain`). A data segment emptied by record
//! E may then be reused once a mark covering E is *durable*: every record through E and its
//! data were flushed, a record carrying `Flushed { lsn >= E }` was written after that flush,
//! and a second flush made that record durable. Any chain a recovery then replays holds the
//! mark (it was flushed, and records past a flushed one are refused as damage, never dropped
//! silently), so it applies the records naming the segment's old blocks without reading
//! them, and the record that emptied it too.
//!
//! A guest FLUSH does the last step for free: every mark reserved before it is durable when
//! it returns. Otherwise [`Store::release_by_mark`] runs the cycle itself: two device
//! flushes and at most one small record, against a checkpoint that rewrites every dirty map
//! leaf.

use super::superblock::INCOMPAT_MARKED_REPLAY;
use crate::store::stats::Counters;
use crate::store::{Result, Store};

impl Store {
    /// Whether emptied data segments may be released by a mark (the container has the bit).
    pub fn releases_by_mark(&self) -> bool {
        self.lock(&self.journal).superblock.incompat & INCOMPAT_MARKED_REPLAY != 0
    }

    /// Frees the emptied data segments a durable mark covers, making one durable first
    /// (flush, mark, flush) when the newest of them needs it; returns the segments freed.
    /// Segments only a checkpoint may release (metadata, added segments, those a change
    /// outside the journal emptied) and those a read still uses stay pending. Does nothing
    /// in a container without [`INCOMPAT_MARKED_REPLAY`].
    pub fn release_by_mark(&self) -> Result<u64> {
        self.ensure_ok()?;
        if !self.releases_by_mark() {
            return Ok(0);
        }
        let Some(need) = self.read_lock(&self.state).sut.newest_markable() else {
            return Ok(0);
        };
        if self.lock(&self.journal).mark_durable < need {
            self.make_mark_durable()?;
        }
        let marked = self.lock(&self.journal).mark_durable;
        debug_assert!(
            marked >= need,
            "a durable mark covers lsn {need}, not only {marked}"
        );
        let freed = self
            .write_lock(&self.state)
            .sut
            .release_marked(marked, &|seg| self.pins.is_pinned(seg));
        if freed > 0 {
            Counters::add(&self.stats.mark_releases, 1);
            Counters::add(&self.stats.segments_freed_by_marks, freed);
        }
        Ok(freed)
    }

    /// Emptied segments waiting, and how many of them a mark may release.
    pub fn pending_and_markable(&self) -> (u64, u64) {
        let by_mark = self.releases_by_mark();
        let st = self.read_lock(&self.state);
        let markable = if by_mark { st.sut.markable_count() } else { 0 };
        (st.sut.pending_count(), markable)
    }

    /// Releases the emptied segments: by a mark where the container allows it, else (or when
    /// only segments a checkpoint may release wait) by a checkpoint.
    pub fn release_emptied(&self) -> Result<()> {
        if self.release_by_mark()? == 0 {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Makes a mark covering every record reserved so far durable.
    fn make_mark_durable(&self) -> Result<()> {
        // Every record through `through`, and its data, is on stable storage.
        let through = self.wait_written();
        self.ensure_ok()?;
        self.dev.flush()?;
        // A record that says so: one carrying a mark at least as new may be reserved already.
        if self.lock(&self.journal).mark_reserved < through {
            self.commit_mark(through)?;
        }
        self.flush_reserved_marks()
    }

    /// Writes and flushes every record reserved so far; the marks they carry are then durable.
    pub(in crate::store) fn flush_reserved_marks(&self) -> Result<()> {
        let claim = self.lock(&self.journal).mark_reserved;
        self.wait_written();
        self.ensure_ok()?;
        self.dev.flush()?;
        let mut j = self.lock(&self.journal);
        j.mark_durable = j.mark_durable.max(claim);
        Ok(())
    }
}
