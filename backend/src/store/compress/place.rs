//! Where a packed guest block lies: the slot is carried in the high bits of the VBA map's
//! `pba` (physical blocks are numbered far below 2^48), so the map, the journal's Map and
//! Move entries and the checkpoint keep their layout.
//!
//! Bit 63 marks a packed block; bits 56..59 hold the slot's first sector (0..7) and bits
//! 52..55 its length in sectors (1..8); bits 48..51 are zero. A raw block's `pba` is its
//! block number, as in a container without compression.

use std::ops::Range;

/// Sector: the unit of packing.
pub const SECTOR: usize = 512;
/// Sectors in a block.
pub const SECTORS: u8 = 8;
const PACKED: u64 = 1 << 63;
const BLOCK_MASK: u64 = (1 << 48) - 1;
const FIRST_SHIFT: u32 = 56;
const LEN_SHIFT: u32 = 52;

/// A run of sectors inside one physical block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub first: u8,
    pub sectors: u8,
}

impl Slot {
    /// The slot's bytes within its block.
    pub fn range(self) -> Range<usize> {
        self.first as usize * SECTOR..(self.first + self.sectors) as usize * SECTOR
    }
}

/// The physical block a map entry's `pba` lies in.
pub fn block_of(pba: u64) -> u64 {
    pba & BLOCK_MASK
}

/// The slot of a packed entry; `None` for a raw block.
pub fn slot_of(pba: u64) -> Option<Slot> {
    (pba & PACKED != 0).then_some(Slot {
        first: ((pba >> FIRST_SHIFT) & 0xf) as u8,
        sectors: ((pba >> LEN_SHIFT) & 0xf) as u8,
    })
}

/// The `pba` of `slot` in physical block `block`.
pub fn packed(block: u64, slot: Slot) -> u64 {
    debug_assert!(block <= BLOCK_MASK && slot.sectors > 0);
    block | PACKED | u64::from(slot.first) << FIRST_SHIFT | u64::from(slot.sectors) << LEN_SHIFT
}

/// The same slot in another block (what the cleaner moves).
pub fn moved(pba: u64, block: u64) -> u64 {
    (pba & !BLOCK_MASK) | block
}

/// Whether `pba` is well formed: a raw block number, or a packed slot that lies inside its
/// block. What recovery and fsck check before trusting an address read from disk.
pub fn is_valid(pba: u64) -> bool {
    match slot_of(pba) {
        None => pba <= BLOCK_MASK,
        Some(s) => {
            pba & (0x7 << 60 | 0xf << 48) == 0 && s.sectors > 0 && s.first + s.sectors <= SECTORS
        }
    }
}

/// Bytes the guest block at `pba` takes in the container.
pub fn stored_len(pba: u64) -> u64 {
    slot_of(pba).map_or(4096, |s| s.sectors as u64 * SECTOR as u64)
}
