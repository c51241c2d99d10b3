//! Where a packed guest block lies: the slot is carried in the high bits of the VBA map's
//! `pba` (physical blocks are numbered far below 2^48), so the map, the journal's Map and
//! Move entries and the checkpoint keep their layout.
//!
//! A slot is measured in 64-byte granules. A container with `FINE_SLOTS` places slots on any
//! granule ([`Grain::Fine`]); an older one on 512-byte sectors only ([`Grain::Sector`]). Both
//! encodings set bit 63 for a packed block:
//!
//! - sectors: bits 56..59 the first sector (0..7), bits 52..55 the length in sectors (1..8),
//!   bits 48..51 and 60..62 zero;
//! - granules: bit 62 set, bits 48..53 the first granule (0..63), bits 54..59 the length in
//!   granules minus one (0..63), bits 60..61 zero.
//!
//! Bit 62 tells the two apart, so an address decodes alone; [`is_valid`] checks it is the
//! container's own. A raw block's `pba` is its block number, as without compression.

use crate::store::log::superblock::INCOMPAT_FINE_SLOTS;
use std::ops::Range;

/// Granule: the unit slots are measured in.
pub const GRANULE: usize = 64;
/// Granules in a block.
pub const GRANULES: u8 = 64;
/// Granules in a 512-byte sector, the step of the sector layout.
const PER_SECTOR: u8 = 8;
const PACKED: u64 = 1 << 63;
const FINE: u64 = 1 << 62;
const BLOCK_MASK: u64 = (1 << 48) - 1;
const SECTOR_FIRST_SHIFT: u32 = 56;
const SECTOR_LEN_SHIFT: u32 = 52;
const FINE_FIRST_SHIFT: u32 = 48;
const FINE_LEN_SHIFT: u32 = 54;

/// How finely a container places slots, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    /// On 512-byte sectors: containers made before `FINE_SLOTS`.
    Sector,
    /// On 64-byte granules (`FINE_SLOTS`).
    Fine,
}

impl Grain {
    /// The grain of a container with the superblock's `incompat` bits.
    pub fn of(incompat: u64) -> Self {
        if incompat & INCOMPAT_FINE_SLOTS != 0 {
            Self::Fine
        } else {
            Self::Sector
        }
    }

    /// Granules a slot of `bytes` bytes takes: rounded up to a whole step.
    pub fn granules(self, bytes: usize) -> u8 {
        let step = self.step();
        (bytes.div_ceil(GRANULE).div_ceil(step as usize) * step as usize) as u8
    }

    /// Granules a slot's start and length are multiples of.
    fn step(self) -> u8 {
        match self {
            Self::Sector => PER_SECTOR,
            Self::Fine => 1,
        }
    }
}

/// A run of granules inside one physical block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub first: u8,
    pub len: u8,
}

impl Slot {
    /// The slot's bytes within its block.
    pub fn range(self) -> Range<usize> {
        self.first as usize * GRANULE..(self.first as usize + self.len as usize) * GRANULE
    }
}

/// The physical block a map entry's `pba` lies in.
pub fn block_of(pba: u64) -> u64 {
    pba & BLOCK_MASK
}

/// The slot of a packed entry; `None` for a raw block.
pub fn slot_of(pba: u64) -> Option<Slot> {
    if pba & PACKED == 0 {
        return None;
    }
    Some(if pba & FINE != 0 {
        Slot {
            first: ((pba >> FINE_FIRST_SHIFT) & 0x3f) as u8,
            len: ((pba >> FINE_LEN_SHIFT) & 0x3f) as u8 + 1,
        }
    } else {
        Slot {
            first: ((pba >> SECTOR_FIRST_SHIFT) & 0xf) as u8 * PER_SECTOR,
            len: ((pba >> SECTOR_LEN_SHIFT) & 0xf) as u8 * PER_SECTOR,
        }
    })
}

/// The `pba` of `slot` in physical block `block`, in the encoding of `grain` (whose step the
/// slot's start and length are multiples of).
pub fn packed(block: u64, slot: Slot, grain: Grain) -> u64 {
    debug_assert!(block <= BLOCK_MASK && slot.len > 0);
    debug_assert!(slot.first.is_multiple_of(grain.step()) && slot.len.is_multiple_of(grain.step()));
    let bits = match grain {
        Grain::Sector => {
            u64::from(slot.first / PER_SECTOR) << SECTOR_FIRST_SHIFT
                | u64::from(slot.len / PER_SECTOR) << SECTOR_LEN_SHIFT
        }
        Grain::Fine => {
            FINE | u64::from(slot.first) << FINE_FIRST_SHIFT
                | u64::from(slot.len - 1) << FINE_LEN_SHIFT
        }
    };
    block | PACKED | bits
}

/// The same slot in another block (what the cleaner moves).
pub fn moved(pba: u64, block: u64) -> u64 {
    (pba & !BLOCK_MASK) | block
}

/// Whether `pba` is well formed for a container of `grain`: a raw block number, or a packed
/// slot in the container's encoding that lies inside its block. What recovery, reads and fsck
/// check before trusting an address read from disk.
pub fn is_valid(pba: u64, grain: Grain) -> bool {
    let Some(s) = slot_of(pba) else {
        return pba <= BLOCK_MASK;
    };
    let zero = match grain {
        Grain::Sector => FINE | 0x3 << 60 | 0xf << 48,
        Grain::Fine => 0x3 << 60,
    };
    pba & zero == 0
        && (grain == Grain::Sector) == (pba & FINE == 0)
        && s.len > 0
        && s.first as usize + s.len as usize <= GRANULES as usize
}

/// Bytes the guest block at `pba` takes in the container.
pub fn stored_len(pba: u64) -> u64 {
    slot_of(pba).map_or(4096, |s| s.len as u64 * GRANULE as u64)
}
