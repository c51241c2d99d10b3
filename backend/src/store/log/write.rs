//! The write path: one batch of guest requests becomes data appended to the writer's open
//! segment plus **one** journal record (one metadata transaction), issued together.
//!
//! A batch goes through four steps:
//! 1. *prepare*, under the writer's lock: plan the batch (sorted, coalesced, overlaps resolved
//!    in submission order), take blocks and VBAs, copy and checksum the data;
//! 2. *reserve*, under the journal lock (briefly): take the record's LSN and place, encode it,
//!    and list the batch's blocks as being written ([`Unwritten`](crate::store::map::unwritten));
//! 3. *write* the data runs and the record at once, without any lock, and while they are in
//!    flight *apply* the map changes, in LSN order, so that the maps always agree with what
//!    recovery would replay, whatever order the batches of different queues finish in;
//! 4. *finish* once the writes are done: the blocks read normally, and the batch is answered
//!    when every earlier record is written too (an answered batch never depends on a record
//!    that could still be lost).
//!
//! [`Store::start_batch`] stops after step 3 and hands back an [`InFlight`] batch: the caller
//! may answer the guest at once (a write-back cache: the writes are not durable before a
//! FLUSH either way) and calls [`Store::finish_batch`] when its writes are done. A FLUSH waits
//! for every record reserved before it to be written, and fails if any write failed.
//!
//! A checkpoint needs every reserved record written, so it waits for the batches in flight
//! (never for one that has not reserved yet); a batch that reserved never waits for one that
//! has not.

use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::error::{Result, StoreError};
use crate::store::io::{BatchIo, DeviceIo, Gather, StartIo};
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::batch::{self, Op};
use crate::store::log::journal::{self, Entry};
use crate::store::map::sut::SegKind;
use crate::store::stats::Counters;
use crate::store::{JournalState, State, Store};
use std::sync::MutexGuard;

/// Parts of one gathered data write at most (the kernel takes up to 1024 iovecs per write).
pub(in crate::store) const MAX_PARTS: usize = 256;

/// A journal record placed and encoded, not yet applied.
pub(in crate::store) struct Reserved {
    lsn: u64,
    pba: u64,
    record: AlignedBuf,
}

/// A batch whose writes were issued and whose map changes are applied, its writes maybe still
/// in flight. It owns the buffers the store wrote from (the record, copies of unaligned
/// blocks): keep it until the writes are done, then give it to [`Store::finish_batch`].
#[must_use = "a batch in flight must be finished"]
pub struct InFlight {
    lsn: Option<u64>,
    _record: Option<AlignedBuf>,
    _copies: AlignedBuf,
    /// The packed blocks of a compressed batch.
    _packed: Option<AlignedBuf>,
    /// An encrypted container's ciphertext of the batch.
    _sealed: Vec<AlignedBuf>,
}

#[cfg(test)]
impl InFlight {
    /// Whether the bytes at `ptr..ptr + len` lie in a buffer this batch owns.
    pub(crate) fn holds(&self, ptr: *const u8, len: usize) -> bool {
        let within = |b: &AlignedBuf| {
            let start = b.as_ptr() as usize;
            (ptr as usize) >= start && (ptr as usize) + len <= start + b.len()
        };
        within(&self._copies)
            || self._record.as_ref().is_some_and(within)
            || self._packed.as_ref().is_some_and(within)
            || self._sealed.iter().any(within)
    }
}

/// How [`Store::commit_with`] issues a batch's writes.
pub(in crate::store) enum Issue<'a> {
    /// Write and wait.
    Wait(&'a mut dyn BatchIo),
    /// Start the writes and return; the record's buffer is handed back.
    Start(&'a mut dyn StartIo),
}

/// What [`Store::commit_with`] did.
pub(in crate::store) struct Committed {
    /// Entries committed (0: nothing to commit).
    pub entries: u64,
    /// The record's LSN (0 when nothing was committed).
    pub lsn: u64,
    /// With [`Issue::Start`]: the record written and its buffer, to finish later.
    pub started: Option<(u64, AlignedBuf)>,
}

impl Store {
    /// Applies one batch of guest requests as one metadata transaction, writing through the
    /// store's device one write after another.
    pub fn write_batch(&self, writer: usize, ops: &[Op<'_>]) -> Result<()> {
        self.write_batch_with(writer, ops, &mut DeviceIo(self.data.raw()))
    }

    /// [`write_batch`](Self::write_batch), with the batch's device writes (data and journal
    /// record together) issued by `io`, which writes the container's bytes as they are (a
    /// queue's io_uring on [`device_fd`](Self::device_fd), or [`raw_device`](Self::raw_device)):
    /// on an encrypted container the store hands it ciphertext.
    pub fn write_batch_with(
        &self,
        writer: usize,
        ops: &[Op<'_>],
        io: &mut dyn BatchIo,
    ) -> Result<()> {
        self.batch(writer, ops, Issue::Wait(io)).map(|_| ())
    }

    /// Starts one batch of guest requests as one metadata transaction: its writes are issued
    /// through `io` and its map changes applied (reads of its blocks wait for the writes);
    /// returns without waiting for the writes. `io` writes the container's bytes as they are
    /// (see [`write_batch_with`](Self::write_batch_with)). The batch's data buffers (`ops`)
    /// must stay valid until they are done; then call [`finish_batch`](Self::finish_batch).
    ///
    /// The caller must not block on anything of the store's (another batch, a read, a flush)
    /// while it has a batch in flight: the store may be waiting for that batch to finish.
    pub fn start_batch(
        &self,
        writer: usize,
        ops: &[Op<'_>],
        io: &mut dyn StartIo,
    ) -> Result<InFlight> {
        self.batch(writer, ops, Issue::Start(io))
    }

    /// Ends a batch [`start_batch`](Self::start_batch) began, once its writes are done
    /// (`written` says how they went). Never waits. A failed write fails the store: every
    /// later request and FLUSH gets the error.
    pub fn finish_batch(&self, batch: InFlight, written: std::io::Result<()>) -> Result<()> {
        match batch.lsn {
            Some(lsn) => self.note_written(lsn, written),
            None => written.map_err(StoreError::Io),
        }
    }

    fn batch(&self, writer: usize, ops: &[Op<'_>], issue: Issue<'_>) -> Result<InFlight> {
        self.ensure_ok()?;
        let plan = batch::plan(ops, self.capacity(), &mut |lba, b| {
            self.read_into(lba * BLOCK, b)
        })?;
        let slot = &self.writers[writer % self.writers.len()];
        let mut w = self.lock(slot);
        let mut entries: Vec<Entry> = plan
            .unmap
            .iter()
            .map(|&(lba, count)| Entry::Unmap { lba, count })
            .collect();
        let blocks: Vec<(u64, &[u8])> = plan.data.iter().map(|(k, v)| (*k, &v[..])).collect();
        // Blocks merged here from partial writes (owned by the plan, which is gone when a
        // started batch's writes are still in flight) and blocks not block-aligned in memory
        // are copied once into an aligned buffer that lives as long as the batch; the others
        // are written straight from the caller's buffers.
        let unaligned: Vec<usize> = plan
            .data
            .values()
            .enumerate()
            .filter(|(_, v)| matches!(v, std::borrow::Cow::Owned(_)) || !is_aligned(v))
            .map(|(i, _)| i)
            .collect();
        let mut copies = AlignedBuf::scratch(unaligned.len());
        for (k, &i) in unaligned.iter().enumerate() {
            copies.block_mut(k).copy_from_slice(blocks[i].1);
        }
        let mut sources: Vec<&[u8]> = blocks.iter().map(|(_, d)| *d).collect();
        for (k, &i) in unaligned.iter().enumerate() {
            sources[i] = copies.block(k);
        }
        let mut runs: Vec<Gather<'_>> = Vec::new();
        let packed = self
            .codec
            .map(|codec| crate::store::compress::pack_batch(codec, &sources, &self.misses));
        let written = if let Some(packed) = &packed {
            let lbas: Vec<u64> = blocks.iter().map(|(lba, _)| *lba).collect();
            self.place_packed(&mut w, &lbas, &sources, packed, &mut entries, &mut runs)?
        } else {
            let mut i = 0;
            while i < blocks.len() {
                let (pba, n) = self.take_blocks(&mut w, blocks.len() - i, false)?;
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
                    let lba = blocks[i + j].0;
                    let blk = sources[i + j];
                    let vba = vba0 + j as u64;
                    entries.push(Entry::Map {
                        lba,
                        vba,
                        pba: pba + j as u64,
                        crc: block_crc(vba, blk),
                    });
                }
                for (k, chunk) in sources[i..i + n].chunks(MAX_PARTS).enumerate() {
                    runs.push(((pba + (k * MAX_PARTS) as u64) * BLOCK, chunk.to_vec()));
                }
                i += n;
            }
            blocks.len() as u64
        };
        let data_bytes = BLOCK * written;
        let data_writes = runs.len() as u64;
        // An encrypted container's data is sealed here, once, and checksummed as stored.
        let (committed, sealed) =
            self.commit_sealed(entries, runs, &mut w.retired, false, issue)?;
        drop(w);
        Counters::add(&self.stats.data_writes, data_writes);
        Counters::add(&self.stats.data_write_bytes, data_bytes);
        Counters::add(&self.stats.batches, 1);
        Counters::add(&self.stats.guest_writes, ops.len() as u64);
        Counters::add(&self.stats.guest_write_bytes, plan.guest_bytes);
        self.note_guest_io();
        let (lsn, record) = committed.started.unzip();
        Ok(InFlight {
            lsn,
            _record: record,
            _copies: copies,
            _packed: packed.map(|p| p.buf),
            _sealed: sealed,
        })
    }

    /// Takes up to `want` contiguous blocks from writer `w`, starting a new segment when
    /// its current one is full and making room (checkpoint, cleaner) when none is free.
    pub(in crate::store) fn take_blocks(
        &self,
        w: &mut SegmentWriter,
        want: usize,
        use_reserve: bool,
    ) -> Result<(u64, usize)> {
        let mut attempts = 0;
        let mut waiting = None;
        let mut short = None;
        loop {
            if let Some(r) = w.take(want) {
                if let Some(t0) = short {
                    Counters::add_since(&self.stats.segment_wait_us, t0);
                }
                return Ok(r);
            }
            let seg = self
                .write_lock(&self.state)
                .sut
                .grab(SegKind::Data, use_reserve);
            if let Some(seg) = seg {
                w.start(seg);
                if !use_reserve {
                    self.note_space_found();
                }
                continue;
            }
            if !use_reserve && short.is_none() {
                Counters::add(&self.stats.segment_waits, 1);
                short = Some(std::time::Instant::now());
            }
            // A container that may grow does, rather than move data that is mostly live.
            if !use_reserve && self.grow_if_short(attempts > 0) {
                continue;
            }
            attempts += 1;
            let stuck = attempts > 64 || !self.make_room(use_reserve)?;
            // Out of space: a container that may grow does whatever cleaning would gain, else a
            // guest write waits a bounded time for the cleaner or a snapshot delete, looking
            // again each time it may have come back.
            if stuck
                && !use_reserve
                && (self.grow_if_short(true) || self.wait_for_space(&mut waiting))
            {
                attempts = 0;
                continue;
            }
            if stuck {
                let st = self.read_lock(&self.state);
                let mut hist = [0u32; 11];
                let mut meta = 0;
                let mut open = 0;
                for seg in self.geo.first_data_segment()..self.segments() {
                    match st.sut.kind(seg) {
                        SegKind::Data if st.sut.is_open(seg) => open += 1,
                        SegKind::Data => {
                            hist[(st.sut.live(seg) as u64 * 10 / self.geo.seg_blocks) as usize] += 1
                        }
                        SegKind::Meta => meta += 1,
                        SegKind::Free => {}
                    }
                }
                log::debug!(
                    "no space after {attempts} attempts: {} free, {} pending, cleaner: {}, data segments by tenths live {hist:?}, {open} open, {meta} meta",
                    st.sut.free_count(),
                    st.sut.pending_count(),
                    use_reserve
                );
                return Err(StoreError::NoSpace);
            }
        }
    }

    /// Frees segments for a writer that found none; false when nothing more can be done.
    /// Cleaning gains less than a segment per victim, so several are cleaned before the
    /// one checkpoint that releases them all.
    fn make_room(&self, for_cleaner: bool) -> Result<bool> {
        let pending = self.read_lock(&self.state).sut.pending_count();
        if pending > 0 {
            // Releases them (those still pinned by a read stay pending; the caller retries).
            self.checkpoint()?;
            return Ok(true);
        }
        // Superseded tree nodes scattered over metadata segments: cheap to gather.
        if self.meta_sparse() && self.clean_meta()? > 0 {
            return Ok(true);
        }
        if for_cleaner {
            return Ok(false);
        }
        // A deleted snapshot's blocks are cheaper to get back than live ones to move.
        if self.reclaim_pending() {
            self.reclaim_all()?;
            self.checkpoint()?;
            return Ok(true);
        }
        let mut cleaned = 0;
        while cleaned < 8 && self.clean_step()?.is_some() {
            cleaned += 1;
        }
        Counters::add(&self.stats.writer_cleaned, cleaned);
        if cleaned > 0 {
            self.checkpoint()?;
        }
        Ok(cleaned > 0)
    }

    /// Writes `runs` (byte offset, parts) and one journal record holding `entries` as `issue`
    /// says, applying the record to the maps (in LSN order) while the writes are in flight.
    /// With `drop_stale_moves`, cleaner moves whose VBA left its old block are removed first.
    /// Segments in `retired` close once every record up to this one is written.
    pub(in crate::store) fn commit_with(
        &self,
        mut entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
        drop_stale_moves: bool,
        issue: Issue<'_>,
    ) -> Result<Committed> {
        let j = self.lock(&self.journal);
        self.ensure_ok()?;
        if drop_stale_moves {
            let st = self.read_lock(&self.state);
            entries.retain(|e| match *e {
                Entry::Move { vba, old_pba, .. } => st
                    .maps
                    .vba
                    .get(st.maps.vba_root, vba)
                    .is_some_and(|v| v.pba == old_pba),
                _ => true,
            });
        }
        self.commit_locked(j, entries, runs, retired, issue)
    }

    /// [`commit_with`](Self::commit_with) once the caller holds the journal lock and has
    /// settled `entries` (the import's write-if-absent filters them under it).
    pub(in crate::store) fn commit_locked(
        &self,
        mut j: MutexGuard<'_, JournalState>,
        mut entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
        mut issue: Issue<'_>,
    ) -> Result<Committed> {
        if entries.is_empty() {
            // The segments were filled by records already reserved.
            let last = j.cursor.next_lsn.saturating_sub(1);
            self.retire(&mut j, last, retired);
            return Ok(Committed {
                entries: 0,
                lsn: 0,
                started: None,
            });
        }
        // A flush whose mark is still due rides along (see flush.rs): no write of its own.
        let carried = self
            .mark_to_carry(&j)
            .filter(|_| !entries.iter().any(|e| matches!(e, Entry::Flushed { .. })));
        if let Some(lsn) = carried {
            entries.push(Entry::Flushed { lsn });
        }
        // A checkpoint the record may need first writes through the store's own device when
        // the batch's writes are only started.
        let mut device_io = DeviceIo(self.dev.as_ref());
        let (mut j, reserved) = match issue {
            Issue::Wait(ref mut io) => self.reserve(j, &entries, &mut **io)?,
            Issue::Start(_) => self.reserve(j, &entries, &mut device_io)?,
        };
        let lsn = reserved.lsn;
        if let Some(through) = carried {
            j.marked_lsn = j.marked_lsn.max(through);
        }
        self.unwritten.add(
            lsn,
            runs.iter()
                .map(|(at, parts)| (at / BLOCK, run_blocks(parts))),
        );
        self.retire(&mut j, lsn, retired);
        drop(j);
        // The runs' borrows outlive this call; the record's is this call's: one shorter list.
        let mut writes: Vec<Gather<'_>> = runs;
        writes.push((reserved.pba * BLOCK, vec![&reserved.record[..]]));
        Counters::add(&self.stats.journal_writes, 1);
        Counters::add(
            &self.stats.journal_write_bytes,
            reserved.record.len() as u64,
        );
        let count = entries.len() as u64 - u64::from(carried.is_some());
        match issue {
            Issue::Wait(io) => {
                let written =
                    io.write_all_while(&writes, &mut || self.apply_in_order(lsn, &entries));
                self.finish_commit(lsn, written)?;
                Ok(Committed {
                    entries: count,
                    lsn,
                    started: None,
                })
            }
            Issue::Start(io) => {
                let started = io.start_writes(&writes);
                // Every reserved record is applied, whatever became of its writes: later
                // records wait for it.
                self.apply_in_order(lsn, &entries);
                drop(writes);
                if let Err(e) = started {
                    // Fails the store and hands back the error.
                    self.note_written(lsn, Err(e))?;
                }
                Ok(Committed {
                    entries: count,
                    lsn,
                    started: Some((lsn, reserved.record)),
                })
            }
        }
    }

    /// Lists `segments` (filled by a writer) to close once record `lsn` and every record
    /// before it are written: only then can the cleaner read them whole.
    fn retire(&self, j: &mut JournalState, lsn: u64, segments: &mut Vec<u64>) {
        j.retiring.extend(segments.drain(..).map(|seg| (lsn, seg)));
        self.close_retired(j);
    }

    fn close_retired(&self, j: &mut JournalState) {
        if !j.retiring.iter().any(|&(lsn, _)| lsn <= j.written_lsn) {
            return;
        }
        let mut st = self.write_lock(&self.state);
        let through = j.written_lsn;
        j.retiring.retain(|&(lsn, seg)| {
            let done = lsn <= through;
            if done {
                st.sut.close(seg);
            }
            !done
        });
    }

    /// Places and encodes the next record in the journal ring (see `live_checkpoint` for
    /// the checkpoints a full-enough ring asks for).
    fn reserve<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
        entries: &[Entry],
        io: &mut dyn BatchIo,
    ) -> Result<(MutexGuard<'a, JournalState>, Reserved)> {
        let blocks = journal::record_blocks(entries) as u64;
        let journal_blocks = self.geo.journal_blocks();
        if blocks > journal_blocks / 2 {
            return Err(StoreError::Invalid(format!(
                "a batch of {} map changes does not fit the journal",
                entries.len()
            )));
        }
        let threshold = journal_blocks * self.opts.checkpoint_percent.clamp(1, 100) as u64 / 100;
        if j.fresh_chain {
            j = self.wait_idle(j);
            if j.fresh_chain {
                self.checkpoint_with(&mut j, io)?;
            }
        }
        let (mut j, (at, added)) = self.place_record(j, blocks, threshold)?;
        let pba = self.geo.journal_start() + at;
        let lsn = j.cursor.next_lsn;
        let mut record = AlignedBuf::blocks(blocks as usize);
        let crc = journal::encode(pba, lsn, j.cursor.prev_crc, entries, &mut record)
            .ok_or_else(|| StoreError::Invalid("journal record does not encode".into()))?;
        j.cursor.pos = at + blocks;
        j.ring.used += added;
        j.cursor.next_lsn += 1;
        j.cursor.prev_crc = crc;
        j.cursor.records += 1;
        j.in_flight += 1;
        Ok((j, Reserved { lsn, pba, record }))
    }

    /// Waits (releasing the journal lock meanwhile) until every reserved record is applied, or
    /// a lock is found poisoned (the batch that panicked never finishes).
    pub(in crate::store) fn wait_quiet<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
    ) -> MutexGuard<'a, JournalState> {
        while j.in_flight > 0 && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        j
    }

    /// Applies record `lsn` to the maps once every earlier one is applied (its writes may
    /// still be in flight: readers of its blocks wait for them, see `unwritten`).
    fn apply_in_order(&self, lsn: u64, entries: &[Entry]) {
        let mut j = self.lock(&self.journal);
        while j.applied_lsn + 1 != lsn && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        if self.ensure_ok().is_ok() {
            let mut st = self.write_lock(&self.state);
            let State { maps, sut, .. } = &mut *st;
            super::apply::apply(maps, entries, sut);
        }
        // Past a poisoned lock the batches before may never come: stop waiting for them.
        j.applied_lsn = j.applied_lsn.max(lsn);
        drop(j);
        self.journal_cv.notify_all();
    }

    /// Record `lsn`'s writes have finished: its blocks read normally, and it returns once
    /// every earlier record is written too. A failed write fails the store: the record may
    /// or may not be on the device, recovery decides.
    fn finish_commit(&self, lsn: u64, written: std::io::Result<()>) -> Result<()> {
        let noted = self.note_written(lsn, written);
        let mut j = self.lock(&self.journal);
        while j.written_lsn < lsn && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        noted
    }

    /// Records that record `lsn`'s writes finished (advancing the written frontier), without
    /// waiting for earlier records. A failed write fails the store.
    fn note_written(&self, lsn: u64, written: std::io::Result<()>) -> Result<()> {
        self.unwritten.remove(lsn);
        let mut j = self.lock(&self.journal);
        if lsn == j.written_lsn + 1 {
            j.written_lsn = lsn;
            loop {
                let next = j.written_lsn + 1;
                if !j.written_ahead.remove(&next) {
                    break;
                }
                j.written_lsn = next;
            }
            self.close_retired(&mut j);
        } else {
            j.written_ahead.insert(lsn);
        }
        j.in_flight -= 1;
        if let Err(e) = &written {
            let e = StoreError::Io(std::io::Error::new(e.kind(), e.to_string()));
            self.fail(&e);
        }
        drop(j);
        self.journal_cv.notify_all();
        match written {
            Err(e) => Err(StoreError::Io(e)),
            Ok(()) => self.ensure_ok(),
        }
    }

    /// Waits until every record reserved so far is written (what a FLUSH covers).
    /// Waits until every record reserved so far is written; returns the newest one's LSN.
    pub(in crate::store) fn wait_written(&self) -> u64 {
        let mut j = self.lock(&self.journal);
        let target = j.cursor.next_lsn.saturating_sub(1);
        while j.written_lsn < target && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        target
    }
}

/// Whether `bytes` may go to an O_DIRECT write as they are.
fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(BLOCK_SIZE) && bytes.len().is_multiple_of(BLOCK_SIZE)
}

/// Blocks a gather list covers.
fn run_blocks(parts: &[&[u8]]) -> u64 {
    parts.iter().map(|p| p.len() as u64).sum::<u64>() / BLOCK
}
