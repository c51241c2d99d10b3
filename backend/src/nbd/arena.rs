//! The data buffers of one NBD connection's requests in flight: one anonymous mapping used as a
//! ring, so buffers are taken in arrival order and given back in any order without a system
//! call per request. The engine sees them as [`GuestBuffers`], as it sees a guest's memory.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_memory::GuestAddress;

use crate::engine::{BufferError, GuestBuffers, GuestMemory};

/// Buffers start on page boundaries (O_DIRECT engines need aligned memory).
const ALIGN: u64 = 4096;

pub struct Arena {
    memory: Arc<GuestMemory>,
    size: u64,
    /// Taken slots in ring order: (start, length, given back).
    taken: VecDeque<(u64, u64, bool)>,
    /// Where the next slot starts.
    head: u64,
}

impl Arena {
    pub fn new(size: usize) -> std::io::Result<Self> {
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), size)])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            memory: Arc::new(memory),
            size: size as u64,
            taken: VecDeque::new(),
            head: 0,
        })
    }

    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Takes `len` bytes; `None` while too much is in flight.
    pub fn take(&mut self, len: u64) -> Option<u64> {
        let len = len.max(1).next_multiple_of(ALIGN);
        if len > self.size {
            return None;
        }
        let start = match self.taken.front() {
            None => 0,
            Some(&(tail, _, _)) if self.head > tail => {
                if self.head + len <= self.size {
                    self.head
                } else if len <= tail {
                    0
                } else {
                    return None;
                }
            }
            Some(&(tail, _, _)) => {
                if self.head + len <= tail {
                    self.head
                } else {
                    return None;
                }
            }
        };
        self.taken.push_back((start, len, false));
        self.head = start + len;
        Some(start)
    }

    /// Gives back the slot at `start`.
    pub fn give_back(&mut self, start: u64) {
        if let Some(slot) = self.taken.iter_mut().find(|s| s.0 == start && !s.2) {
            slot.2 = true;
        }
        while self.taken.front().is_some_and(|s| s.2) {
            self.taken.pop_front();
        }
        if self.taken.is_empty() {
            self.head = 0;
        }
    }

    /// The request buffers for `len` bytes at `start`.
    pub fn buffers(&self, start: u64, len: u32) -> Result<GuestBuffers, BufferError> {
        GuestBuffers::from_guest(&self.memory, [(GuestAddress(start), len)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_reused_in_any_order_and_bounded() {
        let mut a = Arena::new(64 << 10).unwrap();
        let x = a.take(4096).unwrap();
        let y = a.take(100).unwrap();
        let z = a.take(32 << 10).unwrap();
        assert_eq!((x, y, z), (0, 4096, 8192));
        assert_eq!(a.take(32 << 10), None, "only 24 KiB left at the end");
        // Giving back the middle slot frees nothing at the tail yet.
        a.give_back(y);
        assert_eq!(a.take(28 << 10), None);
        a.give_back(x);
        // The tail moved past x and y: 8 KiB free at the start, 24 KiB at the end.
        assert_eq!(a.take(24 << 10), Some(40 << 10));
        assert_eq!(a.take(8 << 10), Some(0));
        assert_eq!(a.take(4096), None);
        a.give_back(z);
        a.give_back(40 << 10);
        a.give_back(0);
        assert_eq!(a.take(64 << 10), Some(0));
        assert_eq!(a.take(1), None);
    }
}
