//! Reading a cleaner victim: only the runs of blocks that hold its live data when that costs
//! the device less than reading the whole segment, all of them in flight at once.
//!
//! During a sequential fill over randomly written data, the victims are randomly written
//! segments the fill has mostly overwritten (10-20 % of their blocks live). Reading each
//! whole (4 MiB) made the cleaner's reads a quarter of the device's traffic while the guest
//! was writing as fast as the device allows (docs/benchmarks.md, "A full disk"). A small
//! read costs the device more per byte than a long one, though: on the benchmark host one
//! 4 KiB random read at depth 64 takes about as long as 3-4 blocks of a sequential 4 MiB
//! read. So live blocks that close together are read by one request, gaps included: a gap
//! read along costs no more than the request it saves, so the runs never cost more than the
//! whole segment, and a dense segment's runs merge into (nearly) the whole of it.
//!
//! A long run is read in pieces of [`PIECE_BLOCKS`], all in flight together with the runs of
//! every victim of the step: one 4 MiB request at depth 1 kept the device at a third of what
//! it sustains at depth (docs/benchmarks.md, "Several victims per step").

use crate::device::BlockDevice;
use crate::store::layout::BLOCK;
use crate::store::ring_pieces::run_pieces;
use io_uring::{IoUring, opcode, types};
use std::io;

/// What one read request costs the device beyond its bytes, in blocks read sequentially.
const REQUEST_BLOCKS: u64 = 3;
/// Reads in flight at once on the victims' ring.
const RING_DEPTH: u32 = 64;
/// The longest read request, in blocks (512 KiB): a dense victim is read in eight pieces.
pub const PIECE_BLOCKS: u64 = 128;
/// Bytes the victims' reads have in flight at most: enough to keep the device busy, few
/// enough that a guest request queued behind them does not wait long.
const BYTES_IN_FLIGHT: u64 = 4 << 20;

/// A stretch of a segment to read: its first block (counted from the segment's start) and
/// how many blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub first: u64,
    pub blocks: u64,
}

impl Run {
    /// Its bytes within the segment's buffer.
    pub fn bytes(&self) -> std::ops::Range<usize> {
        (self.first * BLOCK) as usize..((self.first + self.blocks) * BLOCK) as usize
    }
}

/// What to read of a segment whose live blocks are `live` (sorted, distinct, counted from the
/// segment's start): runs covering every live block, close ones merged (see the module doc).
/// Nothing when none is live.
pub fn plan(live: &[u64]) -> Vec<Run> {
    debug_assert!(live.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    let mut runs: Vec<Run> = Vec::new();
    for &b in live {
        match runs.last_mut() {
            // A gap no longer than a request's cost is read along.
            Some(r) if b - (r.first + r.blocks) <= REQUEST_BLOCKS => r.blocks = b + 1 - r.first,
            _ => runs.push(Run {
                first: b,
                blocks: 1,
            }),
        }
    }
    runs
}

/// Bytes `runs` read.
pub fn bytes_of(runs: &[Run]) -> u64 {
    runs.iter().map(|r| r.blocks * BLOCK).sum()
}

/// Runs no longer than `max_blocks` blocks covering exactly what `runs` covers.
pub fn split(runs: &[Run], max_blocks: u64) -> Vec<Run> {
    let max = max_blocks.max(1);
    runs.iter()
        .flat_map(|r| {
            (r.first..r.first + r.blocks)
                .step_by(max as usize)
                .map(move |first| Run {
                    first,
                    blocks: max.min(r.first + r.blocks - first),
                })
        })
        .collect()
}

/// One segment to read: its buffer, its first byte on the device, and the runs to read
/// into the buffer, each at its place.
pub struct SegmentRead<'a> {
    pub buf: &'a mut [u8],
    pub start: u64,
    pub runs: Vec<Run>,
}

/// Reads the runs of every segment in `segments`, each into its buffer at its place (the
/// rest of a buffer is left as it was), in pieces of at most [`PIECE_BLOCKS`]. On a device
/// with a file descriptor the pieces are read together on a short-lived io_uring; a piece the
/// ring did not read whole, or every piece on another device, is read with
/// [`BlockDevice::read_at`].
pub fn read_segments(dev: &dyn BlockDevice, segments: &mut [SegmentRead<'_>]) -> io::Result<()> {
    let mut pieces = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if let Some(r) = s.runs.iter().find(|r| r.bytes().end > s.buf.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("run {r:?} beyond a segment buffer of {} bytes", s.buf.len()),
            ));
        }
        pieces.extend(split(&s.runs, PIECE_BLOCKS).into_iter().map(|r| (i, r)));
    }
    let again: Vec<(usize, Run)> = match (dev.raw_fd(), &pieces[..]) {
        (Some(fd), [_, _, ..]) => match read_on_ring(fd, segments, &pieces) {
            Ok(failed) => failed,
            Err(e) => {
                log::debug!("cleaner: no ring for a victim's reads ({e}); reading one by one");
                pieces
            }
        },
        _ => pieces,
    };
    for (i, r) in again {
        let s = &mut segments[i];
        dev.read_at(&mut s.buf[r.bytes()], s.start + r.first * BLOCK)?;
    }
    Ok(())
}

/// Reads every piece (segment index, run) on a ring of its own, `RING_DEPTH` at a time, and
/// returns the pieces it did not read whole. Returns only once no read it issued is in
/// flight.
fn read_on_ring(
    fd: i32,
    segments: &mut [SegmentRead<'_>],
    pieces: &[(usize, Run)],
) -> io::Result<Vec<(usize, Run)>> {
    let depth = RING_DEPTH.min(pieces.len().next_power_of_two() as u32);
    let mut ring = IoUring::new(depth)?;
    let bases: Vec<*mut u8> = segments.iter_mut().map(|s| s.buf.as_mut_ptr()).collect();
    let starts: Vec<u64> = segments.iter().map(|s| s.start).collect();
    let mut entry = |n: usize| {
        let (i, r) = pieces[n];
        let range = r.bytes();
        // SAFETY: `read_segments` checked the run lies within segment `i`'s buffer.
        let at = unsafe { bases[i].add(range.start) };
        let e = opcode::Read::new(types::Fd(fd), at, range.len() as u32)
            .offset(starts[i] + r.first * BLOCK)
            .build();
        (e, range.len())
    };
    // SAFETY: the segments' buffers are borrowed mutably for this whole call, which
    // `run_pieces` returns from only once no read is in flight; the file is the device's,
    // open for as long as `dev` is borrowed.
    let failed = unsafe {
        run_pieces(
            &mut ring,
            pieces.len(),
            BYTES_IN_FLIGHT as usize,
            &mut entry,
            &mut None,
            "a victim's reads",
        )
    };
    Ok(failed.into_iter().map(|n| pieces[n]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FileDevice;

    /// Reads `runs` of the one segment at byte `start` of `dev` into `buf`.
    fn read_runs(
        dev: &dyn BlockDevice,
        buf: &mut [u8],
        start: u64,
        runs: &[Run],
    ) -> io::Result<()> {
        let runs = runs.to_vec();
        read_segments(dev, &mut [SegmentRead { buf, start, runs }])
    }

    fn run(first: u64, blocks: u64) -> Run {
        Run { first, blocks }
    }

    #[test]
    fn close_live_blocks_share_a_read() {
        assert_eq!(plan(&[]), vec![]);
        assert_eq!(plan(&[7]), vec![run(7, 1)]);
        // Gaps of up to REQUEST_BLOCKS blocks are read along; a wider one starts a new run.
        assert_eq!(plan(&[1, 2, 6, 10, 11, 20]), vec![run(1, 11), run(20, 1)]);
        // Every fourth block live: one run, gaps included, cheaper than 256 requests.
        let quarter: Vec<u64> = (0..1024).step_by(4).collect();
        assert_eq!(plan(&quarter), vec![run(0, 1021)]);
        // Every tenth: 103 single blocks, 412 blocks' worth, against 1024.
        let tenth: Vec<u64> = (0..1024).step_by(10).collect();
        let runs = plan(&tenth);
        assert_eq!(runs.len(), 103);
        assert!(runs.iter().all(|r| r.blocks == 1));
        assert_eq!(bytes_of(&runs), 103 * BLOCK);
    }

    /// A file of 64 blocks, block `i` filled with byte `i`.
    fn numbered_file(dir: &std::path::Path) -> FileDevice {
        let path = dir.join("segment");
        let bytes: Vec<u8> = (0..64u8)
            .flat_map(|i| std::iter::repeat_n(i, BLOCK as usize))
            .collect();
        std::fs::write(&path, bytes).unwrap();
        FileDevice::open(&path, false, true).unwrap()
    }

    #[test]
    fn runs_land_at_their_place_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let dev = numbered_file(dir.path());
        assert!(dev.raw_fd().is_some(), "read on a ring");
        // The "segment" is blocks 16..48 of the file.
        let runs = plan(&[0, 1, 9, 20, 31]);
        assert_eq!(runs.len(), 4);
        let mut buf = crate::store::AlignedBuf::zeroed(32 * BLOCK as usize);
        buf.fill(0xee);
        read_runs(&dev, &mut buf, 16 * BLOCK, &runs).unwrap();
        for b in 0..32u64 {
            let got = &buf[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize];
            let read = runs
                .iter()
                .any(|r| (r.first..r.first + r.blocks).contains(&b));
            let want = if read { 16 + b as u8 } else { 0xee };
            assert!(got.iter().all(|x| *x == want), "block {b}");
        }
    }

    #[test]
    fn a_run_beyond_the_buffer_or_the_device_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let dev = numbered_file(dir.path());
        let mut buf = crate::store::AlignedBuf::zeroed(32 * BLOCK as usize);
        let err = read_runs(&dev, &mut buf, 0, &[run(0, 1), run(30, 3)]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // The ring's short read at the end of the file is read again, and fails there.
        assert!(read_runs(&dev, &mut buf, 40 * BLOCK, &[run(0, 1), run(30, 2)]).is_err());
    }

    #[test]
    fn long_runs_are_split_into_pieces() {
        assert_eq!(split(&[], 4), vec![]);
        assert_eq!(
            split(&[run(0, 10), run(12, 2), run(20, 4)], 4),
            vec![run(0, 4), run(4, 4), run(8, 2), run(12, 2), run(20, 4)]
        );
        let whole = split(&[run(0, 1024)], PIECE_BLOCKS);
        assert_eq!(whole.len(), 8);
        assert_eq!(bytes_of(&whole), 1024 * BLOCK);
    }

    #[test]
    fn several_segments_are_read_at_once_each_into_its_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let dev = numbered_file(dir.path());
        // Two "segments" of 32 blocks: blocks 0..32 and 32..64 of the file, one read whole
        // (split in pieces), one by two runs.
        let mut a = crate::store::AlignedBuf::zeroed(32 * BLOCK as usize);
        let mut b = crate::store::AlignedBuf::zeroed(32 * BLOCK as usize);
        b.fill(0xee);
        let mut segs = [
            SegmentRead {
                buf: &mut a,
                start: 0,
                runs: vec![run(0, 32)],
            },
            SegmentRead {
                buf: &mut b,
                start: 32 * BLOCK,
                runs: vec![run(1, 2), run(30, 2)],
            },
        ];
        read_segments(&dev, &mut segs).unwrap();
        for blk in 0..32usize {
            let at = blk * BLOCK as usize;
            assert!(a[at..at + BLOCK as usize].iter().all(|x| *x == blk as u8));
            let want = match blk {
                1 | 2 | 30 | 31 => 32 + blk as u8,
                _ => 0xee,
            };
            assert!(
                b[at..at + BLOCK as usize].iter().all(|x| *x == want),
                "block {blk}"
            );
        }
    }
}
