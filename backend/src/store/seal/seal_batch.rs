//! Sealing a batch's data for an encrypted container, once, in the store.
//!
//! [`seal_for_store`] encrypts a batch's data runs, from the caller's buffers, into one buffer
//! the batch owns, at the PBAs they go to and, on a container whose data crcs cover the ciphertext,
//! checksums the ciphertext into the batch's Map, StageMap and Move entries. The batch's writes
//! then go to the container's bytes as they are, its journal record sealed by the store too
//! (`Store::commit_locked`, `Store::plan_batch`).

use super::DataView;
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, block_of};
use crate::store::io::Gather;
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use crate::store::log::journal::Entry;
use std::io;

/// A batch's data runs as ciphertext, in one buffer.
pub(crate) struct SealedRuns {
    buf: AlignedBuf,
    /// Per run: its first PBA, its first block in `buf`, its length in blocks.
    runs: Vec<(u64, usize, usize)>,
}

impl SealedRuns {
    /// The writes of the sealed runs, one part each.
    pub fn gathers(&self) -> Vec<Gather<'_>> {
        self.runs
            .iter()
            .map(|&(pba, first, n)| {
                (
                    pba * BLOCK,
                    vec![&self.buf[first * BLOCK_SIZE..(first + n) * BLOCK_SIZE]],
                )
            })
            .collect()
    }

    /// The ciphertext of block `pba`, when a run holds it.
    fn block(&self, pba: u64) -> Option<&[u8]> {
        let &(start, first, _) = self
            .runs
            .iter()
            .find(|&&(start, _, n)| pba >= start && pba < start + n as u64)?;
        Some(self.buf.block(first + (pba - start) as usize))
    }

    /// The ciphertext the writes point into.
    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Seals `runs` (the data writes of one batch) for an encrypted container, and on one whose
/// crcs cover the ciphertext sets the crc of every Map, StageMap and Move entry with a crc
/// (whose block is in `runs`) over the ciphertext. `None` for a plaintext container: the
/// runs go out as they are.
pub(crate) fn seal_for_store(
    data: &DataView,
    entries: &mut [Entry],
    runs: &[Gather<'_>],
) -> io::Result<Option<SealedRuns>> {
    let Some(sealer) = data.sealer() else {
        return Ok(None);
    };
    let total: usize = runs
        .iter()
        .map(|(_, parts)| parts.iter().map(|p| p.len()).sum::<usize>() / BLOCK_SIZE)
        .sum();
    let mut sealed = SealedRuns {
        buf: AlignedBuf::scratch(total),
        runs: Vec::with_capacity(runs.len()),
    };
    let mut at = 0;
    for (offset, parts) in runs {
        let first = at;
        at += parts.iter().map(|p| p.len()).sum::<usize>() / BLOCK_SIZE;
        // Straight from the caller's buffers into the batch's: one pass.
        sealer.seal_from(
            parts,
            &mut sealed.buf[first * BLOCK_SIZE..at * BLOCK_SIZE],
            *offset,
        )?;
        sealed.runs.push((offset / BLOCK, first, at - first));
    }
    if data.crc_over_ciphertext() {
        for e in entries.iter_mut() {
            let (vba, pba, crc) = match e {
                Entry::Map { vba, pba, crc, .. } | Entry::StageMap { vba, pba, crc, .. } => {
                    (*vba, *pba, crc)
                }
                Entry::Move {
                    vba,
                    new_pba,
                    crc: Some(crc),
                    ..
                } => (*vba, *new_pba, crc),
                _ => continue,
            };
            if let Some(block) = sealed.block(block_of(pba)) {
                *crc = block_crc(vba, compress::stored_bytes(block, pba));
            }
        }
    }
    Ok(Some(sealed))
}
