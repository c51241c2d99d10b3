//! Cloning a snapshot of an rbd disk: an RBD layered clone, a new image in the same pool that
//! reads its parent snapshot where it was not written. Ceph makes it at once, so the new disk is
//! served before the call answers; there is no copy to follow.

use std::path::Path;
use std::sync::Arc;

use keel_protocol::control::{CloneAnswer, DiskState};

use super::control::{DaemonControl, from_admin};
use super::disks::StartError;
use super::info::Need;
use super::served::ServedDisk;
use super::{DaemonError, start_disk};
use crate::control::ApiError;

impl DaemonControl {
    /// Clones `snapshot` of rbd disk `src` into image `new_disk` beside it and serves it as
    /// `new_disk` on a socket beside `src`'s.
    pub(super) fn clone_rbd(
        &self,
        src: &ServedDisk,
        snapshot: &str,
        new_disk: &str,
    ) -> Result<CloneAnswer, ApiError> {
        let disk = src.name();
        let Some(rbd) = &src.config.rbd else {
            return Err(ApiError::Internal(format!(
                "disk {disk} is not an rbd disk"
            )));
        };
        let socket = src
            .config
            .socket
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{new_disk}.sock"));
        let mut config = src.config.clone();
        config.name = new_disk.to_string();
        config.socket = socket.clone();
        config.size = None;
        config.resize = false;
        config.read_only = false;
        config.serial = new_disk.chars().take(keel_protocol::ID_BYTES).collect();
        let mut child = rbd.clone();
        child.image = new_disk.to_string();
        config.rbd = Some(child.clone());

        if self.being_cloned(new_disk)? {
            return Err(ApiError::Conflict(format!(
                "disk {new_disk} is being cloned already"
            )));
        }
        if self.disks.has(new_disk).map_err(super::control::poisoned)? {
            return Err(ApiError::Conflict(format!("disk {new_disk} exists")));
        }
        if std::fs::symlink_metadata(&socket).is_ok() {
            return Err(ApiError::Conflict(format!(
                "{} exists: choose another name for the clone",
                socket.display()
            )));
        }
        let admin = src.admin(Need::Snapshots)?;
        let spec = admin
            .clone_snapshot(snapshot, new_disk)
            .map_err(from_admin)?;
        let served = self.disks.start_new(&config, start_disk).map_err(|e| {
            let why = match e {
                StartError::InUse(why) => why,
                StartError::Poisoned => "the disk list is poisoned".into(),
                StartError::Start(DaemonError::Engine { source, .. }) => source.to_string(),
                StartError::Start(e) => e.to_string(),
            };
            let removed = match admin.remove_clone(new_disk) {
                Ok(()) => "removed".to_string(),
                Err(e) => format!("left in place: {e}"),
            };
            ApiError::Internal(format!(
                "disk {new_disk}: image {spec} was cloned but cannot be served ({why}); the \
                 image was {removed}"
            ))
        })?;
        if let Some(exports) = &self.exports {
            exports.add(&config, Arc::clone(served.engine()));
        }
        log::info!(
            "disk {new_disk}: RBD clone {spec} of {disk}@{snapshot}, serving on {}",
            socket.display()
        );
        Ok(CloneAnswer {
            disk: new_disk.to_string(),
            path: spec,
            socket: socket.display().to_string(),
            blocks: 0,
            state: DiskState::Serving,
        })
    }
}
