//! Block devices under the storage core: a plain file (or block device) and, later, mirrors.
//!
//! The store only ever talks to a [`BlockDevice`], so a fault-injecting device or a mirror
//! can stand in for a file without the store knowing.

mod file;
pub mod lock;
pub mod mirror;
pub mod nbd;

pub use file::FileDevice;
#[cfg(any(test, feature = "testing"))]
pub(crate) use file::direct_aligned;

use std::io;
use std::os::fd::RawFd;

/// Byte-addressed storage with explicit durability.
///
/// Offsets and lengths are checked by the implementation: an access beyond [`len`](Self::len)
/// is an error, never a short read or a file extension.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;

    /// Whether the device holds no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`. Not durable until [`flush`](Self::flush) returns.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every write that completed before this call durable.
    fn flush(&self) -> io::Result<()>;

    /// Tells the device a range's contents are no longer needed; it reads back as zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// The file descriptor behind the device, when reads and writes at an offset of it are
    /// exactly this device's (a plain file or block device, opened as this device is), so
    /// that a caller may issue them itself, e.g. on an io_uring.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// Extends the device to `len` bytes with its new space reserved, so a container can
    /// add segments. Only a regular file grows; other devices refuse.
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only a container in a regular file can grow",
        ))
    }
}

/// Checks that `[offset, offset + len)` lies inside a device of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} is beyond the device's {size} bytes"),
        )),
    }
}
