//! Per-writer segment allocation: each writer owns an open segment and a bitmap of its
//! blocks, so queue workers allocate without touching shared state; only grabbing a new
//! segment takes the global metadata lock.

use bitvec::prelude::*;

/// A writer's open segment.
pub struct SegmentWriter {
    seg_blocks: u64,
    seg: Option<u64>,
    used: BitVec,
    /// Segments this writer filled during the current batch; closed once the batch commits,
    /// so a segment never looks empty (and reusable) while its data waits for its record.
    pub retired: Vec<u64>,
}

impl SegmentWriter {
    pub fn new(seg_blocks: u64) -> Self {
        Self {
            seg_blocks,
            seg: None,
            used: bitvec![0; seg_blocks as usize],
            retired: Vec::new(),
        }
    }

    /// Takes up to `want` contiguous blocks from the open segment: `(first pba, count)`.
    /// Returns `None` when there is no open segment or it is full; the caller then
    /// [`retire`](Self::retire)s it and [`start`](Self::start)s another.
    pub fn take(&mut self, want: usize) -> Option<(u64, usize)> {
        let seg = self.seg?;
        let first = self.used.first_zero()?;
        let run = self.used[first..]
            .first_one()
            .unwrap_or(self.used.len() - first)
            .min(want);
        if run == 0 {
            return None;
        }
        self.used[first..first + run].fill(true);
        Some((seg * self.seg_blocks + first as u64, run))
    }

    /// Blocks left in the open segment (none without one).
    pub fn free(&self) -> u64 {
        match self.seg {
            Some(_) => self.used.count_zeros() as u64,
            None => 0,
        }
    }

    /// Starts writing into a fresh segment.
    pub fn start(&mut self, seg: u64) {
        self.retire();
        self.seg = Some(seg);
        self.used.fill(false);
    }

    /// Stops writing into the open segment (it is full, or the writer is shutting down).
    pub fn retire(&mut self) {
        if let Some(s) = self.seg.take() {
            self.retired.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_disjoint_runs_until_full() {
        let mut w = SegmentWriter::new(16);
        assert_eq!(w.take(1), None);
        assert_eq!(w.free(), 0);
        w.start(3);
        assert_eq!(w.free(), 16);
        assert_eq!(w.take(5), Some((48, 5)));
        assert_eq!(w.free(), 11);
        assert_eq!(w.take(20), Some((53, 11)));
        assert_eq!(w.take(1), None);
        w.start(4);
        assert_eq!(w.retired, vec![3]);
        assert_eq!(w.take(2), Some((64, 2)));
    }
}
