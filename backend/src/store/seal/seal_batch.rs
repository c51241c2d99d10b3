//! Sealing a batch's data for an encrypted container, once, in the store.
//!
//! [`seal_for_store`] encrypts a batch's data runs, from the caller's buffers, into one buffer
//! the batch owns, at the PBAs they go to and, on a container whose data crcs cover the ciphertext,
//! checksums the ciphertext into the batch's Map, StageMap and Move entries. The batch's writes
//! then go to the container's bytes as they are; [`SealOthers`] seals the rest of them (the
//! journal record, a checkpoint the record needed) on their way.

use super::{DataView, Sealer};
use crate::store::Store;
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, block_of};
use crate::store::error::Result;
use crate::store::io::{BatchIo, Gather, StartIo};
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use crate::store::log::journal::Entry;
use crate::store::log::write::{Committed, Issue};
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
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The buffer the writes point into: keep it until they are done.
    pub fn into_buf(self) -> AlignedBuf {
        self.buf
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

/// An I/O that writes the container's bytes as they are, sealing every write but those from
/// the batch's sealed data.
pub(crate) struct SealOthers<'a, I: ?Sized> {
    inner: &'a mut I,
    sealer: &'a Sealer,
    /// The sealed data's bytes (start address, length): written as they are.
    presealed: (usize, usize),
    /// Sealed copies of writes started and maybe still in flight.
    kept: Vec<AlignedBuf>,
}

impl<'a, I: ?Sized> SealOthers<'a, I> {
    pub fn new(inner: &'a mut I, sealer: &'a Sealer, presealed: &[u8]) -> Self {
        Self {
            inner,
            sealer,
            presealed: (presealed.as_ptr() as usize, presealed.len()),
            kept: Vec::new(),
        }
    }

    /// The sealed copies of the writes started: keep them until those are done.
    pub fn into_kept(self) -> Vec<AlignedBuf> {
        self.kept
    }

    /// A sealed copy of each write whose bytes are not the batch's sealed data.
    fn seal_rest(&self, writes: &[Gather<'_>]) -> io::Result<Vec<Option<AlignedBuf>>> {
        let (start, len) = self.presealed;
        let inside = |p: &&[u8]| {
            let at = p.as_ptr() as usize;
            at >= start && at + p.len() <= start + len
        };
        writes
            .iter()
            .map(|(offset, parts)| {
                if parts.iter().all(inside) {
                    return Ok(None);
                }
                let bytes: usize = parts.iter().map(|p| p.len()).sum();
                let mut buf = AlignedBuf::scratch(bytes.div_ceil(BLOCK_SIZE));
                let mut at = 0;
                for p in parts {
                    buf[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                self.sealer.seal(&mut buf[..bytes], *offset)?;
                Ok(Some(buf))
            })
            .collect()
    }
}

/// `writes` with each sealed copy in place of the write it was made from.
fn with_copies<'b>(writes: &[Gather<'b>], copies: &'b [Option<AlignedBuf>]) -> Vec<Gather<'b>> {
    writes
        .iter()
        .zip(copies)
        .map(|((offset, parts), copy)| match copy {
            Some(buf) => {
                let len: usize = parts.iter().map(|p| p.len()).sum();
                (*offset, vec![&buf[..len]])
            }
            None => (*offset, parts.clone()),
        })
        .collect()
}

impl<I: BatchIo + ?Sized> BatchIo for SealOthers<'_, I> {
    fn write_all_while(
        &mut self,
        writes: &[Gather<'_>],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let copies = match self.seal_rest(writes) {
            Ok(c) => c,
            Err(e) => {
                meanwhile();
                return Err(e);
            }
        };
        self.inner
            .write_all_while(&with_copies(writes, &copies), meanwhile)
    }
}

impl<I: StartIo + ?Sized> StartIo for SealOthers<'_, I> {
    fn start_writes(&mut self, writes: &[Gather<'_>]) -> io::Result<()> {
        let copies = self.seal_rest(writes)?;
        self.inner.start_writes(&with_copies(writes, &copies))?;
        // The copies' bytes stay where they are when their owners move.
        self.kept.extend(copies.into_iter().flatten());
        Ok(())
    }
}

impl Store {
    /// [`commit_with`](Store::commit_with) for a batch whose data runs are `runs`: on an
    /// encrypted container they are sealed first (and their crcs set, see
    /// [`seal_for_store`]), and every other write of the commit is sealed on its way to
    /// `issue`'s I/O, which writes the container's bytes as they are. Returns, with what was
    /// committed, the buffers the writes point into: keep them until the writes are done.
    pub(in crate::store) fn commit_sealed(
        &self,
        mut entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
        drop_stale_moves: bool,
        issue: Issue<'_>,
    ) -> Result<(Committed, Vec<AlignedBuf>)> {
        let sealed = seal_for_store(&self.data, &mut entries, &runs)?;
        let (Some(sealed), Some(sealer)) = (sealed, self.data.sealer()) else {
            let committed = self.commit_with(entries, runs, retired, drop_stale_moves, issue)?;
            return Ok((committed, Vec::new()));
        };
        drop(runs);
        let gathers = sealed.gathers();
        let mut kept = Vec::new();
        let committed = match issue {
            Issue::Wait(io) => {
                let mut io = SealOthers::new(io, sealer, sealed.bytes());
                self.commit_with(
                    entries,
                    gathers,
                    retired,
                    drop_stale_moves,
                    Issue::Wait(&mut io),
                )?
            }
            Issue::Start(io) => {
                let mut io = SealOthers::new(io, sealer, sealed.bytes());
                let committed = self.commit_with(
                    entries,
                    gathers,
                    retired,
                    drop_stale_moves,
                    Issue::Start(&mut io),
                )?;
                kept = io.into_kept();
                committed
            }
        };
        kept.push(sealed.into_buf());
        Ok((committed, kept))
    }
}
