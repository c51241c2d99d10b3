//! The daemon's side of the control API: carries out calls over the disks it serves.

use super::{ApiCall, ApiError, ControlHandler, Download, MirrorOp};
use crate::config::DiskConfig;
use crate::engine::{AdminError, Engine, EngineAdmin, EngineError, MirrorCommand};
use crate::store::diff::TreeRef;
use crate::store::diff_file::{Exporter, Header, export_len};
use crate::store::{Store, StoreError};
use crate::vhost::backend::DiskContext;
use crate::vhost::config_change::ConfigNotifier;
use crate::vhost::server::DiskServer;
use crate::vhost::stats::{DiskStats, LatencyOp};
use keel_protocol::control::{
    CloneAnswer, DiskInfo, DiskState, DiskStats as StatsBody, OpLatency, ResizeAnswer, VersionInfo,
};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// One served disk, as the control API sees it.
pub struct DiskEntry {
    pub config: DiskConfig,
    pub engine: Arc<dyn Engine>,
    pub stats: Arc<DiskStats>,
    /// Tells the attached frontend the disk grew.
    pub config_change: Arc<ConfigNotifier>,
}

impl DiskEntry {
    fn attached(&self) -> bool {
        self.stats.attached.load(Ordering::Acquire)
    }

    fn info(&self) -> DiskInfo {
        let c = &self.config;
        DiskInfo {
            name: c.name.clone(),
            engine: c.engine.name().to_string(),
            socket: c.socket.display().to_string(),
            paths: c
                .backing_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            size: self.engine.capacity(),
            read_only: c.read_only,
            queues: c.queues,
            serial: c.serial.clone(),
            connected: self.attached(),
            state: DiskState::Serving,
            error: None,
            space: self.engine.admin().and_then(|a| a.space()),
        }
    }

    fn stats(&self) -> StatsBody {
        let s = self.stats.snapshot();
        let e = self
            .engine
            .admin()
            .map(|a| a.counters())
            .unwrap_or_default();
        StatsBody {
            reads: s.reads,
            writes: s.writes,
            flushes: s.flushes,
            discards: s.discards,
            write_zeroes: s.write_zeroes,
            get_ids: s.get_ids,
            read_bytes: s.bytes_read,
            written_bytes: s.bytes_written,
            errors: s.io_errors,
            unsupported: 0,
            invalid_requests: s.rejected,
            batches: s.batches,
            metadata_transactions: e.metadata_transactions,
            device_bytes_written: e.device_bytes_written,
            checksum_errors: e.checksum_errors,
            snapshots_being_deleted: e.snapshots_being_deleted,
            space: self.engine.admin().and_then(|a| a.space()),
            latency: self.stats.latency.buckets(),
            latency_sum_us: self.stats.latency.sum_us(),
            batched_requests: s.batched_requests,
            max_batch: s.max_batch,
            in_flight: s.in_flight,
            latency_by_op: LatencyOp::ALL
                .iter()
                .zip(&self.stats.latency_by_op)
                .map(|(op, h)| OpLatency {
                    op: op.name().to_string(),
                    buckets: h.buckets(),
                    sum_us: h.sum_us(),
                })
                .collect(),
        }
    }

    fn store(&self) -> Result<Arc<Store>, ApiError> {
        self.admin()?.store().ok_or_else(|| {
            ApiError::Unsupported(format!(
                "disk {}: the {} engine keeps no snapshot trees to diff",
                self.config.name,
                self.config.engine.name()
            ))
        })
    }

    fn admin(&self) -> Result<&dyn EngineAdmin, ApiError> {
        self.engine.admin().ok_or_else(|| {
            ApiError::Unsupported(format!(
                "disk {}: the {} engine has no snapshots or mirrors",
                self.config.name,
                self.config.engine.name()
            ))
        })
    }
}

/// A configured disk that could not be opened at start: listed, not served.
pub struct FailedDisk {
    pub config: DiskConfig,
    pub reason: String,
}

impl FailedDisk {
    fn info(&self) -> DiskInfo {
        let c = &self.config;
        DiskInfo {
            name: c.name.clone(),
            engine: c.engine.name().to_string(),
            socket: c.socket.display().to_string(),
            paths: c
                .backing_paths()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            size: 0,
            read_only: c.read_only,
            queues: c.queues,
            serial: c.serial.clone(),
            connected: false,
            state: DiskState::Failed,
            error: Some(self.reason.clone()),
            space: None,
        }
    }
}

/// Carries out control calls over a fixed set of disks.
pub struct DaemonControl {
    disks: RwLock<Vec<Arc<DiskEntry>>>,
    /// The config's disks that failed to open, listed after the served ones.
    failed: Vec<FailedDisk>,
    /// Names of the clones being copied: held apart so a copy does not lock the disk list.
    cloning: Mutex<HashSet<String>>,
    /// Servers of the disks cloned while keeld runs (the config's are the daemon's).
    clones: Mutex<Vec<DiskServer>>,
}

impl DaemonControl {
    pub fn new(disks: Vec<DiskEntry>) -> Self {
        Self::with_failed(disks, Vec::new())
    }

    /// Serves `disks` and lists `failed` with their reasons.
    pub fn with_failed(disks: Vec<DiskEntry>, failed: Vec<FailedDisk>) -> Self {
        Self {
            disks: RwLock::new(disks.into_iter().map(Arc::new).collect()),
            failed,
            cloning: Mutex::default(),
            clones: Mutex::default(),
        }
    }

    fn disk(&self, name: &str) -> Result<Arc<DiskEntry>, ApiError> {
        self.disks
            .read()
            .map_err(|_| ApiError::Internal("the disk list is poisoned".into()))?
            .iter()
            .find(|d| d.config.name == name)
            .cloned()
            .ok_or_else(
                || match self.failed.iter().find(|f| f.config.name == name) {
                    Some(f) => ApiError::Conflict(format!(
                        "disk {name} is not served: it failed to open: {}",
                        f.reason
                    )),
                    None => ApiError::NotFound(format!("no such disk: {name}")),
                },
            )
    }

    /// Stops the cloned disks' servers, flushing each; returns the failures (disk, error).
    pub fn stop_clones(&self) -> Vec<(String, EngineError)> {
        let servers = self
            .clones
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        servers
            .into_iter()
            .filter_map(|s| {
                let name = s.context().name.clone();
                s.stop().err().map(|e| (name, e))
            })
            .collect()
    }

    /// Clones snapshot `snapshot` of `disk` into a new keel container beside it and serves it
    /// as `new_disk` on a socket beside `disk`'s.
    fn clone_disk(
        &self,
        disk: &str,
        snapshot: &str,
        new_disk: &str,
    ) -> Result<CloneAnswer, ApiError> {
        self.clone_disk_with(disk, snapshot, new_disk, |store, id, path| {
            store.clone_snapshot(id, path)
        })
    }

    /// [`Self::clone_disk`] with the copy step given, so tests can act while a copy runs.
    fn clone_disk_with(
        &self,
        disk: &str,
        snapshot: &str,
        new_disk: &str,
        copy: impl FnOnce(&Store, u64, &Path) -> Result<u64, StoreError>,
    ) -> Result<CloneAnswer, ApiError> {
        let src = self.disk(disk)?;
        let store = src.store()?;
        let TreeRef::Snapshot(id) = side(&store, snapshot)? else {
            return Err(ApiError::BadRequest(format!(
                "{snapshot} is not a snapshot of disk {disk}"
            )));
        };
        let mut guard = self.reserve(new_disk)?;
        let beside = |p: &Path, ext: &str| {
            p.parent()
                .unwrap_or(Path::new("."))
                .join(format!("{new_disk}.{ext}"))
        };
        let container = src.config.path.as_deref().ok_or_else(|| {
            ApiError::Unsupported(format!(
                "disk {disk} has no single container to clone beside"
            ))
        })?;
        let path = beside(container, "keel");
        let socket = beside(&src.config.socket, "sock");
        for p in [&path, &socket] {
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(ApiError::Conflict(format!(
                    "{} exists: choose another name for the clone",
                    p.display()
                )));
            }
        }
        let started = std::time::Instant::now();
        let blocks = match copy(&store, id, &path) {
            Ok(blocks) => blocks,
            // The file appeared since the check above: someone else's, so it stays.
            Err(StoreError::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ApiError::Conflict(format!(
                    "{} exists: choose another name for the clone",
                    path.display()
                )));
            }
            Err(e) => {
                guard.container = Some(path);
                return Err(from_store(e));
            }
        };
        guard.container = Some(path.clone());
        let mut config = src.config.clone();
        config.name = new_disk.to_string();
        config.socket = socket.clone();
        config.path = Some(path.clone());
        config.size = Some(store.capacity());
        config.resize = false;
        config.read_only = false;
        config.serial = new_disk.chars().take(keel_protocol::ID_BYTES).collect();
        let engine = crate::engine::open(&config).map_err(|e| {
            ApiError::Internal(format!(
                "clone {new_disk}: cannot open {}: {e}",
                path.display()
            ))
        })?;
        let ctx = Arc::new(DiskContext::new(&config, engine, Arc::default()));
        let entry = DiskEntry {
            config,
            engine: Arc::clone(&ctx.engine),
            stats: Arc::clone(&ctx.stats),
            config_change: Arc::clone(&ctx.config_change),
        };
        let server = DiskServer::start(ctx, socket.clone())
            .map_err(|e| ApiError::Internal(format!("clone {new_disk}: {e}")))?;
        self.disks
            .write()
            .map_err(|_| ApiError::Internal("the disk list is poisoned".into()))?
            .push(Arc::new(entry));
        guard.container = None;
        if let Ok(mut c) = self.clones.lock() {
            c.push(server);
        }
        log::info!(
            "disk {new_disk}: cloned from {disk}@{snapshot} ({blocks} blocks in {:.1?}), \
             serving on {}",
            started.elapsed(),
            socket.display()
        );
        Ok(CloneAnswer {
            disk: new_disk.to_string(),
            path: path.display().to_string(),
            socket: socket.display().to_string(),
            blocks,
        })
    }

    /// Takes `name` for a clone, or answers Conflict if a disk or another clone has it.
    fn reserve(&self, name: &str) -> Result<CloneGuard<'_>, ApiError> {
        let mut cloning = self
            .cloning
            .lock()
            .map_err(|_| ApiError::Internal("the clone reservations are poisoned".into()))?;
        let taken = self
            .disks
            .read()
            .map_err(|_| ApiError::Internal("the disk list is poisoned".into()))?
            .iter()
            .any(|d| d.config.name == name)
            || self.failed.iter().any(|f| f.config.name == name);
        if taken {
            return Err(ApiError::Conflict(format!("disk {name} exists")));
        }
        if !cloning.insert(name.to_string()) {
            return Err(ApiError::Conflict(format!(
                "disk {name} is being cloned already"
            )));
        }
        Ok(CloneGuard {
            cloning: &self.cloning,
            name: name.to_string(),
            container: None,
        })
    }
}

/// A clone's hold on its new name until the disk is registered or the clone fails; a failed
/// clone's container goes with it, so a retry under the same name can succeed.
struct CloneGuard<'a> {
    cloning: &'a Mutex<HashSet<String>>,
    name: String,
    /// The container this clone created and has not registered yet.
    container: Option<PathBuf>,
}

impl Drop for CloneGuard<'_> {
    fn drop(&mut self) {
        // The file goes before the name, so a retry never finds this clone's leftovers.
        if let Some(path) = self.container.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!(
                "clone {}: cannot remove the unfinished {}: {e}",
                self.name,
                path.display()
            );
        }
        if let Ok(mut cloning) = self.cloning.lock() {
            cloning.remove(&self.name);
        }
    }
}

fn to_json<T: Serialize>(v: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

fn from_admin(e: AdminError) -> ApiError {
    match e {
        AdminError::NotFound(m) => ApiError::NotFound(m),
        AdminError::Conflict(m) => ApiError::Conflict(m),
        AdminError::Unsupported(m) => ApiError::Unsupported(m),
        AdminError::Invalid(m) => ApiError::BadRequest(m),
        AdminError::Failed(m) => ApiError::Internal(m),
    }
}

fn from_store(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A diff side of `store` by name; an unknown snapshot is a 404.
fn side(store: &Store, name: &str) -> Result<TreeRef, ApiError> {
    store
        .tree_ref(name)
        .map_err(|_| ApiError::NotFound(format!("no snapshot named {name}")))
}

impl ControlHandler for DaemonControl {
    fn export(&self, disk: &str, from: &str, to: &str) -> Result<Download, ApiError> {
        let store = self.disk(disk)?.store()?;
        let d = store
            .diff(side(&store, from)?, side(&store, to)?)
            .map_err(from_store)?;
        let header = Header {
            disk_size: store.capacity(),
            created: crate::store::now_secs(),
            from: from.to_string(),
            to: to.to_string(),
        };
        let len = export_len(&header, &d);
        log::info!(
            "disk {disk}: exporting {} changed blocks from {from} to {to} ({len} bytes)",
            d.blocks.len()
        );
        Ok(Download {
            len,
            reader: Box::new(Exporter::new(store, &header, d)),
        })
    }

    fn call(&self, call: ApiCall) -> Result<serde_json::Value, ApiError> {
        match call {
            ApiCall::Version => to_json(VersionInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            ApiCall::ListDisks => {
                let disks = self
                    .disks
                    .read()
                    .map_err(|_| ApiError::Internal("the disk list is poisoned".into()))?;
                let served = disks.iter().map(|d| d.info());
                to_json(
                    served
                        .chain(self.failed.iter().map(FailedDisk::info))
                        .collect::<Vec<_>>(),
                )
            }
            ApiCall::DiskInfo { disk } => {
                match self.failed.iter().find(|f| f.config.name == disk) {
                    Some(f) => to_json(f.info()),
                    None => to_json(self.disk(&disk)?.info()),
                }
            }
            ApiCall::DiskStats { disk } => to_json(self.disk(&disk)?.stats()),
            ApiCall::ListSnapshots { disk } => to_json(
                self.disk(&disk)?
                    .admin()?
                    .list_snapshots()
                    .map_err(from_admin)?,
            ),
            ApiCall::CreateSnapshot { disk, name } => {
                let d = self.disk(&disk)?;
                let snap = d.admin()?.create_snapshot(&name).map_err(from_admin)?;
                log::info!("disk {disk}: snapshot {name} created (seq {})", snap.seq);
                to_json(snap)
            }
            ApiCall::DeleteSnapshot { disk, name } => {
                self.disk(&disk)?
                    .admin()?
                    .delete_snapshot(&name)
                    .map_err(from_admin)?;
                log::info!("disk {disk}: snapshot {name} deleted");
                to_json(serde_json::json!({}))
            }
            ApiCall::RevertSnapshot { disk, name, force } => {
                let d = self.disk(&disk)?;
                if d.attached() && !force {
                    return Err(ApiError::Conflict(format!(
                        "disk {disk} has a frontend attached: detach it first, or force the \
                         revert (the guest's cached view of the disk becomes stale)"
                    )));
                }
                d.admin()?.revert_snapshot(&name).map_err(from_admin)?;
                log::warn!("disk {disk}: reverted to snapshot {name}");
                to_json(serde_json::json!({}))
            }
            ApiCall::Clone {
                disk,
                snapshot,
                new_disk,
            } => to_json(self.clone_disk(&disk, &snapshot, &new_disk)?),
            ApiCall::Resize { disk, size } => {
                let d = self.disk(&disk)?;
                let now = d.engine.capacity();
                let grown = d.engine.grow(size).map_err(|e| match e {
                    EngineError::Refused(m) => ApiError::BadRequest(format!("disk {disk}: {m}")),
                    EngineError::Unsupported(m) => {
                        ApiError::Unsupported(format!("disk {disk}: {m}"))
                    }
                    other => ApiError::Internal(format!("disk {disk}: {other}")),
                })?;
                let notified = if grown == now {
                    false
                } else {
                    log::info!("disk {disk}: grown from {now} to {grown} bytes");
                    d.config_change.notify().unwrap_or_else(|e| {
                        log::warn!("disk {disk}: cannot tell the frontend it grew: {e}");
                        false
                    })
                };
                to_json(ResizeAnswer {
                    size: grown,
                    frontend_notified: notified,
                })
            }
            ApiCall::Diff { disk, from, to } => {
                let store = self.disk(&disk)?.store()?;
                let d = store
                    .diff(side(&store, &from)?, side(&store, &to)?)
                    .map_err(from_store)?;
                to_json(d.report(&from, &to, store.capacity()))
            }
            ApiCall::Export { disk, .. } => Err(ApiError::BadRequest(format!(
                "disk {disk}: an export is a binary answer, not a JSON call"
            ))),
            ApiCall::MirrorStatus { disk } => to_json(
                self.disk(&disk)?
                    .admin()?
                    .mirror_status()
                    .map_err(from_admin)?,
            ),
            ApiCall::Mirror {
                disk,
                component,
                op,
            } => {
                let cmd = match op {
                    MirrorOp::Offline => MirrorCommand::Offline,
                    MirrorOp::Online => MirrorCommand::Online,
                    MirrorOp::Maintenance { delta } => MirrorCommand::Maintenance {
                        delta: delta.map(Into::into),
                    },
                    MirrorOp::Replace { path } => MirrorCommand::Replace { path: path.into() },
                };
                self.disk(&disk)?
                    .admin()?
                    .mirror_command(component, cmd)
                    .map_err(from_admin)?;
                to_json(serde_json::json!({}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A control API over one served keel disk `k` in `dir`, with a snapshot `gold`.
    fn control_over_k(dir: &Path) -> DaemonControl {
        let toml = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\n\
                    path = \"k.keel\"\nsize = \"4M\"\ndirect = false\n";
        let config = Config::parse(toml, &dir.join("keel.toml"), dir).unwrap();
        let disk = config.disks[0].clone();
        let ctx = DiskContext::new(&disk, crate::engine::open(&disk).unwrap(), Arc::default());
        let control = DaemonControl::new(vec![DiskEntry {
            config: disk,
            engine: Arc::clone(&ctx.engine),
            stats: Arc::clone(&ctx.stats),
            config_change: Arc::clone(&ctx.config_change),
        }]);
        control
            .call(ApiCall::CreateSnapshot {
                disk: "k".into(),
                name: "gold".into(),
            })
            .unwrap();
        control
    }

    fn clone(control: &DaemonControl, new_disk: &str) -> Result<serde_json::Value, ApiError> {
        control.call(ApiCall::Clone {
            disk: "k".into(),
            snapshot: "gold".into(),
            new_disk: new_disk.into(),
        })
    }

    fn disk_names(control: &DaemonControl) -> Vec<String> {
        let list = control.call(ApiCall::ListDisks).unwrap();
        let mut names: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    fn stop(control: &DaemonControl) {
        assert!(control.stop_clones().is_empty());
    }

    /// While a clone copies, another caller lists and snapshots the disks and clones under
    /// another name; the name being cloned is refused with a Conflict.
    #[test]
    fn other_calls_answer_while_a_clone_copies() {
        let dir = tempfile::tempdir().unwrap();
        let control = control_over_k(dir.path());
        let answer = control
            .clone_disk_with("k", "gold", "copy", |store, id, path| {
                assert!(
                    control.disks.try_write().is_ok(),
                    "the copy runs without the disk list's lock"
                );
                std::thread::scope(|s| {
                    s.spawn(|| {
                        assert_eq!(disk_names(&control), ["k"]);
                        control
                            .call(ApiCall::DiskStats { disk: "k".into() })
                            .unwrap();
                        control
                            .call(ApiCall::CreateSnapshot {
                                disk: "k".into(),
                                name: "during".into(),
                            })
                            .unwrap();
                        match clone(&control, "copy") {
                            Err(ApiError::Conflict(m)) => {
                                assert!(m.contains("being cloned"), "{m}")
                            }
                            other => panic!("a name being cloned was not refused: {other:?}"),
                        }
                        clone(&control, "other").unwrap();
                    })
                    .join()
                    .unwrap();
                });
                store.clone_snapshot(id, path)
            })
            .unwrap();
        assert_eq!(answer.disk, "copy");
        assert!(dir.path().join("copy.keel").exists());
        assert_eq!(disk_names(&control), ["copy", "k", "other"]);
        assert!(control.cloning.lock().unwrap().is_empty());
        match clone(&control, "copy") {
            Err(ApiError::Conflict(m)) => assert!(m.contains("disk copy exists"), "{m}"),
            other => panic!("a registered name was not refused: {other:?}"),
        }
        stop(&control);
    }

    /// A failed copy takes its partial container and its name with it, so the same clone can
    /// be retried; a container someone else created meanwhile is left alone.
    #[test]
    fn a_failed_clone_frees_its_name_and_container() {
        let dir = tempfile::tempdir().unwrap();
        let control = control_over_k(dir.path());
        let container = dir.path().join("copy.keel");

        let err = control
            .clone_disk_with("k", "gold", "copy", |_, _, path| {
                std::fs::write(path, b"half a container")?;
                Err(StoreError::Failed)
            })
            .unwrap_err();
        assert!(matches!(err, ApiError::Internal(_)), "{err:?}");
        assert!(!container.exists(), "the partial container was left behind");
        assert!(control.cloning.lock().unwrap().is_empty());

        let err = control
            .clone_disk_with("k", "gold", "copy", |store, id, path| {
                std::fs::write(path, b"not this clone's")?;
                store.clone_snapshot(id, path)
            })
            .unwrap_err();
        assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
        assert_eq!(std::fs::read(&container).unwrap(), b"not this clone's");
        assert!(control.cloning.lock().unwrap().is_empty());
        std::fs::remove_file(&container).unwrap();

        clone(&control, "copy").unwrap();
        assert_eq!(disk_names(&control), ["copy", "k"]);
        stop(&control);
    }
}
