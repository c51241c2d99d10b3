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
    /// Why a failed disk could not be opened, or why it stopped serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the container's space goes (keel engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<SpaceReport>,
    /// A clone's copy while it runs (state `cloning`) or after it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneProgress>,
    /// A live import into the disk, as in its stats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportReport>,
}

/// How far a clone's copy has come.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneProgress {
    /// `disk@snapshot` the clone copies.
    pub source: String,
    pub copied_bytes: u64,
    pub total_bytes: u64,
}

/// A configured disk's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    /// Its socket accepts frontends.
    #[default]
    Serving,
    /// It could not be opened, or its store failed while serving (a metadata write failed):
    /// see `error`. Its requests fail until keeld restarts it; the other disks are served
    /// without it.
    Failed,
    /// A clone still copying its snapshot (see `clone`); served once the copy is done.
    Cloning,
    /// A `handover = true` disk another keeld holds: its socket accepts the frontend, whose
    /// requests wait until that frontend starts its rings and this keeld takes the disk.
    Standby,
    /// A `handover = true` disk given up for another keeld once its frontend stopped every
    /// ring (a migration's source); taken back if the frontend restarts them.
    Released,
}

/// How close a keel container is to running out of space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceState {
    /// Below the `space_warn` threshold.
    #[default]
    Ok,
    /// At or above `space_warn`: snapshots or growth are using up the container.
    Low,
    /// At or above `space_critical`: guest writes may soon wait for space, then fail.
    Critical,
}

impl SpaceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Low => "low",
            Self::Critical => "critical",
        }
    }
}

/// Where a keel container's data space goes, in bytes.
///
/// `live_bytes + snapshot_bytes + metadata_bytes + reclaimable_bytes + free_bytes + spare_bytes`
/// is `data_bytes`: every block of the data segments is counted once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpaceReport {
    /// The container file's size now.
    pub container_bytes: u64,
    /// The size it may grow to (`max_size`), when growth is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_container_bytes: Option<u64>,
    /// Data and metadata segments: everything but the superblocks and the journal.
    pub data_bytes: u64,
    /// Blocks the running disk maps.
    pub live_bytes: u64,
    /// Blocks only snapshots (or snapshots being deleted) still hold: overwritten or discarded
    /// since, they would be freed by deleting those snapshots.
    pub snapshot_bytes: u64,
    /// Live tree nodes and checkpoint blocks.
    pub metadata_bytes: u64,
    /// Dead blocks not yet given back (the cleaner's and the next checkpoint's work), and the
    /// unfilled part of the segments writers have open.
    pub reclaimable_bytes: u64,
    /// Free segments guest writes may take.
    pub free_bytes: u64,
    /// Free segments kept back for checkpoints and the cleaner (guest writes never get them).
    pub spare_bytes: u64,
    /// Held blocks (live, snapshot, metadata) in percent of the space guest data may use
    /// (of the largest container when growth is on).
    pub used_percent: f64,
    pub state: SpaceState,
    /// Guest writes that had to wait for space since keeld started.
    #[serde(default)]
    pub space_waits: u64,
    /// True when read from a container another process has open (`keel info -U`): the
    /// figures are those of its last checkpoint and may be slightly stale.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
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
    /// Guest data the running point maps (keel engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes_logical: Option<u64>,
    /// What that data takes in the container, after compression (keel engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bytes_stored: Option<u64>,
    /// `data_bytes_logical / data_bytes_stored` (keel engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_ratio: Option<f64>,
    /// The size of a zstd container's compression dictionary, once it has one (keel engine
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dictionary_bytes: Option<u64>,
    /// Where the container's space goes (keel engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space: Option<SpaceReport>,
    /// What keeping space free costs: the cleaner, checkpoints, writes short of space (keel
    /// engine only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaning: Option<CleaningStats>,
    /// Completion latency of reads and writes, cumulative buckets.
    pub latency: Vec<LatencyBucket>,
    /// Sum of all completion latencies, in microseconds (mean = sum / last bucket's count).
    #[serde(default)]
    pub latency_sum_us: u64,
    /// Requests in all batches (batched_requests / batches = mean queue depth per batch).
    #[serde(default)]
    pub batched_requests: u64,
    /// The largest batch seen.
    #[serde(default)]
    pub max_batch: u64,
    /// Requests at the engine now.
    #[serde(default)]
    pub in_flight: u64,
    /// Used-buffer notifications sent to the guest (fewer than requests when batches share one).
    #[serde(default)]
    pub notifications: u64,
    /// Frontend connections accepted, and refused because the socket already had its two.
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub refused_connections: u64,
    /// Requests run again after a restart because the frontend's inflight area marked them.
    #[serde(default)]
    pub resubmitted: u64,
    /// Completion latency by operation ("read", "write", "flush", "other": discard and
    /// write-zeroes); together they make up `latency`.
    #[serde(default)]
    pub latency_by_op: Vec<OpLatency>,
    /// Seconds the disk's queues held requests back for its I/O limits (summed over queues).
    #[serde(default)]
    pub throttled_seconds: f64,
    /// Requests that waited for the disk's I/O limits before reaching the engine.
    #[serde(default)]
    pub throttled_requests: u64,
    /// A live import into the disk (`import_from`), while one runs or once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportReport>,
    /// A `handover = true` disk's state: `standby`, `taking`, `serving` or `released`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<String>,
}

/// Where a live import stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportState {
    /// The background copy runs; blocks not yet moved are read from the source.
    #[default]
    Copying,
    /// The source failed; the copy retries (see `error`).
    Paused,
    /// Every block is in the container; the source is no longer used.
    Done,
}

/// A live import's progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub state: ImportState,
    /// Bytes of the source the copy has passed (copied, or holes skipped).
    pub copied_bytes: u64,
    /// The source's size.
    pub total_bytes: u64,
    /// Average copy rate since keeld started the import (0 once done).
    pub rate_bytes_per_s: u64,
    /// Bytes of data read from the source since keeld started the import, by the copy and by
    /// guest reads of blocks not yet moved (ranges the source reports as zeroes are not read).
    #[serde(default)]
    pub source_read_bytes: u64,
    /// Why the copy is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a log-structured disk's write time goes besides the guest's own data, since keeld
/// started. Times are in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CleaningStats {
    /// Live blocks the cleaner copied elsewhere (and remapped).
    pub blocks_moved: u64,
    /// Bytes the cleaner read from its victim segments.
    pub read_bytes: u64,
    /// Bytes the cleaner wrote (the copies).
    pub written_bytes: u64,
    pub read_us: u64,
    /// Writing the copies and committing their moves, map updates included.
    pub write_us: u64,
    /// Segments the cleaner emptied.
    pub segments_cleaned: u64,
    /// Of those, the segments a guest writer cleaned itself because none was free.
    pub segments_cleaned_by_writers: u64,
    /// Segments checkpoints gave back to the free list.
    pub segments_freed: u64,
    /// Releases of emptied data segments by a durable flush mark, not a checkpoint.
    #[serde(default)]
    pub mark_releases: u64,
    /// Segments those gave back to the free list.
    #[serde(default)]
    pub segments_freed_by_marks: u64,
    pub checkpoints: u64,
    /// Time checkpoints held the journal (while they froze the maps): no guest batch commits
    /// meanwhile. Their writes do not hold it.
    pub checkpoint_us: u64,
    pub checkpoint_max_us: u64,
    /// Batches that waited for a checkpoint (one freezing the maps, or a full journal).
    #[serde(default)]
    pub checkpoint_waits: u64,
    #[serde(default)]
    pub checkpoint_wait_us: u64,
    /// Guest batches that found no free segment and waited for one (cleaning, a checkpoint,
    /// a snapshot delete, growth).
    pub segment_waits: u64,
    pub segment_wait_us: u64,
    /// Times sparse metadata segments were gathered: their nodes marked dirty for the next
    /// checkpoint, which writes them elsewhere.
    #[serde(default)]
    pub meta_gathers: u64,
    #[serde(default)]
    pub meta_nodes_marked: u64,
    /// Time the marking held the maps (batches wait to apply meanwhile; not the journal).
    #[serde(default)]
    pub meta_mark_us: u64,
    /// Guest batches delayed a little to the cleaner's pace because free space was low
    /// (instead of waiting, later, for a segment), and the time they were delayed.
    #[serde(default)]
    pub paced_batches: u64,
    #[serde(default)]
    pub paced_us: u64,
    /// Guest batches planned while one of the same queue was still in flight (a second batch
    /// in flight), and those such a plan refused because it would have waited (the queue then
    /// finished its batch first and planned again).
    #[serde(default)]
    pub batches_pipelined: u64,
    #[serde(default)]
    pub pipelined_refused: u64,
    /// Of the refused, those refused after taking their blocks (another writer took the last
    /// free segment or journal room first): those blocks are dead space until cleaned.
    #[serde(default)]
    pub pipelined_refused_late: u64,
    /// Bytes written to the container per guest byte written so far.
    pub write_amplification: f64,
}

/// The latency histogram of one operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OpLatency {
    pub op: String,
    /// Cumulative buckets, as in `latency`.
    pub buckets: Vec<LatencyBucket>,
    pub sum_us: u64,
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

/// `POST /v1/disks/{disk}/apply`: replay an export file (`keel diff --export`) onto the
/// served disk. keeld reads the file itself, so `file` is a path on keeld's host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyDiff {
    pub file: String,
    /// Apply even while a frontend is attached, and onto a disk that is not at the export's
    /// FROM point (or already holds its TO snapshot).
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/disks/{disk}/apply` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyAnswer {
    /// The export's two sides, as its header names them.
    pub from: String,
    pub to: String,
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// The snapshot taken after the apply (named as the export's TO side), if one was.
    pub snapshot: Option<String>,
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
    /// Blocks to copy (those the snapshot maps).
    pub blocks: u64,
    /// `cloning` while the copy runs in the background; follow it in `GET /v1/disks/{disk}`.
    #[serde(default)]
    pub state: DiskState,
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

/// A disk's I/O limits: `GET /v1/disks/{disk}/limits` answers them, the `[[disk]]` keys of the
/// same names set them. 0 means unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLimits {
    /// Requests per second, reads and writes together.
    pub iops_limit: u64,
    pub read_iops_limit: u64,
    pub write_iops_limit: u64,
    /// Bytes per second, reads and writes together.
    pub bps_limit: u64,
    pub read_bps_limit: u64,
    pub write_bps_limit: u64,
    /// Requests per second allowed for up to `burst_seconds` after a quiet time (at least
    /// `iops_limit`; 0 = no burst).
    pub iops_burst: u64,
    /// How long a burst at `iops_burst` may last.
    pub burst_seconds: u64,
    /// Bytes per second a mirror's resync copies (mirrored disks only).
    pub resync_bps_limit: u64,
}

/// `PUT /v1/disks/{disk}/limits`: the limits to change (absent keys keep their value; 0 lifts a
/// limit).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_iops_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_iops_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_bps_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_bps_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_bps_limit: Option<u64>,
}

impl LimitsUpdate {
    /// `now` with this update's keys applied.
    pub fn apply(&self, now: &DiskLimits) -> DiskLimits {
        let pick = |new: Option<u64>, old: u64| new.unwrap_or(old);
        DiskLimits {
            iops_limit: pick(self.iops_limit, now.iops_limit),
            read_iops_limit: pick(self.read_iops_limit, now.read_iops_limit),
            write_iops_limit: pick(self.write_iops_limit, now.write_iops_limit),
            bps_limit: pick(self.bps_limit, now.bps_limit),
            read_bps_limit: pick(self.read_bps_limit, now.read_bps_limit),
            write_bps_limit: pick(self.write_bps_limit, now.write_bps_limit),
            iops_burst: pick(self.iops_burst, now.iops_burst),
            burst_seconds: pick(self.burst_seconds, now.burst_seconds),
            resync_bps_limit: pick(self.resync_bps_limit, now.resync_bps_limit),
        }
    }
}

/// `DELETE /v1/disks/{disk}` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveAnswer {
    pub disk: String,
    /// Whether a frontend was attached and was detached (`?force=true`).
    pub detached: bool,
}
