//! The admin side of a handover disk: the open engine's, or a refusal while another keeld may
//! hold the disk.

use std::sync::Arc;

use keel_protocol::control::SnapshotInfo;

use super::HandoverEngine;
use crate::engine::{AdminError, EngineAdmin, EngineCounters, MirrorCommand};

impl HandoverEngine {
    /// Runs `f` on the open engine's admin side; refuses while the disk is not held, and says
    /// so when the engine has none.
    fn with_admin<T>(
        &self,
        what: &str,
        f: impl FnOnce(&dyn EngineAdmin) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let engine = self
            .engine()
            .ok_or_else(|| AdminError::Conflict(self.not_held()))?;
        let admin = engine.admin().ok_or_else(|| {
            AdminError::Unsupported(format!("{what} is not supported by this disk's engine"))
        })?;
        f(admin)
    }

    /// Reads something optional from the open engine's admin side.
    fn read_admin<T>(&self, f: impl FnOnce(&dyn EngineAdmin) -> Option<T>) -> Option<T> {
        let engine = self.engine()?;
        engine.admin().and_then(f)
    }
}

impl EngineAdmin for HandoverEngine {
    fn counters(&self) -> EngineCounters {
        self.read_admin(|a| Some(a.counters())).unwrap_or_default()
    }

    fn failure(&self) -> Option<String> {
        self.read_admin(|a| a.failure())
    }

    fn cleaning(&self) -> Option<keel_protocol::control::CleaningStats> {
        self.read_admin(|a| a.cleaning())
    }

    fn space(&self) -> Option<keel_protocol::control::SpaceReport> {
        self.read_admin(|a| a.space())
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, AdminError> {
        self.with_admin("snapshots", |a| a.list_snapshots())
    }

    fn create_snapshot(&self, name: &str) -> Result<SnapshotInfo, AdminError> {
        self.with_admin("snapshots", |a| a.create_snapshot(name))
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), AdminError> {
        self.with_admin("snapshots", |a| a.delete_snapshot(name))
    }

    fn revert_snapshot(&self, name: &str) -> Result<(), AdminError> {
        self.with_admin("snapshots", |a| a.revert_snapshot(name))
    }

    fn mirror_status(&self) -> Result<serde_json::Value, AdminError> {
        self.with_admin("mirroring", |a| a.mirror_status())
    }

    fn mirror_command(&self, component: usize, cmd: MirrorCommand) -> Result<(), AdminError> {
        self.with_admin("mirroring", |a| a.mirror_command(component, cmd))
    }

    fn set_resync_rate(&self, bytes_per_sec: u64) -> Result<(), AdminError> {
        self.with_admin("mirroring", |a| a.set_resync_rate(bytes_per_sec))
    }

    fn store(&self) -> Option<Arc<crate::store::Store>> {
        self.read_admin(|a| a.store())
    }
}
