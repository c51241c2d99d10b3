//! A mirrored [`BlockDevice`](crate::device::BlockDevice) with bitmap-based resync.
//!
//! The modules, bottom-up:
//! - [`state`], [`lsn`], [`chunk_bitmap`]: component states, write sequence numbers, and the
//!   one-bit-per-chunk bitmaps used for tracking, sync progress and delta presence.
//! - [`view`]: the set's shared state (who is current, outages, resyncs, deltas) and the
//!   choice of resync source; [`metadata`] persists it in A/B checksummed slots.
//! - [`provider`]: where component devices come from (files + `.keelmirror` sidecars);
//!   [`remote`]: components on another host over NBD, and `reconnect`, which brings them
//!   back on their own.
//! - `shared`: the state behind [`MirrorDevice`] and its locks; `open`: opening a set, and
//!   `repair` of what an unclean stop left; `write` and `read`: the data path and failover; `device`:
//!   [`MirrorDevice`] itself; `ops`: offline, online, maintenance, replace, status; `resync`:
//!   the copier.
//! - [`chunk_locks`], [`throttle`], [`scheduler`]: what keeps the copier and the guest apart.
//! - [`fanout`]: long-lived writer threads for writes that go to several components at once.
//!
//! docs/mirror.md describes the design and the on-disk format.

pub mod chunk_bitmap;
pub mod chunk_locks;
pub mod config;
mod device;
pub mod error;
pub mod fanout;
pub mod lsn;
pub mod metadata;
mod open;
mod ops;
pub mod provider;
mod read;
mod reconnect;
pub mod remote;
mod repair;
mod resync;
pub mod scheduler;
mod shared;
pub mod state;
pub mod status;
pub mod throttle;
pub mod view;
mod write;

#[cfg(test)]
mod file_tests;
#[cfg(test)]
mod sim_tests;

pub use config::{DEFAULT_CHUNK_SIZE, MirrorConfig, MirrorOptions};
pub use device::MirrorDevice;
pub use error::MirrorError;
pub use provider::{ComponentDevices, DeviceProvider, FileProvider, sidecar_path};
pub use reconnect::ReconnectStatus;
pub use resync::ResyncOutcome;
pub use scheduler::{ResyncPriority, ResyncScheduler};
pub use state::ComponentState;
pub use status::{ComponentStatus, DeltaStatus, MirrorStatus, ResyncStatus};
pub use throttle::{ResyncRate, ThrottleConfig};
