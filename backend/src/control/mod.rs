//! The control socket: HTTP/1.1 + JSON on a unix socket, for `keel` and scripts.
//!
//! `route` turns a request line and body into an [`ApiCall`]; [`crate::daemon`] implements
//! [`ControlHandler`] to carry calls out; `server` is the socket loop and `client` is what `keel`
//! uses to talk to it. It knows nothing of the vhost side.

pub mod cleaning_text;
pub mod cli;
pub mod cli_disks;
pub mod cli_mirror;
pub mod client;
mod http;
pub mod metrics;
pub mod metrics_listener;
pub mod output;
mod route;
mod server;
pub mod space_text;

#[cfg(test)]
mod docs_tests;
pub use route::{ApiCall, MirrorOp, route};
pub use server::{ControlServer, Limits};

use thiserror::Error;

/// What went wrong with a call, with the HTTP status it maps to.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// The call conflicts with the current state (name taken, frontend attached...).
    #[error("{0}")]
    Conflict(String),
    /// The disk's engine cannot do this (snapshots on a raw disk, mirror ops on a plain one).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Unsupported(_) => 501,
            Self::Internal(_) => 500,
        }
    }
}

/// A binary answer of known length, streamed to the client (an export file).
pub struct Download {
    pub len: u64,
    pub reader: Box<dyn std::io::Read + Send>,
}

/// Carries out control calls; the daemon implements it over its disks.
pub trait ControlHandler: Send + Sync {
    /// Answers one call with a JSON body, or an error.
    fn call(&self, call: ApiCall) -> Result<serde_json::Value, ApiError>;

    /// Answers [`ApiCall::Export`] with the export file's bytes.
    fn export(&self, disk: &str, _from: &str, _to: &str) -> Result<Download, ApiError> {
        Err(ApiError::Unsupported(format!(
            "disk {disk}: exports are not available here"
        )))
    }
}
