//! Keel's storage core: a log-structured virtual disk in one container.
//!
//! Layers, top-down: [`Store`] (batches, reads, flush, checkpoints, the cleaner) ->
//! [`journal`] records and [`maps`] (LBA -> VBA B+trees with snapshots, VBA -> PBA) ->
//! [`alloc`] (per-writer segments) and [`sut`] (segment usage) -> the
//! [`BlockDevice`](crate::device::BlockDevice). The on-disk format is described by the
//! module docs of `layout`, `superblock`, `journal`, `checkpoint` and `btree`.

mod alloc;
mod batch;
pub mod btree;
mod buf;
mod checkpoint;
mod cleaner;
mod codec;
pub mod diff;
pub mod diff_file;
mod error;
mod format;
mod fsck;
pub mod journal;
pub mod layout;
pub mod maps;
mod persist;
mod recovery;
pub mod resize;
mod stats;
mod superblock;
mod sut;
pub mod testing;

#[cfg(test)]
mod tests;

pub use batch::Op;
pub use cleaner::{CleanReport, CleanerConfig, CleanerHandle};
pub use error::{Result, StoreError};
pub use format::CreateOptions;
pub use fsck::FsckReport;
pub use recovery::RecoveryReport;
pub use stats::Stats;

use crate::device::{BlockDevice, FileDevice};
use alloc::SegmentWriter;
use batch::check_request;
use buf::AlignedBuf;
use codec::block_crc;
use journal::{Entry, JournalCursor};
use layout::{BLOCK, Geometry};
use maps::Maps;
use stats::Counters;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use superblock::Superblock;
use sut::{SegKind, Sut};

/// How an open store behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Writer slots (one open segment each); queue workers pass their index.
    pub writers: usize,
    /// Checkpoint when the journal is this many percent full.
    pub checkpoint_percent: u8,
    /// Open the container file with O_DIRECT (falls back when the filesystem refuses).
    pub direct_io: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            writers: 4,
            checkpoint_percent: 50,
            direct_io: true,
        }
    }
}

/// Maps and segment usage: everything one metadata lock protects.
pub(crate) struct State {
    pub maps: Maps,
    pub sut: Sut,
    /// Blocks of the current checkpoint's SUT and root block (freed by the next one).
    pub ckpt_blocks: Vec<u64>,
}

/// The journal's write position and the checkpoint bookkeeping it serialises.
pub(crate) struct JournalState {
    pub cursor: JournalCursor,
    pub superblock: Superblock,
    pub meta_writer: SegmentWriter,
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub id: u64,
    pub name: String,
    pub created: u64,
}

/// What `keel info` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Info {
    pub capacity: u64,
    pub container_bytes: u64,
    pub segment_bytes: u64,
    pub segments: u64,
    pub data_segments: u64,
    pub free_segments: u64,
    pub pending_segments: u64,
    pub reserved_segments: u64,
    pub used_data_bytes: u64,
    pub mapped_bytes: u64,
    pub journal_bytes: u64,
    pub journal_used_bytes: u64,
    pub checkpoint_generation: u64,
    pub next_lsn: u64,
    pub snapshots: Vec<SnapshotInfo>,
    pub recovery: RecoveryReport,
}

/// The storage core of one virtual disk. `Send + Sync`: share it as `Arc<Store>`.
pub struct Store {
    dev: Arc<dyn BlockDevice>,
    geo: Geometry,
    state: RwLock<State>,
    journal: Mutex<JournalState>,
    writers: Vec<Mutex<SegmentWriter>>,
    cleaner_writer: Mutex<SegmentWriter>,
    /// Reads hold it shared while their I/O runs; releasing segments for reuse takes it
    /// exclusively, so a read never sees a block recycled under it.
    reuse: RwLock<()>,
    stats: Counters,
    failed: AtomicBool,
    opts: StoreOptions,
    recovery: RecoveryReport,
    /// Milliseconds since the Unix epoch of the last guest write (cleaner throttling).
    last_guest_write: AtomicU64,
    /// Holds the container's exclusive flock while the store is open.
    _lock: Option<File>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn now_millis_pub() -> u64 {
    now_millis()
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Writes a new, empty container onto `dev`.
    pub fn format(dev: &dyn BlockDevice, opts: &CreateOptions) -> Result<Geometry> {
        format::format(dev, opts)
    }

    /// Creates a container file at `path` (it must not exist) and formats it.
    pub fn create_path(path: &Path, opts: &CreateOptions) -> Result<Geometry> {
        let geo = opts.geometry()?;
        let dev = FileDevice::create(path, geo.container_bytes())?;
        format::format(&dev, opts)
    }

    /// Opens (and recovers) the container in the file or block device at `path`, holding
    /// an exclusive lock on it until the store is dropped.
    pub fn open_path(path: &Path, opts: StoreOptions) -> Result<Self> {
        let lock_file = File::open(path)?;
        lock_exclusive(&lock_file)?;
        let dev = match FileDevice::open(path, false, opts.direct_io) {
            Ok(d) => d,
            Err(e) if opts.direct_io && e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: O_DIRECT not supported here, using buffered I/O",
                    path.display()
                );
                FileDevice::open(path, false, false)?
            }
            Err(e) => return Err(e.into()),
        };
        let mut s = Self::open(Arc::new(dev), opts)?;
        s._lock = Some(lock_file);
        Ok(s)
    }

    /// Opens the container on `dev`: loads the newest checkpoint and replays the journal.
    pub fn open(dev: Arc<dyn BlockDevice>, opts: StoreOptions) -> Result<Self> {
        let loaded = recovery::load(dev.as_ref())?;
        let geo = loaded.superblock.geometry;
        let writers = (0..opts.writers.max(1))
            .map(|_| Mutex::new(SegmentWriter::new(geo.seg_blocks)))
            .collect();
        Ok(Self {
            dev,
            geo,
            state: RwLock::new(loaded.state),
            journal: Mutex::new(JournalState {
                cursor: loaded.cursor,
                superblock: loaded.superblock,
                meta_writer: SegmentWriter::new(geo.seg_blocks),
            }),
            writers,
            cleaner_writer: Mutex::new(SegmentWriter::new(geo.seg_blocks)),
            reuse: RwLock::new(()),
            stats: Counters::default(),
            failed: AtomicBool::new(false),
            opts,
            recovery: loaded.report,
            last_guest_write: AtomicU64::new(0),
            _lock: None,
        })
    }

    /// Guest-visible size in bytes.
    pub fn capacity(&self) -> u64 {
        self.geo.capacity
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn ensure_ok(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StoreError::Failed);
        }
        Ok(())
    }

    fn fail(&self, e: &StoreError) {
        log::error!("store stops accepting writes: {e}");
        self.failed.store(true, Ordering::Release);
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of 512). Unwritten and discarded
    /// blocks read as zeroes without I/O; a block whose checksum fails is an error.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(offset, buf.len() as u64, self.geo.capacity)?;
        Counters::add(&self.stats.guest_reads, 1);
        Counters::add(&self.stats.guest_read_bytes, buf.len() as u64);
        self.read_into(offset, buf)
    }

    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len() as u64;
        let first = offset / BLOCK;
        let last = (offset + len - 1) / BLOCK;
        let _reuse = read(&self.reuse);
        let found: Vec<Option<(u64, maps::VbaEntry)>> = {
            let st = read(&self.state);
            (first..=last).map(|lba| st.maps.lookup(lba)).collect()
        };
        // Copies block `lba`'s bytes that the request covers.
        let copy = |buf: &mut [u8], lba: u64, block: Option<&[u8]>| {
            let bstart = lba * BLOCK;
            let lo = offset.max(bstart);
            let hi = (offset + len).min(bstart + BLOCK);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match block {
                Some(b) => dst.copy_from_slice(&b[(lo - bstart) as usize..(hi - bstart) as usize]),
                None => dst.fill(0),
            }
        };
        let mut i = 0;
        while i < found.len() {
            let lba = first + i as u64;
            let Some((_, e)) = found[i] else {
                copy(buf, lba, None);
                i += 1;
                continue;
            };
            let mut n = 1;
            while i + n < found.len()
                && n < 256
                && found[i + n].is_some_and(|(_, x)| x.pba == e.pba + n as u64)
            {
                n += 1;
            }
            let mut ab = AlignedBuf::blocks(n);
            self.dev.read_at(&mut ab, e.pba * BLOCK)?;
            for j in 0..n {
                let Some((vba, ej)) = found[i + j] else {
                    continue;
                };
                let block = ab.block(j);
                if block_crc(vba, block) != ej.crc {
                    Counters::add(&self.stats.checksum_errors, 1);
                    log::error!(
                        "checksum mismatch: LBA {} at PBA {}",
                        lba + j as u64,
                        ej.pba
                    );
                    return Err(StoreError::DataChecksum {
                        lba: lba + j as u64,
                        pba: ej.pba,
                    });
                }
                copy(buf, lba + j as u64, Some(block));
            }
            i += n;
        }
        Ok(())
    }

    /// Applies one batch of guest requests as one metadata transaction: the data is
    /// appended to writer `writer`'s segment, every map change goes into one journal record.
    pub fn write_batch(&self, writer: usize, ops: &[Op<'_>]) -> Result<()> {
        self.ensure_ok()?;
        let plan = batch::plan(ops, self.geo.capacity, &mut |lba, b| {
            self.read_into(lba * BLOCK, b)
        })?;
        let slot = &self.writers[writer % self.writers.len()];
        let mut w = lock(slot);
        let mut entries: Vec<Entry> = plan
            .unmap
            .iter()
            .map(|&(lba, count)| Entry::Unmap { lba, count })
            .collect();
        let blocks: Vec<(u64, &Vec<u8>)> = plan.data.iter().map(|(k, v)| (*k, v)).collect();
        let mut i = 0;
        while i < blocks.len() {
            let (pba, n) = self.take_blocks(&mut w, blocks.len() - i, false)?;
            let mut ab = AlignedBuf::blocks(n);
            let vba0 = {
                // VBAs are unique, never reused; the writer lock keeps them ordered with the
                // commit (snapshot creation takes every writer lock).
                let mut st = write(&self.state);
                let v = st.maps.next_vba;
                st.maps.next_vba += n as u64;
                v
            };
            for j in 0..n {
                let (lba, data) = blocks[i + j];
                let blk = ab.block_mut(j);
                blk.copy_from_slice(data);
                let vba = vba0 + j as u64;
                entries.push(Entry::Map {
                    lba,
                    vba,
                    pba: pba + j as u64,
                    crc: block_crc(vba, blk),
                });
            }
            self.dev.write_at(&ab, pba * BLOCK)?;
            Counters::add(&self.stats.data_writes, 1);
            Counters::add(&self.stats.data_write_bytes, ab.len() as u64);
            i += n;
        }
        self.commit(&entries, &mut w.retired)?;
        drop(w);
        Counters::add(&self.stats.batches, 1);
        Counters::add(&self.stats.guest_writes, ops.len() as u64);
        Counters::add(&self.stats.guest_write_bytes, plan.guest_bytes);
        self.last_guest_write.store(now_millis(), Ordering::Relaxed);
        Ok(())
    }

    /// Takes up to `want` contiguous blocks from writer `w`, starting a new segment when
    /// its current one is full and making room (checkpoint, cleaner) when none is free.
    fn take_blocks(
        &self,
        w: &mut SegmentWriter,
        want: usize,
        use_reserve: bool,
    ) -> Result<(u64, usize)> {
        let mut attempts = 0;
        loop {
            if let Some(r) = w.take(want) {
                return Ok(r);
            }
            let seg = write(&self.state).sut.grab(SegKind::Data, use_reserve);
            if let Some(seg) = seg {
                w.start(seg);
                continue;
            }
            attempts += 1;
            if attempts > 64 || !self.make_room(use_reserve)? {
                return Err(StoreError::NoSpace);
            }
        }
    }

    /// Frees segments for a writer that found none; false when nothing more can be done.
    /// Cleaning gains less than a segment per victim, so several are cleaned before the
    /// one checkpoint that releases them all.
    fn make_room(&self, for_cleaner: bool) -> Result<bool> {
        let pending = read(&self.state).sut.pending_count();
        if pending > 0 {
            self.checkpoint()?;
            return Ok(true);
        }
        if for_cleaner {
            return Ok(false);
        }
        let mut cleaned = 0;
        while cleaned < 8 && self.clean_step()?.is_some() {
            cleaned += 1;
        }
        if cleaned > 0 {
            self.checkpoint()?;
        }
        Ok(cleaned > 0)
    }

    /// Writes one journal record holding `entries`, then applies it to the maps.
    fn commit(&self, entries: &[Entry], retired: &mut Vec<u64>) -> Result<()> {
        self.commit_filtered(entries.to_vec(), retired, false)
            .map(|_| ())
    }

    /// [`commit`](Self::commit); with `drop_stale_moves`, moves whose VBA left its old block
    /// are removed first, under the journal lock. Returns the entries committed.
    fn commit_filtered(
        &self,
        mut entries: Vec<Entry>,
        retired: &mut Vec<u64>,
        drop_stale_moves: bool,
    ) -> Result<u64> {
        let mut j = lock(&self.journal);
        self.ensure_ok()?;
        if drop_stale_moves {
            let st = read(&self.state);
            entries.retain(|e| match *e {
                Entry::Move { vba, old_pba, .. } => st
                    .maps
                    .vba
                    .get(st.maps.vba_root, vba)
                    .is_some_and(|v| v.pba == old_pba),
                _ => true,
            });
        }
        if entries.is_empty() {
            let mut st = write(&self.state);
            for seg in retired.drain(..) {
                st.sut.close(seg);
            }
            return Ok(0);
        }
        let entries = &entries[..];
        let blocks = journal::record_blocks(entries) as u64;
        if blocks > self.geo.journal_blocks() / 2 {
            return Err(StoreError::Invalid(format!(
                "a batch of {} map changes does not fit the journal",
                entries.len()
            )));
        }
        if j.cursor.pos + blocks > self.geo.journal_blocks() {
            self.checkpoint_locked(&mut j)?;
        }
        let pba = self.geo.journal_start() + j.cursor.pos;
        let mut ab = AlignedBuf::blocks(blocks as usize);
        let crc = journal::encode(pba, j.cursor.next_lsn, j.cursor.prev_crc, entries, &mut ab)
            .ok_or_else(|| StoreError::Invalid("journal record does not encode".into()))?;
        self.dev.write_at(&ab, pba * BLOCK)?;
        Counters::add(&self.stats.journal_writes, 1);
        Counters::add(&self.stats.journal_write_bytes, ab.len() as u64);
        {
            let mut st = write(&self.state);
            let State { maps, sut, .. } = &mut *st;
            maps.apply(entries, sut);
            for seg in retired.drain(..) {
                sut.close(seg);
            }
        }
        j.cursor.pos += blocks;
        j.cursor.next_lsn += 1;
        j.cursor.prev_crc = crc;
        j.cursor.records += 1;
        let threshold =
            self.geo.journal_blocks() * self.opts.checkpoint_percent.clamp(1, 100) as u64 / 100;
        if j.cursor.pos >= threshold {
            self.checkpoint_locked(&mut j)?;
        }
        Ok(entries.len() as u64)
    }

    /// Makes every write acknowledged before this call durable.
    pub fn flush(&self) -> Result<()> {
        Counters::add(&self.stats.flushes, 1);
        self.dev.flush()?;
        Ok(())
    }

    /// Folds the journal into the maps on disk and truncates it.
    pub fn checkpoint(&self) -> Result<()> {
        let mut j = lock(&self.journal);
        self.checkpoint_locked(&mut j)
    }

    fn checkpoint_locked(&self, j: &mut JournalState) -> Result<()> {
        self.ensure_ok()?;
        let t0 = std::time::Instant::now();
        match persist::checkpoint(self, j) {
            Ok(written) => {
                Counters::add(&self.stats.checkpoints, 1);
                Counters::add(&self.stats.checkpoint_writes, written.writes);
                Counters::add(&self.stats.checkpoint_write_bytes, written.bytes);
                log::debug!(
                    "checkpoint generation {}: {} blocks in {:?}",
                    j.superblock.generation,
                    written.bytes / BLOCK,
                    t0.elapsed()
                );
                Ok(())
            }
            // Running out of metadata space is found before anything changes: not fatal.
            Err(StoreError::NoSpace) => Err(StoreError::NoSpace),
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// Freezes the running point as a snapshot named `name`; durable when this returns.
    pub fn create_snapshot(&self, name: &str) -> Result<u64> {
        self.ensure_ok()?;
        // No batch may sit between taking its VBAs and committing them while the VBA
        // watermark is read: hold every writer.
        let _writers: Vec<_> = self.writers.iter().map(lock).collect();
        let _cleaner = lock(&self.cleaner_writer);
        let mut j = lock(&self.journal);
        {
            let st = read(&self.state);
            if st.maps.snapshots.len() >= checkpoint::MAX_SNAPSHOTS {
                return Err(StoreError::Invalid(format!(
                    "at most {} snapshots per container",
                    checkpoint::MAX_SNAPSHOTS
                )));
            }
        }
        let id = write(&self.state)
            .maps
            .create_snapshot(&checkpoint::clamp_name(name), now_secs());
        self.checkpoint_locked(&mut j)?;
        Ok(id)
    }

    /// Snapshots, oldest first.
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        read(&self.state)
            .maps
            .snapshots
            .iter()
            .map(|s| SnapshotInfo {
                id: s.id,
                name: s.name.clone(),
                created: s.created,
            })
            .collect()
    }

    /// Deletes snapshot `id`, freeing the blocks only it held; durable when this returns.
    pub fn delete_snapshot(&self, id: u64) -> Result<()> {
        self.ensure_ok()?;
        let mut j = lock(&self.journal);
        let found = {
            let mut st = write(&self.state);
            let State { maps, sut, .. } = &mut *st;
            maps.delete_snapshot(id, sut)
        };
        if !found {
            return Err(StoreError::Invalid(format!("no snapshot {id}")));
        }
        self.checkpoint_locked(&mut j)
    }

    /// Makes the disk's contents those of snapshot `id` again; durable when this returns.
    pub fn revert_to_snapshot(&self, id: u64) -> Result<()> {
        self.ensure_ok()?;
        let mut j = lock(&self.journal);
        let found = {
            let mut st = write(&self.state);
            let State { maps, sut, .. } = &mut *st;
            maps.revert_to(id, sut)
        };
        if !found {
            return Err(StoreError::Invalid(format!("no snapshot {id}")));
        }
        self.checkpoint_locked(&mut j)
    }

    /// Space and state summary.
    pub fn info(&self) -> Info {
        let j = lock(&self.journal);
        let st = read(&self.state);
        let geo = self.geo;
        let used: u64 = (geo.first_data_segment()..geo.segments)
            .filter(|s| st.sut.kind(*s) == SegKind::Data)
            .map(|s| st.sut.live(s) as u64)
            .sum();
        let mut mapped = 0u64;
        st.maps
            .lba
            .range(st.maps.running, 0, u64::MAX, &mut |_, _| mapped += 1);
        Info {
            capacity: geo.capacity,
            container_bytes: geo.container_bytes(),
            segment_bytes: geo.seg_blocks * BLOCK,
            segments: geo.segments,
            data_segments: geo.data_segments(),
            free_segments: st.sut.free_count(),
            pending_segments: st.sut.pending_count(),
            reserved_segments: geo.reserved_segments(),
            used_data_bytes: used * BLOCK,
            mapped_bytes: mapped * BLOCK,
            journal_bytes: geo.journal_blocks() * BLOCK,
            journal_used_bytes: j.cursor.pos * BLOCK,
            checkpoint_generation: j.superblock.generation,
            next_lsn: j.cursor.next_lsn,
            snapshots: st
                .maps
                .snapshots
                .iter()
                .map(|s| SnapshotInfo {
                    id: s.id,
                    name: s.name.clone(),
                    created: s.created,
                })
                .collect(),
            recovery: self.recovery.clone(),
        }
    }
}

/// Takes an exclusive, non-blocking flock on the container.
fn lock_exclusive(f: &File) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock only reads its integer arguments; the descriptor is owned by `f`.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(StoreError::InUse)
    } else {
        Err(e.into())
    }
}
