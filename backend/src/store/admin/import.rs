//! What a live import needs from the store: a durable cursor and a write that never
//! overwrites the guest.
//!
//! While `INCOMPAT_IMPORTING` is set, the superblock's `import_cursor` says how far the import
//! got: every block below it is final (copied, written by the guest, or a hole of the source).
//! Above it, a block the maps lack is still on the source. The cursor is written by every
//! checkpoint, and it only moves past blocks whose records are applied, so the checkpoint that
//! writes it also holds them. The copier writes with [`Store::fill_absent`]: a block is
//! committed only if the running point lacks it when its record is reserved, so a guest write
//! (journaled before it, or after it and so applied after it) always wins.

use crate::store::Store;
use crate::store::buf::AlignedBuf;
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use crate::store::log::journal::{self, Entry};
use crate::store::log::superblock::{
    COMPAT_IMPORT_SOURCE_ID, COMPAT_IMPORTED, INCOMPAT_IMPORTING, INCOMPAT_STAGING,
};
use crate::store::log::write::Waits;
use crate::store::log::write_plan::{Part, Run, gathers};
use crate::store::seal::seal_for_store;

/// The tree an import's blocks go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The running point, each block only if it lacks it (the guest's writes win).
    RunningIfAbsent,
    /// The staging tree, unconditionally (the guest never writes it).
    Staging,
}

impl Store {
    /// The import's cursor (in blocks) while one is running; `None` otherwise.
    pub fn import_cursor(&self) -> Option<u64> {
        let j = self.lock(&self.journal);
        (j.superblock.incompat & INCOMPAT_IMPORTING != 0).then_some(j.superblock.import_cursor)
    }

    /// Whether an import filled this container and finished.
    pub fn import_finished(&self) -> bool {
        self.lock(&self.journal).superblock.compat & COMPAT_IMPORTED != 0
    }

    /// The size of the source the running import began with.
    pub fn import_source_bytes(&self) -> Option<u64> {
        let j = self.lock(&self.journal);
        (j.superblock.incompat & INCOMPAT_IMPORTING != 0)
            .then_some(j.superblock.import_source_bytes)
    }

    /// The identity of the source the running import began with, if it was recorded.
    pub fn import_source_id(&self) -> Option<u64> {
        let j = self.lock(&self.journal);
        let sb = &j.superblock;
        (sb.incompat & INCOMPAT_IMPORTING != 0 && sb.compat & COMPAT_IMPORT_SOURCE_ID != 0)
            .then_some(sb.import_source_id)
    }

    /// Marks the container as being imported into from a source of `source_bytes`, from
    /// block 0; durable when this returns.
    pub fn begin_import(&self, source_bytes: u64) -> Result<()> {
        self.begin_import_from(source_bytes, None)
    }

    /// As [`Self::begin_import`], recording the source's identity (see
    /// [`Self::import_source_id`]) when there is one.
    pub fn begin_import_from(&self, source_bytes: u64, source_id: Option<u64>) -> Result<()> {
        self.ensure_ok()?;
        let mut j = self.quiet_journal();
        j.superblock.incompat |= INCOMPAT_IMPORTING;
        j.superblock.import_cursor = 0;
        j.superblock.import_source_bytes = source_bytes;
        match source_id {
            Some(id) => {
                j.superblock.compat |= COMPAT_IMPORT_SOURCE_ID;
                j.superblock.import_source_id = id;
            }
            None => {
                j.superblock.compat &= !COMPAT_IMPORT_SOURCE_ID;
                j.superblock.import_source_id = 0;
            }
        }
        self.checkpoint_locked(&mut j)
    }

    /// Moves the cursor to `blocks`; the next checkpoint makes it durable. The caller has
    /// committed every block below it (or knows them to be holes).
    pub fn advance_import(&self, blocks: u64) {
        let mut j = self.lock(&self.journal);
        if j.superblock.incompat & INCOMPAT_IMPORTING != 0 {
            j.superblock.import_cursor = j.superblock.import_cursor.max(blocks);
        }
    }

    /// Ends the import: from the checkpoint this takes on, the container no longer refers to
    /// a source (an older Keel opens it again), and holds no staging tree.
    pub fn finish_import(&self) -> Result<()> {
        self.ensure_ok()?;
        let mut j = self.quiet_journal();
        // A staging tree the running point adopted goes with the same checkpoint.
        {
            let mut st = self.write_lock(&self.state);
            let crate::store::State { maps, sut, .. } = &mut *st;
            maps.end_staging(sut);
        }
        j.superblock.incompat &= !(INCOMPAT_IMPORTING | INCOMPAT_STAGING);
        j.superblock.compat |= COMPAT_IMPORTED;
        j.superblock.compat &= !COMPAT_IMPORT_SOURCE_ID;
        j.superblock.import_cursor = 0;
        j.superblock.import_source_bytes = 0;
        j.superblock.import_source_id = 0;
        self.checkpoint_locked(&mut j)
    }

    /// Whether the running point maps block `lba`.
    pub fn is_mapped(&self, lba: u64) -> bool {
        self.read_lock(&self.state).maps.lookup(lba).is_some()
    }

    /// Writes `blocks` (LBA, 4096 bytes each, LBAs ascending) as one record, each block only if
    /// the running point lacks it when the record is reserved; returns the blocks committed.
    /// A block the guest wrote, before or concurrently, is never overwritten.
    pub fn fill_absent(&self, writer: usize, blocks: &[(u64, &[u8])]) -> Result<u64> {
        self.write_import_blocks(writer, blocks, Target::RunningIfAbsent, Vec::new())
    }

    /// Writes `blocks` as one record into `target`, with `extra` entries after them; returns
    /// the blocks committed.
    pub(super) fn write_import_blocks(
        &self,
        writer: usize,
        blocks: &[(u64, &[u8])],
        target: Target,
        extra: Vec<Entry>,
    ) -> Result<u64> {
        self.ensure_ok()?;
        let cap_blocks = self.capacity() / BLOCK;
        for (lba, data) in blocks {
            if *lba >= cap_blocks || data.len() != BLOCK_SIZE {
                return Err(StoreError::Invalid(format!(
                    "import block {lba} is outside the disk or not 4096 bytes"
                )));
            }
        }
        let if_absent = target == Target::RunningIfAbsent;
        let wanted: Vec<&(u64, &[u8])> = (blocks.iter())
            .filter(|(l, _)| !if_absent || !self.is_mapped(*l))
            .collect();
        if wanted.is_empty() && extra.is_empty() {
            return Ok(0);
        }
        let mut copies = AlignedBuf::scratch(wanted.len());
        for (k, (_, data)) in wanted.iter().enumerate() {
            copies.block_mut(k).copy_from_slice(data);
        }
        let slot = &self.writers[writer % self.writers.len()];
        let mut w = self.lock(slot);
        let mut entries = Vec::with_capacity(wanted.len());
        let mut runs: Vec<Run<'_>> = Vec::new();
        // A compressed container packs what it imports as it packs guest writes.
        let sources: Vec<&[u8]> = (0..wanted.len()).map(|k| copies.block(k)).collect();
        let parts: Vec<Part<'_>> = (0..wanted.len()).map(Part::Copy).collect();
        let packed = self.codec.map(|codec| self.pack(writer, codec, &sources));
        let lbas: Vec<u64> = wanted.iter().map(|(lba, _)| *lba).collect();
        let placed = (&lbas[..], &sources[..], &parts[..]);
        match packed.as_ref().filter(|p| p.any_packed()) {
            Some(packed) => self.place_packed(
                &mut w,
                placed,
                packed,
                &mut entries,
                &mut runs,
                Waits::Allowed,
            )?,
            None => self.place_raw(&mut w, placed, &mut entries, &mut runs, Waits::Allowed)?,
        };
        if target == Target::Staging {
            for e in &mut entries {
                if let Entry::Map { lba, vba, pba, crc } = *e {
                    *e = Entry::StageMap { lba, vba, pba, crc };
                }
            }
        }
        entries.extend(extra);
        // An encrypted container's data is sealed, and checksummed as stored, here.
        let plain = gathers(&runs, Some(&copies), packed.as_ref().map(|p| &p.buf));
        let sealed = seal_for_store(&self.data, &mut entries, &plain)?;
        let runs = match &sealed {
            Some(s) => s.gathers(),
            None => plain,
        };
        let record_blocks = journal::record_blocks(&entries) as u64;
        let journal_blocks = self.geo.journal_blocks();
        let threshold = journal_blocks * self.opts.checkpoint_percent.clamp(1, 100) as u64 / 100;
        // The filter below and the reservation must happen under one hold of the journal lock:
        // a checkpoint inside the reservation would let it go. So take it first.
        let j = loop {
            let mut j = self.lock(&self.journal);
            // Every record reserved so far applied: the maps show every earlier write.
            while j.applied_lsn + 1 < j.cursor.next_lsn && !self.poisoned() {
                j = self.unpoison(self.journal_cv.wait(j));
            }
            // Past this, placing the record cannot let the lock go (see `place_record`).
            let full = j.freezing
                || j.ring.place(j.cursor.pos, record_blocks).is_none()
                || (j.ring.used >= threshold && !j.checkpointing);
            if j.fresh_chain || full {
                drop(j);
                self.checkpoint()?;
                continue;
            }
            break j;
        };
        self.ensure_ok()?;
        {
            let st = self.read_lock(&self.state);
            entries.retain(|e| match *e {
                Entry::Map { lba, .. } => st.maps.lookup(lba).is_none(),
                _ => true,
            });
        }
        let committed = (entries.iter())
            .filter(|e| matches!(e, Entry::Map { .. } | Entry::StageMap { .. }))
            .count() as u64;
        self.commit_locked(j, entries, runs, &mut w.retired)?;
        drop(w);
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::{new_store, small_opts};
    use crate::store::{Op, Store};
    use crate::testing::CrashMode;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; 4096]
    }

    #[test]
    fn fill_absent_never_overwrites_a_written_block() {
        let (_dev, s) = new_store(&small_opts());
        let guest = block(7);
        s.write_batch(
            0,
            &[Op::Write {
                offset: 4096,
                data: &guest,
            }],
        )
        .unwrap();
        let src = block(1);
        let n = s
            .fill_absent(1, &[(0, &src), (1, &src), (2, &src)])
            .unwrap();
        assert_eq!(n, 2, "block 1 was the guest's");
        let mut back = vec![0u8; 3 * 4096];
        s.read(0, &mut back).unwrap();
        assert!(back[..4096].iter().all(|b| *b == 1));
        assert!(back[4096..8192].iter().all(|b| *b == 7));
        assert!(back[8192..].iter().all(|b| *b == 1));
        assert!(s.fill_absent(0, &[(1 << 30, &src)]).is_err());
    }

    #[test]
    fn the_cursor_is_durable_with_the_checkpoint_and_cleared_at_the_end() {
        let (dev, s) = new_store(&small_opts());
        assert_eq!(s.import_cursor(), None);
        s.begin_import_from(123 << 12, Some(0xfeed)).unwrap();
        let src = block(3);
        s.fill_absent(0, &[(10, &src)]).unwrap();
        s.advance_import(11);
        s.checkpoint().unwrap();
        s.advance_import(40);
        dev.crash(CrashMode::DropAll);
        drop(s);
        let s = Store::open(dev.clone(), crate::store::tests::store_opts()).unwrap();
        assert_eq!(s.import_cursor(), Some(11), "the checkpointed cursor");
        assert_eq!(s.import_source_bytes(), Some(123 << 12));
        assert_eq!(s.import_source_id(), Some(0xfeed));
        assert!(s.is_mapped(10));
        assert!(!s.import_finished());
        s.finish_import().unwrap();
        drop(s);
        let s = Store::open(dev, crate::store::tests::store_opts()).unwrap();
        assert_eq!(s.import_cursor(), None);
        assert_eq!(s.import_source_bytes(), None);
        assert_eq!(s.import_source_id(), None);
        assert!(s.import_finished());
        let report = s.fsck();
        assert!(report.is_clean(), "{:?}", report.problems);
    }
}
