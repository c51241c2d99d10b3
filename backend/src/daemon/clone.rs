//! Cloning a snapshot into a new keel container beside its disk and serving it while keeld runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use keel_protocol::control::CloneAnswer;

use super::control::{DaemonControl, from_store, poisoned, side};
use super::{DaemonError, start_disk};
use crate::control::ApiError;
use crate::store::diff::TreeRef;
use crate::store::{Store, StoreError};

impl DaemonControl {
    /// Clones snapshot `snapshot` of `disk` into a new keel container beside it and serves it
    /// as `new_disk` on a socket beside `disk`'s.
    pub(super) fn clone_disk(
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
    pub(super) fn clone_disk_with(
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
        let served = start_disk(&config).map_err(|e| match e {
            DaemonError::Engine { source, .. } => ApiError::Internal(format!(
                "clone {new_disk}: cannot open {}: {source}",
                path.display()
            )),
            other => ApiError::Internal(format!("clone {new_disk}: {other}")),
        })?;
        self.disks.insert(served).map_err(poisoned)?;
        guard.container = None;
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
        if self.disks.has(name).map_err(poisoned)? {
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
