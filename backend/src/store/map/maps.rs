//! The two-level map: per-tree LBA -> VBA B+trees (running point and snapshots) and one
//! VBA -> PBA map for the whole container, plus a reverse map PBA -> VBA for the cleaner.
//!
//! VBAs are handed out in increasing order and never reused, so "allocated after the newest
//! snapshot" is a comparison with that snapshot's VBA watermark: such a VBA belongs to the
//! running point alone and is freed as soon as the running point overwrites or unmaps it.
//! The data checksum lives in the VBA entry and is seeded with the VBA, so it survives the
//! cleaner moving the block and catches a block read from the wrong place.

use super::diff_walk::diff_trees;
use crate::store::codec::{Get, Put};
use crate::store::compress::{PackedOwners, block_of, place};
use crate::store::map::btree::{Forest, NodeId, TreeValue};
use crate::store::map::staging::Staging;
use crate::store::map::sut::{SegKind, Sut};

/// LBA tree value: the block's virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vba(pub u64);

impl TreeValue for Vba {
    const SIZE: usize = 8;
    const TREE_TAG: u8 = 1;
    fn encode(&self, out: &mut Put<'_>) {
        out.u64(self.0);
    }
    fn decode(g: &mut Get<'_>) -> Option<Self> {
        g.u64().map(Vba)
    }
}

/// VBA map value: where the block is and the crc32c of its 4 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VbaEntry {
    pub pba: u64,
    pub crc: u32,
}

impl TreeValue for VbaEntry {
    const SIZE: usize = 12;
    const TREE_TAG: u8 = 2;
    fn encode(&self, out: &mut Put<'_>) {
        out.u64(self.pba).u32(self.crc);
    }
    fn decode(g: &mut Get<'_>) -> Option<Self> {
        Some(VbaEntry {
            pba: g.u64()?,
            crc: g.u32()?,
        })
    }
}

/// A frozen LBA tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: u64,
    pub name: String,
    /// Sequence number at which the tree was frozen.
    pub seq: u64,
    pub root: NodeId,
    /// First VBA allocated after the freeze.
    pub vba_watermark: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// The running point was reverted between the creation of the tree before this one and
    /// this one's: only then can it hold a VBA the tree before it had dropped.
    pub reverted_before: bool,
}

const NO_VBA: u64 = u64::MAX;

pub struct Maps {
    pub lba: Forest<Vba>,
    pub running: NodeId,
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
    /// Deleted snapshots whose blocks are still being given back, in the order deleted. Their
    /// trees stay frozen (and count in `frozen`) until then; nothing reads them but that work.
    pub doomed: Vec<Snapshot>,
    pub vba: Forest<VbaEntry>,
    pub vba_root: NodeId,
    pub next_vba: u64,
    pub seq: u64,
    pub next_snapshot_id: u64,
    /// The running point was reverted since the newest snapshot was taken.
    pub running_reverted: bool,
    /// The tree a live import builds a chain's views in, apart from the running point.
    pub staging: Option<Staging>,
    /// PBA -> VBA for every live raw data block (NO_VBA elsewhere).
    rmap: Vec<u64>,
    /// Block -> VBAs for every live packed block of a compressed container.
    packed: PackedOwners,
}

impl Maps {
    /// Empty maps for a container of `blocks` blocks.
    pub fn empty(blocks: u64) -> Self {
        let mut lba = Forest::new();
        let mut vba = Forest::new();
        let running = lba.new_leaf(1);
        let vba_root = vba.new_leaf(1);
        Self {
            lba,
            running,
            snapshots: Vec::new(),
            doomed: Vec::new(),
            vba,
            vba_root,
            next_vba: 0,
            seq: 1,
            next_snapshot_id: 1,
            running_reverted: false,
            staging: None,
            rmap: vec![NO_VBA; blocks as usize],
            packed: PackedOwners::default(),
        }
    }

    /// Maps loaded from a checkpoint; the reverse map is rebuilt from the VBA map.
    #[allow(clippy::too_many_arguments)]
    pub fn loaded(
        lba: Forest<Vba>,
        running: NodeId,
        snapshots: Vec<Snapshot>,
        doomed: Vec<Snapshot>,
        vba: Forest<VbaEntry>,
        vba_root: NodeId,
        next_vba: u64,
        seq: u64,
        next_snapshot_id: u64,
        running_reverted: bool,
        blocks: u64,
    ) -> Self {
        let mut m = Self {
            lba,
            running,
            snapshots,
            doomed,
            vba,
            vba_root,
            next_vba,
            seq,
            next_snapshot_id,
            running_reverted,
            staging: None,
            rmap: vec![NO_VBA; blocks as usize],
            packed: PackedOwners::default(),
        };
        m.rebuild_rmap();
        m
    }

    /// Fills the reverse map from the VBA map (after loading a checkpoint).
    /// The container now has `blocks` blocks (it grew): room for their reverse entries.
    pub fn grow_blocks(&mut self, blocks: u64) {
        if blocks as usize > self.rmap.len() {
            self.rmap.resize(blocks as usize, NO_VBA);
        }
    }

    pub fn rebuild_rmap(&mut self) {
        self.rmap.fill(NO_VBA);
        self.packed.clear();
        for (v, e) in self.vba.entries(self.vba_root) {
            if place::slot_of(e.pba).is_some() {
                self.packed.add(block_of(e.pba), v);
            } else if let Some(slot) = self.rmap.get_mut(e.pba as usize) {
                *slot = v;
            }
        }
    }

    /// Notes that `vba` lives at `pba` (raw or packed); the segment usage table counts a
    /// packed block once, with its first slot.
    fn hold(&mut self, pba: u64, vba: u64, sut: &mut Sut) {
        if place::slot_of(pba).is_some() {
            if self.packed.add(block_of(pba), vba) {
                sut.add(block_of(pba), SegKind::Data);
            }
            return;
        }
        if let Some(slot) = self.rmap.get_mut(pba as usize) {
            *slot = vba;
        }
        sut.add(pba, SegKind::Data);
    }

    /// Notes that `vba` left `pba`; a packed block is free once its last slot is.
    fn unhold(&mut self, pba: u64, vba: u64, sut: &mut Sut) {
        if place::slot_of(pba).is_some() {
            if self.packed.remove(block_of(pba), vba) {
                sut.dec(block_of(pba));
            }
            return;
        }
        if let Some(slot) = self.rmap.get_mut(pba as usize) {
            *slot = NO_VBA;
        }
        sut.dec(pba);
    }

    /// The VBAs packed into data block `pba` (none for a raw block).
    pub fn packed_owners(&self, pba: u64) -> &[u64] {
        self.packed.owners(pba)
    }

    /// Sequence number of the newest frozen tree (0 without snapshots): a node written after
    /// it belongs to the running point alone. Trees being deleted count until they are gone.
    pub fn frozen(&self) -> u64 {
        let live = self.snapshots.last().map_or(0, |s| s.seq);
        self.doomed.iter().map(|s| s.seq).fold(live, u64::max)
    }

    fn watermark(&self) -> u64 {
        self.snapshots.last().map_or(0, |s| s.vba_watermark)
    }

    /// The VBA and its entry the running point maps `lba` to.
    pub fn lookup(&self, lba: u64) -> Option<(u64, VbaEntry)> {
        let v = self.lba.get(self.running, lba)?;
        self.vba.get(self.vba_root, v.0).map(|e| (v.0, e))
    }

    /// The VBA that currently owns data block `pba`.
    pub fn owner(&self, pba: u64) -> Option<u64> {
        self.rmap
            .get(pba as usize)
            .copied()
            .filter(|v| *v != NO_VBA)
    }

    pub(crate) fn map(&mut self, lba: u64, vba: u64, pba: u64, crc: u32, sut: &mut Sut) {
        self.add_vba(vba, pba, crc, sut);
        let (seq, frozen) = (self.seq, self.frozen());
        if let Some(old) = self
            .lba
            .insert(&mut self.running, lba, Vba(vba), seq, frozen)
            .filter(|old| old.0 != vba)
        {
            self.release_if_unshared(lba, old.0, sut);
        }
    }

    /// Records the new block `vba` at `pba` in the VBA map, the reverse map (or the packed
    /// blocks' owners) and the usage.
    pub(crate) fn add_vba(&mut self, vba: u64, pba: u64, crc: u32, sut: &mut Sut) {
        let seq = self.seq;
        self.vba
            .insert(&mut self.vba_root, vba, VbaEntry { pba, crc }, seq, 0);
        self.hold(pba, vba, sut);
        self.next_vba = self.next_vba.max(vba.saturating_add(1));
    }

    pub(crate) fn unmap(&mut self, lba: u64, count: u64, sut: &mut Sut) {
        let (seq, frozen) = (self.seq, self.frozen());
        let mut found = Vec::new();
        self.lba
            .range(self.running, lba, lba.saturating_add(count), &mut |k, v| {
                found.push((k, v))
            });
        for (k, v) in found {
            self.lba.remove(&mut self.running, k, seq, frozen);
            self.release_if_unshared(k, v.0, sut);
        }
    }

    /// Moves `vba` from `old_pba` to `new_pba`; false if it no longer lives at `old_pba`.
    pub fn relocate(
        &mut self,
        vba: u64,
        old_pba: u64,
        new_pba: u64,
        new_crc: Option<u32>,
        sut: &mut Sut,
    ) -> bool {
        let Some(e) = self.vba.get(self.vba_root, vba) else {
            return false;
        };
        if e.pba != old_pba {
            return false;
        }
        let seq = self.seq;
        self.vba.insert(
            &mut self.vba_root,
            vba,
            VbaEntry {
                pba: new_pba,
                crc: new_crc.unwrap_or(e.crc),
            },
            seq,
            0,
        );
        self.unhold(old_pba, vba, sut);
        self.hold(new_pba, vba, sut);
        true
    }

    /// Frees `vba`, which the running point no longer maps at `lba`, unless a snapshot does.
    /// A VBA born after the newest snapshot is the running point's alone; an older one is
    /// usually held by the newest snapshot (one lookup), but once the snapshots that held it
    /// are deleted it may have been the running point's alone, and is freed here too.
    fn release_if_unshared(&mut self, lba: u64, vba: u64, sut: &mut Sut) {
        if !self.held_by_a_snapshot(lba, vba) {
            self.free_vba(vba, sut);
        }
    }

    /// Whether a snapshot (or an import's staging tree) maps `lba` to `vba`. Only snapshots
    /// taken after the VBA was born can, newest first (usually the first one answers).
    pub(super) fn held_by_a_snapshot(&self, lba: u64, vba: u64) -> bool {
        self.held_by_staging(lba, vba)
            || vba < self.watermark()
                && self
                    .snapshots
                    .iter()
                    .rev()
                    .take_while(|s| s.vba_watermark > vba)
                    .any(|s| self.lba.get(s.root, lba) == Some(Vba(vba)))
    }

    pub(crate) fn free_vba(&mut self, vba: u64, sut: &mut Sut) {
        let seq = self.seq;
        if let Some(e) = self.vba.remove(&mut self.vba_root, vba, seq, 0) {
            self.unhold(e.pba, vba, sut);
        }
    }

    /// Freezes the running point as a new snapshot (O(1): the tree is shared, not copied).
    pub fn create_snapshot(&mut self, name: &str, created: u64) -> u64 {
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        self.lba.retain(self.running);
        self.snapshots.push(Snapshot {
            id,
            name: name.to_string(),
            seq: self.seq,
            root: self.running,
            vba_watermark: self.next_vba,
            created,
            reverted_before: std::mem::take(&mut self.running_reverted),
        });
        self.seq += 1;
        id
    }

    /// Deletes a snapshot: it leaves the list at once (O(1)); its blocks are given back by
    /// [`reclaim_candidates`](Self::reclaim_candidates), [`unheld`](Self::unheld) and Release
    /// records, then [`drop_doomed`](Self::drop_doomed) frees its tree.
    pub fn delete_snapshot(&mut self, id: u64) -> bool {
        let Some(i) = self.snapshots.iter().position(|s| s.id == id) else {
            return false;
        };
        let snap = self.snapshots.remove(i);
        // Its interval joins the next tree's: a revert before it happened before that one too.
        match self.snapshots.get_mut(i) {
            Some(next) => next.reverted_before |= snap.reverted_before,
            None => self.running_reverted |= snap.reverted_before,
        }
        self.doomed.push(snap);
        self.seq += 1;
        true
    }

    /// What deleted snapshot `id` may be the last holder of: the blocks where it differs from
    /// the next newer tree (the next live snapshot, or the running point), which holds the
    /// rest. A diff skips the subtrees both share, so the cost follows what the snapshot alone
    /// may hold, not the disk size. `born_after` is the watermark of the newest live snapshot
    /// older than it: VBAs from then on are its own or later trees'.
    pub fn reclaim_candidates(&self, id: u64) -> Option<Reclaim> {
        let snap = self.doomed.iter().find(|s| s.id == id)?;
        let previous = self.snapshots.iter().rev().find(|s| s.seq < snap.seq);
        let next = self
            .snapshots
            .iter()
            .find(|s| s.seq > snap.seq)
            .map_or(self.running, |s| s.root);
        let born_after = previous.map_or(0, |p| p.vba_watermark);
        let mut r = Reclaim {
            id,
            seq: snap.seq,
            owned: Vec::new(),
            inherited: Vec::new(),
        };
        for b in diff_trees(&self.lba, Some(next), Some(snap.root)).blocks {
            match b.vba {
                Some(v) if v >= born_after => r.owned.push((b.lba, v)),
                Some(v) => r.inherited.push((b.lba, v)),
                None => {}
            }
        }
        Some(r)
    }

    /// The candidates no live tree holds and the VBA map still has, sorted: what the next
    /// Release record frees. A VBA is only ever mapped at the LBA it was written to, so one
    /// lookup per tree says, and few trees need asking:
    /// - a VBA born after the older snapshot (`owned`) can only be in trees made later. The
    ///   next one does not hold it (the diff says so); a tree after that can only if the
    ///   running point was reverted since, to a tree that held it, so only trees made after a
    ///   revert are asked (none, usually);
    /// - an older VBA (`inherited`) is usually the older snapshot's too, asked first, then
    ///   every other tree.
    pub fn unheld(&self, seq: u64, owned: &[(u64, u64)], inherited: &[(u64, u64)]) -> Vec<u64> {
        let mut after_a_revert = Vec::new();
        let mut reverted = false;
        for s in self.snapshots.iter().filter(|s| s.seq > seq).skip(1) {
            reverted |= s.reverted_before;
            if reverted {
                after_a_revert.push(s.root);
            }
        }
        if reverted || self.running_reverted {
            after_a_revert.push(self.running);
        }
        let every: Vec<NodeId> = self
            .snapshots
            .iter()
            .rev()
            .filter(|s| s.seq < seq)
            .chain(self.snapshots.iter().filter(|s| s.seq > seq))
            .map(|s| s.root)
            .chain([self.running])
            .collect();
        let held_by = |roots: &[NodeId], lba: u64, v: u64| {
            roots.iter().any(|r| self.lba.get(*r, lba) == Some(Vba(v)))
        };
        let mut free: Vec<u64> = owned
            .iter()
            .filter(|(lba, v)| !held_by(&after_a_revert, *lba, *v))
            .chain(
                inherited
                    .iter()
                    .filter(|(lba, v)| !held_by(&every, *lba, *v)),
            )
            .map(|(_, v)| *v)
            .filter(|v| self.vba.get(self.vba_root, *v).is_some())
            .collect();
        free.sort_unstable();
        free
    }

    /// Frees the tree of deleted snapshot `id` once its blocks are given back: the nodes no
    /// other tree holds go; the running point's nodes that only it shared now have one
    /// reference, so the next write changes them in place.
    pub fn drop_doomed(&mut self, id: u64) -> bool {
        let Some(i) = self.doomed.iter().position(|s| s.id == id) else {
            return false;
        };
        let snap = self.doomed.remove(i);
        self.lba.unref(snap.root);
        true
    }

    /// Makes the running point a copy of snapshot `id` (shared until written).
    pub fn revert_to(&mut self, id: u64, sut: &mut Sut) -> bool {
        let Some(root) = self.snapshots.iter().find(|s| s.id == id).map(|s| s.root) else {
            return false;
        };
        // What the running point alone holds goes: everything born since the newest snapshot,
        // and older VBAs no snapshot holds any more (a revert to an older snapshot, then its
        // delete, leaves such VBAs to the running point).
        let wm = self.watermark();
        let mut mapped = Vec::new();
        self.lba.range(self.running, 0, u64::MAX, &mut |lba, v| {
            mapped.push((lba, v.0));
        });
        let mut exclusive: Vec<u64> = mapped
            .into_iter()
            .filter(|&(lba, v)| v >= wm || !self.held_by_a_snapshot(lba, v))
            .map(|(_, v)| v)
            .collect();
        exclusive.sort_unstable();
        self.seq += 1;
        for v in exclusive {
            self.free_vba(v, sut);
        }
        self.lba.retain(root);
        let old = std::mem::replace(&mut self.running, root);
        self.lba.unref(old);
        self.running_reverted = true;
        true
    }

    /// Every LBA tree root: the running point first, then the snapshots, then the trees of
    /// snapshots being deleted, then an import's staging tree.
    pub fn lba_roots(&self) -> Vec<NodeId> {
        let mut r = self.lba_live_roots();
        r.extend(self.doomed.iter().map(|s| s.root));
        r.extend(self.staging.as_ref().map(|s| s.root));
        r
    }

    /// The running point's and the live snapshots' roots.
    fn lba_live_roots(&self) -> Vec<NodeId> {
        let mut r = vec![self.running];
        r.extend(self.snapshots.iter().map(|s| s.root));
        r
    }
}

/// A deleted snapshot's candidates for freeing, by kind (see [`Maps::unheld`]).
#[derive(Debug, Clone, Default)]
pub struct Reclaim {
    pub id: u64,
    pub seq: u64,
    /// (LBA, VBA) born after the older snapshot.
    pub owned: Vec<(u64, u64)>,
    /// (LBA, VBA) older than that.
    pub inherited: Vec<(u64, u64)>,
}
