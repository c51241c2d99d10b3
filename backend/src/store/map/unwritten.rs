//! Blocks whose map entries are visible before their data is on the device.
//!
//! A batch applies its map changes while its data and journal record are being written, so
//! that the tree updates overlap the device. In that window a reader on another thread may
//! look a block up and find a physical block still being written; it waits here until the
//! write has finished instead of reading what was there before.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Physical block ranges being written, by the LSN of the record that maps them.
#[derive(Default)]
pub struct Unwritten {
    ranges: Mutex<Vec<Range>>,
    /// Ranges listed: lets the common case (nothing being written) skip the lock.
    count: AtomicUsize,
    done: Condvar,
    /// The store failed on a poisoned lock: the writes waited for may never finish.
    abandoned: AtomicBool,
}

#[derive(Clone, Copy)]
struct Range {
    lsn: u64,
    first: u64,
    end: u64,
}

impl Unwritten {
    /// Lists `runs` (first block, block count) as being written by record `lsn`. Called
    /// before the record's map changes are applied, so a reader that finds them finds this.
    pub fn add(&self, lsn: u64, runs: impl Iterator<Item = (u64, u64)>) {
        let mut r = self.lock();
        let before = r.len();
        r.extend(runs.map(|(first, blocks)| Range {
            lsn,
            first,
            end: first + blocks,
        }));
        self.count.fetch_add(r.len() - before, Ordering::Release);
    }

    /// Record `lsn`'s writes have finished (or failed: readers then see the checksum fail).
    pub fn remove(&self, lsn: u64) {
        let mut r = self.lock();
        let before = r.len();
        r.retain(|x| x.lsn != lsn);
        self.count.fetch_sub(before - r.len(), Ordering::Release);
        drop(r);
        self.done.notify_all();
    }

    /// Waits until none of `runs` (first block, block count) is being written, or the waits
    /// are [`abandon`](Self::abandon)ed.
    pub fn wait_for(&self, runs: impl Iterator<Item = (u64, u64)> + Clone) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut r = self.lock();
        while !self.abandoned.load(Ordering::Acquire)
            && runs
                .clone()
                .any(|(first, blocks)| r.iter().any(|x| first < x.end && x.first < first + blocks))
        {
            r = self.done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The list, poisoned or not: the store checks [`Self::is_poisoned`] before every request
    /// and fails from then on, so a half-changed list is only seen by calls already running.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Range>> {
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every wait, now and later: the store failed on a poisoned lock, and a batch that
    /// panicked never finishes its writes. The readers then fail on the store's latch.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        let _r = self.lock();
        self.done.notify_all();
    }

    /// A panic while the list was locked may have left it half-changed.
    pub fn is_poisoned(&self) -> bool {
        self.ranges.is_poisoned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_reader_of_a_block_being_written_waits_for_its_write() {
        let u = Arc::new(Unwritten::default());
        u.add(7, [(100, 8)].into_iter());
        // Outside the range: no wait.
        u.wait_for([(0, 100), (108, 4)].into_iter());
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = {
            let u = Arc::clone(&u);
            std::thread::spawn(move || {
                u.wait_for([(107, 1)].into_iter());
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the reader went ahead of the write"
        );
        u.remove(7);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the reader goes on once the write is done");
        reader.join().unwrap();
        assert_eq!(u.count.load(Ordering::Acquire), 0);
    }
}
