//! Keel's storage core: a log-structured virtual disk in one container.
//!
//! Three layers, top-down, each calling only the ones below it:
//! - [`admin`]: whole-disk operations (snapshots, clone, diff, import, resize, fsck);
//! - [`log`]: the data path (`write` batches into journal records and data segments, `read`
//!   plans from the maps), checkpoints, recovery, segment allocation, space and the cleaner;
//! - [`map`]: the LBA -> VBA B+trees with snapshots, VBA -> PBA, segment usage, and what readers
//!   hold (pins, blocks still being written).
//!
//! [`Store`] (this file) holds the state all three share and opens, formats and checkpoints
//! a container; the shared pieces at this level (`codec`, [`layout`], `io`, [`buf`], `error`,
//! `stats`, `poison`, [`seal`]) may be used by any layer. The on-disk format, byte by byte, is
//! in docs/format.md.

pub mod admin;
pub mod buf;
mod codec;
pub mod compress;
mod error;
mod io;
pub mod layout;
pub mod log;
pub mod map;
mod poison;
mod ring_io;
mod ring_pieces;
pub mod seal;
mod stats;

pub use admin::clone::CloneWatch;
pub use admin::{diff, diff_file, peek, resize};
pub use log::io_class::CleanerIo;
pub use log::victim::VictimPolicy;
pub use log::{journal, spare};
pub use map::{btree, maps};

#[cfg(test)]
pub(crate) mod tests;

pub use admin::fsck::FsckReport;
pub use buf::AlignedBuf;
pub use error::{Result, StoreError};
pub use io::Gather;
use io::{BatchIo, DeviceIo};
pub use log::batch::Op;
pub use log::cleaner::{CleanReport, CleanerConfig, CleanerHandle};
pub use log::flush::MarkWriter;
pub use log::format::CreateOptions;
pub use log::read::{ReadPlan, ReadRun};
pub use log::recovery::RecoveryReport;
pub use log::space::{SpaceOptions, state_for};
pub use log::spare::Spare;
pub use log::write_plan::{InFlight, WritePlan};
pub use stats::Stats;

use crate::device::{BlockDevice, FileDevice};
use layout::{BLOCK, Geometry};
use log::alloc::SegmentWriter;
use log::journal::JournalCursor;
use log::superblock::Superblock;
use map::pins::SegmentPins;
use map::sut::{SegKind, Sut};
use maps::Maps;
use stats::Counters;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// How an open store behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Space thresholds, growth and how long writes wait for space.
    pub space: SpaceOptions,
    /// Writer slots (one open segment each); queue workers pass their index.
    pub writers: usize,
    /// Checkpoint when the journal is this many percent full.
    pub checkpoint_percent: u8,
    /// Open the container file with O_DIRECT (falls back when the filesystem refuses).
    pub direct_io: bool,
    /// Open even when recovery finds that acknowledged, flushed writes were damaged: keep the
    /// last intact state and discard the rest (`keel recover --rewind`). Off, such a
    /// container is refused.
    pub rewind: bool,
    /// Open to look only (`keel info -U` on a container another process has open): nothing is
    /// written at open, and what recovery would call damage is only reported (a live writer's
    /// journal can look that way mid-write).
    pub read_only: bool,
    /// The key of an encrypted container. Opening an encrypted container without it, or with
    /// another key, fails; so does giving a key for a container that is not encrypted.
    pub key: Option<seal::Key>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            space: SpaceOptions::default(),
            writers: 4,
            checkpoint_percent: 50,
            direct_io: true,
            rewind: false,
            read_only: false,
            key: None,
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
    /// Where the next record is reserved.
    pub cursor: JournalCursor,
    /// The live part of the journal region, which records must not overwrite.
    pub ring: log::journal_ring::Ring,
    /// A checkpoint is waiting for the records in flight to finish, to freeze the maps: no
    /// new record is reserved meanwhile.
    pub freezing: bool,
    /// A frozen checkpoint is being written; records go on into the ring past its freeze
    /// point.
    pub checkpointing: bool,
    /// The newest record applied to the maps; records apply in LSN order.
    pub applied_lsn: u64,
    /// Every record up to this one is written (its data and itself): a batch is answered
    /// only once this reaches it.
    pub written_lsn: u64,
    /// Records written ahead of an earlier one still in flight.
    pub written_ahead: std::collections::BTreeSet<u64>,
    /// Records reserved whose writes have not finished.
    pub in_flight: u64,
    /// The newest record a Flushed mark covers, or the newest mark itself.
    pub marked_lsn: u64,
    /// The newest flushed record a [`MarkWriter`] is to write a mark for.
    pub mark_due: u64,
    /// The highest LSN a Flushed entry of a reserved record names.
    pub mark_reserved: u64,
    /// The highest LSN a Flushed entry of a record on stable storage names (known to this
    /// process: 0 after an open): segments emptied through it may be reused.
    pub mark_durable: u64,
    /// Data segments a writer filled, with the record after which they may close.
    pub retiring: Vec<(u64, u64)>,
    pub superblock: Superblock,
    pub meta_writer: SegmentWriter,
    /// Set at open: the next record must start a new chain (a checkpoint first). Past the
    /// replayed tail the journal may hold records that were never acknowledged; a new record
    /// identical to the first of them (a restarted delete's Release record is) would let the
    /// chain run on into the rest at the next recovery.
    pub fresh_chain: bool,
}

/// A snapshot as the API shows it: `seq` is the operation sequence number it froze, which
/// names it in the trees.
pub use keel_protocol::control::SnapshotInfo;

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
    /// Deleted snapshots whose blocks are still being given back.
    pub deleting_snapshots: usize,
    pub recovery: RecoveryReport,
    pub space: keel_protocol::control::SpaceReport,
    /// The cipher, for an encrypted container ("aes-xts-256").
    pub encryption: Option<&'static str>,
    /// The codec of a compressed container ("lz4", "zstd"), or "none".
    pub compression: &'static str,
    /// Guest data the running point maps (`mapped_bytes`).
    pub data_bytes_logical: u64,
    /// What that data takes in the container: packed slots at their stored size.
    pub data_bytes_stored: u64,
    /// `data_bytes_logical / data_bytes_stored` (1 with nothing mapped).
    pub compression_ratio: f64,
    /// The size of a zstd container's dictionary, once it has one.
    pub dictionary_bytes: Option<u64>,
}

/// The storage core of one virtual disk. `Send + Sync`: share it as `Arc<Store>`.
pub struct Store {
    /// The container: a [`seal::SealedDevice`] over the device when it is encrypted.
    dev: Arc<dyn BlockDevice>,
    /// The cipher of an encrypted container.
    sealer: Option<Arc<seal::Sealer>>,
    /// The container's bytes as stored, and what data checksums cover.
    data: seal::DataView,
    /// The codec of a compressed container.
    codec: Option<compress::Codec>,
    /// Blocks that did not shrink lately, one count per writer (as `writers`): a writer's
    /// stream of them stops being tried, without turning attempts off for the others.
    misses: Vec<compress::Misses>,
    /// A zstd container's dictionary, or the sample it is trained from.
    dict: compress::DictState,
    /// The geometry opened; its capacity and segment count are those at open (see
    /// `capacity` and `segments`).
    geo: Geometry,
    /// Segments in the container: `geo.segments` until the container grows (space.rs).
    segments: AtomicU64,
    space: log::space::SpaceWatch,
    /// Guest-visible size in bytes: `geo.capacity` until the disk grows online.
    capacity: AtomicU64,
    /// Held by snapshot operations that check, then journal (delete).
    snapshot_ops: Mutex<()>,
    /// The deleted snapshot whose blocks are being given back, and how far that got.
    reclaim: Mutex<Option<log::reclaim::Progress>>,
    /// Wakes the background cleaner from its pause early (new work: a snapshot deleted).
    cleaner_wake: (Mutex<bool>, Condvar),
    /// The journal is past its threshold: the background checkpointer is to take one.
    checkpoint_due: AtomicBool,
    /// Set while a thread takes checkpoints in the background (the cleaner's).
    background_checkpoints: AtomicBool,
    /// Guest batches paced to the cleaner's rate when free space runs low.
    guest_pace: log::guest_pace::GuestPace,
    /// Set while a [`MarkWriter`] runs: flushes leave their marks to it. Its condvar goes
    /// with the journal lock (`mark_due`).
    async_marks: AtomicBool,
    mark_cv: Condvar,
    state: RwLock<State>,
    journal: Mutex<JournalState>,
    /// Signalled whenever a record is applied (batches waiting for their turn, checkpoints
    /// waiting for the journal to be quiet).
    journal_cv: Condvar,
    writers: Vec<Mutex<SegmentWriter>>,
    cleaner_writer: Mutex<SegmentWriter>,
    /// Metadata blocks for snapshot trees' leaves written ahead of the checkpoint.
    prewriter: Mutex<SegmentWriter>,
    /// A snapshot froze dirty nodes since they were last written ahead.
    prewrite_due: AtomicBool,
    /// Snapshots up to this `seq` had their frozen leaves written ahead (0 at open: all are
    /// looked at once, replayed snapshot records may have frozen some).
    prewritten_seq: AtomicU64,
    /// Segments that reads in flight read from: not reused until released.
    pins: Arc<SegmentPins>,
    /// Blocks mapped by a batch whose writes are still in flight: readers wait for them.
    unwritten: map::unwritten::Unwritten,
    stats: Counters,
    /// Set by a failed metadata write or a poisoned lock: every later request fails.
    failed: AtomicBool,
    /// Why the store failed (the first cause), for `keel disks`.
    failure: std::sync::OnceLock<String>,
    /// A lock was found poisoned (logged once; see poison.rs).
    poisoned: AtomicBool,
    opts: StoreOptions,
    recovery: RecoveryReport,
    /// Milliseconds since the Unix epoch of the last guest read or write: the cleaner's
    /// idle-time work waits for real idleness, not just for the writes to stop.
    last_guest_io: AtomicU64,
    /// Microseconds the last snapshot creation held the writers.
    last_snapshot_pause_us: AtomicU64,
    /// Holds the container's exclusive lock while the store is open.
    _lock: Option<File>,
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

/// The temporary name a container at `path` is made under: `path` with `.creating` appended.
fn creating_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    path.with_file_name(name)
}

impl Store {
    /// Writes a new, empty container onto `dev`.
    pub fn format(dev: &dyn BlockDevice, opts: &CreateOptions) -> Result<Geometry> {
        log::format::format(dev, opts)
    }

    /// Creates a container file at `path` (it must not exist), reserves its space and
    /// formats it.
    ///
    /// The container is made under a temporary name next to `path` and linked into place only
    /// once it is formatted and flushed: a crash while creating leaves no half-made container
    /// at `path` for the next start to refuse (the leftover temporary is replaced next time).
    pub fn create_path(path: &Path, opts: &CreateOptions) -> Result<Geometry> {
        let geo = opts.geometry()?;
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            )
            .into());
        }
        let tmp = creating_path(path);
        let _ = std::fs::remove_file(&tmp);
        let made = FileDevice::create_allocated(&tmp, geo.container_bytes())
            .map_err(StoreError::from)
            .and_then(|dev| {
                let geo = log::format::format(&dev, opts)?;
                dev.flush()?;
                Ok(geo)
            })
            // A hard link, unlike a rename, never replaces a file that appeared meanwhile; a
            // file system without hard links gets the rename.
            .and_then(|geo| match std::fs::hard_link(&tmp, path) {
                Ok(()) => Ok(geo),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e.into()),
                Err(_) => Ok(std::fs::rename(&tmp, path).map(|()| geo)?),
            });
        let _ = std::fs::remove_file(&tmp);
        let geo = made?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
        Ok(geo)
    }

    /// Opens (and recovers) the container in the file or block device at `path`, holding
    /// an exclusive lock on it until the store is dropped.
    pub fn open_path(path: &Path, opts: StoreOptions) -> Result<Self> {
        let lock_file = lock_exclusive(path)?;
        let dev = match FileDevice::open(path, false, opts.direct_io) {
            Ok(d) => d,
            Err(e) if opts.direct_io && e.raw_os_error() == Some(libc::EINVAL) => {
                ::log::warn!(
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
        let seal::Unsealed { dev, sealer, data } = seal::unseal(dev, opts.key.as_ref())?;
        let mut loaded = log::recovery::load(dev.as_ref(), &data, opts.rewind || opts.read_only)?;
        let geo = loaded.superblock.geometry;
        if opts.read_only {
            loaded.stale_slot = None;
            loaded.erase.clear();
        }
        // Before anything new is written: the other superblock copy made current again, and
        // the records recovery dropped erased, so no later recovery can mistake them.
        if let Some(slot) = loaded.stale_slot {
            if let Some(problem) = &loaded.report.other_superblock {
                ::log::warn!("{problem}: rewritten from the valid copy");
            }
            log::persist::repair_superblock_copy(dev.as_ref(), &loaded.superblock, slot)?;
        }
        if !loaded.erase.is_empty() {
            log::tail::erase(dev.as_ref(), &geo, &loaded.erase)?;
        }
        // Never again the VBAs a batch lost in a crash may have sealed data under.
        if data.by_vba() && !opts.read_only {
            let maps = &mut loaded.state.maps;
            maps.next_vba = maps.next_vba.saturating_add(seal::lost_vbas(&geo));
        }
        // Segments emptied by replayed records a replayed mark covers were free before the
        // crash, maybe: they are again once the chain that holds the mark is durable (the
        // checkpoint the first record takes needs room).
        let mark = loaded.replayed_mark;
        if !opts.read_only && mark > 0 && loaded.state.sut.newest_markable().is_some() {
            dev.flush()?;
            loaded.state.sut.release_marked(mark, &|_| false);
        }
        // From the next checkpoint on (the first record written takes one) the journal holds
        // flush marks and no dropped record past its end, and is a ring (the checkpoint
        // names its head).
        loaded.superblock.incompat |=
            log::superblock::INCOMPAT_FLUSH_MARKS | log::superblock::INCOMPAT_CIRCULAR_JOURNAL;
        let sb = &loaded.superblock;
        let has_dict = sb.incompat & log::superblock::INCOMPAT_ZSTD_DICT != 0;
        let dict = compress::DictState::open(dev.clone(), sb.uuid, has_dict, !opts.read_only)?;
        let writers = (0..opts.writers.max(1))
            .map(|_| Mutex::new(SegmentWriter::new(geo.seg_blocks)))
            .collect();
        Ok(Self {
            dev,
            sealer,
            data,
            codec: compress::Codec::from_number(loaded.superblock.seal.compression),
            misses: (0..opts.writers.max(1))
                .map(|_| compress::Misses::default())
                .collect(),
            dict,
            geo,
            capacity: AtomicU64::new(geo.capacity),
            segments: AtomicU64::new(geo.segments),
            space: log::space::SpaceWatch::new(&opts.space),
            snapshot_ops: Mutex::new(()),
            reclaim: Mutex::new(None),
            cleaner_wake: (Mutex::new(false), Condvar::new()),
            checkpoint_due: AtomicBool::new(false),
            background_checkpoints: AtomicBool::new(false),
            guest_pace: Default::default(),
            async_marks: AtomicBool::new(false),
            mark_cv: Condvar::new(),
            state: RwLock::new(loaded.state),
            journal: Mutex::new(JournalState {
                applied_lsn: loaded.cursor.next_lsn.saturating_sub(1),
                written_lsn: loaded.cursor.next_lsn.saturating_sub(1),
                written_ahead: Default::default(),
                in_flight: 0,
                marked_lsn: loaded.cursor.next_lsn.saturating_sub(1),
                mark_reserved: 0,
                mark_durable: 0,
                mark_due: 0,
                retiring: Vec::new(),
                ring: loaded.ring,
                freezing: false,
                checkpointing: false,
                cursor: loaded.cursor,
                superblock: loaded.superblock,
                meta_writer: SegmentWriter::new(geo.seg_blocks),
                fresh_chain: true,
            }),
            journal_cv: Condvar::new(),
            writers,
            cleaner_writer: Mutex::new(SegmentWriter::new(geo.seg_blocks)),
            prewriter: Mutex::new(SegmentWriter::new(geo.seg_blocks)),
            // Replayed snapshot records may have frozen dirty nodes.
            prewrite_due: AtomicBool::new(true),
            prewritten_seq: AtomicU64::new(0),
            // Room for every segment the container may grow to.
            pins: Arc::new(SegmentPins::new(
                opts.space
                    .max_container_bytes
                    .map_or(0, |b| log::space::segments_within(&geo, b))
                    .max(geo.segments),
            )),
            unwritten: map::unwritten::Unwritten::default(),
            stats: Counters::default(),
            failed: AtomicBool::new(false),
            failure: std::sync::OnceLock::new(),
            poisoned: AtomicBool::new(false),
            opts,
            recovery: loaded.report,
            last_guest_io: AtomicU64::new(0),
            last_snapshot_pause_us: AtomicU64::new(0),
            _lock: None,
        })
    }

    /// Guest-visible size in bytes (it grows online, see resize.rs).
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    /// The container's geometry with the current capacity.
    pub fn geometry(&self) -> Geometry {
        Geometry {
            capacity: self.capacity(),
            segments: self.segments(),
            ..self.geo
        }
    }

    /// The device the container lives on.
    pub fn device(&self) -> &dyn BlockDevice {
        self.dev.as_ref()
    }

    /// The container's bytes as they are stored (ciphertext on an encrypted container), for
    /// queues that issue the data path's I/O themselves (on a ring of their own, through the
    /// device's descriptor): the store hands them a batch's writes sealed
    /// ([`plan_batch`](Self::plan_batch)) and checks, then opens, what they read
    /// ([`finish_read`](Self::finish_read)).
    pub fn raw_device(&self) -> &dyn BlockDevice {
        self.data.raw()
    }

    /// The codec of a compressed container.
    pub fn compression(&self) -> Option<compress::Codec> {
        self.codec
    }

    /// The cipher of an encrypted container.
    pub fn sealer(&self) -> Option<&Arc<seal::Sealer>> {
        self.sealer.as_ref()
    }

    fn note_guest_io(&self) {
        self.last_guest_io.store(now_millis(), Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// What recovery found when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn fail(&self, e: &StoreError) {
        ::log::error!("store stops accepting writes: {e}");
        self.latch_failed(format!("a metadata write failed: {e}"));
    }

    /// [`checkpoint`](Self::checkpoint) unless a batch is in flight (false then): for a
    /// caller that must not wait for queues that may never finish theirs (closing).
    pub fn checkpoint_if_quiet(&self) -> Result<bool> {
        let mut j = self.lock(&self.journal);
        if j.in_flight > 0 || j.freezing || j.checkpointing {
            return Ok(false);
        }
        self.checkpoint_locked(&mut j).map(|()| true)
    }

    fn checkpoint_locked(&self, j: &mut JournalState) -> Result<()> {
        self.checkpoint_with(j, &mut DeviceIo(self.dev.as_ref()))
    }

    /// A checkpoint whose node writes are issued by `io`, holding the journal throughout; the
    /// caller holds a quiet journal ([`quiet_journal`](Self::quiet_journal): no checkpoint
    /// running either).
    fn checkpoint_with(&self, j: &mut JournalState, io: &mut dyn BatchIo) -> Result<()> {
        self.ensure_ok()?;
        let t0 = std::time::Instant::now();
        match log::persist::checkpoint(self, j, io) {
            Ok(written) => {
                j.fresh_chain = false;
                self.note_checkpoint(j, &written, t0.elapsed(), t0);
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

    /// Space and state summary.
    pub fn info(&self) -> Info {
        let j = self.lock(&self.journal);
        let st = self.read_lock(&self.state);
        let geo = self.geometry();
        let used: u64 = (geo.first_data_segment()..geo.segments)
            .filter(|s| st.sut.kind(*s) == SegKind::Data)
            .map(|s| st.sut.live(s) as u64)
            .sum();
        let data = compress::data_bytes(&st.maps, self.codec.is_some());
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
            mapped_bytes: data.logical,
            journal_bytes: geo.journal_blocks() * BLOCK,
            journal_used_bytes: j.ring.used * BLOCK,
            checkpoint_generation: j.superblock.generation,
            next_lsn: j.cursor.next_lsn,
            snapshots: admin::snapshots::snapshot_infos(&st.maps),
            deleting_snapshots: st.maps.doomed.len(),
            recovery: self.recovery.clone(),
            encryption: self.sealer.as_ref().map(|_| seal::AES_XTS_256),
            compression: compress::Codec::name_of(self.codec),
            data_bytes_logical: data.logical,
            data_bytes_stored: data.stored,
            compression_ratio: data.ratio(),
            dictionary_bytes: self.dictionary_bytes(),
            space: {
                drop(st);
                drop(j);
                self.space()
            },
        }
    }
}

/// Takes the container's exclusive lock (an OFD lock on a descriptor of its own, as for every
/// backing file keeld opens).
fn lock_exclusive(path: &Path) -> Result<File> {
    use crate::device::lock::{LockMode, lock_path};
    lock_path(path, LockMode::Exclusive).map_err(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            StoreError::InUse(e.to_string())
        } else {
            e.into()
        }
    })
}
