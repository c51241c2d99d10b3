//! Poisoned locks fail the store.
//!
//! A panic while a store lock is held leaves what it guards possibly half-updated (a map
//! change applied without its segment usage, a journal cursor moved without its record). The
//! store does not carry on from such state: the first caller to find a lock poisoned latches
//! the store failed (the same latch a failed metadata write sets), logs which lock it was, and
//! every later guest request and every admin call that reads or changes the disk (snapshots,
//! checkpoints, the cleaner, import) returns [`StoreError::Failed`]. The guard is still
//! handed back, so the call in progress, shutdown and drop run to their end without a second
//! panic.

use super::{Store, StoreError};
use std::panic::Location;
use std::sync::atomic::Ordering;
use std::sync::{LockResult, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

impl Store {
    /// Locks `m`; a poisoned one fails the store (see the module doc).
    #[track_caller]
    pub(crate) fn lock<'a, T>(&self, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
        self.unpoison(m.lock())
    }

    /// Read-locks `l`; a poisoned one fails the store.
    #[track_caller]
    pub(crate) fn read_lock<'a, T>(&self, l: &'a RwLock<T>) -> RwLockReadGuard<'a, T> {
        self.unpoison(l.read())
    }

    /// Write-locks `l`; a poisoned one fails the store.
    #[track_caller]
    pub(crate) fn write_lock<'a, T>(&self, l: &'a RwLock<T>) -> RwLockWriteGuard<'a, T> {
        self.unpoison(l.write())
    }

    /// The guard of a lock or condvar wait, poisoned or not; a poisoned one fails the store.
    #[track_caller]
    pub(crate) fn unpoison<G>(&self, locked: LockResult<G>) -> G {
        let at = Location::caller();
        locked.unwrap_or_else(|e| {
            self.fail_poisoned(std::any::type_name::<G>(), at);
            e.into_inner()
        })
    }

    /// Latches the store failed, logged once: a panic mid-update poisoned the lock `what`.
    /// Wakes the journal's and readers' waiters: the record the panicking call had reserved may never be
    /// applied or written, so they stop waiting for it (see [`Self::poisoned`]).
    fn fail_poisoned(&self, what: &str, at: &Location<'_>) {
        self.latch_failed(format!("a panic poisoned a store lock ({what})"));
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            log::error!(
                "store: the lock {what} was poisoned by a panic mid-update (found at {at}); \
                 every request fails from now on (reopen the container to recover)"
            );
        }
        self.journal_cv.notify_all();
        self.mark_cv.notify_all();
        self.unwritten.abandon();
    }

    /// A lock was found poisoned: waits for other batches end early (they fail anyway).
    pub(super) fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Fails the store if any of its locks was poisoned, even one no call has taken since.
    #[track_caller]
    pub(super) fn check_poisoned(&self) {
        let poisoned = [
            ("state", self.state.is_poisoned()),
            ("journal", self.journal.is_poisoned()),
            ("writers", self.writers.iter().any(Mutex::is_poisoned)),
            ("cleaner writer", self.cleaner_writer.is_poisoned()),
            ("prewriter", self.prewriter.is_poisoned()),
            ("snapshot operations", self.snapshot_ops.is_poisoned()),
            ("reclaim", self.reclaim.is_poisoned()),
            ("unwritten blocks", self.unwritten.is_poisoned()),
            ("cleaner wake", self.cleaner_wake.0.is_poisoned()),
        ];
        if let Some((what, _)) = poisoned.iter().find(|(_, p)| *p) {
            self.fail_poisoned(what, Location::caller());
        }
    }

    /// Whether the store has failed (a metadata write failed or a lock was poisoned): every
    /// request returns [`StoreError::Failed`] until the container is reopened.
    #[track_caller]
    pub fn is_failed(&self) -> bool {
        self.check_poisoned();
        self.failed.load(Ordering::Acquire)
    }

    /// Why the store failed (its first cause), or `None` while it serves.
    #[track_caller]
    pub fn failure(&self) -> Option<String> {
        if !self.is_failed() {
            return None;
        }
        Some(
            self.failure
                .get()
                .cloned()
                .unwrap_or_else(|| "the store failed".to_string()),
        )
    }

    /// Latches the store failed; the first `cause` is kept for [`Self::failure`].
    pub(crate) fn latch_failed(&self, cause: String) {
        let _ = self.failure.set(cause);
        self.failed.store(true, Ordering::Release);
    }

    /// [`StoreError::Failed`] once the store has failed.
    #[track_caller]
    pub(super) fn ensure_ok(&self) -> super::Result<()> {
        if self.is_failed() {
            return Err(StoreError::Failed);
        }
        Ok(())
    }
}
