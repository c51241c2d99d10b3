//! Disks added and removed while keeld runs (`POST /v1/disks`, `DELETE /v1/disks/{name}`).
//!
//! An added disk is checked exactly as a `[[disk]]` table of the config file is, and is not
//! written anywhere: it is served until removed or until keeld stops. A SIGHUP reload leaves it
//! alone, and once the operator copies it into the config file the reload finds it unchanged.

use keel_protocol::control::{DiskInfo, RemoveAnswer};

use super::control::{DaemonControl, poisoned};
use super::disks::{Missing, StartError};
use super::{DaemonError, start_disk};
use crate::control::ApiError;
use crate::engine::EngineError;

impl DaemonControl {
    /// Starts serving the disk `table` describes; relative paths resolve against keeld's
    /// working directory.
    pub(super) fn add_disk(&self, table: &serde_json::Value) -> Result<DiskInfo, ApiError> {
        let base = std::env::current_dir()
            .map_err(|e| ApiError::Internal(format!("keeld's working directory: {e}")))?;
        let config = crate::config::disk_from_json(table, &base).map_err(ApiError::BadRequest)?;
        let name = config.name.clone();
        if self.being_cloned(&name)? {
            return Err(ApiError::Conflict(format!("disk {name} is being cloned")));
        }
        let served = self
            .disks
            .start_new(&config, start_disk)
            .map_err(|e| match e {
                StartError::InUse(why) => ApiError::Conflict(why),
                StartError::Poisoned => poisoned(super::Poisoned),
                StartError::Start(DaemonError::Engine {
                    source: EngineError::Locked(m),
                    ..
                }) => ApiError::Conflict(format!("disk {name}: {m}")),
                StartError::Start(e) => ApiError::Internal(format!("disk {name}: {e}")),
            })?;
        if let Some(exports) = &self.exports {
            exports.add(&config, std::sync::Arc::clone(served.engine()));
        }
        log::info!(
            "disk {name} added through the API, serving on {}",
            config.socket.display()
        );
        Ok(served.info())
    }

    /// Stops serving `name`: refused while a frontend is attached unless `force`, which ends
    /// the session first (its in-flight requests finish, writes are flushed, the socket goes).
    pub(super) fn remove_disk(&self, name: &str, force: bool) -> Result<RemoveAnswer, ApiError> {
        let disk = self.disk(name)?;
        let attached = disk.attached();
        if attached && !force {
            return Err(ApiError::Conflict(format!(
                "disk {name} has a frontend attached: detach it first, or remove with \
                 ?force=true (the guest loses the disk)"
            )));
        }
        if let Some(exports) = &self.exports {
            exports.remove(name);
        }
        let stopped = self.disks.stop(name).map_err(|m| match m {
            Missing::Poisoned => poisoned(super::Poisoned),
            Missing::Unknown | Missing::Failed(_) => {
                ApiError::NotFound(format!("no such disk: {name}"))
            }
        })?;
        stopped.map_err(|e| {
            ApiError::Internal(format!("disk {name}: stopped, but its flush failed: {e}"))
        })?;
        log::info!(
            "disk {name} removed through the API{}",
            if attached {
                " (its frontend was detached)"
            } else {
                ""
            }
        );
        Ok(RemoveAnswer {
            disk: name.to_string(),
            detached: attached,
        })
    }

    pub(super) fn being_cloned(&self, name: &str) -> Result<bool, ApiError> {
        let cloning = self
            .cloning
            .lock()
            .map_err(|_| ApiError::Internal("the clone list is poisoned".into()))?;
        Ok(cloning.get(name).is_some_and(|j| j.is_running()))
    }
}
