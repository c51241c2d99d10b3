//! A live import's staging tree: an LBA tree apart from the running point, which the guest
//! never writes, where a backing chain's views are built one after another and frozen as
//! snapshots.
//!
//! The copier stages view 1 (the oldest layer), freezes the staging tree as a snapshot (the
//! tree is shared, not copied), stages only the blocks view 2 changes (the rest stays shared
//! with the snapshot below), freezes it, and so on. The last view staged is the top's current
//! contents: the running point then takes its blocks where it has none ([`Store::adopt_staging`],
//! one journal entry per range, checked when the record is applied, so a guest write before
//! or after always wins) and the staging tree is dropped. Blocks are stored once: the snapshots,
//! the staging tree and the running point share VBAs.
//!
//! Staged blocks and adoptions are journal entries like any map change; creating the staging
//! tree, freezing it, and dropping it (with the import's end) are checkpoints, which also write
//! the tree's root and how far the import got (the view being staged and its cursor) under
//! `INCOMPAT_STAGING`.

use super::import::Target;
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use crate::store::log::checkpoint;
use crate::store::log::journal::Entry;
use crate::store::log::superblock::INCOMPAT_STAGING;
use crate::store::log::write::Committer;
use crate::store::map::staging::Staging;
use crate::store::{Store, now_secs};

impl Store {
    /// The view being staged and its cursor while a staging tree exists.
    pub fn staging_progress(&self) -> Option<(u64, u64)> {
        let st = self.read_lock(&self.state);
        st.maps.staging.map(|s| (s.view, s.cursor))
    }

    /// Starts an empty staging tree at view 0; durable when this returns. A staging tree that
    /// exists already is kept (an import resuming).
    pub fn begin_staging(&self) -> Result<()> {
        self.ensure_ok()?;
        let mut j = self.quiet_journal();
        self.add_staging_tree(&mut j);
        self.checkpoint_locked(&mut j)
    }

    /// [`Store::begin_import_from`] with an empty staging tree, in one checkpoint: the import
    /// of a chain whose views become snapshots.
    pub fn begin_staged_import(&self, source_bytes: u64, source_id: Option<u64>) -> Result<()> {
        self.ensure_ok()?;
        {
            let mut j = self.quiet_journal();
            self.add_staging_tree(&mut j);
        }
        self.begin_import_from(source_bytes, source_id)
    }

    /// An empty staging tree in memory unless there is one, and the feature bit the next
    /// checkpoint writes.
    fn add_staging_tree(&self, j: &mut crate::store::JournalState) {
        let mut st = self.write_lock(&self.state);
        if st.maps.staging.is_none() {
            let seq = st.maps.seq;
            let root = st.maps.lba.new_leaf(seq);
            st.maps.staging = Some(Staging {
                root,
                view: 0,
                cursor: 0,
            });
        }
        j.superblock.incompat |= INCOMPAT_STAGING;
    }

    /// Moves the staging cursor to `blocks`; the next checkpoint makes it durable. The caller
    /// has staged every block of the view below it.
    pub fn advance_staging(&self, blocks: u64) {
        let mut st = self.write_lock(&self.state);
        if let Some(s) = st.maps.staging.as_mut() {
            s.cursor = s.cursor.max(blocks);
        }
    }

    /// Writes `blocks` (LBA, 4096 bytes each, LBAs ascending) into the staging tree as one
    /// record; a block of zeroes is unmapped there instead of stored.
    pub fn stage_blocks(&self, writer: usize, blocks: &[(u64, &[u8])]) -> Result<()> {
        self.require_staging()?;
        let cap_blocks = self.capacity() / BLOCK;
        let mut data = Vec::with_capacity(blocks.len());
        let mut zero = Vec::new();
        for &(lba, b) in blocks {
            if lba >= cap_blocks || b.len() != BLOCK_SIZE {
                return Err(StoreError::Invalid(format!(
                    "staged block {lba} is outside the disk or not 4096 bytes"
                )));
            }
            if b.iter().all(|x| *x == 0) {
                zero.push(Entry::StageUnmap { lba, count: 1 });
            } else {
                data.push((lba, b));
            }
        }
        self.write_import_blocks(writer, &data, Target::Staging, zero)
            .map(|_| ())
    }

    /// Unmaps `count` blocks from `lba` in the staging tree.
    pub fn stage_unmap(&self, lba: u64, count: u64) -> Result<()> {
        self.require_staging()?;
        if lba
            .checked_add(count)
            .is_none_or(|end| end > self.capacity() / BLOCK)
        {
            return Err(StoreError::Invalid(format!(
                "staged unmap {lba}+{count} is outside the disk"
            )));
        }
        self.commit_entry(Entry::StageUnmap { lba, count })
    }

    /// Reads the staging tree from block `lba` into `out` (whole blocks; zeroes where it maps
    /// none).
    pub fn read_staged(&self, lba: u64, out: &mut [u8]) -> Result<()> {
        if !out.len().is_multiple_of(BLOCK_SIZE) {
            return Err(StoreError::Invalid(
                "a staged read is of whole blocks".into(),
            ));
        }
        let mapped: Vec<(usize, u64)> = {
            let st = self.read_lock(&self.state);
            let s = st.maps.staging.ok_or_else(no_staging)?;
            let n = (out.len() / BLOCK_SIZE) as u64;
            let mut m = Vec::new();
            st.maps
                .lba
                .range(s.root, lba, lba.saturating_add(n), &mut |k, v| {
                    m.push(((k - lba) as usize, v.0))
                });
            m
        };
        out.fill(0);
        let vbas: Vec<u64> = mapped.iter().map(|(_, v)| *v).collect();
        let mut data = vec![0u8; vbas.len() * BLOCK_SIZE];
        self.read_vbas(&vbas, &mut data)?;
        for ((i, _), b) in mapped.iter().zip(data.chunks(BLOCK_SIZE)) {
            out[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE].copy_from_slice(b);
        }
        Ok(())
    }

    /// Freezes the staging tree as snapshot `name`, listed after the snapshots before it, and
    /// moves on to the next view (cursor 0); durable when this returns.
    pub fn freeze_staging(&self, name: &str) -> Result<u64> {
        self.ensure_ok()?;
        let _one = self.lock(&self.snapshot_ops);
        let mut j = self.quiet_journal();
        let id = {
            let mut st = self.write_lock(&self.state);
            let max = checkpoint::max_snapshots(self.geo.seg_blocks);
            // The staging record takes a snapshot's room in the checkpoint root too.
            if st.maps.snapshots.len() + st.maps.doomed.len() + 1 >= max {
                return Err(StoreError::Invalid(format!(
                    "at most {max} snapshots per container"
                )));
            }
            st.maps
                .freeze_staging(&checkpoint::clamp_name(name), now_secs())
                .ok_or_else(no_staging)?
        };
        self.checkpoint_locked(&mut j)?;
        drop(j);
        self.note_frozen_nodes();
        Ok(id)
    }

    /// The running point takes the staging tree's blocks in `count` blocks from `lba` where it
    /// maps none, sharing them (one journal entry; a guest write before or after it wins).
    pub fn adopt_staging(&self, lba: u64, count: u64) -> Result<()> {
        self.require_staging()?;
        if lba
            .checked_add(count)
            .is_none_or(|end| end > self.capacity() / BLOCK)
        {
            return Err(StoreError::Invalid(format!(
                "adopted range {lba}+{count} is outside the disk"
            )));
        }
        self.commit_entry(Entry::Adopt { lba, count })
    }

    /// Refuses `what` (a snapshot, a delete, a revert) while a staging tree exists: the
    /// snapshots are still being built, and a deleted one's blocks may be staged ones.
    pub(super) fn refuse_while_staging(&self, what: &str) -> Result<()> {
        match self.read_lock(&self.state).maps.staging {
            Some(_) => Err(StoreError::Invalid(format!(
                "{what} waits until the import has staged its snapshots"
            ))),
            None => Ok(()),
        }
    }

    fn require_staging(&self) -> Result<()> {
        self.ensure_ok()?;
        match self.read_lock(&self.state).maps.staging {
            Some(_) => Ok(()),
            None => Err(no_staging()),
        }
    }

    fn commit_entry(&self, e: Entry) -> Result<()> {
        self.commit_with(vec![e], Vec::new(), &mut Vec::new(), Committer::InOrder)
            .map(|_| ())
    }
}

fn no_staging() -> StoreError {
    StoreError::Invalid("no import is staging views in this container".into())
}
