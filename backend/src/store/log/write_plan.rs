//! A guest batch as a plan that does no I/O, shaped like the read path.
//!
//! [`Store::plan_batch`] prepares the batch and reserves its journal record (steps 1 and 2 of
//! `write.rs`) and names every device write it needs ([`WritePlan::writes`]: the data runs and
//! the record). The caller issues them however it likes: one after another through a device,
//! all at once on a ring of its own, late, in any order. Then [`Store::apply_plan`] applies the map
//! changes in LSN order while the writes are still in flight, releases the writer, and hands
//! back the [`InFlight`] batch that owns the buffers written from, for
//! [`Store::finish_batch`] (or [`Store::finish_batch_in_order`]) once the writes are done.

use crate::store::Store;
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::error::{Result, StoreError};
use crate::store::io::Gather;
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::batch::{self, Op};
use crate::store::log::journal::{self, Entry};
use crate::store::log::write::{MAX_PARTS, Reserved, Waits};
use crate::store::seal::{SealedRuns, seal_for_store};
use crate::store::stats::Counters;
use std::borrow::Cow;
use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, TryLockError};

/// Where one block of a data write comes from.
#[derive(Debug, Clone, Copy)]
pub(in crate::store) enum Part<'a> {
    /// The caller's own (block-aligned) buffer.
    Guest(&'a [u8]),
    /// Block `n` of the plan's aligned copies.
    Copy(usize),
    /// Block `n` of the plan's packed (compressed) blocks.
    Packed(usize),
}

/// One data write: its blocks, in order, written from byte `offset`.
pub(in crate::store) type Run<'a> = (u64, Vec<Part<'a>>);

/// A batch prepared and its record reserved, its writes not issued yet. Every write it names
/// ([`writes`](Self::writes)) must be issued, then the plan given to [`Store::apply_plan`].
/// It holds its writer until then. Dropped unapplied, the batch fails the store (its record
/// was reserved and will never be written).
#[must_use = "a planned batch must be applied"]
pub struct WritePlan<'a> {
    store: &'a Store,
    /// Held until the maps are applied: it keeps the batch's VBAs in order with its record.
    writer: Option<MutexGuard<'a, SegmentWriter>>,
    /// The record's map changes.
    entries: Vec<Entry>,
    /// The record's place, in blocks.
    record_pba: u64,
    runs: Vec<Run<'a>>,
    /// The buffers written from, handed on when the plan is applied.
    batch: InFlight,
    applied: Cell<bool>,
}

/// A batch whose map changes are applied, its writes maybe still in flight. It owns the
/// buffers the store's writes read (the record, copies of unaligned blocks, packed blocks):
/// keep it until the writes are done, then give it to [`Store::finish_batch`].
#[derive(Default)]
#[must_use = "a batch in flight must be finished"]
pub struct InFlight {
    pub(in crate::store) lsn: Option<u64>,
    record: Option<AlignedBuf>,
    copies: Option<AlignedBuf>,
    packed: Option<AlignedBuf>,
    /// An encrypted container's data runs, sealed: what is written in their place.
    sealed: Option<SealedRuns>,
}

#[cfg(test)]
impl InFlight {
    /// Whether the bytes at `ptr..ptr + len` lie in a buffer this batch owns.
    pub(crate) fn holds(&self, ptr: *const u8, len: usize) -> bool {
        let within = |b: &AlignedBuf| {
            let start = b.as_ptr() as usize;
            (ptr as usize) >= start && (ptr as usize) + len <= start + b.len()
        };
        [&self.record, &self.copies, &self.packed]
            .into_iter()
            .flatten()
            .any(within)
            || self.sealed.as_ref().is_some_and(|s| {
                let bytes = s.bytes();
                let start = bytes.as_ptr() as usize;
                (ptr as usize) >= start && (ptr as usize) + len <= start + bytes.len()
            })
    }
}

impl WritePlan<'_> {
    /// Every device write of the batch: its data runs, then its journal record. They are
    /// independent (the record carries the data's checksums) and may go in any order.
    pub fn writes(&self) -> Vec<Gather<'_>> {
        let b = &self.batch;
        let mut writes = match &b.sealed {
            Some(sealed) => sealed.gathers(),
            None => gathers(&self.runs, b.copies.as_ref(), b.packed.as_ref()),
        };
        if let Some(record) = &b.record {
            writes.push((self.record_pba * BLOCK, vec![&record[..]]));
        }
        writes
    }

    /// Applies the record to the maps once every earlier record is (at most once).
    pub(in crate::store) fn apply_maps(&self) {
        if self.applied.replace(true) {
            return;
        }
        if let Some(lsn) = self.batch.lsn {
            self.store.apply_in_order(lsn, &self.entries);
        }
    }
}

impl Drop for WritePlan<'_> {
    fn drop(&mut self) {
        if self.applied.get() {
            return;
        }
        // Later records wait for this one to apply; its place in the journal never gets it.
        self.apply_maps();
        if let Some(lsn) = self.batch.lsn {
            let never = std::io::Error::other("a batch was dropped before its writes were issued");
            let _ = self.store.note_written(lsn, Err(never));
        }
    }
}

impl Store {
    /// Prepares one batch of guest requests as one metadata transaction (sorted, coalesced,
    /// overlaps resolved in submission order; blocks, VBAs and checksums taken) and reserves
    /// its journal record. No device write is issued: see [`WritePlan`].
    ///
    /// The caller must not block on anything of the store's (another batch, a read, a flush)
    /// until it has applied the plan and while its batch is in flight: the store may be
    /// waiting for that batch. For the same reason it must have no batch of its own in flight
    /// when it calls this (planning may wait for every record reserved): see
    /// [`try_plan_batch`](Self::try_plan_batch).
    pub fn plan_batch<'a>(&'a self, writer: usize, ops: &[Op<'a>]) -> Result<WritePlan<'a>> {
        self.ensure_ok()?;
        self.pace_guest(ops);
        let plan = batch::plan(ops, self.capacity(), &mut |lba, b| {
            self.read_into(lba * BLOCK, b)
        })?;
        let w = self.lock(self.writer_slot(writer));
        self.prepare((writer, w), plan, ops.len(), Waits::Allowed)
    }

    /// [`plan_batch`](Self::plan_batch) for a caller with batches of its own in flight: it
    /// never waits for the store, which may be waiting for them. `None` (and nothing reserved,
    /// the store not failed) where it would wait:
    /// - another thread holds the writer (it may be waiting, e.g. a snapshot for the records
    ///   in flight);
    /// - a request covers part of a block: the block is read first, and a block being written
    ///   is waited for (it may be one of the caller's);
    /// - the writer's open segment and the segments free for guest data cannot hold the batch
    ///   (a writer then cleans, releases, grows or waits for space);
    /// - the record cannot be reserved at once: the journal needs a checkpoint first, is
    ///   frozen for one, is full, or is past its threshold with no background thread to take
    ///   the checkpoint.
    ///
    /// The space and the journal are checked before anything is taken. Another writer may
    /// still take the last free segment or journal room in between: the plan is then refused
    /// with blocks and VBAs already taken. They are left as dead space: no record names them,
    /// so they hold nothing live (the cleaner counts them as garbage when it empties their
    /// segment) and recovery never sees them; VBAs are never reused, so the skipped ones stay
    /// unused. The segments the writer filled meanwhile close with its next record.
    ///
    /// The caller then finishes its batches in flight and plans with `plan_batch`.
    pub fn try_plan_batch<'a>(
        &'a self,
        writer: usize,
        ops: &[Op<'a>],
    ) -> Result<Option<WritePlan<'a>>> {
        self.ensure_ok()?;
        // Pacing only sleeps: it waits for nothing of the store's, so the batches in flight
        // go on meanwhile.
        self.pace_guest(ops);
        // Whole blocks only: nothing is read (a read would refuse the batch anyway).
        let plan = match ops.iter().all(Op::whole_blocks) {
            true => batch::plan(ops, self.capacity(), &mut |_, _| Err(StoreError::WouldWait)),
            false => Err(StoreError::WouldWait),
        };
        let plan = match plan {
            Err(StoreError::WouldWait) => {
                Counters::add(&self.stats.plans_refused, 1);
                return Ok(None);
            }
            other => other?,
        };
        let refused = || {
            Counters::add(&self.stats.plans_refused, 1);
            Ok(None)
        };
        let w = match self.writer_slot(writer).try_lock() {
            Ok(w) => w,
            Err(TryLockError::WouldBlock) => return refused(),
            Err(TryLockError::Poisoned(e)) => self.unpoison(Err(e)),
        };
        // Packing takes at most a block per block; the record's size is known from the plan.
        let record = journal::batch_record_blocks(plan.data.len(), plan.unmap.len()) as u64;
        if !self.has_room_now(&w, plan.data.len() as u64)
            || !self.reserves_now(&self.lock(&self.journal), record)
        {
            return refused();
        }
        match self.prepare((writer, w), plan, ops.len(), Waits::Refused) {
            Ok(p) => {
                Counters::add(&self.stats.plans_pipelined, 1);
                Ok(Some(p))
            }
            Err(StoreError::WouldWait) => {
                Counters::add(&self.stats.plans_refused_late, 1);
                refused()
            }
            Err(e) => Err(e),
        }
    }

    fn writer_slot(&self, writer: usize) -> &Mutex<SegmentWriter> {
        &self.writers[writer % self.writers.len()]
    }

    /// Takes blocks and VBAs for the batch `plan` (of `requests` guest requests) with writer
    /// `w` (number `writer`, whose compression misses it counts), checksums (and seals) its data and reserves its record, waiting for the store only
    /// as `waits` allows.
    pub(in crate::store) fn prepare<'a>(
        &'a self,
        (writer, mut w): (usize, MutexGuard<'a, SegmentWriter>),
        plan: batch::Plan<'a>,
        requests: usize,
        waits: Waits,
    ) -> Result<WritePlan<'a>> {
        let mut entries: Vec<Entry> = plan
            .unmap
            .iter()
            .map(|&(lba, count)| Entry::Unmap { lba, count })
            .collect();
        let lbas: Vec<u64> = plan.data.keys().copied().collect();
        // Blocks merged here from partial writes (owned by the batch plan, gone when this
        // returns) and blocks not block-aligned in memory are copied once into an aligned
        // buffer the plan keeps; the others are written straight from the caller's buffers.
        let mut copied = 0;
        let parts: Vec<Part<'a>> = (plan.data.values())
            .map(|v| match v {
                Cow::Borrowed(b) if is_aligned(b) => Part::Guest(b),
                _ => {
                    copied += 1;
                    Part::Copy(copied - 1)
                }
            })
            .collect();
        let copies = (copied > 0).then(|| {
            let mut copies = AlignedBuf::scratch(copied);
            for (v, part) in plan.data.values().zip(&parts) {
                if let Part::Copy(n) = part {
                    copies.block_mut(*n).copy_from_slice(v);
                }
            }
            copies
        });
        let sources: Vec<&[u8]> = (parts.iter())
            .map(|p| match (p, &copies) {
                (Part::Copy(n), Some(c)) => c.block(*n),
                (Part::Guest(b), _) => b,
                _ => &[][..],
            })
            .collect();
        let mut runs: Vec<Run<'a>> = Vec::new();
        let packed = self.codec.map(|codec| self.pack(writer, codec, &sources));
        // A batch where nothing shrank is placed as without compression.
        let placed = (&lbas[..], &sources[..], &parts[..]);
        let written = match packed.as_ref().filter(|p| p.any_packed()) {
            Some(packed) => {
                self.place_packed(&mut w, placed, packed, &mut entries, &mut runs, waits)?
            }
            None => self.place_raw(&mut w, placed, &mut entries, &mut runs, waits)?,
        };
        let packed = packed.filter(|p| p.any_packed()).map(|p| p.buf);
        // An encrypted container's data is sealed here, once, and checksummed as stored.
        let sealed = {
            let plain = gathers(&runs, copies.as_ref(), packed.as_ref());
            seal_for_store(&self.data, &mut entries, &plain)?
        };
        let extents = (runs.iter()).map(|(at, parts)| (at / BLOCK, parts.len() as u64));
        let j = self.lock(&self.journal);
        self.ensure_ok()?;
        let reserved = self.reserve_record(j, entries, extents, &mut w.retired, waits)?;
        Counters::add(&self.stats.data_writes, runs.len() as u64);
        Counters::add(&self.stats.data_write_bytes, BLOCK * written);
        Counters::add(&self.stats.batches, 1);
        Counters::add(&self.stats.guest_writes, requests as u64);
        Counters::add(&self.stats.guest_write_bytes, plan.guest_bytes);
        self.note_guest_io();
        let (lsn, record_pba, record, entries) = match reserved {
            Some(Reserved {
                lsn,
                pba,
                record,
                entries,
                ..
            }) => (Some(lsn), pba, Some(record), entries),
            None => (None, 0, None, Vec::new()),
        };
        let mut plan = WritePlan {
            store: self,
            writer: Some(w),
            entries,
            record_pba,
            runs,
            batch: InFlight {
                lsn,
                record,
                copies,
                packed,
                sealed,
            },
            applied: Cell::new(false),
        };
        // A record that cannot be sealed is never written: the plan, dropped, fails the store.
        if let Some(record) = &mut plan.batch.record {
            self.seal_record(record_pba, record)?;
        }
        Ok(plan)
    }

    /// A data block's checksum as its batch is prepared: over `bytes` as they are stored, or 0
    /// where checksums cover the ciphertext (sealing the batch sets it, see `seal_for_store`).
    pub(in crate::store) fn prepared_crc(&self, vba: u64, bytes: &[u8]) -> u32 {
        if self.data.crc_over_ciphertext() {
            0
        } else {
            block_crc(vba, bytes)
        }
    }

    /// Takes blocks and VBAs for a batch's blocks stored as they are (`lbas`, their bytes
    /// `sources` and where each is written from, `parts`), adding their Map entries to
    /// `entries` and their writes to `runs`: [`place_packed`](Self::place_packed)'s
    /// counterpart for blocks not compressed (taking blocks as `waits` allows). Returns the
    /// physical blocks written.
    pub(in crate::store) fn place_raw<'a>(
        &self,
        w: &mut SegmentWriter,
        (lbas, sources, parts): (&[u64], &[&[u8]], &[Part<'a>]),
        entries: &mut Vec<Entry>,
        runs: &mut Vec<Run<'a>>,
        waits: Waits,
    ) -> Result<u64> {
        let mut i = 0;
        while i < lbas.len() {
            let (pba, n) = self.take_guest_blocks(w, lbas.len() - i, waits)?;
            let vba0 = {
                // VBAs are unique, never reused; the writer lock, held until the batch is
                // applied, keeps them ordered with the commit (snapshot creation takes every
                // writer lock).
                let mut st = self.write_lock(&self.state);
                let v = st.maps.next_vba;
                st.maps.next_vba += n as u64;
                v
            };
            for j in 0..n {
                let vba = vba0 + j as u64;
                entries.push(Entry::Map {
                    lba: lbas[i + j],
                    vba,
                    pba: pba + j as u64,
                    crc: self.prepared_crc(vba, sources[i + j]),
                });
            }
            for (k, chunk) in parts[i..i + n].chunks(MAX_PARTS).enumerate() {
                runs.push(((pba + (k * MAX_PARTS) as u64) * BLOCK, chunk.to_vec()));
            }
            i += n;
        }
        Ok(lbas.len() as u64)
    }

    /// Applies a planned batch's map changes, in LSN order, once its writes are issued (they
    /// may still be in flight: reads of its blocks wait for them) and releases its writer.
    /// Returns the batch to finish once its writes are done.
    pub fn apply_plan(&self, mut plan: WritePlan<'_>) -> InFlight {
        plan.apply_maps();
        plan.writer = None;
        std::mem::take(&mut plan.batch)
    }
}

/// The device writes of `runs`, whose parts lie in the caller's buffers, in `copies` and in
/// `packed`.
pub(in crate::store) fn gathers<'b>(
    runs: &'b [Run<'_>],
    copies: Option<&'b AlignedBuf>,
    packed: Option<&'b AlignedBuf>,
) -> Vec<Gather<'b>> {
    let block = |buf: Option<&'b AlignedBuf>, n: usize| buf.map_or(&[][..], |b| b.block(n));
    let bytes = |part: &Part<'b>| match *part {
        Part::Guest(b) => b,
        Part::Copy(n) => block(copies, n),
        Part::Packed(n) => block(packed, n),
    };
    (runs.iter())
        .map(|(offset, parts)| (*offset, parts.iter().map(bytes).collect()))
        .collect()
}

/// Whether `bytes` may go to an O_DIRECT write as they are.
fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(BLOCK_SIZE) && bytes.len().is_multiple_of(BLOCK_SIZE)
}

impl Store {
    /// Delays a guest batch of `ops` while free space is low ([`guest_delay`](Self::guest_delay)).
    fn pace_guest(&self, ops: &[Op<'_>]) {
        let delay = self.guest_delay(ops);
        if !delay.is_zero() {
            std::thread::sleep(delay);
            Counters::add(&self.stats.paced_batches, 1);
            Counters::add(&self.stats.paced_us, delay.as_micros() as u64);
        }
    }

    /// How long a guest batch of `ops` is delayed before it is planned: free space is low
    /// and the cleaner sets the pace ([`guest_pace`](super::guest_pace)).
    fn guest_delay(&self, ops: &[Op<'_>]) -> std::time::Duration {
        if !self.guest_pace.is_on() {
            return std::time::Duration::ZERO;
        }
        let blocks: u64 = ops
            .iter()
            .map(|op| match op {
                Op::Write { data, .. } => (data.len() as u64).div_ceil(BLOCK),
                _ => 0,
            })
            .sum();
        let free = {
            let st = self.read_lock(&self.state);
            st.sut.free_count() + st.sut.pending_count()
        };
        self.guest_pace.delay(free, blocks)
    }
}
