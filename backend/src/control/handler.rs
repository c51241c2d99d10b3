//! The daemon's side of the control API: carries out calls over the disks it serves.

use super::{ApiCall, ApiError, ControlHandler, Download, MirrorOp};
use crate::config::DiskConfig;
use crate::engine::{AdminError, Engine, EngineAdmin, EngineError, MirrorCommand};
use crate::store::diff::TreeRef;
use crate::store::diff_file::{Exporter, Header, export_len};
use crate::store::{Store, StoreError};
use crate::vhost::config_change::ConfigNotifier;
use crate::vhost::stats::DiskStats;
use keel_protocol::control::{DiskInfo, DiskStats as StatsBody, ResizeAnswer, VersionInfo};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
            latency: self.stats.latency.buckets(),
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

/// Carries out control calls over a fixed set of disks.
pub struct DaemonControl {
    disks: Vec<DiskEntry>,
}

impl DaemonControl {
    pub fn new(disks: Vec<DiskEntry>) -> Self {
        Self { disks }
    }

    fn disk(&self, name: &str) -> Result<&DiskEntry, ApiError> {
        self.disks
            .iter()
            .find(|d| d.config.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("no such disk: {name}")))
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
                to_json(self.disks.iter().map(DiskEntry::info).collect::<Vec<_>>())
            }
            ApiCall::DiskInfo { disk } => to_json(self.disk(&disk)?.info()),
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
            ApiCall::Clone { disk, .. } => Err(ApiError::Unsupported(format!(
                "disk {disk}: cloning a snapshot into a served disk is not available yet; \
                 use `keel export` on a stopped container"
            ))),
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
