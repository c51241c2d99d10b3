//! The vhost-user side of keeld: sockets, frontend sessions, virtqueue workers and request
//! parsing.
//!
//! Top-down: [`daemon`] starts one [`server`] per disk; a server accepts one frontend at a time
//! and gives it a [`backend`] (the virtio-blk device model); the backend's [`worker`]s serve the
//! virtqueues, turning chains into typed requests with [`request::parse`] and handing them to the
//! disk's engine.

pub mod backend;
pub mod config_change;
pub mod daemon;
mod exit_events;
pub mod inflight;
mod relay;
pub mod request;
pub mod server;
pub mod sigbus;
pub mod socket;
pub mod stats;
pub mod worker;

pub use daemon::{Daemon, DaemonError};
pub use stats::{DiskStats, StatsSnapshot};
