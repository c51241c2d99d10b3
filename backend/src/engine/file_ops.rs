//! Blocking file operations on iovecs: the fallback path when io_uring is missing, and the tail
//! of an io_uring transfer that came back short.

use std::io;
use std::os::fd::RawFd;

/// The kernel's limit on iovecs per vectored call.
pub const IOV_MAX: usize = 1024;

/// Which way bytes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// File to memory.
    Read,
    /// Memory to file; `dsync` makes each call durable (RWF_DSYNC).
    Write { dsync: bool },
}

/// Transfers all of `iovecs` at `offset`, starting `skip` bytes in (bytes already done).
///
/// The caller guarantees the iovecs describe memory that stays valid and (for reads) writable
/// for the duration of the call; [`super::GuestBuffers::iovecs`] does.
pub fn transfer_all(
    fd: RawFd,
    iovecs: &[libc::iovec],
    offset: u64,
    skip: usize,
    dir: Direction,
) -> io::Result<()> {
    let mut rest = skip_bytes(iovecs, skip);
    let mut pos = offset
        .checked_add(skip as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(IOV_MAX)];
        let off = libc::off_t::try_from(pos)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: `chunk` is a valid iovec array of at most IOV_MAX entries whose memory the
        // caller keeps valid (see above); the kernel checks every address itself.
        let n = unsafe {
            match dir {
                Direction::Read => libc::preadv(fd, chunk.as_ptr(), chunk.len() as i32, off),
                Direction::Write { dsync } => libc::pwritev2(
                    fd,
                    chunk.as_ptr(),
                    chunk.len() as i32,
                    off,
                    if dsync { libc::RWF_DSYNC } else { 0 },
                ),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "transfer stopped at the end of the file",
            ));
        }
        pos += n as u64;
        rest = skip_bytes(&rest, n as usize);
    }
    Ok(())
}

/// The iovecs that remain after the first `skip` bytes.
fn skip_bytes(iovecs: &[libc::iovec], mut skip: usize) -> Vec<libc::iovec> {
    let mut out = Vec::with_capacity(iovecs.len());
    for v in iovecs {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // Pointer arithmetic only; nothing is dereferenced here.
            iov_base: v.iov_base.cast::<u8>().wrapping_add(skip).cast(),
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
    out
}

/// `fallocate` with `mode`, retried on EINTR.
pub fn fallocate(fd: RawFd, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    loop {
        // SAFETY: plain system call on an fd; no memory is passed.
        let rc = unsafe { libc::fallocate(fd, mode, off, len) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Deallocates a range; it reads back as zeroes.
pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
/// Zeroes a range, keeping (or allocating) its blocks.
pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// Zeroes a range by any means the file supports: `first_mode`, then zero-range, then writing
/// zero blocks through `write_fd` (which must accept unaligned buffers: not an O_DIRECT fd).
pub fn zero_any_way(
    fd: RawFd,
    write_fd: RawFd,
    first_mode: i32,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let unsupported = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENODEV)
        )
    };
    match fallocate(fd, first_mode, offset, len) {
        Err(e) if unsupported(&e) => {}
        other => return other,
    }
    if first_mode != ZERO_RANGE {
        match fallocate(fd, ZERO_RANGE, offset, len) {
            Err(e) if unsupported(&e) => {}
            other => return other,
        }
    }
    write_zero_blocks(write_fd, offset, len)
}

fn write_zero_blocks(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeroes = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        let iov = [libc::iovec {
            iov_base: zeroes.as_ptr() as *mut libc::c_void,
            iov_len: n,
        }];
        // The kernel only reads this buffer (a write).
        transfer_all(
            fd,
            &iov,
            offset + done,
            0,
            Direction::Write { dsync: false },
        )?;
        done += n as u64;
    }
    Ok(())
}

/// fdatasync, retried on EINTR.
/// The data and holes of `[offset, offset + len)` in a file, found with SEEK_DATA/SEEK_HOLE;
/// `None` where the file system (or a block device) does not tell. At most `max` extents.
pub fn extents(fd: RawFd, offset: u64, len: u64, max: usize) -> Option<Vec<super::Extent>> {
    let seek = |pos: u64, whence| {
        // SAFETY: lseek on a descriptor the caller keeps open; it touches no memory. Keel's
        // file I/O is positional, so moving the file offset disturbs no other request.
        let r = unsafe { libc::lseek(fd, i64::try_from(pos).ok()?, whence) };
        if r >= 0 {
            Some(Ok(r as u64))
        } else {
            Some(Err(io::Error::last_os_error()))
        }
    };
    let end = offset.checked_add(len)?;
    let mut out: Vec<super::Extent> = Vec::new();
    let mut pos = offset;
    while pos < end && out.len() < max {
        let data = match seek(pos, libc::SEEK_DATA)? {
            Ok(d) => d.min(end),
            // No data after `pos`: a hole to the end of the file.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            Err(_) => return None,
        };
        if data > pos {
            out.push(super::Extent {
                len: data - pos,
                hole: true,
            });
            pos = data;
            continue;
        }
        let hole = seek(pos, libc::SEEK_HOLE)?.ok()?.min(end);
        if hole <= pos {
            return None;
        }
        out.push(super::Extent {
            len: hole - pos,
            hole: false,
        });
        pos = hole;
    }
    Some(out)
}

pub fn datasync(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: plain system call on an fd.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn transfer_round_trip_with_skip() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let mut a = vec![1u8; 100];
        let mut b = vec![2u8; 50];
        let iov = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        transfer_all(
            f.as_raw_fd(),
            &iov,
            1000,
            0,
            Direction::Write { dsync: true },
        )
        .unwrap();
        a.fill(0);
        b.fill(0);
        // Skip 120 bytes: only b[20..] is read back, from file offset 1120.
        transfer_all(f.as_raw_fd(), &iov, 1000, 120, Direction::Read).unwrap();
        assert!(a.iter().all(|&x| x == 0));
        assert!(b[..20].iter().all(|&x| x == 0));
        assert!(b[20..].iter().all(|&x| x == 2));
    }

    #[test]
    fn read_past_end_is_an_error() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(512).unwrap();
        let mut a = vec![0u8; 1024];
        let iov = [libc::iovec {
            iov_base: a.as_mut_ptr().cast(),
            iov_len: a.len(),
        }];
        let e = transfer_all(f.as_raw_fd(), &iov, 0, 0, Direction::Read).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn zeroing_reads_back_zero() {
        let f = tempfile::tempfile().unwrap();
        let data = vec![0xabu8; 16384];
        let iov = [libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }];
        transfer_all(f.as_raw_fd(), &iov, 0, 0, Direction::Write { dsync: false }).unwrap();
        zero_any_way(f.as_raw_fd(), f.as_raw_fd(), PUNCH_HOLE, 4096, 4096).unwrap();
        zero_any_way(f.as_raw_fd(), f.as_raw_fd(), ZERO_RANGE, 12288, 512).unwrap();
        write_zero_blocks(f.as_raw_fd(), 0, 100).unwrap();
        let mut back = vec![0u8; 16384];
        let iov = [libc::iovec {
            iov_base: back.as_mut_ptr().cast(),
            iov_len: back.len(),
        }];
        transfer_all(f.as_raw_fd(), &iov, 0, 0, Direction::Read).unwrap();
        assert!(back[..100].iter().all(|&x| x == 0));
        assert!(back[100..4096].iter().all(|&x| x == 0xab));
        assert!(back[4096..8192].iter().all(|&x| x == 0));
        assert!(back[8192..12288].iter().all(|&x| x == 0xab));
        assert!(back[12288..12800].iter().all(|&x| x == 0));
        assert!(back[12800..].iter().all(|&x| x == 0xab));
        datasync(f.as_raw_fd()).unwrap();
    }
}
