//! Where a source's holes are: a raw file's, found with `SEEK_DATA`/`SEEK_HOLE`, and the
//! per-block view the copier and the queues use (a block is skipped only when all of it reads
//! as zeroes).

use std::io;
use std::os::fd::RawFd;

use crate::engine::Extent;

/// One `lseek(2)` on `fd`; `None` for ENXIO (no data, or no hole, at or after `at`).
fn seek(fd: RawFd, at: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let at = libc::off_t::try_from(at).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek(2) on a descriptor the caller keeps open; it moves only that descriptor's
    // file offset, which no read of a source uses (reads are positioned).
    let found = unsafe { libc::lseek(fd, at, whence) };
    if found < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(found as u64))
}

/// The data and holes of `[offset, offset + len)` of the file `fd`, in order, covering the
/// range; `None` when the file system cannot tell.
pub fn file_extents(fd: RawFd, offset: u64, len: u64) -> Option<Vec<Extent>> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut at = offset;
    let push = |out: &mut Vec<Extent>, len: u64, hole: bool| {
        if len > 0 {
            out.push(Extent { len, hole });
        }
    };
    while at < end {
        let data = seek(fd, at, libc::SEEK_DATA).ok()?.unwrap_or(end).min(end);
        push(&mut out, data - at, true);
        if data == end {
            break;
        }
        // Every file has a hole at its end, so SEEK_HOLE finds one.
        let hole = seek(fd, data, libc::SEEK_HOLE)
            .ok()?
            .unwrap_or(end)
            .min(end);
        push(&mut out, hole - data, false);
        at = hole;
    }
    Some(out)
}

/// Block by block over `len` bytes, whether the block reads as zeroes: all of it lies in
/// holes of `extents` (which start at the range's start) or past their end.
pub fn zero_blocks(extents: &[Extent], len: u64, block: u64) -> Vec<bool> {
    let mut zero = vec![true; len.div_ceil(block) as usize];
    let mut at = 0u64;
    for e in extents {
        if !e.hole && e.len > 0 && at < len {
            let first = at / block;
            let last = (at + e.len).min(len).div_ceil(block);
            zero[first as usize..last as usize].fill(false);
        }
        at += e.len;
    }
    zero
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    fn ext(len: u64, hole: bool) -> Extent {
        Extent { len, hole }
    }

    #[test]
    fn a_block_is_zero_only_when_no_data_touches_it() {
        let extents = [ext(4096, true), ext(512, false), ext(7680, true)];
        assert_eq!(
            zero_blocks(&extents, 16384, 4096),
            [true, false, true, true]
        );
        // Past the extents' end: zeroes.
        assert_eq!(zero_blocks(&[ext(4096, false)], 8192, 4096), [false, true]);
        assert_eq!(zero_blocks(&[], 8192, 4096), [true, true]);
    }

    #[test]
    fn a_sparse_files_holes_and_data_are_found() {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(8 << 20).unwrap();
        tmp.write_all_at(&[7u8; 8192], 1 << 20).unwrap();
        let fd = tmp.as_raw_fd();
        let Some(extents) = file_extents(fd, 0, 8 << 20) else {
            return; // a file system without SEEK_DATA: nothing to check
        };
        let total: u64 = extents.iter().map(|e| e.len).sum();
        assert_eq!(total, 8 << 20);
        let zero = zero_blocks(&extents, 8 << 20, 4096);
        let data: Vec<usize> = (0..zero.len()).filter(|i| !zero[*i]).collect();
        // File systems allocate in blocks of at least 4 KiB: the written range is data, and
        // far more than half of the file is a hole.
        assert!(data.contains(&256) && data.contains(&257), "{data:?}");
        assert!(data.len() < zero.len() / 2, "{data:?}");
        // A range in the middle of a hole.
        assert_eq!(
            file_extents(fd, 4 << 20, 1 << 20),
            Some(vec![ext(1 << 20, true)])
        );
    }
}
