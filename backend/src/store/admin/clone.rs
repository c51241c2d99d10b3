//! Cloning a snapshot into a new container: a new disk that starts with the snapshot's
//! contents and then goes its own way.
//!
//! The copy holds only the blocks the snapshot maps (found from its tree, unwritten ranges stay
//! unwritten), written in 1 MiB batches while the source keeps serving; the snapshot cannot
//! change underneath, and the blocks it holds stay put until they are read (segment pins). The
//! new container has the source's capacity and no snapshots. A failed clone removes its file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::store::admin::diff::{ChangedBlock, TreeRef};
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK;
use crate::store::log::format::CreateOptions;
use crate::store::{Op, Store, StoreOptions};

/// Blocks per copy batch.
const BATCH: usize = 256;

/// What a copy running on another thread shares with whoever watches it.
#[derive(Debug, Default)]
pub struct CloneWatch {
    /// Blocks copied so far.
    pub copied: AtomicU64,
    /// Set to stop the copy at its next batch (keeld shutting down).
    pub cancel: AtomicBool,
}

impl Store {
    /// Writes snapshot `id`'s contents into a new container at `path` (which must not exist).
    /// Returns the number of blocks copied.
    pub fn clone_snapshot(&self, id: u64, path: &Path) -> Result<u64> {
        let blocks = self.clone_plan(id)?;
        self.clone_into(&blocks, path, &CloneWatch::default())
    }

    /// The blocks a clone of snapshot `id` copies: those its tree maps.
    pub fn clone_plan(&self, id: u64) -> Result<Vec<ChangedBlock>> {
        let blocks = self.diff(TreeRef::Empty, TreeRef::Snapshot(id))?.blocks;
        Ok(blocks.into_iter().filter(|b| b.vba.is_some()).collect())
    }

    /// Copies `blocks` (from [`Self::clone_plan`]) into a new container at `path`, counting
    /// them in `watch`. A failed or cancelled copy removes the file it created.
    pub fn clone_into(
        &self,
        blocks: &[ChangedBlock],
        path: &Path,
        watch: &CloneWatch,
    ) -> Result<u64> {
        // The clone is encrypted with the source's key, as the source is, and compressed
        // with its codec.
        let create = CreateOptions {
            encryption: self.opts.key.clone(),
            compression: self.codec,
            ..CreateOptions::new(self.capacity())
        };
        Store::create_path(path, &create)?;
        let copied = self.copy_blocks(blocks, path, watch);
        if copied.is_err() {
            let _ = std::fs::remove_file(path);
        }
        copied
    }

    fn copy_blocks(&self, blocks: &[ChangedBlock], path: &Path, watch: &CloneWatch) -> Result<u64> {
        let opts = StoreOptions {
            key: self.opts.key.clone(),
            ..StoreOptions::default()
        };
        let target = Store::open_path(path, opts)?;
        // The clone's blocks are compressed with the source's dictionary from the first one.
        if let Some(d) = self.dict.get() {
            target.dict.install(d.bytes().to_vec())?;
        }
        let mut buf = vec![0u8; BATCH * BLOCK as usize];
        let mut copied = 0u64;
        for chunk in blocks.chunks(BATCH) {
            if watch.cancel.load(Ordering::Relaxed) {
                return Err(StoreError::Invalid("the clone was cancelled".into()));
            }
            let mapped: Vec<(u64, u64)> = chunk
                .iter()
                .filter_map(|b| b.vba.map(|v| (b.lba, v)))
                .collect();
            let vbas: Vec<u64> = mapped.iter().map(|&(_, v)| v).collect();
            let data = &mut buf[..vbas.len() * BLOCK as usize];
            self.read_vbas(&vbas, data)?;
            let ops: Vec<Op<'_>> = mapped
                .iter()
                .zip(data.chunks(BLOCK as usize))
                .map(|(&(lba, _), data)| Op::Write {
                    offset: lba * BLOCK,
                    data,
                })
                .collect();
            target.write_batch(0, &ops)?;
            copied += ops.len() as u64;
            watch.copied.store(copied, Ordering::Relaxed);
        }
        target.flush()?;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{new_store, small_opts};

    #[test]
    fn a_clone_holds_the_snapshot_and_not_what_came_after() {
        let (_dev, s) = new_store(&small_opts());
        let block = |b: u8| vec![b; BLOCK as usize];
        let write = |offset: u64, data: &[u8]| {
            s.write_batch(0, &[Op::Write { offset, data }]).unwrap();
        };
        write(0, &block(1));
        write(200 * BLOCK, &block(2));
        let snap = s.create_snapshot("gold").unwrap();
        write(0, &block(3));
        write(5 * BLOCK, &block(4));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clone.keel");
        assert_eq!(s.clone_snapshot(snap, &path).unwrap(), 2);
        let c = Store::open_path(&path, crate::store::tests::store_opts()).unwrap();
        assert_eq!(c.capacity(), s.capacity());
        assert!(c.list_snapshots().is_empty());
        let mut got = vec![0u8; BLOCK as usize];
        for (at, want) in [(0, 1u8), (200, 2), (5, 0)] {
            c.read(at * BLOCK, &mut got).unwrap();
            assert_eq!(got, block(want), "block {at}");
        }
        assert!(c.fsck().is_clean());
        // The clone is a disk of its own; the source is untouched.
        c.write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &block(9),
            }],
        )
        .unwrap();
        s.read(0, &mut got).unwrap();
        assert_eq!(got, block(3));

        // An existing file is never overwritten; a missing snapshot is an error, no file left.
        assert!(s.clone_snapshot(snap, &path).is_err());
        let other = dir.path().join("other.keel");
        assert!(s.clone_snapshot(snap + 100, &other).is_err());
        assert!(!other.exists());
    }
}
