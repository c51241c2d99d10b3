//! Log sequence numbers: every write to a mirror gets the next one.
//!
//! A component persists the last LSN it holds at each flush; when it returns from an outage,
//! that stale LSN picks the tracking bitmap (one starting at or before it) that names what it missed.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic write counter; LSN 0 means "nothing written yet".
#[derive(Debug)]
pub struct LsnClock {
    last: AtomicU64,
}

impl LsnClock {
    /// A clock whose next LSN follows `last`.
    pub fn starting_after(last: u64) -> Self {
        Self {
            last: AtomicU64::new(last),
        }
    }

    /// Hands out the next LSN.
    pub fn next(&self) -> u64 {
        self.last.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The last LSN handed out.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_are_unique_and_increasing_across_threads() {
        let clock = std::sync::Arc::new(LsnClock::starting_after(41));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = clock.clone();
                std::thread::spawn(move || (0..1000).map(|_| c.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4000);
        assert_eq!(all[0], 42);
        assert_eq!(clock.last(), 4041);
    }
}
