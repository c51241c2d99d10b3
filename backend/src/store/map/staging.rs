//! A live import's staging tree in the maps: an LBA tree apart from the running point, which
//! the guest never writes, where a backing chain's views are built and frozen as snapshots
//! (the store's side, journaling and checkpoints: `admin/staging.rs`).

use crate::store::map::btree::NodeId;
use crate::store::map::maps::{Maps, Snapshot, Vba};
use crate::store::map::sut::Sut;

/// The staging tree and the import's progress in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staging {
    pub root: NodeId,
    /// Views frozen so far: the index of the view being staged.
    pub view: u64,
    /// Every block of that view below this LBA is staged.
    pub cursor: u64,
}

impl Maps {
    /// Whether the staging tree maps `lba` to `vba`.
    pub(crate) fn held_by_staging(&self, lba: u64, vba: u64) -> bool {
        self.staging
            .is_some_and(|s| self.lba.get(s.root, lba) == Some(Vba(vba)))
    }

    /// Whether the running point maps `lba` to `vba`.
    fn held_by_running(&self, lba: u64, vba: u64) -> bool {
        self.lba.get(self.running, lba) == Some(Vba(vba))
    }

    pub(crate) fn stage_map(&mut self, lba: u64, vba: u64, pba: u64, crc: u32, sut: &mut Sut) {
        let Some(mut st) = self.staging else {
            return;
        };
        self.add_vba(vba, pba, crc, sut);
        let (seq, frozen) = (self.seq, self.frozen());
        let old = self.lba.insert(&mut st.root, lba, Vba(vba), seq, frozen);
        self.staging = Some(st);
        if let Some(old) = old.filter(|o| o.0 != vba) {
            self.release_staged(lba, old.0, sut);
        }
    }

    pub(crate) fn stage_unmap(&mut self, lba: u64, count: u64, sut: &mut Sut) {
        let Some(mut st) = self.staging else {
            return;
        };
        let (seq, frozen) = (self.seq, self.frozen());
        let mut found = Vec::new();
        self.lba
            .range(st.root, lba, lba.saturating_add(count), &mut |k, v| {
                found.push((k, v.0))
            });
        for (k, _) in &found {
            self.lba.remove(&mut st.root, *k, seq, frozen);
        }
        self.staging = Some(st);
        for (k, v) in found {
            self.release_staged(k, v, sut);
        }
    }

    /// Frees `vba`, which the staging tree no longer maps at `lba`, unless another tree does.
    fn release_staged(&mut self, lba: u64, vba: u64, sut: &mut Sut) {
        if !self.held_by_a_snapshot(lba, vba) && !self.held_by_running(lba, vba) {
            self.free_vba(vba, sut);
        }
    }

    /// The running point takes the staging tree's blocks in `count` blocks from `lba` where
    /// it maps none.
    pub(crate) fn adopt(&mut self, lba: u64, count: u64) {
        let Some(st) = self.staging else {
            return;
        };
        let mut staged = Vec::new();
        self.lba
            .range(st.root, lba, lba.saturating_add(count), &mut |k, v| {
                staged.push((k, v))
            });
        let (seq, frozen) = (self.seq, self.frozen());
        for (k, v) in staged {
            if self.lba.get(self.running, k).is_none() {
                self.lba.insert(&mut self.running, k, v, seq, frozen);
            }
        }
    }

    /// Freezes the staging tree as snapshot `name` (O(1), like a snapshot of the running
    /// point) and moves the import on to the next view; the snapshot's id, or `None` without
    /// a staging tree.
    pub(crate) fn freeze_staging(&mut self, name: &str, created: u64) -> Option<u64> {
        let st = self.staging.as_mut()?;
        st.view += 1;
        st.cursor = 0;
        let root = st.root;
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        self.lba.retain(root);
        self.snapshots.push(Snapshot {
            id,
            name: name.to_string(),
            seq: self.seq,
            root,
            vba_watermark: self.next_vba,
            created,
            reverted_before: false,
        });
        self.seq += 1;
        Some(id)
    }

    /// Drops the staging tree: the blocks no snapshot and not the running point holds are
    /// freed, then its nodes no other tree holds.
    pub(crate) fn end_staging(&mut self, sut: &mut Sut) {
        let Some(st) = self.staging.take() else {
            return;
        };
        self.seq += 1;
        for (lba, v) in self.lba.entries(st.root) {
            if !self.held_by_a_snapshot(lba, v.0) && !self.held_by_running(lba, v.0) {
                self.free_vba(v.0, sut);
            }
        }
        self.lba.unref(st.root);
    }
}
