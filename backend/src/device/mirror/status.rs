//! What the control API shows about a mirror: per-component state, LSNs, dirty chunks and
//! resync progress, plus the recent events (failures, state changes).

use super::state::ComponentState;
use super::view::Source;
use serde::Serialize;
use std::time::Instant;

/// Progress of a running (or interrupted) resync.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResyncStatus {
    pub source: Source,
    pub total_chunks: u64,
    pub done_chunks: u64,
    /// Bytes copied per second since this run started.
    pub rate_bytes_per_sec: u64,
    /// Seconds to go at the current rate, if it is known.
    pub eta_secs: Option<u64>,
}

/// One component.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComponentStatus {
    pub index: usize,
    pub path: String,
    pub state: ComponentState,
    pub last_lsn: u64,
    /// Chunks written since it dropped out (its tracking bitmap), 0 when in sync.
    pub dirty_chunks: u64,
    pub resync: Option<ResyncStatus>,
    /// Bytes copied onto this component by resyncs since the mirror was opened.
    pub resync_bytes_copied: u64,
    /// Reached over NBD (the path is its URI).
    pub remote: bool,
    /// A remote component that dropped out: the attempts to bring it back.
    pub reconnect: Option<super::reconnect::ReconnectStatus>,
    /// Why it dropped out, when it did so by itself.
    pub why: Option<String>,
}

/// A delta component standing in for a component under maintenance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeltaStatus {
    pub for_component: usize,
    pub path: String,
    pub chunks_held: u64,
    pub failed: bool,
}

/// The whole mirror.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MirrorStatus {
    pub name: String,
    pub set_id: String,
    pub chunk_size: u64,
    /// Bytes per second a resync copies (`resync_bps_limit`; 0 = unlimited).
    pub resync_bps_limit: u64,
    /// LSN of the last write handed out.
    pub lsn: u64,
    pub components: Vec<ComponentStatus>,
    pub deltas: Vec<DeltaStatus>,
    /// Recent events, oldest first.
    pub events: Vec<String>,
}

/// Runtime resync counters of one component (not persisted).
#[derive(Clone, Debug, Default)]
pub struct ResyncCounters {
    pub bytes_copied: u64,
    pub run_started: Option<Instant>,
    pub run_bytes: u64,
}

impl ResyncCounters {
    /// `(rate, eta)` for `remaining_bytes` still to copy.
    pub fn rate_and_eta(&self, remaining_bytes: u64) -> (u64, Option<u64>) {
        let Some(start) = self.run_started else {
            return (0, None);
        };
        let secs = start.elapsed().as_secs_f64();
        if secs <= 0.0 || self.run_bytes == 0 {
            return (0, None);
        }
        let rate = (self.run_bytes as f64 / secs) as u64;
        (rate, (rate > 0).then(|| remaining_bytes / rate.max(1)))
    }
}
