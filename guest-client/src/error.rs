//! The driver's one error type: what can go wrong between `connect` and a completion.

use std::path::PathBuf;

use keel_protocol::Status;
use thiserror::Error;

/// Everything the driver can report. I/O failures carry the request and its byte offset so a
/// caller can say which part of the disk misbehaved.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no vhost-user socket at {0}")]
    NoSocket(PathBuf),
    #[error("cannot connect to vhost-user socket {path}: {source}")]
    Connect { path: PathBuf, source: vhost::Error },
    #[error(
        "vhost-user {step}: the server did not answer in time (is another frontend attached? \
         keeld serves one at a time; or is this not a vhost-user socket?)"
    )]
    NoAnswer { step: &'static str },
    /// vhost-user has no error message: a server that refuses a frontend just closes.
    #[error(
        "vhost-user {step}: the server closed the connection (keeld serves one frontend per \
         disk and refuses a second one: is another attached? keeld's log says why)"
    )]
    HungUp { step: &'static str },
    #[error(
        "vhost-user {step}: the answer is not a vhost-user message (is this a disk's vhost-user \
         socket? keeld's control socket speaks HTTP)"
    )]
    NotVhostUser { step: &'static str },
    #[error("vhost-user {step} failed: {source}")]
    Protocol {
        step: &'static str,
        source: vhost::Error,
    },
    #[error("the server does not offer required feature(s): {0}")]
    MissingFeatures(String),
    #[error("the server refused protocol feature(s) Keel needs: {0}")]
    RefusedProtocolFeatures(String),
    #[error("the server offers {offered} queue(s), {wanted} were asked for")]
    TooFewQueues { offered: u16, wanted: u16 },
    #[error("invalid queue size {0}: must be a power of two between 2 and 32768")]
    BadQueueSize(u16),
    #[error("device too small: {needed} bytes needed, the device has {capacity}")]
    DeviceTooSmall { needed: u64, capacity: u64 },
    #[error("shared memory: {0}")]
    Memory(String),
    #[error("out of shared buffer memory: {wanted} bytes asked, pool of {pool} bytes")]
    OutOfBuffers { wanted: usize, pool: usize },
    #[error("eventfd or poll failed: {0}")]
    Event(#[source] std::io::Error),
    #[error("the server closed the connection")]
    Disconnected,
    #[error("guest memory access: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the device does not support {0}")]
    Unsupported(&'static str),
    #[error("the device broke the ring protocol: {0}")]
    DeviceBroken(String),
    #[error("{op} at byte offset {offset} failed with status {status:?}")]
    Io {
        op: &'static str,
        offset: u64,
        status: Status,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps a vhost-user message failure with the step it happened in.
    pub(crate) fn protocol(step: &'static str) -> impl FnOnce(vhost::Error) -> Error {
        move |source| Error::Protocol { step, source }
    }
}
