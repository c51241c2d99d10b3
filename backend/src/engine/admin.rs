//! Management operations beyond I/O that some engines support: snapshots, mirrors, counters.
//!
//! The control API reaches them through [`Engine::admin`](super::Engine::admin); every method
//! has a default that answers "not supported by this engine", so an engine implements only
//! what it has.

use keel_protocol::control::{ApplyAnswer, SnapshotInfo};
use thiserror::Error;

/// Why a management operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// A mirror component operation, as the control API names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorCommand {
    Offline,
    Online,
    Maintenance { delta: Option<std::path::PathBuf> },
    Replace { path: std::path::PathBuf },
}

/// Counters only an engine knows (the vhost layer counts requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub metadata_transactions: u64,
    pub device_bytes_written: u64,
    pub checksum_errors: u64,
    pub snapshots_being_deleted: u64,
    /// The running point's data, logical and stored (keel engine).
    pub data_bytes: Option<crate::store::compress::DataBytes>,
}

/// An export file (`keel diff --export`) made by an engine without a store: its exact length
/// (the control API's Content-Length) and its bytes, produced as they are read.
pub struct DiffExport {
    pub len: u64,
    pub reader: Box<dyn std::io::Read + Send>,
}

fn unsupported<T>(what: &str) -> Result<T, AdminError> {
    Err(AdminError::Unsupported(format!(
        "{what} is not supported by this disk's engine"
    )))
}

/// Optional management surface of an engine.
pub trait EngineAdmin: Send + Sync {
    fn counters(&self) -> EngineCounters {
        EngineCounters::default()
    }

    /// Why the engine stopped serving while it ran (its store failed), or `None`: the disk is
    /// then reported failed, with this as its error.
    fn failure(&self) -> Option<String> {
        None
    }

    /// What keeping space free costs, for log-structured engines.
    fn cleaning(&self) -> Option<keel_protocol::control::CleaningStats> {
        None
    }

    /// Where the disk's container space goes, for engines that keep one.
    fn space(&self) -> Option<keel_protocol::control::SpaceReport> {
        None
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, AdminError> {
        unsupported("snapshots")
    }

    fn create_snapshot(&self, _name: &str) -> Result<SnapshotInfo, AdminError> {
        unsupported("snapshots")
    }

    fn delete_snapshot(&self, _name: &str) -> Result<(), AdminError> {
        unsupported("snapshots")
    }

    fn revert_snapshot(&self, _name: &str) -> Result<(), AdminError> {
        unsupported("snapshots")
    }

    /// Per component: state, last LSN, dirty chunks, resync progress (JSON, as docs/api.md shows).
    fn mirror_status(&self) -> Result<serde_json::Value, AdminError> {
        unsupported("mirroring")
    }

    fn mirror_command(&self, _component: usize, _cmd: MirrorCommand) -> Result<(), AdminError> {
        unsupported("mirroring")
    }

    /// Sets the mirror's resync byte rate (0: unlimited).
    fn set_resync_rate(&self, _bytes_per_sec: u64) -> Result<(), AdminError> {
        Err(AdminError::Invalid(
            "`resync_bps_limit`: this disk is not mirrored".into(),
        ))
    }

    /// The storage core behind the disk, for operations that read its trees (diff, export).
    fn store(&self) -> Option<std::sync::Arc<crate::store::Store>> {
        None
    }

    /// The changed extents between two snapshots (or a snapshot and the running point), for
    /// engines without a [`store`](Self::store) whose snapshots can be compared anyway.
    fn diff(&self, _from: &str, _to: &str) -> Result<crate::store::diff::DiffReport, AdminError> {
        unsupported("diffs")
    }

    /// The export file of the diff from `from` to `to`, for engines without a
    /// [`store`](Self::store).
    fn export(&self, _from: &str, _to: &str) -> Result<DiffExport, AdminError> {
        unsupported("exports")
    }

    /// Replays export file `file` onto the served disk. `force` skips the check that the disk
    /// is at the export's FROM point.
    fn apply(&self, _file: &std::path::Path, _force: bool) -> Result<ApplyAnswer, AdminError> {
        Err(AdminError::Unsupported(
            "this disk's engine takes an export only while it is stopped: stop the disk and \
             run `keel apply FILE` on its container or raw file"
                .into(),
        ))
    }

    /// Creates `new_image` beside the disk's own storage as a copy-on-write child of
    /// `snapshot`, ready at once; answers where it is (what the new disk's config names).
    fn clone_snapshot(&self, _snapshot: &str, _new_image: &str) -> Result<String, AdminError> {
        unsupported("instant clones")
    }

    /// Removes an image [`clone_snapshot`](Self::clone_snapshot) created that could not be
    /// served.
    fn remove_clone(&self, _new_image: &str) -> Result<(), AdminError> {
        unsupported("instant clones")
    }
}
