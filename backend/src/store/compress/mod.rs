//! Per-block compression: guest blocks that shrink are packed, several to a 4096-byte
//! physical block, in 64-byte granules (512-byte sectors in containers made before
//! `FINE_SLOTS`); the others are stored raw as without compression.
//!
//! Everything else in the store keeps working in whole blocks: a packed block is allocated,
//! written, pinned, cleaned and encrypted as one block. Only the VBA map tells a packed block
//! from a raw one: its `pba` carries the slot (see [`place`]) and its crc covers the slot's
//! bytes as stored, so checks never need to decompress. Compression happens before the
//! cipher, which sees only whole blocks.

mod codec;
pub mod dict;
mod owners;
mod pack;
pub mod place;
mod place_batch;
mod train;
mod usage;

pub use codec::Codec;
pub use dict::Dictionary;
pub(crate) use owners::PackedOwners;
pub(crate) use pack::Misses;
#[cfg(test)]
pub(crate) use pack::PROBE_EVERY;
pub use place::{block_of, stored_len};
pub(crate) use train::DictState;
#[cfg(test)]
pub(crate) use train::SAMPLE_BYTES;
pub use usage::DataBytes;
pub(crate) use usage::data_bytes;

use super::error::{Result, StoreError};
use super::layout::BLOCK_SIZE;

/// The bytes a VBA entry's checksum covers, out of the physical block `block` read for it.
pub fn stored_bytes(block: &[u8], pba: u64) -> &[u8] {
    match place::slot_of(pba) {
        Some(s) => &block[s.range()],
        None => block,
    }
}

/// Writes the guest block stored at `pba` (its physical block read into `block`, its
/// checksum already checked) into `out` (4096 bytes). A packed slot needs `codec`, and
/// `dict` (the container's dictionary) if its length says it used it.
pub fn expand(
    codec: Option<Codec>,
    dict: Option<&Dictionary>,
    block: &[u8],
    pba: u64,
    out: &mut [u8],
) -> Result<()> {
    let Some(slot) = place::slot_of(pba) else {
        out.copy_from_slice(block);
        return Ok(());
    };
    let codec = codec.ok_or_else(|| {
        StoreError::corrupt(
            "VBA map",
            format!("packed block {pba:#x} in a container without compression"),
        )
    })?;
    let stored = &block[slot.range()];
    let len = u16::from_le_bytes([stored[0], stored[1]]);
    let dict = if len & dict::DICT_SLOT != 0 {
        Some(dict.ok_or_else(|| {
            StoreError::corrupt(
                "packed block",
                format!("slot at {pba:#x} uses a dictionary the container does not have"),
            )
        })?)
    } else {
        None
    };
    let len = (len & !dict::DICT_SLOT) as usize;
    let body = stored.get(2..2 + len).ok_or_else(|| {
        StoreError::corrupt(
            "packed block",
            format!("slot at {pba:#x} says {len} bytes, more than it holds"),
        )
    })?;
    let n = codec
        .decompress(dict, body, out)
        .map_err(|e| StoreError::corrupt("packed block", format!("slot at {pba:#x}: {e}")))?;
    if n != BLOCK_SIZE {
        return Err(StoreError::corrupt(
            "packed block",
            format!("slot at {pba:#x} expands to {n} bytes, not one block"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
