//! The daemon's side of the control API: carries out calls over the disks it serves.

use std::sync::Arc;

use keel_protocol::control::{DiskInfo, ResizeAnswer, VersionInfo};
use serde::Serialize;

use super::disks::{DiskSet, FailedDisk, Missing, Poisoned};
use super::info::Need;
use super::served::ServedDisk;
use crate::control::{ApiCall, ApiError, ControlHandler, Download, MirrorOp};
use crate::engine::{AdminError, EngineError, MirrorCommand};
use crate::store::diff::TreeRef;
use crate::store::diff_file::{Exporter, Header, export_len};
use crate::store::{Store, StoreError};

/// Carries out control calls over the daemon's disks.
pub struct DaemonControl {
    pub(super) disks: Arc<DiskSet>,
    /// The clones being copied (or failed): held apart so a copy does not lock the disk list.
    pub(super) cloning: super::clone::CloneJobs,
    /// The NBD exports disks added and removed through the API join and leave.
    pub(super) exports: Option<Arc<crate::nbd::Exports>>,
}

impl DaemonControl {
    pub fn new(disks: Arc<DiskSet>) -> Self {
        Self {
            disks,
            cloning: Default::default(),
            exports: None,
        }
    }

    /// Disks added and removed through the API also join and leave `exports`.
    pub fn with_exports(mut self, exports: Arc<crate::nbd::Exports>) -> Self {
        self.exports = Some(exports);
        self
    }

    pub(super) fn disk(&self, name: &str) -> Result<Arc<ServedDisk>, ApiError> {
        self.disks.get(name).map_err(|m| match m {
            Missing::Failed(reason) => ApiError::Conflict(format!(
                "disk {name} is not served: it failed to open: {reason}"
            )),
            Missing::Unknown => ApiError::NotFound(format!("no such disk: {name}")),
            Missing::Poisoned => poisoned(Poisoned),
        })
    }
}

/// The answer when the disk list's lock was poisoned by a panic mid-update.
pub(super) fn poisoned(_: Poisoned) -> ApiError {
    ApiError::Internal("the disk list is poisoned".into())
}

fn to_json<T: Serialize>(v: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()))
}

pub(super) fn from_admin(e: AdminError) -> ApiError {
    match e {
        AdminError::NotFound(m) => ApiError::NotFound(m),
        AdminError::Conflict(m) => ApiError::Conflict(m),
        AdminError::Unsupported(m) => ApiError::Unsupported(m),
        AdminError::Invalid(m) => ApiError::BadRequest(m),
        AdminError::Failed(m) => ApiError::Internal(m),
    }
}

pub(super) fn from_store(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A diff side of `store` by name; an unknown snapshot is a 404.
pub(super) fn side(store: &Store, name: &str) -> Result<TreeRef, ApiError> {
    store
        .tree_ref(name)
        .map_err(|_| ApiError::NotFound(format!("no snapshot named {name}")))
}

impl ControlHandler for DaemonControl {
    fn export(&self, disk: &str, from: &str, to: &str) -> Result<Download, ApiError> {
        let d = self.disk(disk)?;
        let admin = d.admin(Need::Snapshots)?;
        if admin.store().is_none() {
            let e = admin.export(from, to).map_err(from_admin)?;
            log::info!(
                "disk {disk}: exporting from {from} to {to} ({} bytes)",
                e.len
            );
            return Ok(Download {
                len: e.len,
                reader: e.reader,
            });
        }
        let store = d.store()?;
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
                let disks = self.disks.list().map_err(poisoned)?;
                let served: Vec<DiskInfo> = disks.iter().map(|d| d.info()).collect();
                // A clone that just started serving is listed once, as served.
                let cloning = self.clone_infos()?.into_iter();
                let cloning = cloning.filter(|c| !served.iter().any(|s| s.name == c.name));
                to_json(
                    served
                        .iter()
                        .cloned()
                        .chain(self.disks.failed().iter().map(FailedDisk::info))
                        .chain(cloning)
                        .collect::<Vec<_>>(),
                )
            }
            ApiCall::DiskInfo { disk } => {
                if let Some(f) = self.disks.failed().iter().find(|f| f.config.name == disk) {
                    return to_json(f.info());
                }
                match self.disk(&disk) {
                    Err(ApiError::NotFound(m)) => {
                        match self.clone_infos()?.into_iter().find(|c| c.name == disk) {
                            Some(c) => to_json(c),
                            None => Err(ApiError::NotFound(m)),
                        }
                    }
                    other => to_json(other?.info()),
                }
            }
            ApiCall::DiskStats { disk } => to_json(self.disk(&disk)?.stats_body()),
            ApiCall::ListSnapshots { disk } => to_json(
                self.disk(&disk)?
                    .admin(Need::Snapshots)?
                    .list_snapshots()
                    .map_err(from_admin)?,
            ),
            ApiCall::CreateSnapshot { disk, name } => {
                let d = self.disk(&disk)?;
                let snap = d
                    .admin(Need::Snapshots)?
                    .create_snapshot(&name)
                    .map_err(from_admin)?;
                log::info!("disk {disk}: snapshot {name} created (seq {})", snap.seq);
                to_json(snap)
            }
            ApiCall::DeleteSnapshot { disk, name } => {
                self.disk(&disk)?
                    .admin(Need::Snapshots)?
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
                d.admin(Need::Snapshots)?
                    .revert_snapshot(&name)
                    .map_err(from_admin)?;
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
                let now = d.engine().capacity();
                let grown = d.engine().grow(size).map_err(|e| match e {
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
                    d.config_change().notify().unwrap_or_else(|e| {
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
                let d = self.disk(&disk)?;
                let admin = d.admin(Need::Snapshots)?;
                if admin.store().is_none() {
                    return to_json(admin.diff(&from, &to).map_err(from_admin)?);
                }
                let store = d.store()?;
                let d = store
                    .diff(side(&store, &from)?, side(&store, &to)?)
                    .map_err(from_store)?;
                to_json(d.report(&from, &to, store.capacity()))
            }
            ApiCall::Export { disk, .. } => Err(ApiError::BadRequest(format!(
                "disk {disk}: an export is a binary answer, not a JSON call"
            ))),
            ApiCall::Apply { disk, file, force } => {
                let d = self.disk(&disk)?;
                if d.attached() && !force {
                    return Err(ApiError::Conflict(format!(
                        "disk {disk} has a frontend attached: detach it first, or force the \
                         apply (the guest's cached view of the disk becomes stale)"
                    )));
                }
                let a = d
                    .admin(Need::Snapshots)?
                    .apply(std::path::Path::new(&file), force)
                    .map_err(from_admin)?;
                log::info!(
                    "disk {disk}: applied {file} ({} to {}): {} records, {} data bytes, {} \
                     zeroed",
                    a.from,
                    a.to,
                    a.records,
                    a.data_bytes,
                    a.zero_bytes
                );
                to_json(a)
            }
            ApiCall::AddDisk { table } => to_json(self.add_disk(&table)?),
            ApiCall::RemoveDisk { disk, force } => to_json(self.remove_disk(&disk, force)?),
            ApiCall::GetLimits { disk } => to_json(self.disk(&disk)?.qos().limits()),
            ApiCall::SetLimits { disk, update } => to_json(self.set_limits(&disk, &update)?),
            ApiCall::MirrorStatus { disk } => to_json(
                self.disk(&disk)?
                    .admin(Need::Mirror)?
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
                    .admin(Need::Mirror)?
                    .mirror_command(component, cmd)
                    .map_err(from_admin)?;
                to_json(serde_json::json!({}))
            }
        }
    }
}
