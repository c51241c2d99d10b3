//! Per-writer segment allocation: each writer owns open segments and a bitmap of their
//! blocks, so queue workers allocate without touching shared state; only grabbing a new
//! segment takes the global metadata lock. A guest writer keeps one open segment per
//! temperature (see `temperature`); other writers use the cold one only.

use super::temperature::Temperature;
use bitvec::prelude::*;

/// One open segment and its used blocks.
struct Stream {
    seg: Option<u64>,
    used: BitVec,
}

/// A writer's open segments.
pub struct SegmentWriter {
    seg_blocks: u64,
    /// One per [`Temperature`], indexed by it.
    streams: [Stream; 2],
    /// The stream `take`, `start` and `retire` work on.
    active: usize,
    /// Segments this writer filled during the current batch; closed once the batch commits,
    /// so a segment never looks empty (and reusable) while its data waits for its record.
    pub retired: Vec<u64>,
}

impl SegmentWriter {
    pub fn new(seg_blocks: u64) -> Self {
        let stream = || Stream {
            seg: None,
            used: bitvec![0; seg_blocks as usize],
        };
        Self {
            seg_blocks,
            streams: [stream(), stream()],
            active: Temperature::Cold as usize,
            retired: Vec::new(),
        }
    }

    /// Makes the open segment for `t` the one the next calls work on.
    pub fn select(&mut self, t: Temperature) {
        self.active = t as usize;
    }

    /// Takes up to `want` contiguous blocks from the open segment: `(first pba, count)`.
    /// Returns `None` when there is no open segment or it is full; the caller then
    /// [`retire`](Self::retire)s it and [`start`](Self::start)s another.
    pub fn take(&mut self, want: usize) -> Option<(u64, usize)> {
        let s = &mut self.streams[self.active];
        let seg = s.seg?;
        let first = s.used.first_zero()?;
        let run = s.used[first..]
            .first_one()
            .unwrap_or(s.used.len() - first)
            .min(want);
        if run == 0 {
            return None;
        }
        s.used[first..first + run].fill(true);
        Some((seg * self.seg_blocks + first as u64, run))
    }

    /// Starts writing into a fresh segment.
    pub fn start(&mut self, seg: u64) {
        self.retire();
        let s = &mut self.streams[self.active];
        s.seg = Some(seg);
        s.used.fill(false);
    }

    /// Stops writing into the open segment (it is full, or the writer is shutting down).
    pub fn retire(&mut self) {
        if let Some(s) = self.streams[self.active].seg.take() {
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
        w.start(3);
        assert_eq!(w.take(5), Some((48, 5)));
        assert_eq!(w.take(20), Some((53, 11)));
        assert_eq!(w.take(1), None);
        w.start(4);
        assert_eq!(w.retired, vec![3]);
        assert_eq!(w.take(2), Some((64, 2)));
    }

    #[test]
    fn each_temperature_fills_its_own_segment() {
        let mut w = SegmentWriter::new(16);
        w.start(3);
        assert_eq!(w.take(4), Some((48, 4)));
        w.select(Temperature::Hot);
        assert_eq!(w.take(1), None, "the hot stream has no segment yet");
        w.start(7);
        assert!(
            w.retired.is_empty(),
            "starting the hot stream retires nothing cold"
        );
        assert_eq!(w.take(2), Some((112, 2)));
        w.select(Temperature::Cold);
        assert_eq!(w.take(2), Some((52, 2)));
        w.select(Temperature::Hot);
        w.start(9);
        assert_eq!(w.retired, vec![7]);
    }
}
