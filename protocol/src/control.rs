//! Bodies of the control API (HTTP/1.1 + JSON on `keeld`'s control socket).
//!
//! `keeld` answers with these types and `keel` reads them, so both sides share one definition.
//! Sizes are bytes, times are microseconds unless a field's name says otherwise.

use serde::{Deserialize, Serialize};

/// The API's version prefix: every path starts with it.
pub const API_PREFIX: &str = "/v1";

/// A disk as the daemon serves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub name: String,
    pub engine: String,
    pub socket: String,
    /// Backing file(s): one path, or the components of a mirror.
    pub paths: Vec<String>,
    pub size: u64,
    pub read_only: bool,
    pub queues: u16,
    pub serial: String,
    /// Whether a frontend (QEMU, keel-client) is attached now.
    pub connected: bool,
    /// Whether the disk is served, or failed to open when keeld started.
    #[serde(default)]
    pub state: DiskState,
    /// Why a failed disk could not be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A configured disk's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    /// Its socket accepts frontends.
    #[default]
    Serving,
    /// It could not be opened (see `error`); the other disks are served without it.
    Failed,
}

/// One bucket of a latency histogram: requests that took at most `le_us`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyBucket {
    pub le_us: u64,
    pub count: u64,
}

/// Counters of one disk since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub get_ids: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Requests answered with IOERR.
    pub errors: u64,
    /// Requests answered with UNSUPP.
    pub unsupported: u64,
    /// Malformed descriptor chains refused before reaching the engine.
    pub invalid_requests: u64,
    /// Batches submitted to the engine (one per virtqueue kick or poll round that found work).
    pub batches: u64,
    /// Metadata transactions (journal records) the engine wrote; 0 for engines without metadata.
    pub metadata_transactions: u64,
    /// Bytes the engine wrote to its devices (for write amplification).
    pub device_bytes_written: u64,
    /// Data blocks whose checksum did not match on read.
    pub checksum_errors: u64,
    /// Deleted snapshots whose blocks are still being given back (keel engine).
    #[serde(default)]
    pub snapshots_being_deleted: u64,
    /// Completion latency of reads and writes, cumulative buckets.
    pub latency: Vec<LatencyBucket>,
}

/// A snapshot of a keel disk.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// The operation sequence number the snapshot froze.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Blocks only this snapshot holds (freed if it is deleted), when known.
    pub owned_blocks: Option<u64>,
    /// In the answer to a create: microseconds guest writes were held back while the snapshot
    /// was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_us: Option<u64>,
}

/// `POST /v1/disks/{disk}/snapshots`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: String,
}

/// `POST /v1/disks/{disk}/snapshots/{name}/revert`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertSnapshot {
    /// Revert even while a frontend is attached (the guest must be told).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/disks/{disk}/clone`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneDisk {
    pub snapshot: String,
    pub new_disk: String,
}

/// `POST /v1/disks/{disk}/clone` answer: the new disk, served from now on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneAnswer {
    pub disk: String,
    /// Its container, beside the source's.
    pub path: String,
    /// Its vhost-user socket, beside the source's.
    pub socket: String,
    /// Blocks copied (those the snapshot maps).
    pub blocks: u64,
}

/// `POST /v1/disks/{disk}/resize`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeDisk {
    pub size: u64,
}

/// `POST /v1/disks/{disk}/resize` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeAnswer {
    /// The capacity now, in bytes.
    pub size: u64,
    /// Whether the attached frontend was sent a config-change message (it then tells the guest).
    pub frontend_notified: bool,
}

/// `POST /v1/disks/{disk}/mirror/{n}/{op}` body, for the ops that take a path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorOpBody {
    #[serde(default)]
    pub path: Option<String>,
}

/// `GET /v1/version`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
}

/// Every error answer carries this body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
