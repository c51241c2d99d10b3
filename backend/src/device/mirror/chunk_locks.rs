//! Striped per-chunk locks: while a resync runs, the copier and guest writes to the same chunk
//! take turns, so a guest write can never land between the copier's read and its write.

use std::sync::{Mutex, MutexGuard};

const STRIPES: usize = 1024;

/// A fixed set of mutexes; chunk `c` maps to stripe `c % STRIPES`.
pub struct ChunkLocks {
    stripes: Vec<Mutex<()>>,
}

/// Holds the stripes of a chunk range until dropped.
pub struct ChunkGuard<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for ChunkLocks {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl ChunkLocks {
    /// Locks every stripe chunks `first..=last` map to, in stripe order (no deadlock between
    /// two ranges).
    pub fn lock_range(&self, first: u64, last: u64) -> ChunkGuard<'_> {
        let mut idx: Vec<usize> = if last - first + 1 >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (first..=last)
                .map(|c| (c % STRIPES as u64) as usize)
                .collect()
        };
        idx.sort_unstable();
        idx.dedup();
        let guards = idx
            .into_iter()
            .filter_map(|i| self.stripes.get(i))
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        ChunkGuard { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn overlapping_ranges_exclude_each_other() {
        let locks = Arc::new(ChunkLocks::default());
        let inside = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (l, n) = (locks.clone(), inside.clone());
                std::thread::spawn(move || {
                    for i in 0..200u64 {
                        // Ranges wrap around the stripes differently but all contain chunk 5.
                        let first = if (i + t) % 2 == 0 { 5 } else { 1024 * 3 + 1 };
                        let _g = l.lock_range(first, first + 1030);
                        assert_eq!(n.fetch_add(1, Ordering::SeqCst), 0);
                        n.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let _a = locks.lock_range(0, 0);
        let _b = locks.lock_range(1, 1);
    }
}
