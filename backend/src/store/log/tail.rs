//! What lies past the end of the replayed journal chain: the torn tail of a crash, or damage.
//!
//! A crash can leave records that were in flight and never flushed: intact ones after a torn
//! one, or one whose data never landed. Those may be dropped; nobody was promised them. But an
//! intact record past the chain's end can also prove that something newer was acknowledged:
//! - a record in the chain's next place that does not continue it was written after a newer
//!   checkpoint, which the superblock that was opened no longer knows (a damaged newest
//!   superblock rolled the container back);
//! - a record whose Flushed entry covers the chain's next LSN says that record was flushed, so
//!   the chain stopping before it means a flushed record was damaged.
//!
//! Either is refused (never served as older data, never silently), unless the user rewinds
//! on purpose. Containers with [`INCOMPAT_FLUSH_MARKS`](crate::store::log::superblock::INCOMPAT_FLUSH_MARKS)
//! keep the journal past the chain free of intact records a recovery dropped (they are erased
//! at open), which is what makes the first rule sound.

use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use crate::store::error::Result;
use crate::store::layout::{BLOCK, Geometry};
use crate::store::log::journal::{self, Entry};

/// An intact record found past the chain's end, with an LSN at or past the one expected next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Block offset inside the journal region.
    pub pos: u64,
    pub lsn: u64,
    pub prev_crc: u32,
    pub blocks: u64,
    /// The highest LSN a Flushed entry of this record names.
    pub flushed: Option<u64>,
}

/// Journal blocks read at a time while scanning.
const SCAN_BLOCKS: u64 = 256;

/// Every intact record in the journal block ranges `ranges` (`[from, to)` each) whose LSN is
/// `next_lsn` or later.
pub fn scan(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    ranges: &[(u64, u64)],
    next_lsn: u64,
) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for &(from, to) in ranges {
        scan_range(
            dev,
            geo,
            from,
            to.min(geo.journal_blocks()),
            next_lsn,
            &mut found,
        )?;
    }
    Ok(found)
}

/// [`scan`] of one range `[from, end)`.
fn scan_range(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    from: u64,
    end: u64,
    next_lsn: u64,
    found: &mut Vec<Found>,
) -> Result<()> {
    let base = geo.journal_start();
    let mut chunk = AlignedBuf::blocks(SCAN_BLOCKS as usize);
    let mut pos = from;
    while pos < end {
        let start = pos;
        let n = SCAN_BLOCKS.min(end - start);
        let bytes = (n * BLOCK) as usize;
        dev.read_at(&mut chunk[..bytes], (base + start) * BLOCK)?;
        while pos < start + n {
            let at = ((pos - start) * BLOCK) as usize;
            let header = journal::decode_header(&chunk[at..at + BLOCK as usize])
                .filter(|h| h.lsn >= next_lsn && pos + h.len_blocks as u64 <= end);
            let Some(h) = header else {
                pos += 1;
                continue;
            };
            let len = h.len_blocks as u64;
            let decoded = if pos + len <= start + n {
                journal::decode(base + pos, &chunk[at..at + (len * BLOCK) as usize])
            } else {
                let mut rec = AlignedBuf::blocks(len as usize);
                dev.read_at(&mut rec, (base + pos) * BLOCK)?;
                journal::decode(base + pos, &rec)
            };
            match decoded {
                Some((h, entries, _)) => {
                    let flushed = entries
                        .iter()
                        .filter_map(|e| match *e {
                            Entry::Flushed { lsn } => Some(lsn),
                            _ => None,
                        })
                        .max();
                    found.push(Found {
                        pos,
                        lsn: h.lsn,
                        prev_crc: h.prev_crc,
                        blocks: len,
                        flushed,
                    });
                    pos += len;
                }
                None => pos += 1,
            }
        }
    }
    Ok(())
}

/// Where the chain ended: the place and the LSN and chain crc the next record needed.
#[derive(Debug, Clone, Copy)]
pub struct ChainEnd {
    pub pos: u64,
    pub next_lsn: u64,
    pub prev_crc: u32,
}

/// Why the records past `end` cannot be a torn tail, or `None` when they can.
pub fn damage(found: &[Found], end: ChainEnd) -> Option<String> {
    if let Some(f) = found.iter().find(|f| {
        f.pos == end.pos
            && (f.lsn > end.next_lsn || (f.lsn == end.next_lsn && f.prev_crc != end.prev_crc))
    }) {
        return Some(format!(
            "journal block {} holds record lsn {}, written after a newer checkpoint than the one \
             opened (the chain from it ends at lsn {}): the newest checkpoint was lost, and with \
             it every write it and the journal after it held",
            f.pos,
            f.lsn,
            end.next_lsn - 1
        ));
    }
    let proof = found
        .iter()
        .filter(|f| f.flushed.is_some_and(|l| l >= end.next_lsn))
        .max_by_key(|f| f.flushed)?;
    let through = proof.flushed.unwrap_or(end.next_lsn);
    Some(format!(
        "record lsn {} at journal block {} is damaged, but record lsn {} says every record \
         through lsn {through} was flushed: {} flushed records would be lost",
        end.next_lsn,
        end.pos,
        proof.lsn,
        through - end.next_lsn + 1
    ))
}

/// The journal blocks `[from, to)` the found records take, to erase before new records.
pub fn erase_ranges(found: &[Found]) -> Vec<(u64, u64)> {
    found.iter().map(|f| (f.pos, f.pos + f.blocks)).collect()
}

/// Writes zeroes over every block of the journal that starts with a record's magic, and
/// flushes: what a new container needs of a device that may have held another one. A new
/// (sparse) file is only read: formatting it stays as quick as it was.
pub fn erase_all_records(dev: &dyn BlockDevice, geo: &Geometry) -> Result<()> {
    let end = geo.journal_blocks();
    let mut chunk = AlignedBuf::blocks(SCAN_BLOCKS as usize);
    let zero = AlignedBuf::blocks(1);
    let mut pos = 0;
    while pos < end {
        let n = SCAN_BLOCKS.min(end - pos);
        dev.read_at(
            &mut chunk[..(n * BLOCK) as usize],
            (geo.journal_start() + pos) * BLOCK,
        )?;
        for i in 0..n {
            let at = (i * BLOCK) as usize;
            if chunk[at..at + journal::RECORD_MAGIC.len()] == journal::RECORD_MAGIC[..] {
                dev.write_at(&zero, (geo.journal_start() + pos + i) * BLOCK)?;
            }
        }
        pos += n;
    }
    dev.flush()?;
    Ok(())
}

/// Writes zeroes over journal blocks `[from, to)` of every range, and flushes.
pub fn erase(dev: &dyn BlockDevice, geo: &Geometry, ranges: &[(u64, u64)]) -> Result<()> {
    let zero = AlignedBuf::blocks(SCAN_BLOCKS as usize);
    for &(from, to) in ranges {
        let mut pos = from;
        while pos < to {
            let n = SCAN_BLOCKS.min(to - pos);
            dev.write_at(
                &zero[..(n * BLOCK) as usize],
                (geo.journal_start() + pos) * BLOCK,
            )?;
            pos += n;
        }
    }
    dev.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(pos: u64, lsn: u64, flushed: Option<u64>) -> Found {
        Found {
            pos,
            lsn,
            prev_crc: 9,
            blocks: 1,
            flushed,
        }
    }

    const END: ChainEnd = ChainEnd {
        pos: 10,
        next_lsn: 40,
        prev_crc: 7,
    };

    #[test]
    fn a_torn_tail_is_not_damage() {
        // 40 torn, 41 and 42 landed; the newest flush covered 39 at most.
        let f = [found(11, 41, None), found(12, 42, Some(39))];
        assert_eq!(damage(&f, END), None);
        assert_eq!(erase_ranges(&f), vec![(11, 12), (12, 13)]);
        assert_eq!(damage(&[], END), None);
        assert!(erase_ranges(&[]).is_empty());
    }

    #[test]
    fn a_flush_mark_past_the_chain_end_is_damage() {
        let f = [found(11, 41, None), found(12, 42, Some(41))];
        let why = damage(&f, END).unwrap();
        assert!(
            why.contains("through lsn 41") && why.contains("2 flushed"),
            "{why}"
        );
    }

    #[test]
    fn a_newer_pass_in_the_chains_place_is_damage() {
        let why = damage(&[found(10, 57, None)], END).unwrap();
        assert!(why.contains("newest checkpoint was lost"), "{why}");
        // The same LSN with another chain crc: written after another checkpoint.
        assert!(damage(&[found(10, 40, None)], END).is_some());
        // The record that continues the chain (discarded for its data) is not.
        let mut own = found(10, 40, None);
        own.prev_crc = END.prev_crc;
        assert_eq!(damage(&[own], END), None);
    }
}
