//! Walking the journal's chain of records from the ring's head: each record must sit where
//! the previous one ended (or at block 0 when it could not fit before the region's end),
//! carry the next LSN and the previous record's crc, and pass its own crc.
//!
//! Replay walks it once to apply the records. In a container with
//! [`INCOMPAT_MARKED_REPLAY`](super::superblock::INCOMPAT_MARKED_REPLAY) it is walked once
//! before, to find the newest Flushed mark the chain holds: the records that mark covers were
//! flushed, with their data, before the record carrying it was written, so their data is not
//! checked (a segment they name may have been reused since).

use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use crate::store::error::Result;
use crate::store::layout::{BLOCK, Geometry};
use crate::store::log::journal::{self, Entry, JournalCursor};
use crate::store::log::journal_ring::{Ring, wrapped_place};

/// A record that continues the chain.
pub struct Record {
    /// Block offset inside the journal region.
    pub at: u64,
    pub blocks: u64,
    /// Blocks it adds to the ring's live part.
    pub added: u64,
    pub lsn: u64,
    pub crc: u32,
    pub entries: Vec<Entry>,
}

fn read_block(dev: &dyn BlockDevice, pba: u64) -> Result<AlignedBuf> {
    let mut b = AlignedBuf::blocks(1);
    dev.read_at(&mut b, pba * BLOCK)?;
    Ok(b)
}

/// The record that continues the chain at `cur`, or why the chain ends there (`Err`).
pub fn read_next(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    cur: &JournalCursor,
    ring: &Ring,
    circular: bool,
) -> Result<std::result::Result<Record, String>> {
    let jblocks = geo.journal_blocks();
    let (at, h) = match next_header(dev, geo, cur, circular)? {
        Next::Found(at, h) => (at, h),
        Next::Stop(why) => return Ok(Err(why)),
    };
    let blocks = h.len_blocks as u64;
    let Some((_, added)) = ring.place(cur.pos, blocks) else {
        return Ok(Err(format!(
            "record at journal block {at} would run into the head of the ring"
        )));
    };
    if at + blocks > jblocks {
        return Ok(Err(format!(
            "record at journal block {at} runs past the journal"
        )));
    }
    let pba = geo.journal_start() + at;
    let mut rec = AlignedBuf::blocks(blocks as usize);
    dev.read_at(&mut rec, pba * BLOCK)?;
    let Some((_, entries, crc)) = journal::decode(pba, &rec) else {
        return Ok(Err(format!("torn record (bad crc) lsn {}", h.lsn)));
    };
    Ok(Ok(Record {
        at,
        blocks,
        added,
        lsn: h.lsn,
        crc,
        entries,
    }))
}

/// Moves `cur` and `ring` past `r`.
pub fn advance(cur: &mut JournalCursor, ring: &mut Ring, r: &Record) {
    cur.pos = r.at + r.blocks;
    ring.used += r.added;
    cur.next_lsn += 1;
    cur.prev_crc = r.crc;
    cur.records += 1;
}

/// The highest LSN a Flushed entry of a record in the chain from `cur` names (0: none).
/// The records are only decoded, not checked against the maps or their data: a mark is
/// written only once what it names is on stable storage, so it is true wherever it stands
/// in the chain, even in a record whose own data did not land.
pub fn highest_mark(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    mut cur: JournalCursor,
    mut ring: Ring,
    circular: bool,
) -> Result<u64> {
    let mut mark = 0;
    while let Ok(r) = read_next(dev, geo, &cur, &ring, circular)? {
        mark = mark.max(mark_of(&r.entries));
        advance(&mut cur, &mut ring, &r);
    }
    Ok(mark)
}

/// The highest LSN a Flushed entry of `entries` names (0: none).
pub fn mark_of(entries: &[Entry]) -> u64 {
    (entries.iter())
        .filter_map(|e| match *e {
            Entry::Flushed { lsn } => Some(lsn),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The next record's place and header, or why the chain ends there.
enum Next {
    Found(u64, journal::Header),
    Stop(String),
}

/// Reads the header that continues the chain at `cur.pos` or, in a ring, at block 0 when
/// the record found there could not have fit before the region's end.
fn next_header(
    dev: &dyn BlockDevice,
    geo: &Geometry,
    cur: &JournalCursor,
    circular: bool,
) -> Result<Next> {
    let jblocks = geo.journal_blocks();
    let continues = |h: &journal::Header| h.lsn == cur.next_lsn && h.prev_crc == cur.prev_crc;
    let here = if cur.pos < jblocks {
        journal::decode_header(&read_block(dev, geo.journal_start() + cur.pos)?)
    } else {
        None
    };
    if let Some(h) = here.filter(continues) {
        return Ok(Next::Found(cur.pos, h));
    }
    if circular && cur.pos != 0 {
        let first = journal::decode_header(&read_block(dev, geo.journal_start())?);
        if let Some(h) = first
            .filter(|h| continues(h) && wrapped_place(jblocks, cur.pos, h.len_blocks as u64) == 0)
        {
            return Ok(Next::Found(0, h));
        }
    }
    Ok(Next::Stop(match here {
        _ if cur.pos >= jblocks => "end of the journal region".into(),
        None => format!("no record header at journal block {}", cur.pos),
        Some(h) if h.lsn < cur.next_lsn => format!(
            "end of the journal (block {} holds an older record, lsn {})",
            cur.pos, h.lsn
        ),
        Some(h) => format!(
            "record at journal block {} does not continue the chain (lsn {})",
            cur.pos, h.lsn
        ),
    }))
}
