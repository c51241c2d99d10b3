//! The `keel` engine: a disk served by Keel's storage core (`crate::store`).
//!
//! Each virtqueue worker is one of the store's writers (its own open segment), and every kick's
//! writes, discards and write-zeroes go to the store as **one** `write_batch`: one journal
//! record, one metadata transaction, its data and record written together. The data is copied
//! out of guest memory because the store checksums it and appends it to its log. Reads run
//! asynchronously on the queue's own io_uring ([`ring`]), as many at once as the guest sends.

mod queue;
mod ring;
mod snapshot_view;

use super::{
    AdminError, ByteRange, Capabilities, Engine, EngineAdmin, EngineCounters, EngineError, Extent,
    MirrorCommand, QueueEngine, mirrored,
};
use crate::config::{Compression, DiskConfig};
use crate::device::BlockDevice;
use crate::device::mirror::MirrorDevice;
use crate::store::compress::Codec;
use crate::store::{
    CleanerConfig, CleanerHandle, CreateOptions, MarkWriter, Store, StoreError, StoreOptions,
};
use keel_protocol::control::SnapshotInfo;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A disk in a keel container (a file, a block device, or a mirror of them).
pub struct KeelEngine {
    /// The background cleaner, stopped before the closing checkpoint.
    cleaner: Option<CleanerHandle>,
    /// Writes flush marks, so a guest's FLUSH is answered without waiting for one.
    marks: Option<MarkWriter>,
    store: Arc<Store>,
    mirror: Option<Arc<MirrorDevice>>,
    writers: usize,
    read_only: bool,
    where_: String,
}

fn setup(path: &std::path::Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Setup {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Why a container is not served with another `compression` than it was made with.
fn compression_mismatch(has: Option<Codec>, want: Option<Codec>) -> String {
    format!(
        "the container is compressed with {:?} but the disk says compression = {:?}: a \
         container keeps the compression it was made with; to change it, `keel export` the \
         disk and `keel import --compression {}` it into a new container (or set \
         compression = {:?})",
        Codec::name_of(has),
        Codec::name_of(want),
        Codec::name_of(want),
        Codec::name_of(has),
    )
}

impl KeelEngine {
    /// Opens (creating if missing) the container `disk` names and recovers it.
    pub fn open(disk: &DiskConfig) -> Result<Self, EngineError> {
        let writers = usize::from(disk.queues.max(1));
        let key = match &disk.key_file {
            Some(source) => Some(source.load().map_err(|e| EngineError::Setup {
                path: PathBuf::from(format!("disk {}", disk.name)),
                message: e.to_string(),
            })?),
            None => None,
        };
        let opts = StoreOptions {
            writers,
            direct_io: disk.direct,
            space: disk.space.store_options(),
            key,
            ..StoreOptions::default()
        };
        let (store, mirror, where_) = if disk.mirror.is_empty() {
            let path = disk.path.clone().unwrap_or_default();
            if !path.exists() {
                let size = disk
                    .size
                    .ok_or_else(|| setup(&path, "no size to create it with"))?;
                let create = CreateOptions {
                    encryption: opts.key.clone(),
                    compression: disk.compression.for_new(),
                    ..crate::config::create_options(size, disk.space.spare)
                };
                Store::create_path(&path, &create).map_err(|e| setup(&path, e))?;
                log::info!(
                    "{}: created a keel container of {size} bytes ({}% spare)",
                    path.display(),
                    create.overprovision_percent
                );
            }
            let store = Store::open_path(&path, opts).map_err(|e| setup(&path, e))?;
            (store, None, path.display().to_string())
        } else {
            Self::open_mirrored(disk, opts)?
        };
        if let Some(want) = disk.size
            && want > store.capacity()
        {
            return Err(EngineError::Setup {
                path: PathBuf::from(&where_),
                message: format!(
                    "the container holds a {}-byte disk, less than size = {want}: grow it with \
                     `keel resize` while keeld is stopped",
                    store.capacity()
                ),
            });
        }
        if let Compression::Set(want) = disk.compression
            && disk.compression.contradicts(store.compression())
        {
            return Err(EngineError::Setup {
                path: PathBuf::from(&where_),
                message: compression_mismatch(store.compression(), want),
            });
        }
        // A container larger than `size` was grown by `keel resize`: it is served whole.
        Self::serve(store, mirror, writers, disk.read_only, where_)
    }

    /// Serves the container on `dev` (any block device: a file, a mirror, a fault-injecting
    /// device in tests), formatting it first for a disk of `format_capacity` bytes if given.
    pub fn on_device(
        dev: Arc<dyn BlockDevice>,
        format_capacity: Option<u64>,
        writers: usize,
        read_only: bool,
        name: &str,
    ) -> Result<Self, EngineError> {
        let fail = |e: StoreError| setup(std::path::Path::new(name), e);
        if let Some(capacity) = format_capacity {
            Store::format(dev.as_ref(), &CreateOptions::new(capacity)).map_err(fail)?;
        }
        let opts = StoreOptions {
            writers: writers.max(1),
            ..StoreOptions::default()
        };
        let store = Store::open(dev, opts).map_err(fail)?;
        Self::serve(store, None, writers.max(1), read_only, name.to_string())
    }

    /// The bytes a device must hold for a container of a `capacity`-byte disk.
    pub fn container_bytes(capacity: u64) -> Result<u64, EngineError> {
        CreateOptions::new(capacity)
            .geometry()
            .map(|g| g.container_bytes())
            .map_err(|e| setup(std::path::Path::new("container"), e))
    }

    fn serve(
        store: Store,
        mirror: Option<Arc<MirrorDevice>>,
        writers: usize,
        read_only: bool,
        where_: String,
    ) -> Result<Self, EngineError> {
        let r = store.recovery_report();
        log::info!("{where_}: keel container opened: {r}");
        let store = Arc::new(store);
        let threads_failed = |e| setup(std::path::Path::new(&where_), e);
        let (cleaner, marks) = if read_only {
            (None, None)
        } else {
            (
                Some(
                    CleanerHandle::spawn(Arc::clone(&store), CleanerConfig::default())
                        .map_err(threads_failed)?,
                ),
                Some(MarkWriter::spawn(Arc::clone(&store)).map_err(threads_failed)?),
            )
        };
        Ok(Self {
            cleaner,
            marks,
            store,
            mirror,
            writers,
            read_only,
            where_,
        })
    }

    fn open_mirrored(
        disk: &DiskConfig,
        opts: StoreOptions,
    ) -> Result<(Store, Option<Arc<MirrorDevice>>, String), EngineError> {
        let first = disk.mirror.first().cloned().unwrap_or_default();
        let size = disk
            .size
            .ok_or_else(|| setup(&first, "a mirrored disk needs a size"))?;
        let create = CreateOptions {
            encryption: opts.key.clone(),
            compression: disk.compression.for_new(),
            ..crate::config::create_options(size, disk.space.spare)
        };
        let container = create
            .geometry()
            .map_err(|e| setup(&first, e))?
            .container_bytes();
        // A marker beside the first component lives from before the components are made
        // until the container on them is formatted and flushed: found at open, it means a
        // creation was cut short (keeld killed), and the half-made components are made anew.
        let marker = creating_marker(&first);
        let components =
            crate::device::mirror::remote::ComponentProvider::for_components(&disk.mirror, true);
        let interrupted = marker.exists();
        if interrupted {
            log::warn!(
                "mirror {}: the creation of its container was cut short; creating it anew",
                disk.name
            );
            for p in &disk.mirror {
                if crate::device::mirror::remote::is_remote(&p.to_string_lossy()) {
                    // Only what this host kept about the export goes.
                    crate::device::mirror::DeviceProvider::remove(&components, p)
                        .map_err(|e| setup(p, e))?;
                    continue;
                }
                for f in [p.clone(), crate::device::mirror::sidecar_path(p)] {
                    match std::fs::remove_file(&f) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(setup(&f, e));
                        }
                        _ => {}
                    }
                }
            }
        }
        let fresh = disk.mirror.iter().all(|p| components.is_new(p));
        if fresh {
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::File::options()
                    .write(true)
                    .create(true)
                    .truncate(true),
                0o600,
            )
            .open(&marker)
            .and_then(|f| f.sync_all())
            .map_err(|e| setup(&marker, e))?;
        }
        let dev = mirrored::open(disk, container)?;
        if fresh {
            Store::format(dev.as_ref(), &create).map_err(|e| setup(&first, e))?;
            dev.flush().map_err(|e| setup(&first, e))?;
            std::fs::remove_file(&marker).map_err(|e| setup(&marker, e))?;
        }
        let store = Store::open(Arc::clone(&dev) as Arc<dyn BlockDevice>, opts)
            .map_err(|e| setup(&first, e))?;
        let where_ = format!("mirror {}", disk.name);
        Ok((store, Some(dev), where_))
    }
}

impl Drop for KeelEngine {
    /// A clean stop folds the journal into a checkpoint, so the next open replays nothing
    /// (replay rereads the data of every record to check it).
    fn drop(&mut self) {
        drop(self.cleaner.take());
        drop(self.marks.take());
        if self.read_only {
            return;
        }
        let started = std::time::Instant::now();
        match self.store.checkpoint_if_quiet() {
            Ok(true) => log::info!(
                "{}: closed with a checkpoint in {:?}",
                self.where_,
                started.elapsed()
            ),
            Ok(false) => log::info!(
                "{}: closed with a batch still in flight on a queue; the next open replays \
                 the journal",
                self.where_
            ),
            Err(e) => log::warn!(
                "{}: closed without a checkpoint ({e}); the next open replays the journal",
                self.where_
            ),
        }
        if let Some(m) = &self.mirror {
            super::mirrored::shut_down(m);
        }
    }
}

impl Engine for KeelEngine {
    fn capacity(&self) -> u64 {
        self.store.capacity()
    }

    fn grow(&self, size: u64) -> Result<u64, EngineError> {
        super::refuse_shrink(self.store.capacity(), size)?;
        if self.read_only {
            return Err(EngineError::ReadOnly { op: "grow" });
        }
        self.store
            .grow(size)
            .map_err(|e| EngineError::Refused(e.to_string()))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_unless(self.read_only)
    }

    fn describe(&self) -> String {
        format!(
            "keel engine on {}, {} bytes, {} writer(s)",
            self.where_,
            self.store.capacity(),
            self.writers
        )
    }

    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        let q = queue::KeelQueue::new(&self.store, index % self.writers, self.read_only).map_err(
            |source| EngineError::Queue {
                queue: index,
                source,
            },
        )?;
        Ok(Box::new(q))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.store.flush().map_err(|e| store_err("flush", e))
    }

    fn admin(&self) -> Option<&dyn EngineAdmin> {
        Some(self)
    }

    fn snapshot(&self, name: &str) -> Result<Arc<dyn Engine>, EngineError> {
        Ok(Arc::new(snapshot_view::SnapshotView::open(
            Arc::clone(&self.store),
            name,
        )?))
    }

    fn allocation(&self, range: ByteRange) -> Option<Vec<Extent>> {
        // 16384 blocks (64 MiB) per query keeps one answer's map walk short.
        let runs = self.store.allocation(range.offset, range.len, 16384);
        Some(
            runs.into_iter()
                .map(|(len, mapped)| Extent { len, hole: !mapped })
                .collect(),
        )
    }
}

pub(crate) fn store_err(op: &'static str, e: StoreError) -> EngineError {
    match e {
        StoreError::Io(source) => EngineError::Io { op, source },
        other => EngineError::Io {
            op,
            source: io::Error::other(other.to_string()),
        },
    }
}

fn admin_err(e: StoreError) -> AdminError {
    match e {
        StoreError::Invalid(m) => AdminError::Invalid(m),
        other => AdminError::Failed(other.to_string()),
    }
}

impl KeelEngine {
    fn snapshot_id(&self, name: &str) -> Result<u64, AdminError> {
        self.store
            .list_snapshots()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.seq)
            .ok_or_else(|| AdminError::NotFound(format!("no snapshot named {name}")))
    }
}

impl EngineAdmin for KeelEngine {
    fn counters(&self) -> EngineCounters {
        let s = self.store.stats();
        EngineCounters {
            metadata_transactions: s.journal_writes,
            device_bytes_written: s.data_write_bytes
                + s.journal_write_bytes
                + s.checkpoint_write_bytes
                + s.cleaner_write_bytes,
            checksum_errors: s.checksum_errors,
            snapshots_being_deleted: self.store.deleting_snapshots() as u64,
            data_bytes: Some(self.store.data_bytes()),
        }
    }

    fn failure(&self) -> Option<String> {
        self.store.failure()
    }

    fn space(&self) -> Option<keel_protocol::control::SpaceReport> {
        Some(self.store.space())
    }

    fn cleaning(&self) -> Option<keel_protocol::control::CleaningStats> {
        let s = self.store.stats();
        Some(keel_protocol::control::CleaningStats {
            blocks_moved: s.cleaner_moves,
            read_bytes: s.cleaner_read_bytes,
            written_bytes: s.cleaner_write_bytes,
            read_us: s.cleaner_read_us,
            write_us: s.cleaner_write_us,
            segments_cleaned: s.segments_cleaned,
            segments_cleaned_by_writers: s.writer_cleaned,
            segments_freed: s.segments_freed,
            mark_releases: s.mark_releases,
            segments_freed_by_marks: s.segments_freed_by_marks,
            checkpoints: s.checkpoints,
            checkpoint_us: s.checkpoint_us,
            checkpoint_max_us: s.checkpoint_max_us,
            checkpoint_waits: s.checkpoint_waits,
            checkpoint_wait_us: s.checkpoint_wait_us,
            segment_waits: s.segment_waits,
            segment_wait_us: s.segment_wait_us,
            meta_gathers: s.meta_gathers,
            meta_nodes_marked: s.meta_nodes_marked,
            meta_mark_us: s.meta_mark_us,
            paced_batches: s.paced_batches,
            paced_us: s.paced_us,
            batches_pipelined: s.plans_pipelined,
            pipelined_refused: s.plans_refused,
            pipelined_refused_late: s.plans_refused_late,
            write_amplification: s.write_amplification(),
        })
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, AdminError> {
        Ok(self.store.list_snapshots())
    }

    fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, AdminError> {
        if self.snapshot_id(name).is_ok() {
            return Err(AdminError::Conflict(format!("snapshot {name} exists")));
        }
        let id = self.store.create_snapshot(name).map_err(admin_err)?;
        let pause_us = Some(self.store.last_snapshot_pause_us());
        self.list_snapshots()?
            .into_iter()
            .find(|s| s.seq == id)
            .map(|s| SnapshotInfo { pause_us, ..s })
            .ok_or_else(|| AdminError::Failed(format!("snapshot {name} vanished")))
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), AdminError> {
        let id = self.snapshot_id(name)?;
        self.store.delete_snapshot(id).map_err(admin_err)
    }

    fn revert_snapshot(&self, name: &str) -> Result<(), AdminError> {
        let id = self.snapshot_id(name)?;
        self.store.revert_to_snapshot(id).map_err(admin_err)
    }

    fn mirror_status(&self) -> Result<serde_json::Value, AdminError> {
        match &self.mirror {
            Some(m) => mirrored::status(m),
            None => Err(AdminError::Unsupported("this disk is not mirrored".into())),
        }
    }

    fn mirror_command(&self, component: usize, cmd: MirrorCommand) -> Result<(), AdminError> {
        match &self.mirror {
            Some(m) => mirrored::command(m, component, cmd),
            None => Err(AdminError::Unsupported("this disk is not mirrored".into())),
        }
    }

    fn set_resync_rate(&self, bytes_per_sec: u64) -> Result<(), AdminError> {
        match &self.mirror {
            Some(m) => {
                m.set_resync_rate(bytes_per_sec);
                Ok(())
            }
            None => Err(AdminError::Invalid(
                "`resync_bps_limit`: this disk is not mirrored".into(),
            )),
        }
    }

    fn store(&self) -> Option<Arc<Store>> {
        Some(Arc::clone(&self.store))
    }
}

/// The file that marks a mirrored container being created: `<first component>.creating`.
fn creating_marker(first: &std::path::Path) -> PathBuf {
    let mut name = first.file_name().unwrap_or_default().to_os_string();
    name.push(".creating");
    first.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Op, StoreOptions};
    use crate::testing::FaultyDevice;

    const DISK: u64 = 4 << 20;

    fn written_engine() -> Arc<FaultyDevice> {
        let bytes = KeelEngine::container_bytes(DISK).unwrap();
        let dev = Arc::new(FaultyDevice::new(bytes));
        let engine = KeelEngine::on_device(dev.clone(), Some(DISK), 1, false, "t").unwrap();
        let data = vec![7u8; 8192];
        let store = engine.store.clone();
        for i in 0..3u64 {
            let op = Op::Write {
                offset: i * 8192,
                data: &data,
            };
            store.write_batch(0, &[op]).unwrap();
        }
        drop(store);
        drop(engine);
        dev
    }

    #[test]
    fn a_clean_close_checkpoints_so_the_next_open_replays_nothing() {
        let dev = written_engine();
        let store = Store::open(dev, StoreOptions::default()).unwrap();
        assert_eq!(store.recovery_report().records_replayed, 0);
        let mut b = vec![0u8; 3 * 8192];
        store.read(0, &mut b).unwrap();
        assert!(b.iter().all(|x| *x == 7));
    }

    /// keeld killed while it created a mirrored container leaves components with no
    /// superblock and the marker: the next open makes the container anew.
    #[test]
    fn a_mirrored_container_whose_creation_was_cut_short_is_made_anew() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"keel\"\n\
                    mirror = [\"a.keel\", \"b.keel\"]\nsize = \"4M\"\n";
        let cfg =
            crate::config::Config::parse(text, &dir.path().join("k.toml"), dir.path()).unwrap();
        let disk = &cfg.disks[0];
        for p in &disk.mirror {
            std::fs::write(p, vec![0u8; 1 << 20]).unwrap();
        }
        std::fs::write(creating_marker(&disk.mirror[0]), b"").unwrap();
        let engine = KeelEngine::open(disk).unwrap();
        assert!(!creating_marker(&disk.mirror[0]).exists());
        drop(engine);
        // Made and closed: it opens as it is from now on.
        let store_bytes = std::fs::metadata(&disk.mirror[1]).unwrap().len();
        assert!(store_bytes > 1 << 20);
        drop(KeelEngine::open(disk).unwrap());
    }

    #[test]
    fn a_read_only_disk_writes_nothing_when_it_closes() {
        let dev = written_engine();
        let writes = dev.stats().writes;
        drop(KeelEngine::on_device(dev.clone(), None, 1, true, "t").unwrap());
        assert_eq!(
            dev.stats().writes,
            writes,
            "writes while open and closing read-only"
        );
    }
}
