//! Snapshots of the running point: create (one journal record), list, delete (blocks given
//! back in the background), revert.

use crate::store::log::write::Committer;
use crate::store::log::{checkpoint, journal, superblock};
use crate::store::{Result, SnapshotInfo, State, Store, StoreError, now_secs};
use std::sync::atomic::Ordering;

impl Store {
    /// Freezes the running point as a snapshot named `name`; durable when this returns.
    ///
    /// O(1): one journal record (the trees are shared, not copied), written once the batches in
    /// flight are applied, then a flush. A container made before snapshot records existed
    /// takes a checkpoint instead, which also marks it as using them from then on.
    pub fn create_snapshot(&self, name: &str) -> Result<u64> {
        self.ensure_ok()?;
        self.refuse_while_staging("a snapshot")?;
        let id = {
            // No batch may sit between taking its VBAs and committing them while the VBA
            // watermark is read: hold every writer, until the record is applied. (Writers
            // before the cleaner: a guest writer short of space runs a cleaner step.)
            let _writers: Vec<_> = self.writers.iter().map(|w| self.lock(w)).collect();
            let held = std::time::Instant::now();
            let _cleaner = self.lock(&self.cleaner_writer);
            let mut j = self.quiet_journal();
            let id = {
                let st = self.read_lock(&self.state);
                let max = checkpoint::max_snapshots(self.geo.seg_blocks);
                if st.maps.snapshots.len() + st.maps.doomed.len() >= max {
                    return Err(StoreError::Invalid(format!(
                        "at most {max} snapshots per container"
                    )));
                }
                st.maps.next_snapshot_id
            };
            if j.superblock.incompat & superblock::INCOMPAT_JOURNAL_SNAPSHOTS == 0 {
                j.superblock.incompat |= superblock::INCOMPAT_JOURNAL_SNAPSHOTS;
                self.write_lock(&self.state)
                    .maps
                    .create_snapshot(&checkpoint::clamp_name(name), now_secs());
                self.checkpoint_locked(&mut j)?;
                self.note_snapshot_pause(held.elapsed());
                return Ok(id);
            }
            drop(j);
            let entry = journal::Entry::Snapshot {
                id,
                created: now_secs(),
                name: journal::SnapName::new(name),
            };
            self.commit_with(vec![entry], Vec::new(), &mut Vec::new(), Committer::InOrder)?;
            self.note_snapshot_pause(held.elapsed());
            id
        };
        self.note_frozen_nodes();
        // Guest writes go on meanwhile: the flush only has to precede the answer.
        self.flush()?;
        Ok(id)
    }

    fn note_snapshot_pause(&self, d: std::time::Duration) {
        self.last_snapshot_pause_us
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// How long the last snapshot creation held guest writes back, in microseconds.
    pub fn last_snapshot_pause_us(&self) -> u64 {
        self.last_snapshot_pause_us.load(Ordering::Relaxed)
    }

    /// Snapshots, oldest first.
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        snapshot_infos(&self.read_lock(&self.state).maps)
    }

    /// Deletes snapshot `id`; durable when this returns, the blocks only it held are given
    /// back in the background ([`reclaim_step`](Self::reclaim_step)).
    ///
    /// The delete is one journal record, applied in order with the guest's batches (which go
    /// on meanwhile) and replayed by recovery, so a crash leaves the snapshot either whole or
    /// deleted; until its blocks are back, checkpoints list it as being deleted, and after a
    /// crash the work resumes. A container without these features takes a checkpoint
    /// instead, which also marks it as using them.
    pub fn delete_snapshot(&self, id: u64) -> Result<()> {
        self.ensure_ok()?;
        self.refuse_while_staging("a snapshot delete")?;
        // One snapshot operation at a time: the snapshot checked here is the one deleted.
        let _one = self.lock(&self.snapshot_ops);
        {
            let mut j = self.quiet_journal();
            if !self
                .read_lock(&self.state)
                .maps
                .snapshots
                .iter()
                .any(|s| s.id == id)
            {
                return Err(StoreError::Invalid(format!("no snapshot {id}")));
            }
            let features =
                superblock::INCOMPAT_JOURNAL_DELETES | superblock::INCOMPAT_BACKGROUND_DELETES;
            if j.superblock.incompat & features != features {
                j.superblock.incompat |= features;
                self.write_lock(&self.state).maps.delete_snapshot(id);
                self.checkpoint_locked(&mut j)?;
                self.wake_cleaner();
                self.note_space_coming();
                return Ok(());
            }
        }
        self.commit_with(
            vec![journal::Entry::DeleteSnapshot { id }],
            Vec::new(),
            &mut Vec::new(),
            Committer::InOrder,
        )?;
        self.flush()?;
        self.wake_cleaner();
        self.note_space_coming();
        Ok(())
    }

    /// Makes the disk's contents those of snapshot `id` again; durable when this returns.
    pub fn revert_to_snapshot(&self, id: u64) -> Result<()> {
        self.ensure_ok()?;
        self.refuse_while_staging("a revert")?;
        let mut j = self.quiet_journal();
        let found = {
            let mut st = self.write_lock(&self.state);
            let State { maps, sut, .. } = &mut *st;
            maps.revert_to(id, sut)
        };
        if !found {
            return Err(StoreError::Invalid(format!("no snapshot {id}")));
        }
        self.checkpoint_locked(&mut j)
    }
}

/// The maps' snapshots as the API shows them, oldest first.
pub(in crate::store) fn snapshot_infos(maps: &crate::store::map::maps::Maps) -> Vec<SnapshotInfo> {
    maps.snapshots
        .iter()
        .map(|s| SnapshotInfo {
            name: s.name.clone(),
            seq: s.id,
            created: s.created,
            ..SnapshotInfo::default()
        })
        .collect()
}
