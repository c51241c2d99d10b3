//! How a served or failed disk looks through the control API (its info, stats and admin side).

use std::sync::Arc;

use keel_protocol::control::{DiskInfo, DiskState, DiskStats as StatsBody};

use super::disks::FailedDisk;
use super::served::ServedDisk;
use crate::config::DiskConfig;
use crate::control::ApiError;
use crate::engine::EngineAdmin;
use crate::engine::handover::Holding;
use crate::store::Store;

impl ServedDisk {
    pub(super) fn info(&self) -> DiskInfo {
        // A store that failed while serving answers every request with IOERR: say so, rather
        // than list the disk as serving.
        let failure = self.engine().admin().and_then(|a| a.failure());
        let state = match failure {
            Some(_) => DiskState::Failed,
            None => self.state(),
        };
        DiskInfo {
            size: self.engine().capacity(),
            error: failure.or_else(|| self.handover().and_then(|h| h.last_error())),
            connected: self.attached(),
            space: self.engine().admin().and_then(|a| a.space()),
            import: self.engine().import(),
            ..configured(&self.config, state)
        }
    }

    /// `serving`, or for a handover disk `standby` (taking included) or `released`.
    fn state(&self) -> DiskState {
        match self.handover().map(|h| h.holding()) {
            Some(Holding::Standby | Holding::Taking) => DiskState::Standby,
            Some(Holding::Released) => DiskState::Released,
            Some(Holding::Serving) | None => DiskState::Serving,
        }
    }

    pub(super) fn stats_body(&self) -> StatsBody {
        let e = self
            .engine()
            .admin()
            .map(|a| a.counters())
            .unwrap_or_default();
        StatsBody {
            metadata_transactions: e.metadata_transactions,
            device_bytes_written: e.device_bytes_written,
            checksum_errors: e.checksum_errors,
            snapshots_being_deleted: e.snapshots_being_deleted,
            data_bytes_logical: e.data_bytes.map(|d| d.logical),
            data_bytes_stored: e.data_bytes.map(|d| d.stored),
            compression_ratio: e.data_bytes.map(|d| d.ratio()),
            dictionary_bytes: e.data_bytes.and_then(|d| d.dictionary),
            space: self.engine().admin().and_then(|a| a.space()),
            cleaning: self.engine().admin().and_then(|a| a.cleaning()),
            throttled_seconds: self.qos().throttled().as_secs_f64(),
            throttled_requests: self.qos().throttled_requests(),
            import: self.engine().import(),
            handover: self.handover().map(|h| h.holding().as_str().to_string()),
            ..self.stats().snapshot()
        }
    }

    pub(super) fn store(&self) -> Result<Arc<Store>, ApiError> {
        if let Some(i) = self.engine().import()
            && i.state != keel_protocol::control::ImportState::Done
        {
            return Err(ApiError::Conflict(format!(
                "disk {}: its import is not done; diffs, exports and clones wait for it",
                self.config.name
            )));
        }
        self.admin(Need::Snapshots)?.store().ok_or_else(|| {
            ApiError::Unsupported(format!(
                "disk {}: the {} engine keeps no snapshot trees to export or copy",
                self.config.name,
                self.config.engine.name()
            ))
        })
    }

    /// The engine's admin side, or why this disk cannot do what `need` asks.
    pub(super) fn admin(&self, need: Need) -> Result<&dyn EngineAdmin, ApiError> {
        self.engine().admin().ok_or_else(|| {
            let (name, engine) = (&self.config.name, self.config.engine.name());
            ApiError::Unsupported(match need {
                Need::Snapshots => format!(
                    "disk {name}: snapshots need engine = \"keel\"; this is a {engine} disk"
                ),
                Need::Mirror => format!(
                    "disk {name} is not mirrored (its config names no `mirror = [...]` \
                     components)"
                ),
            })
        })
    }
}

impl FailedDisk {
    pub(super) fn info(&self) -> DiskInfo {
        DiskInfo {
            error: Some(self.reason.clone()),
            ..configured(&self.config, DiskState::Failed)
        }
    }
}

/// What the config says of a disk, in `state`; nothing measured yet.
pub(super) fn configured(c: &DiskConfig, state: DiskState) -> DiskInfo {
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
        state,
        error: None,
        space: None,
        clone: None,
        import: None,
    }
}

/// What a call needs of a disk's engine, to say what is missing.
#[derive(Clone, Copy)]
pub(super) enum Need {
    Snapshots,
    Mirror,
}
