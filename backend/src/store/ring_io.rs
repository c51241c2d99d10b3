//! The store's own large writes with several in flight: the cleaner's copies and their
//! record, on a short-lived io_uring.
//!
//! [`DeviceIo`] writes one request after another: a cleaning step's copies (megabytes) went
//! to the device at depth 1, a few MiB per request, and the cleaner waited for each. Here every
//! write is cut into pieces of at most [`PIECE_BYTES`] and the pieces are in flight together,
//! the journal record among them. The record carries its data's checksums, so the order the
//! pieces land in does not matter: recovery discards a record whose data did not all land
//! (`log::recovery`), as it does when [`DeviceIo`]'s writes are cut short.

use crate::device::BlockDevice;
use crate::store::AlignedBuf;
use crate::store::io::{BatchIo, DeviceIo, Gather};
use crate::store::ring_pieces::run_pieces;
use io_uring::{IoUring, opcode, types};
use std::io;

/// The longest write request (512 KiB).
pub(in crate::store) const PIECE_BYTES: usize = 512 << 10;
/// Writes in flight at once.
const RING_DEPTH: u32 = 32;
/// Bytes in flight at most: enough to keep the device busy, few enough that a guest request
/// queued behind them does not wait long.
const BYTES_IN_FLIGHT: usize = 4 << 20;

/// Writes through the [`BlockDevice`]'s file descriptor on an io_uring, the pieces of every
/// write in flight together; through [`DeviceIo`] on a device without one.
///
/// `meanwhile` (a record's map changes) runs once the first writes are in flight, before any
/// is waited for: as with [`DeviceIo`], the batches reserved behind the record never wait for
/// its writes to be applied.
pub(in crate::store) struct RingIo<'a>(pub &'a dyn BlockDevice);

impl BatchIo for RingIo<'_> {
    fn write_all_while(
        &mut self,
        writes: &[Gather<'_>],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let Some(fd) = self.0.raw_fd() else {
            return DeviceIo(self.0).write_all_while(writes, meanwhile);
        };
        // A gathered write of several parts is assembled in one buffer first.
        let joined: Vec<Option<AlignedBuf>> = writes
            .iter()
            .map(|(_, parts)| (parts.len() > 1).then(|| join(parts)))
            .collect();
        let pieces: Vec<(&[u8], u64)> = writes
            .iter()
            .zip(&joined)
            .flat_map(|((offset, parts), j)| {
                let bytes: &[u8] = match j {
                    Some(buf) => &buf[..],
                    None => parts.first().copied().unwrap_or(&[]),
                };
                bytes
                    .chunks(PIECE_BYTES)
                    .enumerate()
                    .map(move |(i, c)| (c, offset + (i * PIECE_BYTES) as u64))
            })
            .collect();
        let mut once = Some(meanwhile);
        let failed = match pieces.len() {
            0 | 1 => (0..pieces.len()).collect(),
            n => match IoUring::new(RING_DEPTH.min(n.next_power_of_two() as u32)) {
                Ok(mut ring) => write_on_ring(&mut ring, fd, &pieces, &mut once),
                Err(e) => {
                    log::debug!("no ring for the store's writes ({e}); writing one by one");
                    (0..n).collect()
                }
            },
        };
        if let Some(f) = once.take() {
            f();
        }
        for i in failed {
            let (bytes, offset) = pieces[i];
            self.0.write_at(bytes, offset)?;
        }
        Ok(())
    }
}

/// `parts` one after another in one block-aligned buffer.
fn join(parts: &[&[u8]]) -> AlignedBuf {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = AlignedBuf::scratch(len.div_ceil(crate::store::layout::BLOCK_SIZE));
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    buf
}

/// Writes every piece (bytes, device offset) on `ring`, as many at once as it holds, runs
/// `once` after the first submission, and returns the indices of the pieces it did not write
/// whole. Returns only once no write it issued is in flight.
fn write_on_ring(
    ring: &mut IoUring,
    fd: i32,
    pieces: &[(&[u8], u64)],
    once: &mut Option<&mut dyn FnMut()>,
) -> Vec<usize> {
    let mut entry = |i: usize| {
        let (bytes, offset) = pieces[i];
        let e = opcode::Write::new(types::Fd(fd), bytes.as_ptr(), bytes.len() as u32)
            .offset(offset)
            .build();
        (e, bytes.len())
    };
    // SAFETY: the pieces' bytes are borrowed for this whole call, which `run_pieces` returns
    // from only once no write is in flight; the file is the device's, open for as long as the
    // device is borrowed.
    unsafe {
        run_pieces(
            ring,
            pieces.len(),
            BYTES_IN_FLIGHT,
            &mut entry,
            once,
            "the store's writes",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FileDevice;
    use crate::store::layout::BLOCK_SIZE;

    /// `blocks` blocks, block `i` filled with byte `seed + i`.
    fn numbered(blocks: usize, seed: u8) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(blocks * BLOCK_SIZE);
        for (i, blk) in b.chunks_mut(BLOCK_SIZE).enumerate() {
            blk.fill(seed.wrapping_add(i as u8));
        }
        b
    }

    #[test]
    fn every_piece_lands_at_its_place_and_meanwhile_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let blocks = 3 * PIECE_BYTES / BLOCK_SIZE;
        std::fs::write(&path, vec![0u8; blocks * BLOCK_SIZE]).unwrap();
        let dev = FileDevice::open(&path, false, true).unwrap();
        assert!(dev.raw_fd().is_some(), "written on a ring");
        // A run of 1.5 pieces at block 0, a gathered one of two parts, a lone block.
        let long = numbered(PIECE_BYTES * 3 / 2 / BLOCK_SIZE, 1);
        let (p1, p2) = (numbered(3, 100), numbered(2, 103));
        let one = numbered(1, 200);
        let at_gather = (PIECE_BYTES * 2) as u64;
        let at_one = (blocks - 1) as u64 * BLOCK_SIZE as u64;
        let writes: Vec<Gather<'_>> = vec![
            (0, vec![&long[..]]),
            (at_gather, vec![&p1[..], &p2[..]]),
            (at_one, vec![&one[..]]),
        ];
        let mut calls = 0;
        RingIo(&dev)
            .write_all_while(&writes, &mut || calls += 1)
            .unwrap();
        assert_eq!(calls, 1);
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..long.len()], &long[..]);
        let g = at_gather as usize;
        assert_eq!(&got[g..g + p1.len()], &p1[..]);
        assert_eq!(&got[g + p1.len()..g + p1.len() + p2.len()], &p2[..]);
        assert_eq!(&got[at_one as usize..], &one[..]);
        let untouched = long.len()..g;
        assert!(
            got[untouched].iter().all(|x| *x == 0),
            "nothing else written"
        );
    }

    #[test]
    fn a_write_the_device_refuses_fails_and_meanwhile_still_runs() {
        // A read-only device: every write fails, on the ring and one by one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        std::fs::write(&path, vec![0u8; 4 * PIECE_BYTES]).unwrap();
        let dev = FileDevice::open(&path, true, true).unwrap();
        let data = numbered(2 * PIECE_BYTES / BLOCK_SIZE, 7);
        let mut calls = 0;
        let res = RingIo(&dev).write_all_while(&[(0, vec![&data[..]])], &mut || calls += 1);
        assert!(res.is_err());
        assert_eq!(calls, 1);
        assert!(std::fs::read(&path).unwrap().iter().all(|x| *x == 0));
    }
}
