//! The raw engine: the disk is a file or a block device, byte for byte.
//!
//! Each queue gets its own io_uring; reads and writes go straight between the file and guest
//! memory (vectored, no bounce buffer). With `direct` the file is opened with O_DIRECT; a request
//! whose guest buffers are not sector-aligned, or that the kernel refuses with EINVAL for
//! alignment, goes through a second, buffered descriptor of the same file instead (Linux keeps
//! the two coherent). Without io_uring the queues fall back to blocking system calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};

use super::file_ops::{self, Direction, PUNCH_HOLE, ZERO_RANGE};
use super::sync_queue::{RunRequest, SyncQueue};
use super::uring_queue::UringQueue;
use super::{ByteRange, Capabilities, Engine, EngineError, Extent, IoOp, IoRequest, QueueEngine};

/// Most extents one allocation query reports (the rest is asked for again).
const MAX_EXTENTS: usize = 1024;
use crate::config::DiskConfig;
use crate::device::lock::{LockMode, lock_path};
use crate::store::diff_file::is_container_start;

/// Memory and offset alignment O_DIRECT needs on common devices.
pub const DIRECT_ALIGN: usize = 512;

/// How to open a raw disk.
#[derive(Clone, Debug)]
pub struct RawOptions {
    pub path: PathBuf,
    /// Create the file with this size if missing; resize to it if `resize`.
    pub size: Option<u64>,
    pub resize: bool,
    pub read_only: bool,
    pub direct: bool,
    /// Ring depth of each queue's io_uring.
    pub queue_depth: u32,
}

impl RawOptions {
    pub fn from_disk(disk: &DiskConfig) -> Self {
        Self {
            path: disk.path.clone().unwrap_or_default(),
            size: disk.size,
            resize: disk.resize,
            read_only: disk.read_only,
            direct: disk.direct,
            queue_depth: u32::from(disk.queue_size),
        }
    }
}

/// The open file, shared by all queues of a disk.
#[derive(Debug)]
pub(super) struct RawFiles {
    pub path: PathBuf,
    /// O_DIRECT descriptor, when direct I/O was asked for and the file supports it.
    pub direct: Option<File>,
    /// Page-cache descriptor: used for unaligned requests and when direct I/O is off.
    pub buffered: File,
    pub read_only: bool,
    /// The image's OFD lock, on a descriptor no I/O uses.
    pub _lock: File,
}

impl RawFiles {
    /// The descriptor a read or write of `req` should use first, and whether it is O_DIRECT.
    pub fn fd_for(&self, req: &IoRequest, offset: u64) -> (RawFd, bool) {
        match &self.direct {
            Some(f)
                if offset.is_multiple_of(DIRECT_ALIGN as u64)
                    && req.buffers.is_aligned(DIRECT_ALIGN) =>
            {
                (f.as_raw_fd(), true)
            }
            _ => (self.buffered.as_raw_fd(), false),
        }
    }

    /// Runs `req` with blocking system calls.
    pub fn execute_blocking(&self, req: &IoRequest) -> Result<(), EngineError> {
        let op = req.op.name();
        let io = |source| EngineError::Io { op, source };
        if self.read_only && !matches!(req.op, IoOp::Read { .. } | IoOp::Flush) {
            return Err(EngineError::ReadOnly { op });
        }
        let buffered = self.buffered.as_raw_fd();
        match &req.op {
            IoOp::Read { offset } | IoOp::Write { offset, .. } => {
                let dir = match req.op {
                    IoOp::Write { durable, .. } => Direction::Write { dsync: durable },
                    _ => Direction::Read,
                };
                let (fd, direct) = self.fd_for(req, *offset);
                match file_ops::transfer_all(fd, req.buffers.iovecs(), *offset, 0, dir) {
                    Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        file_ops::transfer_all(buffered, req.buffers.iovecs(), *offset, 0, dir)
                            .map_err(io)
                    }
                    other => other.map_err(io),
                }
            }
            IoOp::Flush => file_ops::datasync(buffered).map_err(io),
            IoOp::Discard { ranges } => {
                for r in ranges {
                    self.discard_blocking(r.offset, r.len).map_err(io)?;
                }
                Ok(())
            }
            IoOp::WriteZeroes { ranges } => {
                for z in ranges {
                    let mode = if z.unmap { PUNCH_HOLE } else { ZERO_RANGE };
                    file_ops::zero_any_way(buffered, buffered, mode, z.range.offset, z.range.len)
                        .map_err(io)?;
                }
                Ok(())
            }
        }
    }

    /// Punches a hole; a file system that cannot is told nothing (discard is advisory).
    pub fn discard_blocking(&self, offset: u64, len: u64) -> io::Result<()> {
        match file_ops::fallocate(self.buffered.as_raw_fd(), PUNCH_HOLE, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }
}

/// The raw engine's queue without io_uring runs each request with blocking system calls.
impl RunRequest for Arc<RawFiles> {
    fn run(&mut self, req: &mut IoRequest) -> Result<(), EngineError> {
        self.execute_blocking(req)
    }
}

/// A raw disk.
pub struct RawEngine {
    files: Arc<RawFiles>,
    /// Bytes; grows online (`grow`).
    capacity: AtomicU64,
    use_uring: bool,
    queue_depth: u32,
}

impl RawEngine {
    /// Opens (creating or resizing as asked) the file and picks the I/O method.
    pub fn open(opts: &RawOptions) -> Result<Self, EngineError> {
        let path = &opts.path;
        let open_err = |source| EngineError::Open {
            path: path.clone(),
            source,
        };
        let exists = path.exists();
        if !exists {
            let size = opts.size.ok_or_else(|| EngineError::Setup {
                path: path.clone(),
                message: "does not exist and no size is given".into(),
            })?;
            if opts.read_only {
                return Err(EngineError::Setup {
                    path: path.clone(),
                    message: "does not exist; a read-only disk is not created".into(),
                });
            }
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(open_err)?;
            f.set_len(size).map_err(open_err)?;
            info!("created sparse image {} of {size} bytes", path.display());
        }
        let mode = if opts.read_only {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        let lock = lock_path(path, mode).map_err(|e| match e.kind() {
            // The message names the file and the holder.
            io::ErrorKind::WouldBlock => EngineError::Locked(e.to_string()),
            _ => open_err(e),
        })?;
        let buffered = open_file(path, opts.read_only, false).map_err(open_err)?;
        refuse_container(&buffered, path)?;
        let is_regular = buffered.metadata().map_err(open_err)?.is_file();
        let on_disk = buffered.metadata().map_err(open_err)?.len();
        // `resize` only ever grows: a file larger than `size` was grown (`keel resize`) and is
        // served whole; shrinking it would drop the guest's data past the new end.
        if exists
            && opts.resize
            && is_regular
            && let Some(size) = opts.size.filter(|&s| s > on_disk)
        {
            if opts.read_only {
                return Err(EngineError::Setup {
                    path: path.clone(),
                    message: "cannot resize a read-only disk".into(),
                });
            }
            buffered.set_len(size).map_err(open_err)?;
            info!("{}: grown from {on_disk} to {size} bytes", path.display());
        }
        let direct = if opts.direct {
            match open_file(path, opts.read_only, true) {
                Ok(f) => Some(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    warn!(
                        "{}: the file system refuses O_DIRECT; using the page cache",
                        path.display()
                    );
                    None
                }
                Err(e) => return Err(open_err(e)),
            }
        } else {
            None
        };
        let mut probe = &buffered;
        let len = probe.seek(SeekFrom::End(0)).map_err(open_err)?;
        let capacity = len - len % 512;
        if capacity == 0 {
            return Err(EngineError::Setup {
                path: path.clone(),
                message: "is empty".into(),
            });
        }
        if let Some(size) = opts.size
            && is_regular
        {
            if size > len {
                return Err(EngineError::Setup {
                    path: path.clone(),
                    message: format!("is {len} bytes, less than size = {size}"),
                });
            }
            if size < len {
                info!(
                    "{}: the file is {len} bytes, more than size = {size} (grown by `keel \
                     resize`?): serving all {len} bytes",
                    path.display()
                );
            }
        }
        let use_uring = UringQueue::available();
        let engine = Self {
            files: Arc::new(RawFiles {
                path: path.clone(),
                direct,
                buffered,
                read_only: opts.read_only,
                _lock: lock,
            }),
            capacity: AtomicU64::new(capacity),
            use_uring,
            queue_depth: opts.queue_depth.max(1),
        };
        info!("{}", engine.describe());
        Ok(engine)
    }

    pub fn path(&self) -> &Path {
        &self.files.path
    }
}

/// A keel container served raw would hand the guest Keel's metadata and let it overwrite it.
fn refuse_container(file: &File, path: &Path) -> Result<(), EngineError> {
    let mut start = vec![0u8; 8192];
    let mut got = 0;
    while got < start.len() {
        match file.read_at(&mut start[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(EngineError::Open {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if is_container_start(&start[..got]) {
        return Err(EngineError::Setup {
            path: path.to_path_buf(),
            message: "is a Keel container; use engine = \"keel\"".into(),
        });
    }
    Ok(())
}

fn open_file(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(!read_only);
    // The config resolved symlinks when it was loaded; one planted since is not followed.
    let nofollow = libc::O_NOFOLLOW;
    o.custom_flags(if direct {
        libc::O_DIRECT | nofollow
    } else {
        nofollow
    });
    o.open(path)
}

impl Engine for RawEngine {
    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    /// Extends the image file (sparse) and takes the new size. Block devices and mirrors keep
    /// their size.
    fn grow(&self, size: u64) -> Result<u64, EngineError> {
        let now = self.capacity();
        super::refuse_shrink(now, size)?;
        let size = size.div_ceil(512) * 512;
        if size == now {
            return Ok(now);
        }
        if self.files.read_only {
            return Err(EngineError::ReadOnly { op: "grow" });
        }
        let io = |source| EngineError::Io { op: "grow", source };
        let file = &self.files.buffered;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(EngineError::Unsupported(format!(
                "{} is not a regular file: grow the device itself",
                self.files.path.display()
            )));
        }
        file.set_len(size).map_err(io)?;
        file.sync_all().map_err(io)?;
        self.capacity.store(size, Ordering::Release);
        info!(
            "{}: grown from {now} to {size} bytes",
            self.files.path.display()
        );
        Ok(size)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_unless(self.files.read_only)
    }

    fn describe(&self) -> String {
        format!(
            "raw engine on {} ({} bytes, {}, {})",
            self.files.path.display(),
            self.capacity(),
            if self.files.direct.is_some() {
                "O_DIRECT"
            } else {
                "page cache"
            },
            if self.use_uring {
                "io_uring"
            } else {
                "blocking system calls: io_uring unavailable"
            }
        )
    }

    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        if self.use_uring {
            match UringQueue::new(Arc::clone(&self.files), self.queue_depth) {
                Ok(q) => return Ok(Box::new(q)),
                Err(source) => {
                    warn!(
                        "{}: queue {index}: io_uring setup failed ({source}); using blocking \
                         system calls",
                        self.files.path.display()
                    );
                }
            }
        }
        Ok(Box::new(SyncQueue::new(Arc::clone(&self.files))))
    }

    fn allocation(&self, range: ByteRange) -> Option<Vec<Extent>> {
        file_ops::extents(
            self.files.buffered.as_raw_fd(),
            range.offset,
            range.len,
            MAX_EXTENTS,
        )
    }

    fn flush(&self) -> Result<(), EngineError> {
        file_ops::datasync(self.files.buffered.as_raw_fd()).map_err(|source| EngineError::Io {
            op: "flush",
            source,
        })
    }
}

#[cfg(test)]
mod tests;
