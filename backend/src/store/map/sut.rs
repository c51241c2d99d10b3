//! Segment usage table: live blocks and kind per segment, plus the free and pending lists.
//!
//! A segment whose last live block dies is not free at once: it goes to `pending`. Until it
//! is released a crash would replay journal records that still point into it, so its blocks
//! must keep their contents. A checkpoint that commits releases what was pending when it
//! froze. A data segment emptied by a journal record (its LSN is kept) may also be released
//! once a durable flush mark covers that record (see `log::mark_release`): replay no longer
//! reads the data of the records such a mark covers.

use crate::store::codec::{Get, Put};
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK_SIZE, Geometry};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegKind {
    Free = 0,
    Data = 1,
    Meta = 2,
}

/// Bytes per segment in the on-disk table: live (u32), kind (u8), 3 reserved.
pub const SUT_ENTRY: usize = 8;

/// The emptied-at LSN of a pending segment only a checkpoint may release: metadata, added
/// segments, and data segments a change outside the journal (a revert, an import's end) emptied.
pub const AT_CHECKPOINT: u64 = u64::MAX;

pub struct Sut {
    geo: Geometry,
    live: Vec<u32>,
    kind: Vec<SegKind>,
    free: VecDeque<u64>,
    /// Emptied segments, with the LSN of the record that emptied them (or [`AT_CHECKPOINT`]).
    pending: BTreeMap<u64, u64>,
    open: BTreeSet<u64>,
    /// Per segment since it was last taken, the newest record that took a block out of it
    /// ([`AT_CHECKPOINT`] once anything but a record did).
    last_dec: Vec<u64>,
    /// The record being applied, if any (see [`applying`](Self::applying)).
    applying: Option<u64>,
    /// Decrements below zero seen (a bookkeeping bug or corruption); fsck reports them.
    pub underflows: u64,
    /// Sum of `live`: blocks held by data and metadata, kept for the space checks.
    held: u64,
    /// Data blocks added so far: the clock segment ages are measured in (bytes written, not
    /// seconds: a segment is old when much has been written since). In memory only.
    clock: u64,
    /// Per segment, the clock when its data was written: when a guest writer opened it, or
    /// for the cleaner's segments the newest stamp of the victims copied into it (relocated
    /// data keeps its age). 0 after an open: every segment is then as old.
    stamp: Vec<u64>,
    /// Blocks a checkpoint of the trees as they now are would write at most (every node, the
    /// usage table, the root), once the store has told it (see [`note_trees`](Self::note_trees)).
    checkpoint_blocks: Option<u64>,
}

impl Sut {
    /// A table with every data segment free.
    /// Takes the disk's new capacity (it sizes the reserve of free segments).
    pub fn set_capacity(&mut self, capacity: u64) {
        self.geo.capacity = capacity;
    }

    pub fn new(geo: Geometry) -> Self {
        let n = geo.segments as usize;
        let mut s = Self {
            geo,
            live: vec![0; n],
            kind: vec![SegKind::Free; n],
            free: VecDeque::new(),
            pending: BTreeMap::new(),
            open: BTreeSet::new(),
            last_dec: vec![0; n],
            applying: None,
            underflows: 0,
            held: 0,
            clock: 0,
            stamp: vec![0; n],
            checkpoint_blocks: None,
        };
        s.rebuild_free();
        s
    }

    /// Recomputes the free list from the live counts (at open, after replay).
    pub fn rebuild_free(&mut self) {
        self.free.clear();
        for seg in self.geo.first_data_segment()..self.geo.segments {
            let i = seg as usize;
            if self.live[i] == 0 && !self.pending.contains_key(&seg) && !self.open.contains(&seg) {
                self.kind[i] = SegKind::Free;
                self.free.push_back(seg);
            }
        }
    }

    pub fn live(&self, seg: u64) -> u32 {
        self.live.get(seg as usize).copied().unwrap_or(0)
    }

    pub fn kind(&self, seg: u64) -> SegKind {
        self.kind
            .get(seg as usize)
            .copied()
            .unwrap_or(SegKind::Free)
    }

    pub fn is_open(&self, seg: u64) -> bool {
        self.open.contains(&seg)
    }

    pub fn free_count(&self) -> u64 {
        self.free.len() as u64
    }

    pub fn pending_count(&self) -> u64 {
        self.pending.len() as u64
    }

    /// One more live block at `pba`.
    pub fn add(&mut self, pba: u64, kind: SegKind) {
        let seg = self.geo.segment_of(pba) as usize;
        if let Some(l) = self.live.get_mut(seg) {
            *l += 1;
            self.held += 1;
            self.kind[seg] = kind;
            if kind == SegKind::Data {
                self.clock += 1;
            }
            self.pending.remove(&(seg as u64));
        }
    }

    /// Decrements from now on are record `lsn`'s (`None`: not a record's).
    pub fn applying(&mut self, lsn: Option<u64>) {
        self.applying = lsn;
    }

    /// One live block less at `pba`; an emptied, closed segment becomes pending.
    pub fn dec(&mut self, pba: u64) {
        let seg = self.geo.segment_of(pba);
        let Some(l) = self.live.get_mut(seg as usize) else {
            self.underflows += 1;
            return;
        };
        if *l == 0 {
            self.underflows += 1;
            return;
        }
        *l -= 1;
        self.held -= 1;
        let by = match (self.kind[seg as usize], self.applying) {
            (SegKind::Data, Some(lsn)) => lsn,
            _ => AT_CHECKPOINT,
        };
        let last = &mut self.last_dec[seg as usize];
        *last = (*last).max(by);
        if *l == 0 && !self.open.contains(&seg) {
            self.pending.insert(seg, *last);
        }
    }

    /// The trees now have `nodes` nodes and a root of `root_blocks` blocks: a checkpoint
    /// writes at most those and the usage table. Called as records are applied, while no
    /// checkpoint holds trees pinned (a pinned checkpoint already placed its nodes, and the
    /// copies made meanwhile replace nodes it frees).
    pub fn note_trees(&mut self, nodes: u64, root_blocks: u64) {
        self.checkpoint_blocks = Some(nodes + root_blocks + Self::encoded_blocks(&self.geo));
    }

    /// Segments one checkpoint of the trees may fill: as measured from them once known, and
    /// never more than the container's worst case (a copy of both maps at half-full nodes).
    fn checkpoint_room(&self) -> u64 {
        let worst = self.geo.checkpoint_reserve() / 2;
        match self.checkpoint_blocks {
            Some(b) => self.geo.checkpoint_segments(b).min(worst),
            None => worst,
        }
    }

    /// Free segments the cleaner leaves to checkpoints: room for one of the trees as they
    /// are, which then may take the last free segment. The segments the cleaner empties come
    /// back only when a checkpoint or a mark releases them, so using up that room would
    /// leave none for the checkpoint that releases its work.
    pub fn cleaner_keep(&self) -> u64 {
        self.checkpoint_room()
    }

    /// Free segments guest writes leave to checkpoints and the cleaner: the cleaner's share
    /// ([`cleaner_keep`](Self::cleaner_keep)) and half as much again, plus four segments for
    /// the cleaner's moves. Sized from the trees as they are, not from the container's
    /// worst case ([`Geometry::reserved_segments`], kept once the trees are that large, and
    /// before they are known): on a full 2 GiB disk
    /// the maps take about 7 segments while that worst case keeps back 30, free segments
    /// the cleaner could not use as room for garbage.
    pub fn reserved_segments(&self) -> u64 {
        let worst = self.geo.reserved_segments();
        let room = self.checkpoint_room();
        match self.checkpoint_blocks {
            Some(_) if room < self.geo.checkpoint_reserve() / 2 => (room + room / 2 + 4).min(worst),
            _ => worst,
        }
    }

    /// Free segments a guest writer may still take ([`grab`](Self::grab) without the
    /// reserve).
    pub fn free_for_guests(&self) -> u64 {
        self.free_count().saturating_sub(self.reserved_segments())
    }

    /// Takes a free segment for a writer. Guest writers (`use_reserve == false`) leave the
    /// reserve to checkpoints and the cleaner; the cleaner (data with `use_reserve`) leaves
    /// the checkpoints' share of it; checkpoints (metadata) may take the last segment.
    pub fn grab(&mut self, kind: SegKind, use_reserve: bool) -> Option<u64> {
        let keep = match (use_reserve, kind) {
            (false, _) => self.reserved_segments(),
            (true, SegKind::Data) => self.cleaner_keep(),
            (true, _) => 0,
        };
        if keep > 0 && self.free_count() <= keep {
            return None;
        }
        let seg = self.free.pop_front()?;
        self.kind[seg as usize] = kind;
        // The cleaner's data takes its victims' stamps as it is copied in.
        self.stamp[seg as usize] = if use_reserve && kind == SegKind::Data {
            0
        } else {
            self.clock
        };
        self.last_dec[seg as usize] = 0;
        self.open.insert(seg);
        Some(seg)
    }

    /// Data stamped `stamp` was copied into `seg` (by the cleaner).
    pub fn note_copied(&mut self, seg: u64, stamp: u64) {
        if let Some(s) = self.stamp.get_mut(seg as usize) {
            *s = (*s).max(stamp);
        }
    }

    /// The clock when `seg`'s data was written (see `stamp`).
    pub fn stamp(&self, seg: u64) -> u64 {
        self.stamp.get(seg as usize).copied().unwrap_or(0)
    }

    /// Data blocks added since the table was loaded.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// A writer is done with `seg`; every record naming its blocks is `lsn` or older.
    pub fn close(&mut self, seg: u64, lsn: u64) {
        self.open.remove(&seg);
        if self.live(seg) == 0 {
            let i = seg as usize;
            let by = match self.kind(seg) {
                SegKind::Data => self
                    .last_dec
                    .get(i)
                    .map_or(AT_CHECKPOINT, |l| (*l).max(lsn)),
                _ => AT_CHECKPOINT,
            };
            self.pending.insert(seg, by);
        }
    }

    /// Segments waiting to be released, in order, with the LSN that emptied them.
    pub fn pending_segments(&self) -> Vec<(u64, u64)> {
        self.pending.iter().map(|(s, l)| (*s, *l)).collect()
    }

    /// Pending segments a mark covering the record that emptied them would release.
    pub fn markable_count(&self) -> u64 {
        self.pending
            .values()
            .filter(|l| **l != AT_CHECKPOINT)
            .count() as u64
    }

    /// The newest emptied-at LSN among the data segments a mark covering it would release.
    pub fn newest_markable(&self) -> Option<u64> {
        self.pending
            .values()
            .copied()
            .filter(|l| *l != AT_CHECKPOINT)
            .max()
    }

    /// A durable flush mark covers every record through `marked`: the data segments those
    /// emptied are free now, but for those `pinned` says a read still uses.
    pub fn release_marked(&mut self, marked: u64, pinned: &dyn Fn(u64) -> bool) -> u64 {
        let segs: Vec<(u64, u64)> = (self.pending.iter())
            .filter(|&(_, l)| *l != AT_CHECKPOINT && *l <= marked)
            .map(|(s, l)| (*s, *l))
            .collect();
        self.release_pending_of(segs.into_iter(), pinned)
    }

    /// A checkpoint that froze when `segs` were pending (with the LSN that emptied them)
    /// committed: those still pending since then are free now, but for those `pinned` says a
    /// read still uses, which stay pending. One released by a mark meanwhile, reused and
    /// emptied again, is pending with another LSN and stays: records after the freeze name it.
    pub fn release_pending_of(
        &mut self,
        segs: impl Iterator<Item = (u64, u64)>,
        pinned: &dyn Fn(u64) -> bool,
    ) -> u64 {
        let mut n = 0;
        for (seg, emptied) in segs {
            if pinned(seg) || self.pending.get(&seg) != Some(&emptied) {
                continue;
            }
            if self.live(seg) == 0 && !self.open.contains(&seg) {
                self.pending.remove(&seg);
                self.kind[seg as usize] = SegKind::Free;
                self.free.push_back(seg);
                n += 1;
            }
        }
        n
    }

    /// The checkpoint committed: pending segments are free now, but for those `pinned`
    /// says a read still uses, which stay pending.
    #[cfg(test)]
    pub fn release_pending(&mut self, pinned: &dyn Fn(u64) -> bool) -> u64 {
        let mut n = 0;
        for (seg, lsn) in std::mem::take(&mut self.pending) {
            if pinned(seg) {
                self.pending.insert(seg, lsn);
                continue;
            }
            if self.live(seg) == 0 && !self.open.contains(&seg) {
                self.kind[seg as usize] = SegKind::Free;
                self.free.push_back(seg);
                n += 1;
            }
        }
        n
    }

    /// Blocks the encoded table takes.
    pub fn encoded_blocks(geo: &Geometry) -> u64 {
        (geo.segments * SUT_ENTRY as u64).div_ceil(BLOCK_SIZE as u64)
    }

    /// The table as stored in a checkpoint.
    pub fn encode(&self, out: &mut [u8]) -> bool {
        let mut p = Put::new(out);
        for (l, k) in self.live.iter().zip(&self.kind) {
            p.u32(*l).u8(*k as u8).bytes(&[0; 3]);
        }
        p.ok()
    }

    pub fn decode(geo: Geometry, b: &[u8]) -> Result<Self> {
        let mut s = Self::new(geo);
        let mut g = Get::new(b);
        for seg in 0..geo.segments as usize {
            let short = || StoreError::corrupt("segment usage table", "truncated");
            let live = g.u32().ok_or_else(short)?;
            let kind = match g.u8().ok_or_else(short)? {
                0 => SegKind::Free,
                1 => SegKind::Data,
                2 => SegKind::Meta,
                k => {
                    return Err(StoreError::corrupt(
                        "segment usage table",
                        format!("segment {seg} has kind {k}"),
                    ));
                }
            };
            g.bytes(3).ok_or_else(short)?;
            if live as u64 > geo.seg_blocks {
                return Err(StoreError::corrupt(
                    "segment usage table",
                    format!("segment {seg} claims {live} live blocks"),
                ));
            }
            s.live[seg] = live;
            s.kind[seg] = kind;
            s.held += u64::from(live);
        }
        s.rebuild_free();
        Ok(s)
    }

    /// Blocks held by data and metadata in every segment.
    pub fn held_blocks(&self) -> u64 {
        self.held
    }

    /// Segments in the table.
    pub fn segments(&self) -> u64 {
        self.geo.segments
    }

    /// Adds segments up to `segments` in all: they are pending, so they become free only
    /// once a checkpoint that records them (and the container's new size) has committed.
    pub fn extend(&mut self, segments: u64) {
        if segments <= self.geo.segments {
            return;
        }
        let n = segments as usize;
        self.live.resize(n, 0);
        self.kind.resize(n, SegKind::Free);
        self.stamp.resize(n, 0);
        self.last_dec.resize(n, 0);
        (self.pending).extend((self.geo.segments..segments).map(|s| (s, AT_CHECKPOINT)));
        self.geo.segments = segments;
    }

    /// Undoes an [`extend`](Self::extend) whose checkpoint did not commit.
    pub fn truncate(&mut self, segments: u64) {
        if segments >= self.geo.segments {
            return;
        }
        self.pending.retain(|s, _| *s < segments);
        self.free.retain(|s| *s < segments);
        self.live.truncate(segments as usize);
        self.kind.truncate(segments as usize);
        self.stamp.truncate(segments as usize);
        self.last_dec.truncate(segments as usize);
        self.geo.segments = segments;
    }

    /// Live counts, for fsck.
    pub fn live_counts(&self) -> &[u32] {
        &self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            seg_blocks: 16,
            segments: 40,
            journal_segments: 2,
            capacity: 64 * 4096,
        }
    }

    #[test]
    fn emptied_segments_wait_for_a_checkpoint() {
        let g = geo();
        let mut s = Sut::new(g);
        let free0 = s.free_count();
        let seg = s.grab(SegKind::Data, false).unwrap();
        let pba = g.segment_start(seg);
        s.add(pba, SegKind::Data);
        s.add(pba + 1, SegKind::Data);
        s.close(seg, 0);
        s.dec(pba);
        s.dec(pba + 1);
        assert_eq!(s.free_count(), free0 - 1, "not free before the checkpoint");
        assert_eq!(s.pending_count(), 1);
        assert_eq!(s.release_pending(&|seg| seg == pba / 16), 0, "pinned");
        assert_eq!(s.pending_count(), 1);
        assert_eq!(s.release_pending(&|_| false), 1);
        assert_eq!(s.free_count(), free0);
        s.dec(pba);
        assert_eq!(s.underflows, 1);
    }

    #[test]
    fn a_mark_releases_only_what_records_emptied_through_it() {
        let g = geo();
        let mut s = Sut::new(g);
        let fill = |s: &mut Sut| {
            let seg = s.grab(SegKind::Data, false).unwrap();
            s.add(g.segment_start(seg), SegKind::Data);
            s.close(seg, 3);
            seg
        };
        let (a, b) = (fill(&mut s), fill(&mut s));
        s.applying(Some(7));
        s.dec(g.segment_start(a));
        s.applying(None);
        // Emptied outside the journal (a revert): only a checkpoint frees it.
        s.dec(g.segment_start(b));
        assert_eq!(s.pending_segments(), vec![(a, 7), (b, AT_CHECKPOINT)]);
        assert_eq!(s.newest_markable(), Some(7));
        assert_eq!(s.release_marked(6, &|_| false), 0);
        assert_eq!(s.release_marked(7, &|seg| seg == a), 0, "pinned");
        assert_eq!(s.release_marked(u64::MAX - 1, &|_| false), 1);
        assert_eq!(s.pending_segments(), vec![(b, AT_CHECKPOINT)]);
        // Reused and emptied again after a checkpoint froze: that checkpoint leaves it.
        let free = s.free_count();
        let c = fill(&mut s);
        s.applying(Some(9));
        s.dec(g.segment_start(c));
        let frozen = vec![(c, 7)];
        assert_eq!(s.release_pending_of(frozen.into_iter(), &|_| false), 0);
        assert_eq!(s.release_pending_of([(c, 9)].into_iter(), &|_| false), 1);
        assert_eq!(s.free_count(), free);
    }

    #[test]
    fn guest_writers_leave_the_reserve() {
        let g = geo();
        let mut s = Sut::new(g);
        let mut n = 0;
        while s.grab(SegKind::Data, false).is_some() {
            n += 1;
        }
        assert_eq!(s.free_count(), g.reserved_segments());
        assert!(n > 0);
        assert!(s.grab(SegKind::Meta, true).is_some());
    }

    #[test]
    fn the_reserve_follows_the_trees_and_never_exceeds_the_worst_case() {
        // 64 MiB in 64 KiB segments: the worst case keeps back far more than small trees need.
        let g = Geometry {
            seg_blocks: 16,
            segments: 1400,
            journal_segments: 2,
            capacity: 64 << 20,
        };
        let mut s = Sut::new(g);
        assert_eq!(
            s.reserved_segments(),
            g.reserved_segments(),
            "trees not known yet"
        );
        assert_eq!(s.cleaner_keep(), g.checkpoint_reserve() / 2);
        // 100 nodes, a one-block root, the table's three blocks: 104 blocks, 7 segments, and
        // two for the table's and the root's runs.
        s.note_trees(100, 1);
        assert_eq!(Sut::encoded_blocks(&g), 3);
        assert_eq!(s.cleaner_keep(), 9);
        assert_eq!(s.reserved_segments(), 9 + 4 + 4);
        assert!(s.reserved_segments() < g.reserved_segments());
        let mut taken = 0;
        while s.grab(SegKind::Data, false).is_some() {
            taken += 1;
        }
        assert_eq!(
            s.free_count(),
            17,
            "guest writers leave the reserve the trees need"
        );
        assert!(taken > 0);
        // The cleaner leaves the checkpoints' share; a checkpoint may take the rest.
        while s.grab(SegKind::Data, true).is_some() {}
        assert_eq!(s.free_count(), 9);
        // Trees that grew (a snapshot's copies) raise both, up to the worst case.
        s.note_trees(1_000_000, 1);
        assert_eq!(s.cleaner_keep(), g.checkpoint_reserve() / 2);
        assert_eq!(s.reserved_segments(), g.reserved_segments());
        assert_eq!(s.free_for_guests(), 0);
        assert!(
            s.grab(SegKind::Data, true).is_none(),
            "below the cleaner's share now"
        );
        assert!(s.grab(SegKind::Meta, true).is_some());
    }

    #[test]
    fn added_segments_are_free_only_after_a_checkpoint() {
        let g = geo();
        let mut s = Sut::new(g);
        let free0 = s.free_count();
        s.extend(g.segments + 8);
        assert_eq!((s.free_count(), s.pending_count()), (free0, 8));
        s.release_pending(&|_| false);
        assert_eq!(s.free_count(), free0 + 8);
        let seg = s.grab(SegKind::Data, true).unwrap();
        s.add(g.segment_start(seg), SegKind::Data);
        assert_eq!(s.held_blocks(), 1);
        s.dec(g.segment_start(seg));
        assert_eq!(s.held_blocks(), 0);
        let mut undone = Sut::new(g);
        undone.extend(g.segments + 8);
        undone.truncate(g.segments);
        assert_eq!((undone.free_count(), undone.pending_count()), (free0, 0));
    }

    #[test]
    fn encode_round_trip() {
        let g = geo();
        let mut s = Sut::new(g);
        let seg = s.grab(SegKind::Meta, true).unwrap();
        s.add(g.segment_start(seg) + 3, SegKind::Meta);
        let mut b = vec![0u8; Sut::encoded_blocks(&g) as usize * BLOCK_SIZE];
        assert!(s.encode(&mut b));
        let d = Sut::decode(g, &b).unwrap();
        assert_eq!(d.live(seg), 1);
        assert_eq!(d.held_blocks(), 1);
        assert_eq!(d.kind(seg), SegKind::Meta);
        assert_eq!(d.free_count(), s.free_count());
    }
}
