//! Geometry of a container: where superblocks, the journal and the segments live.
//!
//! Addresses inside the store are block numbers (PBA, 4 KiB units) from the start of the
//! container. Segment 0 holds the two superblocks; segments `1..=journal_segments` hold the
//! journal; the rest hold data blocks and metadata (tree nodes, SUT, checkpoint blocks).

/// Every block, node and journal record is a multiple of this; also the O_DIRECT alignment.
pub const BLOCK_SIZE: usize = 4096;
/// [`BLOCK_SIZE`] as a u64, for address arithmetic.
pub const BLOCK: u64 = BLOCK_SIZE as u64;
/// Guest requests must be aligned to this.
pub const SECTOR: u64 = 512;

/// Derived sizes of one container, all in blocks unless named otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Blocks per segment.
    pub seg_blocks: u64,
    /// Number of segments in the container, including segment 0 and the journal.
    pub segments: u64,
    /// Segments given to the journal, starting at segment 1.
    pub journal_segments: u64,
    /// Guest-visible capacity in bytes.
    pub capacity: u64,
}

impl Geometry {
    /// First segment that holds data or metadata.
    pub fn first_data_segment(&self) -> u64 {
        1 + self.journal_segments
    }

    /// First block of the journal.
    pub fn journal_start(&self) -> u64 {
        self.seg_blocks
    }

    /// Blocks in the journal region.
    pub fn journal_blocks(&self) -> u64 {
        self.journal_segments * self.seg_blocks
    }

    /// Number of segments that hold data or metadata.
    pub fn data_segments(&self) -> u64 {
        self.segments.saturating_sub(self.first_data_segment())
    }

    /// Guest-visible capacity in blocks.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity / BLOCK
    }

    /// Segment that holds block `pba`.
    pub fn segment_of(&self, pba: u64) -> u64 {
        pba / self.seg_blocks
    }

    /// First block of segment `seg`.
    pub fn segment_start(&self, seg: u64) -> u64 {
        seg * self.seg_blocks
    }

    /// Whether `pba` lies in a data/metadata segment of this container.
    pub fn is_data_block(&self, pba: u64) -> bool {
        let seg = self.segment_of(pba);
        seg >= self.first_data_segment() && seg < self.segments
    }

    /// Container size in bytes.
    pub fn container_bytes(&self) -> u64 {
        self.segments * self.seg_blocks * BLOCK
    }

    /// Segments kept back from guest writes so checkpoints and the cleaner can always run:
    /// room for a complete second copy of both maps at half-full nodes plus a few segments
    /// for the cleaner's moves. This sizes the container; a running store keeps back less
    /// once it knows how large its trees are ([`Sut::reserved_segments`]).
    ///
    /// [`Sut::reserved_segments`]: crate::store::map::sut::Sut::reserved_segments
    pub fn reserved_segments(&self) -> u64 {
        self.checkpoint_reserve() + 4
    }

    /// The part of the reserve the cleaner leaves to checkpoints: the segments it frees only
    /// come back once a checkpoint commits, so a cleaner that used them up would leave no
    /// room for the checkpoint that releases its work.
    pub fn checkpoint_reserve(&self) -> u64 {
        let entries = self.capacity_blocks();
        // Half-full leaves of both maps (~254 and ~203 entries per leaf) plus internal nodes,
        // twice (the old checkpoint stays live until the new one commits).
        let tree_blocks = entries / 100 + entries / 80;
        (2 * tree_blocks).div_ceil(self.seg_blocks) + 2
    }

    /// Segments one checkpoint of `blocks` blocks (tree nodes, usage table, root) may fill:
    /// the table and the root each go in one run inside a segment, so up to two segments'
    /// tails may be left behind.
    pub fn checkpoint_segments(&self, blocks: u64) -> u64 {
        blocks.div_ceil(self.seg_blocks) + 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_do_not_overlap() {
        let g = Geometry {
            seg_blocks: 1024,
            segments: 100,
            journal_segments: 4,
            capacity: 256 << 20,
        };
        assert_eq!(g.journal_start(), 1024);
        assert_eq!(g.first_data_segment(), 5);
        assert!(!g.is_data_block(g.journal_start() + g.journal_blocks() - 1));
        assert!(g.is_data_block(5 * 1024));
        assert!(!g.is_data_block(100 * 1024));
        assert_eq!(g.data_segments(), 95);
        assert!(g.reserved_segments() >= 4);
    }
}
