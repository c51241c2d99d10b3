//! Disk engines: where a disk's blocks live.
//!
//! The vhost layer parses virtio-blk requests and hands them to an engine in batches. An engine
//! has two halves:
//!
//! - [`Engine`], one per disk, shared by every queue: capacity, capabilities, durability, and a
//!   factory for per-queue halves.
//! - [`QueueEngine`], one per virtqueue worker thread, owned by that thread alone: it accepts a
//!   batch of [`IoRequest`]s and reports [`Completion`]s, either at once (synchronous engines)
//!   or later, signalled on [`QueueEngine::completion_fd`] (asynchronous engines such as io_uring).
//!
//! Queues share no lock on the data path. A request's data is a [`GuestBuffers`]: iovecs into guest
//! memory for zero-copy engines, plus safe copy-in/copy-out accessors for engines that need the
//! bytes themselves (checksums, log-structured storage). An engine must finish (or fail) every
//! request it accepted before its queue half is dropped: guest memory stays mapped only while
//! the request is alive.
//!
//! Adding an engine: implement both traits, add a variant to [`EngineKind`], add its arm to
//! [`open`].

pub mod admin;
pub mod buffers;
pub mod delay;
pub mod device;
mod file_ops;
pub mod handover;
pub mod keel;
pub mod mirrored;
pub mod null;
pub mod raw;
pub mod rbd;
mod submit_ring;
pub(crate) mod sync_queue;
mod uring_queue;
pub(crate) mod wake;

pub use admin::{AdminError, DiffExport, EngineAdmin, EngineCounters, MirrorCommand};
pub use buffers::{BufferError, GuestBuffers, GuestMemory};

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::config::{DiskConfig, EngineKind};

/// Identifies a request between [`QueueEngine::submit`] and its [`Completion`]; chosen by the caller.
pub type Token = u64;

/// A byte range of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// A piece of the disk as allocation queries report it: data, or a hole that reads as zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub hole: bool,
}

/// A range to zero; with `unmap` the engine may deallocate it instead of writing zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroRange {
    pub range: ByteRange,
    pub unmap: bool,
}

/// What a request does. Offsets and lengths are in bytes and already checked against the
/// capacity by the vhost layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Fill the request's buffers from `offset`.
    Read { offset: u64 },
    /// Store the request's buffers at `offset`. With `durable` (the guest turned the write cache
    /// off) the write must be stable when it completes, not just at the next flush.
    Write { offset: u64, durable: bool },
    /// Make every write that completed before this request was submitted durable.
    Flush,
    /// The ranges' contents are no longer needed; they may read back as anything until written,
    /// Keel's engines return zeroes.
    Discard { ranges: Vec<ByteRange> },
    /// The ranges must read back as zeroes.
    WriteZeroes { ranges: Vec<ZeroRange> },
}

impl IoOp {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::Flush => "flush",
            Self::Discard { .. } => "discard",
            Self::WriteZeroes { .. } => "write-zeroes",
        }
    }
}

/// One request handed to an engine.
#[derive(Debug)]
pub struct IoRequest {
    pub token: Token,
    pub op: IoOp,
    /// Data buffers (reads: written by the engine; writes: read by it; others: empty).
    pub buffers: GuestBuffers,
}

/// The end of one request.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub result: Result<(), EngineError>,
}

/// What an engine can do; the vhost layer offers virtio features from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    pub read_only: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

impl Capabilities {
    /// Discard and write-zeroes on a writable disk, neither on a read-only one.
    pub fn all_unless(read_only: bool) -> Self {
        Self {
            read_only,
            discard: !read_only,
            write_zeroes: !read_only,
        }
    }
}

/// Errors of engines, at open time and per request.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Setup { path: PathBuf, message: String },
    /// Another process holds the file's lock; the text names the file and the holder.
    #[error("{0}")]
    Locked(String),
    #[error("cannot set up queue {queue}: {source}")]
    Queue { queue: usize, source: io::Error },
    #[error("{op} failed: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("{op} transferred {done} of {wanted} bytes")]
    Short {
        op: &'static str,
        done: usize,
        wanted: usize,
    },
    #[error("{op} on a read-only disk")]
    ReadOnly { op: &'static str },
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Refused(String),
}

/// The per-disk half of an engine, shared by all queues.
pub trait Engine: Send + Sync {
    /// Capacity in bytes (a multiple of 512).
    fn capacity(&self) -> u64;

    fn capabilities(&self) -> Capabilities;

    /// One line for the log: which engine, which file, which I/O method.
    fn describe(&self) -> String;

    /// Creates the half that serves virtqueue `index`; called once per queue per frontend
    /// connection, on the thread that will own it.
    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError>;

    /// Makes every completed write durable (used at shutdown).
    fn flush(&self) -> Result<(), EngineError>;

    /// Snapshots, mirrors and engine counters, for engines that have them.
    fn admin(&self) -> Option<&dyn EngineAdmin> {
        None
    }

    /// Which parts of `range` (inside the disk) hold data and which are holes, from its start,
    /// for tools that skip holes (NBD block status). May describe less than the whole range, at
    /// least one extent. `None` when the engine cannot tell: everything then counts as data.
    fn allocation(&self, range: ByteRange) -> Option<Vec<Extent>> {
        let _ = range;
        None
    }

    /// A read-only view of snapshot `name`, served as a disk of its own (NBD `DISK@SNAPSHOT`).
    fn snapshot(&self, name: &str) -> Result<Arc<dyn Engine>, EngineError> {
        Err(EngineError::Unsupported(format!(
            "{} has no snapshot {name:?} to serve",
            self.describe()
        )))
    }

    /// Grows the disk to at least `size` bytes while it is served; returns the new capacity.
    /// [`capacity`](Self::capacity) reports it once this returns. Shrinking is refused.
    /// Where a live import into the disk stands, for disks that import.
    fn import(&self) -> Option<keel_protocol::control::ImportReport> {
        None
    }

    fn grow(&self, size: u64) -> Result<u64, EngineError> {
        let _ = size;
        Err(EngineError::Unsupported(format!(
            "{} cannot grow while served",
            self.describe()
        )))
    }
}

/// Refuses a size below `now` (the guest's data past the new end would be lost).
pub fn refuse_shrink(now: u64, size: u64) -> Result<(), EngineError> {
    if size < now {
        return Err(EngineError::Refused(format!(
            "the disk holds {now} bytes: shrinking to {size} is refused (the guest's data past \
             the new end would be lost); only growing is allowed"
        )));
    }
    Ok(())
}

/// The per-queue half of an engine, owned by one worker thread.
pub trait QueueEngine: Send {
    /// Starts every request of `batch` (draining it). Requests may complete in any order;
    /// a FLUSH covers every write whose completion was reported before the FLUSH was submitted.
    fn submit(&mut self, batch: &mut Vec<IoRequest>);

    /// Appends finished requests to `done` without blocking.
    fn reap(&mut self, done: &mut Vec<Completion>);

    /// Blocks until at least one request finishes (if any is in flight) and appends what finished.
    fn wait(&mut self, done: &mut Vec<Completion>);

    /// Requests submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// A file descriptor that becomes readable when completions may be ready, for engines that
    /// complete asynchronously. The worker adds it to its epoll set and calls [`reap`](Self::reap)
    /// on wakeup (after draining the fd with [`ack_completion_fd`](Self::ack_completion_fd)).
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }

    /// Clears the readiness of [`completion_fd`](Self::completion_fd).
    fn ack_completion_fd(&mut self) {}
}

/// Opens the engine a disk's config names.
pub fn open(disk: &DiskConfig) -> Result<Arc<dyn Engine>, EngineError> {
    match disk.engine {
        EngineKind::Null => Ok(Arc::new(null::NullEngine::new(
            disk.size.unwrap_or(0),
            disk.read_only,
        ))),
        EngineKind::Raw if !disk.mirror.is_empty() => {
            let size = disk.size.unwrap_or(0);
            let dev = mirrored::open(disk, size)?;
            Ok(Arc::new(device::MirroredRawEngine::new(
                dev,
                disk.read_only,
            )))
        }
        EngineKind::Raw => Ok(Arc::new(raw::RawEngine::open(
            &raw::RawOptions::from_disk(disk),
        )?)),
        EngineKind::Keel => crate::import::open_engine(disk),
        EngineKind::Rbd => Ok(Arc::new(rbd::RbdEngine::open(disk)?)),
    }
}

/// Blocks until every in-flight request of `queue` has finished, collecting the completions.
pub fn drain(queue: &mut dyn QueueEngine, done: &mut Vec<Completion>) {
    while queue.in_flight() > 0 {
        queue.wait(done);
    }
}
