//! The `keel` engine: a disk served by Keel's storage core (`crate::store`).
//!
//! Each virtqueue worker is one of the store's writers (its own open segment), and every kick's
//! writes, discards and write-zeroes go to the store as **one** `write_batch`: one journal
//! record, one metadata transaction. The data is copied out of guest memory because the store
//! checksums it and appends it to its log.

use super::{
    AdminError, Capabilities, Completion, Engine, EngineAdmin, EngineCounters, EngineError, IoOp,
    IoRequest, MirrorCommand, QueueEngine, mirrored,
};
use crate::config::DiskConfig;
use crate::device::BlockDevice;
use crate::device::mirror::MirrorDevice;
use crate::store::{
    CleanerConfig, CleanerHandle, CreateOptions, Op, Store, StoreError, StoreOptions,
};
use keel_protocol::control::SnapshotInfo;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A disk in a keel container (a file, a block device, or a mirror of them).
pub struct KeelEngine {
    /// Stops the background cleaner before the store goes away (fields drop in order).
    _cleaner: Option<CleanerHandle>,
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

impl KeelEngine {
    /// Opens (creating if missing) the container `disk` names and recovers it.
    pub fn open(disk: &DiskConfig) -> Result<Self, EngineError> {
        let writers = usize::from(disk.queues.max(1));
        let opts = StoreOptions {
            writers,
            direct_io: disk.direct,
            ..StoreOptions::default()
        };
        let (store, mirror, where_) = if disk.mirror.is_empty() {
            let path = disk.path.clone().unwrap_or_default();
            if !path.exists() {
                let size = disk
                    .size
                    .ok_or_else(|| setup(&path, "no size to create it with"))?;
                Store::create_path(&path, &CreateOptions::new(size))
                    .map_err(|e| setup(&path, e))?;
                log::info!(
                    "{}: created a keel container of {size} bytes",
                    path.display()
                );
            }
            let store = Store::open_path(&path, opts).map_err(|e| setup(&path, e))?;
            (store, None, path.display().to_string())
        } else {
            Self::open_mirrored(disk, opts)?
        };
        if let Some(want) = disk.size
            && want != store.capacity()
        {
            return Err(EngineError::Setup {
                path: PathBuf::from(&where_),
                message: format!(
                    "the container holds a {}-byte disk, the config says {want}",
                    store.capacity()
                ),
            });
        }
        let r = store.recovery_report();
        log::info!("{where_}: keel container opened: {r:?}");
        let store = Arc::new(store);
        let cleaner = if disk.read_only {
            None
        } else {
            Some(
                CleanerHandle::spawn(Arc::clone(&store), CleanerConfig::default())
                    .map_err(|e| setup(std::path::Path::new(&where_), e))?,
            )
        };
        Ok(Self {
            _cleaner: cleaner,
            store,
            mirror,
            writers,
            read_only: disk.read_only,
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
        let create = CreateOptions::new(size);
        let container = create
            .geometry()
            .map_err(|e| setup(&first, e))?
            .container_bytes();
        let fresh = disk.mirror.iter().all(|p| !p.exists());
        let dev = mirrored::open(disk, container)?;
        if fresh {
            Store::format(dev.as_ref(), &create).map_err(|e| setup(&first, e))?;
        }
        let store = Store::open(Arc::clone(&dev) as Arc<dyn BlockDevice>, opts)
            .map_err(|e| setup(&first, e))?;
        let where_ = format!("mirror {}", disk.name);
        Ok((store, Some(dev), where_))
    }
}

impl Engine for KeelEngine {
    fn capacity(&self) -> u64 {
        self.store.capacity()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
            discard: !self.read_only,
            write_zeroes: !self.read_only,
        }
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
        Ok(Box::new(KeelQueue {
            store: Arc::clone(&self.store),
            writer: index % self.writers,
            read_only: self.read_only,
            done: Vec::new(),
            data: Vec::new(),
            scratch: Vec::new(),
        }))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.store.flush().map_err(|e| store_err("flush", e))
    }

    fn admin(&self) -> Option<&dyn EngineAdmin> {
        Some(self)
    }
}

fn store_err(op: &'static str, e: StoreError) -> EngineError {
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
            .map(|s| s.id)
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
        }
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, AdminError> {
        Ok(self
            .store
            .list_snapshots()
            .into_iter()
            .map(|s| SnapshotInfo {
                name: s.name,
                seq: s.id,
                created: s.created,
                owned_blocks: None,
            })
            .collect())
    }

    fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, AdminError> {
        if self.snapshot_id(name).is_ok() {
            return Err(AdminError::Conflict(format!("snapshot {name} exists")));
        }
        let id = self.store.create_snapshot(name).map_err(admin_err)?;
        self.list_snapshots()?
            .into_iter()
            .find(|s| s.seq == id)
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

    fn store(&self) -> Option<Arc<Store>> {
        Some(Arc::clone(&self.store))
    }
}

/// One worker's view of the store.
struct KeelQueue {
    store: Arc<Store>,
    writer: usize,
    read_only: bool,
    done: Vec<Completion>,
    /// Copies of the batch's write data, reused across batches.
    data: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

impl KeelQueue {
    /// The store operations of one mutating request (`data` holds its bytes for a write).
    fn ops_of<'a>(op: &IoOp, data: &'a [u8], out: &mut Vec<Op<'a>>) {
        match op {
            IoOp::Write { offset, .. } => out.push(Op::Write {
                offset: *offset,
                data,
            }),
            IoOp::Discard { ranges } => out.extend(ranges.iter().map(|r| Op::Discard {
                offset: r.offset,
                len: r.len,
            })),
            // The store unmaps zeroed whole blocks either way, so UNMAP changes nothing here.
            IoOp::WriteZeroes { ranges } => out.extend(ranges.iter().map(|z| Op::WriteZeroes {
                offset: z.range.offset,
                len: z.range.len,
            })),
            IoOp::Read { .. } | IoOp::Flush => {}
        }
    }

    /// Commits every write, discard and write-zeroes of the batch as one metadata transaction.
    /// If the store refuses the batch, each request is retried alone so that only the ones at
    /// fault fail.
    fn commit_mutations(&mut self, reqs: &[&IoRequest]) -> Vec<Result<(), EngineError>> {
        if self.data.len() < reqs.len() {
            self.data.resize_with(reqs.len(), Vec::new);
        }
        for (req, buf) in reqs.iter().zip(self.data.iter_mut()) {
            buf.clear();
            if matches!(req.op, IoOp::Write { .. }) {
                buf.resize(req.buffers.len(), 0);
                req.buffers.read_into(buf);
            }
        }
        let mut ops = Vec::with_capacity(reqs.len());
        for (req, buf) in reqs.iter().zip(&self.data) {
            Self::ops_of(&req.op, buf, &mut ops);
        }
        let durable = reqs
            .iter()
            .any(|r| matches!(r.op, IoOp::Write { durable: true, .. }));
        let finish = |store: &Store, r: Result<(), StoreError>, op| {
            r.and_then(|()| if durable { store.flush() } else { Ok(()) })
                .map_err(|e| store_err(op, e))
        };
        match self.store.write_batch(self.writer, &ops) {
            Ok(()) => {
                let r = finish(&self.store, Ok(()), "write");
                reqs.iter()
                    .map(|_| r.as_ref().map_err(clone_err).copied())
                    .collect()
            }
            Err(_) if reqs.len() > 1 => reqs
                .iter()
                .zip(&self.data)
                .map(|(req, buf)| {
                    let mut one = Vec::new();
                    Self::ops_of(&req.op, buf, &mut one);
                    let r = self.store.write_batch(self.writer, &one);
                    finish(&self.store, r, req.op.name())
                })
                .collect(),
            Err(e) => vec![Err(store_err(reqs[0].op.name(), e))],
        }
    }
}

/// Reads of one batch run on up to this many threads, so a deep guest queue keeps the device
/// busy instead of being served one read at a time.
const READ_THREADS: usize = 8;

/// Reads one request's range from the store into its guest buffers.
fn read_one(store: &Store, req: &mut IoRequest, scratch: &mut Vec<u8>) -> Result<(), EngineError> {
    let IoOp::Read { offset } = req.op else {
        return Ok(());
    };
    scratch.resize(req.buffers.len(), 0);
    store
        .read(offset, scratch)
        .map_err(|e| store_err("read", e))?;
    req.buffers.write_from(scratch);
    Ok(())
}

impl KeelQueue {
    /// Serves every read of the batch: in place for one, on scoped threads for several.
    fn read_all(&mut self, batch: &mut [IoRequest]) {
        let mut reads: Vec<&mut IoRequest> = batch
            .iter_mut()
            .filter(|r| matches!(r.op, IoOp::Read { .. }))
            .collect();
        if reads.len() <= 1 {
            for req in reads {
                let result = read_one(&self.store, req, &mut self.scratch);
                self.done.push(Completion {
                    token: req.token,
                    result,
                });
            }
            return;
        }
        let per_thread = reads.len().div_ceil(READ_THREADS);
        let store = &*self.store;
        let done = std::thread::scope(|scope| {
            let handles: Vec<_> = reads
                .chunks_mut(per_thread)
                .map(|chunk| {
                    scope.spawn(move || {
                        let mut scratch = Vec::new();
                        chunk
                            .iter_mut()
                            .map(|req| Completion {
                                token: req.token,
                                result: read_one(store, req, &mut scratch),
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join().unwrap_or_else(|_| {
                        log::error!("a read thread panicked");
                        Vec::new()
                    })
                })
                .collect::<Vec<_>>()
        });
        // A panicked read thread leaves its requests without a completion: fail them.
        for req in reads.iter() {
            if !done.iter().any(|c| c.token == req.token) {
                self.done.push(Completion {
                    token: req.token,
                    result: Err(EngineError::Io {
                        op: "read",
                        source: io::Error::other("read thread failed"),
                    }),
                });
            }
        }
        self.done.extend(done);
    }
}

/// Engine errors carry an `io::Error`, which is not `Clone`: rebuild one with the same text.
fn clone_err(e: &EngineError) -> EngineError {
    match e {
        EngineError::Io { op, source } => EngineError::Io {
            op,
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => EngineError::Io {
            op: "write",
            source: io::Error::other(other.to_string()),
        },
    }
}

impl QueueEngine for KeelQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let mut mutations = Vec::new();
        let mut flushes = Vec::new();
        for req in batch.iter() {
            match req.op {
                IoOp::Read { .. } => {}
                IoOp::Flush => flushes.push(req.token),
                _ if self.read_only => self.done.push(Completion {
                    token: req.token,
                    result: Err(EngineError::ReadOnly { op: req.op.name() }),
                }),
                _ => mutations.push(req),
            }
        }
        if !mutations.is_empty() {
            let results = self.commit_mutations(&mutations);
            for (req, result) in mutations.iter().zip(results) {
                self.done.push(Completion {
                    token: req.token,
                    result,
                });
            }
        }
        self.read_all(batch);
        if !flushes.is_empty() {
            // Every write this queue completed is in the store already; one flush covers all.
            let r = self.store.flush().map_err(|e| store_err("flush", e));
            for token in flushes {
                self.done.push(Completion {
                    token,
                    result: r.as_ref().map_err(clone_err).copied(),
                });
            }
        }
        batch.clear();
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        done.append(&mut self.done);
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        self.reap(done);
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
