//! Packing one write batch: each block is compressed, and those that shrink to at most
//! [`MAX_PACKED`] bytes are laid out, in batch order, into as few physical blocks as
//! first-fit in order gives; the others stay raw.
//!
//! A slot is a 2-byte little-endian length (its top bit set when the dictionary was used),
//! the compressed bytes, then zeroes up to the next granule (or sector, see [`Grain`]).

use super::codec::Codec;
use super::dict::{DICT_SLOT, Dictionary};
use super::place::{GRANULES, Grain, Slot};
use crate::store::buf::AlignedBuf;
use crate::store::layout::BLOCK_SIZE;
use smallvec::SmallVec;
use std::sync::atomic::{AtomicU32, Ordering};

/// A block is packed only if its slot fits this many bytes (3 KiB): less saves too little to
/// pay for the decompression on every read.
pub const MAX_PACKED: usize = 3072;
/// After this many blocks in a row that did not shrink, only one block in [`PROBE_EVERY`]
/// is tried: data that does not compress costs (almost) no compression attempts.
const GIVE_UP_AFTER: u32 = 32;
pub(crate) const PROBE_EVERY: u32 = 64;

/// One physical block of a batch.
#[derive(Debug)]
pub(crate) enum Physical {
    /// Batch block `i`, stored as it is.
    Raw(usize),
    /// Block `index` of [`Packed::buf`], holding batch blocks in slots.
    Packed {
        index: usize,
        slots: SmallVec<[(usize, Slot); 8]>,
    },
}

/// A batch's physical blocks: the packed ones in `buf`, the raw ones where they were.
pub(crate) struct Packed {
    pub buf: AlignedBuf,
    pub phys: Vec<Physical>,
}

impl Packed {
    /// Whether any block was packed: a batch where none was is placed as without
    /// compression.
    pub fn any_packed(&self) -> bool {
        self.phys
            .iter()
            .any(|p| matches!(p, Physical::Packed { .. }))
    }
}

/// Consecutive blocks that did not shrink, across one writer's batches.
#[derive(Debug, Default)]
pub struct Misses {
    run: AtomicU32,
    skipped: AtomicU32,
}

impl Misses {
    /// Whether the next block is worth a compression attempt.
    pub(super) fn worth_trying(&self) -> bool {
        if self.run.load(Ordering::Relaxed) < GIVE_UP_AFTER {
            return true;
        }
        self.skipped
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PROBE_EVERY)
    }

    fn note(&self, shrank: bool) {
        if shrank {
            self.run.store(0, Ordering::Relaxed);
        } else {
            self.run.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Compresses and packs `blocks` (4096 bytes each) with `codec` and the container's
/// dictionary `dict` (zstd only), which the slots' length says they used, placing slots on
/// the container's `grain`.
pub(crate) fn pack_batch(
    codec: Codec,
    dict: Option<&Dictionary>,
    grain: Grain,
    blocks: &[&[u8]],
    misses: &Misses,
) -> Packed {
    let flag = if dict.is_some() { DICT_SLOT } else { 0 };
    let mut phys = Vec::with_capacity(blocks.len());
    let mut buf: Option<AlignedBuf> = None;
    let mut used = 0usize; // packed blocks started
    let mut open = 0usize; // where in `phys` the current packed block is
    let mut fill = GRANULES; // granules used in the current packed block
    // Room for lz4's worst case (it wants it all before it starts).
    let mut tmp = [0u8; 2 * BLOCK_SIZE];
    let max_body = MAX_PACKED - 2;
    for (i, block) in blocks.iter().enumerate() {
        let len = if misses.worth_trying() {
            let len = codec
                .compress(dict, block, &mut tmp)
                .filter(|n| *n <= max_body);
            misses.note(len.is_some());
            len
        } else {
            None
        };
        let Some(len) = len else {
            phys.push(Physical::Raw(i));
            continue;
        };
        let granules = grain.granules(len + 2);
        let b = buf.get_or_insert_with(|| AlignedBuf::scratch(blocks.len()));
        if fill + granules > GRANULES {
            b.block_mut(used).fill(0);
            used += 1;
            fill = 0;
            open = phys.len();
            phys.push(Physical::Packed {
                index: used - 1,
                slots: SmallVec::new(),
            });
        }
        let slot = Slot {
            first: fill,
            len: granules,
        };
        let at = (used - 1) * BLOCK_SIZE + slot.range().start;
        b[at..at + 2].copy_from_slice(&(len as u16 | flag).to_le_bytes());
        b[at + 2..at + 2 + len].copy_from_slice(&tmp[..len]);
        fill += granules;
        if let Physical::Packed { slots, .. } = &mut phys[open] {
            slots.push((i, slot));
        }
    }
    Packed {
        buf: buf.unwrap_or_else(|| AlignedBuf::scratch(0)),
        phys,
    }
}
