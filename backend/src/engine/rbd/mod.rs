//! The rbd engine: the disk is a Ceph RBD image, reached through librbd's C API.
//!
//! Ceph replicates; Keel adds its vhost-user front and control API on top. The image is opened
//! once per disk (one cluster connection); each queue submits librbd aio calls straight on guest
//! memory and gets completions through an eventfd (`queue.rs`). librados and librbd are loaded
//! at run time, only when an rbd disk is opened (`ffi.rs`). Snapshots are RBD snapshots; growing
//! the disk is `rbd_resize`; diffs walk `rbd_diff_iterate2` (`diff.rs`), exports and applies
//! of them use Keel's diff file (`export.rs`, `apply.rs`) and clones are RBD layered clones
//! (`clone.rs`). A writable disk holds its image's exclusive lock, so a second
//! writer is refused at open; a `handover = true` disk waits for that lock instead
//! (`engine::handover`) and gives it back when it is closed.

mod apply;
mod clone;
mod diff;
mod export;
mod ffi;
mod image;
mod queue;
mod watchdog;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use keel_protocol::control::SnapshotInfo;
use log::{error, info, warn};

use crate::store::diff::DiffReport;

use super::{AdminError, Capabilities, Engine, EngineAdmin, EngineError, QueueEngine};
use crate::config::{DiskConfig, RbdConfig};
use image::{Cluster, ConnectOptions, Image};

/// How long finding a mon and authenticating may take before the disk fails to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the cluster blocklisted this client, learnt from the first librbd call that failed
/// with `ESHUTDOWN` (Ceph's `EBLOCKLISTED`): from then on every request of the disk fails at
/// once, and the guest only sees IOERR. Said once per image in the log.
pub(super) struct Blocklist {
    spec: String,
    blocklisted: AtomicBool,
}

impl Blocklist {
    /// Called with the errno of every failed librbd call.
    pub(super) fn note(&self, errno: i32) {
        if errno == libc::ESHUTDOWN && !self.blocklisted.swap(true, Ordering::AcqRel) {
            error!(
                "rbd image {}: the Ceph cluster blocklisted this client (another client broke \
                 its exclusive lock, or an operator blocklisted it): every request fails with \
                 IOERR; remove the disk (or restart keeld) to serve it again",
                self.spec
            );
        }
    }

    /// The cluster blocklisted this client: no write of it can land any more.
    pub(super) fn is_set(&self) -> bool {
        self.blocklisted.load(Ordering::Acquire)
    }

    pub(super) fn spec(&self) -> &str {
        &self.spec
    }
}

/// A served RBD image.
pub struct RbdEngine {
    image: Arc<Image>,
    blocklist: Arc<Blocklist>,
    spec: String,
    read_only: bool,
    /// Bytes; grows online (`grow`).
    capacity: AtomicU64,
    /// librbd's cache is on (`direct = false`): a completed write may still sit in it, so a
    /// write-through write needs a flush of its own before it is answered.
    cache: bool,
    /// This engine took the image's exclusive lock at open, and gives it back when dropped.
    locked: bool,
    /// Fails the writes of a blocklisted client that librbd would keep for ever; writable
    /// disks only. Shared with the queues, so it runs as long as any of them may wait.
    watchdog: Option<Arc<watchdog::Watchdog>>,
}

impl RbdEngine {
    /// Connects to the cluster and opens the image, creating it when it is missing and the disk
    /// has a `size`.
    pub fn open(disk: &DiskConfig) -> Result<Self, EngineError> {
        let rbd = disk
            .rbd
            .as_ref()
            .ok_or_else(|| EngineError::Unsupported("an rbd disk needs `image`".into()))?;
        let spec = rbd.spec();
        let setup = |message: String| EngineError::Setup {
            path: spec.clone().into(),
            message,
        };
        let cache = !disk.direct;
        let image =
            open_image(rbd, disk.size, disk.read_only, cache).map_err(|e| setup(e.to_string()))?;
        let size = image.size().map_err(|e| setup(e.to_string()))?;
        if let Some(want) = disk.size.filter(|&w| w > size) {
            return Err(setup(format!(
                "the image is {size} bytes, less than size = {want} (grow it with `keel resize`)"
            )));
        }
        let capacity = size - size % 512;
        if capacity == 0 {
            return Err(setup("the image is empty".into()));
        }
        let locked = !disk.read_only && take_lock(&image, &spec, disk.handover)?;
        let image = Arc::new(image);
        let blocklist = Arc::new(Blocklist {
            spec: spec.clone(),
            blocklisted: AtomicBool::new(false),
        });
        let watchdog = if disk.read_only {
            None
        } else {
            let api = ffi::api().map_err(EngineError::Unsupported)?;
            Some(Arc::new(watchdog::Watchdog::start(
                &image,
                api,
                Arc::clone(&blocklist),
            )))
        };
        let engine = Self {
            image,
            blocklist,
            watchdog,
            spec,
            read_only: disk.read_only,
            capacity: AtomicU64::new(capacity),
            cache,
            locked,
        };
        info!("{}", engine.describe());
        Ok(engine)
    }
}

fn open_image(
    rbd: &RbdConfig,
    size: Option<u64>,
    read_only: bool,
    cache: bool,
) -> std::io::Result<Image> {
    let cluster = Arc::new(Cluster::connect(&ConnectOptions {
        ceph_conf: rbd.ceph_conf.display().to_string(),
        id: rbd.ceph_id.clone(),
        keyring: rbd.keyring.as_ref().map(|k| k.display().to_string()),
        connect_timeout: CONNECT_TIMEOUT,
        osd_timeout: (rbd.osd_timeout_s > 0)
            .then(|| Duration::from_secs(u64::from(rbd.osd_timeout_s))),
        cache,
    })?);
    let ctx = Arc::new(cluster.ioctx(&rbd.pool, rbd.namespace.as_deref())?);
    match Image::open(&ctx, &rbd.image) {
        Err(e)
            if image::errno(&e) == Some(libc::ENOENT)
                || e.kind() == std::io::ErrorKind::NotFound =>
        {
            let Some(size) = size.filter(|_| !read_only) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "image {:?} does not exist and {}",
                        rbd.image,
                        if read_only {
                            "a read-only disk is not created"
                        } else {
                            "no size is given to create it"
                        }
                    ),
                ));
            };
            ctx.create(&rbd.image, size)?;
            info!("created rbd image {} of {size} bytes", rbd.spec());
            Image::open(&ctx, &rbd.image)
        }
        other => other,
    }
}

/// The size of `disk`'s image, read without taking its lock: a `handover = true` disk in
/// standby offers it to its frontend while another keeld holds the image.
pub fn image_size(disk: &DiskConfig) -> Result<u64, EngineError> {
    let rbd = disk
        .rbd
        .as_ref()
        .ok_or_else(|| EngineError::Unsupported("an rbd disk needs `image`".into()))?;
    let setup = |e: std::io::Error| EngineError::Setup {
        path: rbd.spec().into(),
        message: e.to_string(),
    };
    // Read-only here only means "never create it": this handle reads the size and closes.
    let image = open_image(rbd, None, true, false).map_err(setup)?;
    let size = image.size().map_err(setup)?;
    Ok(size - size % 512)
}

/// Takes the exclusive lock of an image that has the feature, so that a second writer (another
/// keeld on the same image) is refused at open instead of both writing in turn. Returns whether
/// it did; a `handover` disk needs the feature, since the lock is what it is handed over by.
///
/// `rbd_lock_acquire` also switches this handle to librbd's standard lock policy: a peer's
/// request for the lock is answered "no" (`EROFS`) instead of the lock moving to it, and this
/// handle never takes the lock again on its own once it has given it back.
fn take_lock(image: &Image, spec: &str, handover: bool) -> Result<bool, EngineError> {
    let features = image.features().map_err(|e| EngineError::Setup {
        path: spec.into(),
        message: e.to_string(),
    })?;
    if features & ffi::FEATURE_EXCLUSIVE_LOCK == 0 {
        if handover {
            return Err(EngineError::Setup {
                path: spec.into(),
                message: format!(
                    "handover = true needs the image's exclusive-lock feature, which hands it \
                     over between keelds (`rbd feature enable {spec} exclusive-lock`)"
                ),
            });
        }
        return Ok(false);
    }
    image.lock_exclusive().map_err(|e| match image::errno(&e) {
        Some(libc::EROFS | libc::EBUSY | libc::EAGAIN) => EngineError::Locked(format!(
            "image {spec} is held by another client (its exclusive lock; `rbd lock ls {spec}` \
             names it): stop that client first ({e})"
        )),
        _ => EngineError::Setup {
            path: spec.into(),
            message: format!("taking the exclusive lock: {e}"),
        },
    })?;
    Ok(true)
}

/// Gives the exclusive lock back before the image closes, so that another keeld waiting for it
/// (a handover) gets it as soon as this one is done. A queue half still holding the image
/// (keeld stopping) leaves that to `rbd_close`, which also releases it once the queue is gone.
impl Drop for RbdEngine {
    fn drop(&mut self) {
        drop(self.watchdog.take());
        if self.blocklist.is_set() {
            // librbd may still hold writes of this client, and their guest memory, for ever:
            // closing the image under them is not safe, so the handle (and its connection) is
            // left open until keeld exits.
            std::mem::forget(Arc::clone(&self.image));
            return;
        }
        if !self.locked || Arc::strong_count(&self.image) > 1 {
            return;
        }
        if let Ok(false) = self.image.owns_lock() {
            warn!(
                "{}: the exclusive lock is no longer this client's (broken by another client?)",
                self.spec
            );
            return;
        }
        match self.image.unlock() {
            Ok(()) => info!("{}: exclusive lock released", self.spec),
            Err(e) => warn!(
                "{}: releasing the exclusive lock: {e} (closing the image releases it)",
                self.spec
            ),
        }
    }
}

fn admin_err(e: std::io::Error) -> AdminError {
    match image::errno(&e) {
        Some(libc::ENOENT) => AdminError::NotFound(e.to_string()),
        Some(libc::EEXIST | libc::EBUSY) => AdminError::Conflict(e.to_string()),
        Some(libc::EINVAL) => AdminError::Invalid(e.to_string()),
        _ => AdminError::Failed(e.to_string()),
    }
}

impl Engine for RbdEngine {
    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_unless(self.read_only)
    }

    fn describe(&self) -> String {
        format!(
            "rbd engine on {} ({} bytes, librbd aio, librbd cache {})",
            self.spec,
            self.capacity(),
            if self.cache { "on" } else { "off" }
        )
    }

    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        let api = ffi::api().map_err(EngineError::Unsupported)?;
        let image = Arc::clone(&self.image);
        let blocklist = Arc::clone(&self.blocklist);
        let watchdog = self.watchdog.clone();
        queue::RbdQueue::new(image, blocklist, api, watchdog, self.read_only, self.cache)
            .map(|q| Box::new(q) as Box<dyn QueueEngine>)
            .map_err(|source| EngineError::Queue {
                queue: index,
                source,
            })
    }

    fn flush(&self) -> Result<(), EngineError> {
        if self.blocklist.is_set() {
            // rbd_flush would wait for writes librbd never lets go of.
            return Err(EngineError::Io {
                op: "flush",
                source: std::io::Error::from_raw_os_error(libc::ESHUTDOWN),
            });
        }
        self.image.flush().map_err(|source| {
            self.blocklist.note(image::errno(&source).unwrap_or(0));
            EngineError::Io {
                op: "flush",
                source,
            }
        })
    }

    fn admin(&self) -> Option<&dyn EngineAdmin> {
        Some(self)
    }

    /// `rbd_resize` to the new size; the daemon then tells the guest (config change).
    fn grow(&self, size: u64) -> Result<u64, EngineError> {
        let now = self.capacity();
        super::refuse_shrink(now, size)?;
        let size = size.div_ceil(512) * 512;
        if size == now {
            return Ok(now);
        }
        if self.read_only {
            return Err(EngineError::ReadOnly { op: "grow" });
        }
        self.image
            .resize(size)
            .map_err(|source| EngineError::Io { op: "grow", source })?;
        self.capacity.store(size, Ordering::Release);
        info!("{}: grown from {now} to {size} bytes", self.spec);
        Ok(size)
    }
}

/// Snapshots are the image's RBD snapshots: taken, listed, removed and rolled back by Ceph.
impl EngineAdmin for RbdEngine {
    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, AdminError> {
        let list = self.image.snap_list().map_err(admin_err)?;
        Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, snap)| SnapshotInfo {
                name: snap.name,
                seq: i as u64 + 1,
                created: snap.created,
                owned_blocks: None,
                pause_us: None,
            })
            .collect())
    }

    fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, AdminError> {
        if self.read_only {
            return Err(AdminError::Invalid("the disk is read-only".into()));
        }
        self.image.snap_create(name).map_err(admin_err)?;
        self.list_snapshots()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| AdminError::Failed(format!("snapshot {name:?} vanished")))
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), AdminError> {
        if self.image.snap_is_protected(name).unwrap_or(false) {
            return Err(AdminError::Conflict(format!(
                "snapshot {name} is protected (the parent of RBD clones): flatten or remove its \
                 clones, then `rbd snap unprotect {}@{name}`",
                self.spec
            )));
        }
        self.image.snap_remove(name).map_err(admin_err)
    }

    fn revert_snapshot(&self, name: &str) -> Result<(), AdminError> {
        if self.read_only {
            return Err(AdminError::Invalid("the disk is read-only".into()));
        }
        self.image.snap_rollback(name).map_err(admin_err)
    }

    fn diff(&self, from: &str, to: &str) -> Result<DiffReport, AdminError> {
        diff::diff(&self.image, from, to, self.capacity())
    }

    fn export(&self, from: &str, to: &str) -> Result<super::DiffExport, AdminError> {
        export::export(&self.image, from, to, self.capacity())
    }

    fn apply(
        &self,
        file: &std::path::Path,
        force: bool,
    ) -> Result<keel_protocol::control::ApplyAnswer, AdminError> {
        if self.read_only {
            return Err(AdminError::Invalid("the disk is read-only".into()));
        }
        apply::apply(&self.image, file, force)
    }

    fn clone_snapshot(&self, snapshot: &str, new_image: &str) -> Result<String, AdminError> {
        clone::clone_snapshot(&self.image, &self.spec, snapshot, new_image)
    }

    fn remove_clone(&self, new_image: &str) -> Result<(), AdminError> {
        self.image.ctx().remove(new_image).map_err(admin_err)
    }
}
