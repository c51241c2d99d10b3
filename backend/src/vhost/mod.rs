//! The vhost-user side of keeld: one disk's socket, its frontend sessions, virtqueue workers and
//! request parsing. It knows nothing of the control API.
//!
//! Top-down: [`crate::daemon`] starts one [`server`] per disk; a server accepts a frontend (two
//! during a live migration, of which [`frontends`] serves one) and gives it a [`backend`] (the virtio-blk device model); the backend's [`worker`]s
//! serve the virtqueues, turning chains into typed requests with [`request::parse`] and handing
//! them to the disk's engine.

pub mod backend;
pub mod config_change;
pub mod dirty_log;
mod exit_events;
pub mod frontends;
pub mod inflight;
mod relay;
pub mod request;
pub mod server;
pub mod sigbus;
pub mod stats;
pub mod worker;

/// keeld's entry point, which moved to [`crate::daemon`]; kept here for `keeld` until it imports
/// it from there.
#[doc(hidden)]
pub use crate::daemon::{Daemon, DaemonError};
pub use stats::DiskStats;
