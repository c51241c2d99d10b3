//! Read pins: a read in flight holds the segments it reads from, so that no segment is
//! handed out for reuse while a device read of its old contents is still running.
//!
//! A read pins under the state lock, at the moment it looks its blocks up; a segment is only
//! released for reuse under the same lock, and a pinned one stays pending until a later
//! checkpoint. Pins are counters, not locks: a read never waits for anything, and nothing
//! waits for a read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// One counter per segment of the container.
pub struct SegmentPins {
    counts: Vec<AtomicU32>,
}

impl SegmentPins {
    pub fn new(segments: u64) -> Self {
        Self {
            counts: (0..segments).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Whether some read still reads from `seg`.
    pub fn is_pinned(&self, seg: u64) -> bool {
        self.counts
            .get(seg as usize)
            .is_some_and(|c| c.load(Ordering::Acquire) > 0)
    }

    fn add(&self, seg: u64) {
        if let Some(c) = self.counts.get(seg as usize) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn sub(&self, seg: u64) {
        if let Some(c) = self.counts.get(seg as usize) {
            let before = c.fetch_sub(1, Ordering::AcqRel);
            assert!(before > 0, "segment {seg}: pin count underflow");
        }
    }
}

/// The segments one read holds; released when dropped.
pub struct PinGuard {
    pins: Arc<SegmentPins>,
    segments: Vec<u64>,
}

impl PinGuard {
    pub fn new(pins: &Arc<SegmentPins>) -> Self {
        Self {
            pins: Arc::clone(pins),
            segments: Vec::new(),
        }
    }

    /// Pins `seg` (once per guard). The caller holds the state lock.
    pub fn pin(&mut self, seg: u64) {
        if !self.segments.contains(&seg) {
            self.pins.add(seg);
            self.segments.push(seg);
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        for seg in self.segments.drain(..) {
            self.pins.sub(seg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_pins_each_segment_once_and_releases_on_drop() {
        let pins = Arc::new(SegmentPins::new(8));
        let mut a = PinGuard::new(&pins);
        a.pin(3);
        a.pin(3);
        let mut b = PinGuard::new(&pins);
        b.pin(3);
        b.pin(5);
        assert!(pins.is_pinned(3) && pins.is_pinned(5) && !pins.is_pinned(4));
        drop(b);
        assert!(pins.is_pinned(3) && !pins.is_pinned(5));
        drop(a);
        assert!(!pins.is_pinned(3));
        assert!(!pins.is_pinned(100), "out of range is never pinned");
    }
}
