//! Sealing a batch's data for an encrypted container, once, in the store.
//!
//! [`seal_for_store`] encrypts a batch's data runs, from the caller's buffers, into one buffer
//! the batch owns, under their tweaks (the PBAs they go to; on a container with `VBA_TWEAK`, a
//! raw block's VBA, and a raw block the cleaner moves is ciphertext already, copied as it is)
//! and, on a container whose data crcs cover the ciphertext,
//! checksums the ciphertext into the batch's Map, StageMap and Move entries. The batch's writes
//! then go to the container's bytes as they are, its journal record sealed by the store too
//! (`Store::commit_locked`, `Store::plan_batch`).

use super::{DataView, Sealer, pba_tweak};
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

/// How one block of a batch's runs is stored, on a container with VBA tweaks.
#[derive(Clone, Copy)]
enum Unit {
    /// Sealed under this tweak.
    Seal(u128),
    /// Already ciphertext (a raw block the cleaner moves): copied as it is.
    AsStored,
}

/// The blocks of a batch that entries name, and how each is stored: a raw block under its
/// VBA (or, moved by the cleaner, as it was stored), a packed one under its place. A block no
/// entry names is sealed under its place.
fn tweaks_of(data: &DataView, entries: &[Entry]) -> Units {
    let mut units = Vec::with_capacity(entries.len());
    for e in entries {
        let (pba, unit) = match *e {
            Entry::Map { vba, pba, .. } | Entry::StageMap { vba, pba, .. } => {
                (pba, Unit::Seal(data.tweak(vba, pba)))
            }
            Entry::Move { new_pba, .. } if data.moves_as_stored(new_pba) => {
                (new_pba, Unit::AsStored)
            }
            Entry::Move { vba, new_pba, .. } => (new_pba, Unit::Seal(data.tweak(vba, new_pba))),
            _ => continue,
        };
        units.push((block_of(pba), unit));
    }
    // Sorted, the last entry for a block first among its equals: a later entry of the batch
    // for the same block decides, as it would have in a map.
    units.reverse();
    units.sort_by_key(|&(pba, _)| pba);
    units.dedup_by_key(|&mut (pba, _)| pba);
    Units(units)
}

/// How the blocks entries name are stored, by block number (looked up per block by binary
/// search: a batch's blocks are few, and no hashing is needed).
struct Units(Vec<(u64, Unit)>);

impl Units {
    fn get(&self, pba: u64) -> Option<&Unit> {
        let i = self.0.binary_search_by_key(&pba, |&(p, _)| p).ok()?;
        Some(&self.0[i].1)
    }
}

/// Seals one run (`parts`, to be stored from block `first` on) into `dst`, each block as
/// `units` says, consecutive blocks sealed together (in one call per run of them).
fn seal_by_block(
    sealer: &Sealer,
    units: &Units,
    parts: &[&[u8]],
    dst: &mut [u8],
    first: u64,
) -> io::Result<()> {
    let blocks: Vec<&[u8]> = parts.iter().flat_map(|p| p.chunks(BLOCK_SIZE)).collect();
    if blocks.iter().any(|b| b.len() != BLOCK_SIZE) || blocks.len() * BLOCK_SIZE != dst.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "seal: a run is not whole blocks",
        ));
    }
    // Per block: its tweak, or `None` to copy it as stored.
    let tweaks: Vec<Option<u128>> = (first..first + blocks.len() as u64)
        .map(|pba| match units.get(pba) {
            Some(Unit::Seal(t)) => Some(*t),
            Some(Unit::AsStored) => None,
            None => Some(pba_tweak(pba)),
        })
        .collect();
    let mut i = 0;
    while i < blocks.len() {
        let seal = tweaks[i].is_some();
        let n = 1 + tweaks[i + 1..]
            .iter()
            .take_while(|t| t.is_some() == seal)
            .count();
        let out = &mut dst[i * BLOCK_SIZE..(i + n) * BLOCK_SIZE];
        if seal {
            // Every block of this stretch has a tweak.
            sealer.seal_each_from(&blocks[i..i + n], out, |k| {
                tweaks[i + k].unwrap_or_default()
            })?;
        } else {
            for (d, s) in out.chunks_mut(BLOCK_SIZE).zip(&blocks[i..i + n]) {
                d.copy_from_slice(s);
            }
        }
        i += n;
    }
    Ok(())
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
    let tweaks = data.by_vba().then(|| tweaks_of(data, entries));
    for (offset, parts) in runs {
        let first = at;
        at += parts.iter().map(|p| p.len()).sum::<usize>() / BLOCK_SIZE;
        let dst = &mut sealed.buf[first * BLOCK_SIZE..at * BLOCK_SIZE];
        match &tweaks {
            // Straight from the caller's buffers into the batch's: one pass.
            None => sealer.seal_from(parts, dst, *offset)?,
            Some(tweaks) => seal_by_block(sealer, tweaks, parts, dst, offset / BLOCK)?,
        }
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
