//! The journal region used as a ring: records go on past a checkpoint's freeze point while
//! the checkpoint writes, and wrap to the region's start when they reach its end.
//!
//! The live part runs from the head (where the first record after the last committed
//! checkpoint lies, named by the superblock) forward to the write position. A record never
//! straddles the end: one that does not fit before it goes to block 0, and the blocks it
//! skipped count as used until the head passes them. Nothing is written over the live part:
//! when a record does not fit, it waits for a checkpoint to move the head.

/// The live part of a journal region of `blocks` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ring {
    /// Blocks in the region.
    pub blocks: u64,
    /// Block offset of the first record the last committed checkpoint does not hold.
    pub head: u64,
    /// Blocks from the head to the write position, skipped blocks included.
    pub used: u64,
}

impl Ring {
    pub fn new(blocks: u64, head: u64) -> Self {
        Self {
            blocks,
            head: head % blocks.max(1),
            used: 0,
        }
    }

    /// Where a record of `need` blocks written at position `pos` goes, and the blocks it adds
    /// to the live part; `None` if it would run into the head.
    pub fn place(&self, pos: u64, need: u64) -> Option<(u64, u64)> {
        let at = wrapped_place(self.blocks, pos, need);
        let skipped = if at == pos { 0 } else { self.blocks - pos };
        let added = skipped + need;
        (self.used + added <= self.blocks && need <= self.blocks).then_some((at, added))
    }

    /// A checkpoint that holds the first `folded` blocks of the live part committed: the
    /// head moves to `new_head`.
    pub fn fold(&mut self, folded: u64, new_head: u64) {
        self.used = self.used.saturating_sub(folded);
        self.head = new_head % self.blocks.max(1);
    }
}

/// Where a record of `need` blocks goes when the write position is `pos`: there, or block 0
/// when it does not fit before the end.
pub fn wrapped_place(blocks: u64, pos: u64, need: u64) -> u64 {
    if pos.saturating_add(need) <= blocks {
        pos
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_wrap_and_never_run_into_the_head() {
        let mut r = Ring::new(100, 40);
        // From the head to the end: 60 blocks.
        assert_eq!(r.place(40, 10), Some((40, 10)));
        r.used = 55;
        // 5 left before the end: a 6-block record skips them and goes to 0.
        assert_eq!(r.place(95, 6), Some((0, 11)));
        r.used = 66;
        // From 6 up to the head (40): 34 blocks free.
        assert_eq!(r.place(6, 34), Some((6, 34)));
        assert_eq!(r.place(6, 35), None, "would overwrite the head's record");
        // A checkpoint that folded the first 60 blocks moved the head to 0 (the wrap).
        r.fold(60, 100);
        assert_eq!((r.head, r.used), (0, 6));
        assert_eq!(r.place(6, 94), Some((6, 94)));
        assert_eq!(r.place(6, 95), None);
        assert_eq!(
            Ring::new(100, 0).place(0, 101),
            None,
            "longer than the region"
        );
    }

    #[test]
    fn a_record_that_ends_at_the_end_does_not_wrap() {
        assert_eq!(wrapped_place(100, 90, 10), 90);
        assert_eq!(wrapped_place(100, 90, 11), 0);
        assert_eq!(wrapped_place(100, 100, 1), 0);
    }
}
