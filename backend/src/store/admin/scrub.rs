//! Data scrub: every data block read as stored and checked against its checksum.
//!
//! On a container whose checksums cover the stored bytes (plaintext, or encrypted with
//! `CIPHERTEXT_CRC`) this never decrypts anything: given the blocks' places and checksums it
//! runs without the key ([`check_stored`] with a [`DataView`] that has no cipher). An
//! encrypted container with plaintext checksums is decrypted block by block first.

use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, block_of};
use crate::store::layout::BLOCK;
use crate::store::seal::DataView;

/// Longest read of consecutive data blocks.
const RUN_BLOCKS: u64 = 256;

/// One guest block to check: `pba` as the VBA map has it (a packed slot's carries it), its
/// VBA and its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredBlock {
    pub pba: u64,
    pub vba: u64,
    pub crc: u32,
}

/// Checks `blocks` (sorted here by place, read a run at a time: the slots of a packed block
/// share its read) and adds a line to `problems` for each that fails, up to `max_problems`.
/// Returns the blocks checked.
pub(crate) fn check_stored(
    data: &DataView,
    blocks: &mut [StoredBlock],
    problems: &mut Vec<String>,
    max_problems: usize,
) -> u64 {
    blocks.sort_unstable_by_key(|b| (block_of(b.pba), b.pba));
    let mut checked = 0;
    let mut i = 0;
    while i < blocks.len() && problems.len() < max_problems {
        let first = block_of(blocks[i].pba);
        let mut n = 1;
        while i + n < blocks.len()
            && block_of(blocks[i + n].pba) - first < RUN_BLOCKS
            && block_of(blocks[i + n].pba) <= block_of(blocks[i + n - 1].pba) + 1
        {
            n += 1;
        }
        let len = (block_of(blocks[i + n - 1].pba) - first + 1) as usize;
        let mut b = AlignedBuf::blocks(len);
        let read = (data.read_raw(&mut b, first * BLOCK))
            .and_then(|()| data.covered(&mut b, first * BLOCK));
        if let Err(e) = read {
            problems.push(format!("reading data at block {first}: {e}"));
        } else {
            for s in &blocks[i..i + n] {
                checked += 1;
                let block = block_of(s.pba);
                let stored = compress::stored_bytes(b.block((block - first) as usize), s.pba);
                if block_crc(s.vba, stored) != s.crc {
                    problems.push(format!(
                        "data block {block} (VBA {}) fails its checksum",
                        s.vba
                    ));
                }
            }
        }
        i += n;
    }
    checked
}
