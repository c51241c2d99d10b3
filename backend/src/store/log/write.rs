//! The write path: one batch of guest requests becomes data appended to the writer's open
//! segment plus **one** journal record (one metadata transaction), issued together.
//!
//! A batch goes through four steps:
//! 1. *prepare*, under the writer's lock: plan the batch (sorted, coalesced, overlaps resolved
//!    in submission order), take blocks and VBAs, copy and checksum the data (on an encrypted
//!    container: seal it once into the batch's own buffer and checksum the ciphertext);
//! 2. *reserve*, under the journal lock (briefly): take the record's LSN and place, encode it,
//!    and list the batch's blocks as being written ([`Unwritten`](crate::store::map::unwritten));
//! 3. *write* the data runs and the record at once, without any lock, and while they are in
//!    flight *apply* the map changes, in LSN order, so that the maps always agree with what
//!    recovery would replay, whatever order the batches of different queues finish in;
//! 4. *finish* once the writes are done: the blocks read normally, and the batch is answered
//!    when every earlier record is written too (an answered batch never depends on a record
//!    that could still be lost).
//!
//! The store issues no device write of a guest batch itself: steps 1 and 2 make a
//! [`WritePlan`](super::write_plan::WritePlan) that names its writes, the caller issues them
//! (a keel queue on its own ring, or [`Store::write_batch`] through the store's device) and
//! has the plan applied ([`Store::apply_plan`]), which hands back an [`InFlight`] batch. The
//! caller may answer the guest at once (a write-back cache: the writes are not durable before
//! a FLUSH either way) and calls [`Store::finish_batch`] when its writes are done, or waits
//! for every earlier record too ([`Store::finish_batch_in_order`]). A FLUSH waits for every
//! record reserved before it to be written, and fails if any write failed. The store's own
//! records (flush marks, the cleaner's moves, snapshots, imports) go the same way through its
//! device ([`Store::commit_with`]).
//!
//! A checkpoint needs every reserved record written, so it waits for the batches in flight
//! (never for one that has not reserved yet); a batch that reserved never waits for one that
//! has not.
//!
//! So does much else (a segment grab that must clean or release, a release by a mark, a
//! snapshot, a read of a block being written), and a batch in flight is finished only by the
//! caller that started it. A caller with a batch of its own in flight (a keel queue keeps up
//! to two) therefore plans the next with [`Store::try_plan_batch`], which never waits: it
//! refuses, before the record is reserved and without failing the store, wherever
//! [`Store::plan_batch`] would wait (see [`Waits`]). The caller then finishes its batches and
//! plans with `plan_batch`. Records are still applied in LSN order and answered batches are
//! finished in the order they were started, so the guarantees above hold with any number of
//! batches in flight.

use crate::store::buf::AlignedBuf;
use crate::store::error::{Result, StoreError};
use crate::store::io::{BatchIo, DeviceIo, Gather};
use crate::store::layout::BLOCK;
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::batch::Op;
use crate::store::log::journal::{self, Entry};
use crate::store::log::pace;
use crate::store::log::spare::spare_segments;
use crate::store::log::write_plan::InFlight;
use crate::store::map::sut::SegKind;
use crate::store::seal::seal_for_store;
use crate::store::stats::Counters;
use crate::store::{JournalState, State, Store};
use std::sync::MutexGuard;

/// Parts of one gathered data write at most (the kernel takes up to 1024 iovecs per write).
pub(in crate::store) const MAX_PARTS: usize = 256;

/// Whether preparing a batch may wait for the store: for space (cleaning, releasing,
/// growing), for a checkpoint, or for records in flight. A caller with a batch of its own in
/// flight must not ([`Store::try_plan_batch`]): the store may be waiting for that batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::store) enum Waits {
    Allowed,
    /// Refuse with [`StoreError::WouldWait`] instead, before the record is reserved.
    Refused,
}

/// A journal record placed and encoded, not yet applied.
pub(in crate::store) struct Reserved {
    pub lsn: u64,
    /// Where it goes, in blocks.
    pub pba: u64,
    pub record: AlignedBuf,
    /// Its entries, to apply.
    pub entries: Vec<Entry>,
    /// Entries committed, not counting a flush mark that rode along.
    pub count: u64,
}

/// What [`Store::commit_with`] did.
pub(in crate::store) struct Committed {
    /// Entries committed (0: nothing to commit).
    pub entries: u64,
    /// The record's LSN (0 when nothing was committed).
    pub lsn: u64,
    /// The entries of the record as applied (stale moves dropped, a flush mark that rode
    /// along included).
    pub applied: Vec<Entry>,
}

impl Store {
    /// Applies one batch of guest requests as one metadata transaction, writing through the
    /// store's device one write after another, and returns once it and every earlier record
    /// are written.
    pub fn write_batch(&self, writer: usize, ops: &[Op<'_>]) -> Result<()> {
        let plan = self.plan_batch(writer, ops)?;
        let written =
            DeviceIo(self.data.raw()).write_all_while(&plan.writes(), &mut || plan.apply_maps());
        let batch = self.apply_plan(plan);
        self.finish_batch_in_order(batch, written)
    }

    /// Ends a batch once its writes are done (`written` says how they went). Never waits. A
    /// failed write fails the store: every later request and FLUSH gets the error.
    pub fn finish_batch(&self, batch: InFlight, written: std::io::Result<()>) -> Result<()> {
        match batch.lsn {
            Some(lsn) => self.note_written(lsn, written),
            None => written.map_err(StoreError::Io),
        }
    }

    /// [`finish_batch`](Self::finish_batch), returning once every earlier record is written
    /// too: for a batch answered only when it is written (write-through).
    pub fn finish_batch_in_order(
        &self,
        batch: InFlight,
        written: std::io::Result<()>,
    ) -> Result<()> {
        match batch.lsn {
            Some(lsn) => self.finish_commit(lsn, written),
            None => written.map_err(StoreError::Io),
        }
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

    /// Takes up to `want` contiguous blocks for a guest batch from writer `w`: as
    /// [`take_blocks`](Self::take_blocks) does, or with [`Waits::Refused`] only from its open
    /// segment or a free one, refusing where it would make room.
    pub(in crate::store) fn take_guest_blocks(
        &self,
        w: &mut SegmentWriter,
        want: usize,
        waits: Waits,
    ) -> Result<(u64, usize)> {
        if waits == Waits::Allowed {
            return self.take_blocks(w, want, false);
        }
        if let Some(r) = w.take(want) {
            return Ok(r);
        }
        let seg = self.write_lock(&self.state).sut.grab(SegKind::Data, false);
        let seg = seg.ok_or(StoreError::WouldWait)?;
        w.start(seg);
        self.note_space_found();
        w.take(want).ok_or(StoreError::WouldWait)
    }

    /// Whether writer `w` can take `blocks` blocks without making room: from its open segment
    /// and the segments free for guest data.
    pub(in crate::store) fn has_room_now(&self, w: &SegmentWriter, blocks: u64) -> bool {
        let short = blocks.saturating_sub(w.free());
        if short == 0 {
            return true;
        }
        let free = self.read_lock(&self.state).sut.free_for_guests();
        short.div_ceil(self.geo.seg_blocks) <= free
    }

    /// Frees segments for a writer that found none; false when nothing more can be done.
    /// Cleaning gains less than a segment per victim, so several are cleaned before the
    /// one mark or checkpoint that releases them all; a guest writer also tops up emptied
    /// segments fewer than a batch ([`pace::mark_batch`]) before it releases them, since a
    /// release costs two device flushes however many it frees, but only with victims at most
    /// half live: a fuller one costs more to move than the flushes it saves.
    fn make_room(&self, for_cleaner: bool) -> Result<bool> {
        let pending = self.read_lock(&self.state).sut.pending_count();
        let batch = match for_cleaner {
            true => 1,
            false => pace::mark_batch(spare_segments(&self.geometry()), true),
        };
        if pending >= batch {
            // Releases them (those still pinned by a read stay pending; the caller retries).
            self.release_emptied()?;
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
            self.release_emptied()?;
            return Ok(true);
        }
        let (want, max_live) = match pending {
            0 => (8, self.geo.seg_blocks * 9 / 10),
            _ => (batch - pending, self.geo.seg_blocks / 2),
        };
        let mut cleaned = 0;
        while cleaned < want {
            let n = (want - cleaned).min(super::cleaner::MAX_VICTIMS as u64) as usize;
            let done = self.clean_victims(n, max_live as u32)?.len() as u64;
            if done == 0 {
                break;
            }
            cleaned += done;
        }
        Counters::add(&self.stats.writer_cleaned, cleaned);
        if cleaned + pending > 0 {
            self.release_emptied()?;
        }
        Ok(cleaned + pending > 0)
    }

    /// Writes `runs` (byte offset, parts) and one journal record holding `entries` through the
    /// store's device, applying the record to the maps (in LSN order) while the writes are in
    /// flight. On an encrypted container the runs are sealed first, once, and the checksums of
    /// their entries set over the ciphertext (see `seal::seal_batch`). `by` says what the
    /// record may drop and when the call returns (see [`Committer`]). Segments in `retired`
    /// close once every record up to this one is written.
    pub(in crate::store) fn commit_with(
        &self,
        entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
        by: Committer,
    ) -> Result<Committed> {
        let io = &mut DeviceIo(self.data.raw());
        self.commit_through(io, entries, runs, retired, by)
    }

    /// [`commit_with`](Self::commit_with), issuing the writes through `io`.
    pub(in crate::store) fn commit_through(
        &self,
        io: &mut dyn BatchIo,
        mut entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
        by: Committer,
    ) -> Result<Committed> {
        let sealed = seal_for_store(&self.data, &mut entries, &runs)?;
        let runs = match &sealed {
            Some(s) => s.gathers(),
            None => runs,
        };
        let j = self.lock(&self.journal);
        self.ensure_ok()?;
        if by == Committer::Cleaner {
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
        self.commit_locked_through(io, j, entries, runs, retired, by)
    }

    /// [`commit_with`](Self::commit_with) once the caller holds the journal lock, has settled
    /// `entries` (the import's write-if-absent filters them under it) and sealed `runs`: they
    /// are written as they are.
    pub(in crate::store) fn commit_locked(
        &self,
        j: MutexGuard<'_, JournalState>,
        entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
    ) -> Result<Committed> {
        let io = &mut DeviceIo(self.data.raw());
        self.commit_locked_through(io, j, entries, runs, retired, Committer::InOrder)
    }

    /// [`commit_locked`](Self::commit_locked), issuing the writes through `io`.
    fn commit_locked_through(
        &self,
        io: &mut dyn BatchIo,
        j: MutexGuard<'_, JournalState>,
        entries: Vec<Entry>,
        runs: Vec<Gather<'_>>,
        retired: &mut Vec<u64>,
        by: Committer,
    ) -> Result<Committed> {
        let extents = (runs.iter()).map(|(at, parts)| (at / BLOCK, run_blocks(parts)));
        let Some(mut r) = self.reserve_record(j, entries, extents, retired, Waits::Allowed)? else {
            return Ok(Committed {
                entries: 0,
                lsn: 0,
                applied: Vec::new(),
            });
        };
        let written = match self.seal_record(r.pba, &mut r.record) {
            Ok(()) => {
                // The runs' borrows outlive this call; the record's is this call's.
                let mut writes: Vec<Gather<'_>> = runs;
                writes.push((r.pba * BLOCK, vec![&r.record[..]]));
                io.write_all_while(&writes, &mut || self.apply_in_order(r.lsn, &r.entries))
            }
            Err(e) => {
                // Later records wait for this one to apply, written or not.
                self.apply_in_order(r.lsn, &r.entries);
                Err(e)
            }
        };
        match by {
            Committer::InOrder => self.finish_commit(r.lsn, written)?,
            Committer::Cleaner => self.note_written(r.lsn, written)?,
        }
        Ok(Committed {
            entries: r.count,
            lsn: r.lsn,
            applied: r.entries,
        })
    }

    /// Seals a journal record placed at block `pba`, on an encrypted container.
    pub(in crate::store) fn seal_record(
        &self,
        pba: u64,
        record: &mut AlignedBuf,
    ) -> std::io::Result<()> {
        match self.data.sealer() {
            Some(sealer) => sealer.seal(&mut record[..], pba * BLOCK),
            None => Ok(()),
        }
    }

    /// Reserves the record of `entries` (held journal lock `j`; the caller checked the store),
    /// its data blocks `extents` (first block, count) listed as being written. `None` when
    /// there is nothing to commit. Segments in `retired` close once every record up to this
    /// one is written. With [`Waits::Refused`], a record that would wait (a checkpoint first,
    /// a full ring) is refused before anything is reserved.
    pub(in crate::store) fn reserve_record(
        &self,
        mut j: MutexGuard<'_, JournalState>,
        mut entries: Vec<Entry>,
        extents: impl Iterator<Item = (u64, u64)>,
        retired: &mut Vec<u64>,
        waits: Waits,
    ) -> Result<Option<Reserved>> {
        if entries.is_empty() {
            // The segments were filled by records already reserved.
            let last = j.cursor.next_lsn.saturating_sub(1);
            self.retire(&mut j, last, retired);
            return Ok(None);
        }
        // A flush whose mark is still due rides along (see flush.rs): no write of its own.
        let carried = self
            .mark_to_carry(&j)
            .filter(|_| !entries.iter().any(|e| matches!(e, Entry::Flushed { .. })));
        if let Some(lsn) = carried {
            entries.push(Entry::Flushed { lsn });
        }
        let (mut j, (lsn, pba, record)) = self.reserve(j, &entries, waits)?;
        if let Some(through) = carried {
            j.marked_lsn = j.marked_lsn.max(through);
        }
        for e in &entries {
            if let Entry::Flushed { lsn } = *e {
                j.mark_reserved = j.mark_reserved.max(lsn);
            }
        }
        self.unwritten.add(lsn, extents);
        self.retire(&mut j, lsn, retired);
        drop(j);
        Counters::add(&self.stats.journal_writes, 1);
        Counters::add(&self.stats.journal_write_bytes, record.len() as u64);
        let count = entries.len() as u64 - u64::from(carried.is_some());
        Ok(Some(Reserved {
            lsn,
            pba,
            record,
            entries,
            count,
        }))
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
                st.sut.close(seg, through);
            }
            !done
        });
    }

    /// Places and encodes the next record in the journal ring (see `live_checkpoint` for
    /// the checkpoints a full-enough ring asks for); returns its LSN, place and bytes.
    fn reserve<'a>(
        &'a self,
        mut j: MutexGuard<'a, JournalState>,
        entries: &[Entry],
        waits: Waits,
    ) -> Result<(MutexGuard<'a, JournalState>, (u64, u64, AlignedBuf))> {
        let blocks = journal::record_blocks(entries) as u64;
        let journal_blocks = self.geo.journal_blocks();
        if blocks > journal_blocks / 2 {
            return Err(StoreError::Invalid(format!(
                "a batch of {} map changes does not fit the journal",
                entries.len()
            )));
        }
        // Checked under this hold of the lock: placing the record below then cannot wait.
        if waits == Waits::Refused && !self.reserves_now(&j, blocks) {
            return Err(StoreError::WouldWait);
        }
        let threshold = self.checkpoint_threshold();
        if j.fresh_chain {
            j = self.wait_idle(j);
            if j.fresh_chain {
                self.checkpoint_locked(&mut j)?;
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
        Ok((j, (lsn, pba, record)))
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
    pub(in crate::store) fn apply_in_order(&self, lsn: u64, entries: &[Entry]) {
        let mut j = self.lock(&self.journal);
        while j.applied_lsn + 1 != lsn && !self.poisoned() {
            j = self.unpoison(self.journal_cv.wait(j));
        }
        if self.ensure_ok().is_ok() {
            let mut st = self.write_lock(&self.state);
            let State { maps, sut, .. } = &mut *st;
            super::apply::apply(maps, lsn, entries, sut);
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
    pub(in crate::store) fn note_written(
        &self,
        lsn: u64,
        written: std::io::Result<()>,
    ) -> Result<()> {
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

/// Who commits a record: what it may drop and when the commit returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::store) enum Committer {
    /// Guest batches, flush marks and administrative records: kept whole, and returned once
    /// every earlier record is written too, since what they wrote is answered and an answered
    /// batch never depends on a record that could still be lost.
    InOrder,
    /// The cleaner's moves: those whose VBA left its old block since they were listed (the
    /// guest overtook them) are dropped under the journal lock, and the commit returns once
    /// its own writes are done; its record answers no one, so it need not wait for the guest
    /// batches still in flight before it.
    Cleaner,
}

/// Blocks a gather list covers.
fn run_blocks(parts: &[&[u8]]) -> u64 {
    parts.iter().map(|p| p.len() as u64).sum::<u64>() / BLOCK
}
