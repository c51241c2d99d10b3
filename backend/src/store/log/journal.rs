//! Journal records: one per write batch (one metadata transaction), in a dedicated region.
//!
//! A record starts on a block boundary and spans `len_blocks` blocks:
//! magic `KJR1` (4), crc32c (4, over all `len_blocks * 4096` bytes with this field zeroed,
//! seeded with the record's block address), lsn (8), prev_crc (4, the crc of the previous
//! record, or the checkpoint's chain seed for the first one), len_blocks (4), entry count (4),
//! payload bytes (4), then the entries, then zero padding.
//!
//! The chain through `prev_crc` makes records left over from an earlier pass over the region,
//! or from a tail discarded by an earlier recovery, unacceptable even when their own crc
//! and lsn look right.

use crate::store::codec::{Get, Put, block_crc};
use crate::store::layout::BLOCK_SIZE;

pub const RECORD_MAGIC: &[u8; 4] = b"KJR1";
pub const RECORD_HEADER: usize = 32;

const TAG_MAP: u8 = 1;
const TAG_UNMAP: u8 = 2;
const TAG_MOVE: u8 = 3;
const TAG_SNAPSHOT: u8 = 4;
const TAG_DELETE_SNAPSHOT: u8 = 5;
const TAG_RELEASE: u8 = 6;
const TAG_FLUSHED: u8 = 7;
const TAG_STAGE_MAP: u8 = 8;
const TAG_STAGE_UNMAP: u8 = 9;
const TAG_ADOPT: u8 = 10;
/// A Move with the moved block's new data crc (containers with `CIPHERTEXT_CRC`, for blocks
/// sealed again at their new place: all of them without `VBA_TWEAK`, packed ones with it).
const TAG_MOVE_CRC: u8 = 11;

/// Longest snapshot name a journal entry (and a checkpoint) stores, in bytes.
pub const SNAPSHOT_NAME_MAX: usize = 31;

/// A snapshot name of at most [`SNAPSHOT_NAME_MAX`] bytes, stored inline so entries stay `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapName {
    len: u8,
    bytes: [u8; SNAPSHOT_NAME_MAX],
}

impl SnapName {
    /// `name` cut to [`SNAPSHOT_NAME_MAX`] bytes on a character boundary.
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(SNAPSHOT_NAME_MAX);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; SNAPSHOT_NAME_MAX];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self {
            len: end as u8,
            bytes,
        }
    }

    pub fn as_str(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.len as usize]).into_owned()
    }
}

/// One map change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `lba` now reads the new block `vba`, stored at `pba` with data crc `crc`.
    Map {
        lba: u64,
        vba: u64,
        pba: u64,
        crc: u32,
    },
    /// `count` blocks from `lba` read as zeroes.
    Unmap { lba: u64, count: u64 },
    /// The cleaner copied `vba` from `old_pba` to `new_pba`; with `crc`, its data crc there
    /// (a crc over ciphertext changes with the place), else the crc stays.
    Move {
        vba: u64,
        old_pba: u64,
        new_pba: u64,
        crc: Option<u32>,
    },
    /// The running point was frozen as snapshot `id` (the next id), named `name`, at
    /// `created` (seconds since the Unix epoch).
    Snapshot {
        id: u64,
        created: u64,
        name: SnapName,
    },
    /// Snapshot `id` was deleted: it is no longer listed, and the blocks only it held are
    /// given back by Release records that follow.
    DeleteSnapshot { id: u64 },
    /// `vba` is free: a deleted snapshot was its last holder (a no-op if it is gone already).
    Release { vba: u64 },
    /// Every record up to and including `lsn` was flushed (written after the flush returned).
    /// Changes no map: it lets recovery tell a torn tail (never flushed, may be dropped) from
    /// damage to acknowledged, flushed records (must never be dropped silently).
    Flushed { lsn: u64 },
    /// The import's staging tree (not the running point) maps `lba` to the new block `vba`,
    /// stored at `pba` with data crc `crc` (see `staging.rs`).
    StageMap {
        lba: u64,
        vba: u64,
        pba: u64,
        crc: u32,
    },
    /// `count` blocks from `lba` read as zeroes in the staging tree.
    StageUnmap { lba: u64, count: u64 },
    /// The running point takes the staging tree's blocks in `count` blocks from `lba` where
    /// it maps none (the block is shared, not copied).
    Adopt { lba: u64, count: u64 },
}

impl Entry {
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Entry::Map { .. } | Entry::StageMap { .. } => 1 + 8 + 8 + 8 + 4,
            Entry::Unmap { .. } | Entry::StageUnmap { .. } | Entry::Adopt { .. } => 1 + 8 + 8,
            Entry::Move { crc: None, .. } => 1 + 8 + 8 + 8,
            Entry::Move { crc: Some(_), .. } => 1 + 8 + 8 + 8 + 4,
            Entry::Snapshot { .. } => 1 + 8 + 8 + 1 + SNAPSHOT_NAME_MAX,
            Entry::DeleteSnapshot { .. } | Entry::Release { .. } | Entry::Flushed { .. } => 1 + 8,
        }
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub lsn: u64,
    pub prev_crc: u32,
    pub len_blocks: u32,
    pub count: u32,
    pub payload: u32,
}

/// Blocks a record with these entries takes.
pub fn record_blocks(entries: &[Entry]) -> usize {
    let bytes = RECORD_HEADER + entries.iter().map(Entry::encoded_len).sum::<usize>();
    bytes.div_ceil(BLOCK_SIZE)
}

/// Blocks a record takes at most with `maps` Map and `unmaps` Unmap entries, and a flush
/// mark that may ride along: what a batch's record needs, known before its blocks are taken.
pub fn batch_record_blocks(maps: usize, unmaps: usize) -> usize {
    let map = Entry::Map {
        lba: 0,
        vba: 0,
        pba: 0,
        crc: 0,
    };
    let unmap = Entry::Unmap { lba: 0, count: 0 };
    let mark = Entry::Flushed { lsn: 0 };
    let bytes = RECORD_HEADER
        + maps * map.encoded_len()
        + unmaps * unmap.encoded_len()
        + mark.encoded_len();
    bytes.div_ceil(BLOCK_SIZE)
}

/// Encodes a record for block `pba` into `out` (exactly `record_blocks(entries)` blocks).
/// Returns the record's crc, or `None` if `out` has the wrong size.
pub fn encode(pba: u64, lsn: u64, prev_crc: u32, entries: &[Entry], out: &mut [u8]) -> Option<u32> {
    let blocks = record_blocks(entries);
    if out.len() != blocks * BLOCK_SIZE {
        return None;
    }
    out.fill(0);
    let mut p = Put::at(out, RECORD_HEADER);
    for e in entries {
        match *e {
            Entry::Map { lba, vba, pba, crc } => p.u8(TAG_MAP).u64(lba).u64(vba).u64(pba).u32(crc),
            Entry::Unmap { lba, count } => p.u8(TAG_UNMAP).u64(lba).u64(count),
            Entry::Move {
                vba,
                old_pba,
                new_pba,
                crc: None,
            } => p.u8(TAG_MOVE).u64(vba).u64(old_pba).u64(new_pba),
            Entry::Move {
                vba,
                old_pba,
                new_pba,
                crc: Some(crc),
            } => p
                .u8(TAG_MOVE_CRC)
                .u64(vba)
                .u64(old_pba)
                .u64(new_pba)
                .u32(crc),
            Entry::Snapshot { id, created, name } => p
                .u8(TAG_SNAPSHOT)
                .u64(id)
                .u64(created)
                .u8(name.len)
                .bytes(&name.bytes),
            Entry::DeleteSnapshot { id } => p.u8(TAG_DELETE_SNAPSHOT).u64(id),
            Entry::Release { vba } => p.u8(TAG_RELEASE).u64(vba),
            Entry::Flushed { lsn } => p.u8(TAG_FLUSHED).u64(lsn),
            Entry::StageMap { lba, vba, pba, crc } => {
                p.u8(TAG_STAGE_MAP).u64(lba).u64(vba).u64(pba).u32(crc)
            }
            Entry::StageUnmap { lba, count } => p.u8(TAG_STAGE_UNMAP).u64(lba).u64(count),
            Entry::Adopt { lba, count } => p.u8(TAG_ADOPT).u64(lba).u64(count),
        };
    }
    if !p.ok() {
        return None;
    }
    let payload = p.pos() - RECORD_HEADER;
    let out = p.into_inner();
    let mut h = Put::new(out);
    h.bytes(RECORD_MAGIC)
        .u32(0)
        .u64(lsn)
        .u32(prev_crc)
        .u32(blocks as u32)
        .u32(entries.len() as u32)
        .u32(payload as u32);
    let out = h.into_inner();
    let crc = block_crc(pba, out);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(crc)
}

/// Reads the header in a record's first block; `None` if it is not a plausible header.
pub fn decode_header(first_block: &[u8]) -> Option<Header> {
    let mut g = Get::new(first_block);
    if g.bytes(4)? != RECORD_MAGIC {
        return None;
    }
    g.u32()?;
    let h = Header {
        lsn: g.u64()?,
        prev_crc: g.u32()?,
        len_blocks: g.u32()?,
        count: g.u32()?,
        payload: g.u32()?,
    };
    let fits = h.len_blocks >= 1
        && (RECORD_HEADER as u64 + h.payload as u64) <= h.len_blocks as u64 * BLOCK_SIZE as u64;
    fits.then_some(h)
}

/// Checks a whole record read from block `pba` and decodes its entries; `None` if torn.
pub fn decode(pba: u64, record: &[u8]) -> Option<(Header, Vec<Entry>, u32)> {
    let h = decode_header(record)?;
    if record.len() != h.len_blocks as usize * BLOCK_SIZE {
        return None;
    }
    let stored = u32::from_le_bytes(record.get(4..8)?.try_into().ok()?);
    let mut copy = record.to_vec();
    copy[4..8].fill(0);
    let crc = block_crc(pba, &copy);
    if crc != stored {
        return None;
    }
    let mut g = Get::at(record, RECORD_HEADER);
    let mut entries = Vec::with_capacity(h.count.min(1 << 20) as usize);
    for _ in 0..h.count {
        let e = match g.u8()? {
            TAG_MAP => Entry::Map {
                lba: g.u64()?,
                vba: g.u64()?,
                pba: g.u64()?,
                crc: g.u32()?,
            },
            TAG_UNMAP => Entry::Unmap {
                lba: g.u64()?,
                count: g.u64()?,
            },
            TAG_MOVE => Entry::Move {
                vba: g.u64()?,
                old_pba: g.u64()?,
                new_pba: g.u64()?,
                crc: None,
            },
            TAG_MOVE_CRC => Entry::Move {
                vba: g.u64()?,
                old_pba: g.u64()?,
                new_pba: g.u64()?,
                crc: Some(g.u32()?),
            },
            TAG_SNAPSHOT => {
                let (id, created) = (g.u64()?, g.u64()?);
                let len = g.u8()?;
                if len as usize > SNAPSHOT_NAME_MAX {
                    return None;
                }
                let mut bytes = [0u8; SNAPSHOT_NAME_MAX];
                bytes.copy_from_slice(g.bytes(SNAPSHOT_NAME_MAX)?);
                Entry::Snapshot {
                    id,
                    created,
                    name: SnapName { len, bytes },
                }
            }
            TAG_DELETE_SNAPSHOT => Entry::DeleteSnapshot { id: g.u64()? },
            TAG_RELEASE => Entry::Release { vba: g.u64()? },
            TAG_FLUSHED => Entry::Flushed { lsn: g.u64()? },
            TAG_STAGE_MAP => Entry::StageMap {
                lba: g.u64()?,
                vba: g.u64()?,
                pba: g.u64()?,
                crc: g.u32()?,
            },
            TAG_STAGE_UNMAP => Entry::StageUnmap {
                lba: g.u64()?,
                count: g.u64()?,
            },
            TAG_ADOPT => Entry::Adopt {
                lba: g.u64()?,
                count: g.u64()?,
            },
            _ => return None,
        };
        entries.push(e);
    }
    Some((h, entries, crc))
}

/// Where the next record goes and what it must chain to.
#[derive(Debug, Clone, Copy)]
pub struct JournalCursor {
    /// Block offset inside the journal region.
    pub pos: u64,
    pub next_lsn: u64,
    pub prev_crc: u32,
    /// Records written since the last checkpoint.
    pub records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::Unmap { lba: 10, count: 3 },
            Entry::Map {
                lba: 1,
                vba: 2,
                pba: 3,
                crc: 4,
            },
            Entry::Move {
                vba: 5,
                old_pba: 6,
                new_pba: 7,
                crc: None,
            },
            Entry::Move {
                vba: 8,
                old_pba: 9,
                new_pba: 10,
                crc: Some(11),
            },
            Entry::Snapshot {
                id: 3,
                created: 1_700_000_000,
                name: SnapName::new("nightly-ünïcode-name-that-is-too-long"),
            },
            Entry::DeleteSnapshot { id: 2 },
            Entry::Release { vba: 77 },
            Entry::Flushed { lsn: 8 },
            Entry::StageMap {
                lba: 9,
                vba: 10,
                pba: 11,
                crc: 12,
            },
            Entry::StageUnmap { lba: 13, count: 14 },
            Entry::Adopt { lba: 15, count: 16 },
        ]
    }

    #[test]
    fn snapshot_names_are_cut_on_a_character_boundary() {
        let n = SnapName::new("nightly-ünïcode-name-that-is-too-long");
        assert!(n.as_str().len() <= SNAPSHOT_NAME_MAX);
        assert!("nightly-ünïcode-name-that-is-too-long".starts_with(&n.as_str()));
        assert_eq!(SnapName::new("a").as_str(), "a");
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let mut b = vec![0u8; record_blocks(&e) * BLOCK_SIZE];
        let crc = encode(77, 9, 0xabc, &e, &mut b).unwrap();
        let (h, d, c) = decode(77, &b).unwrap();
        assert_eq!((h.lsn, h.prev_crc, d, c), (9, 0xabc, e, crc));
    }

    /// `n` Map entries of blocks 0..n.
    fn map_entries(n: u64) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::Map {
                lba: i,
                vba: i,
                pba: i,
                crc: 0,
            })
            .collect()
    }

    #[test]
    fn a_batch_record_bound_covers_its_record_and_a_mark() {
        for (maps, unmaps) in [(0, 1), (1, 0), (140, 0), (141, 3), (400, 7)] {
            let mut e = map_entries(maps as u64);
            e.extend((0..unmaps as u64).map(|i| Entry::Unmap { lba: i, count: 1 }));
            e.push(Entry::Flushed { lsn: 1 });
            assert_eq!(batch_record_blocks(maps, unmaps), record_blocks(&e));
        }
    }

    #[test]
    fn large_records_span_blocks() {
        let e = map_entries(400);
        assert_eq!(record_blocks(&e), 3);
        let mut b = vec![0u8; 3 * BLOCK_SIZE];
        encode(5, 1, 0, &e, &mut b).unwrap();
        assert_eq!(decode(5, &b).unwrap().1.len(), 400);
        // A torn tail (last block never written) is detected.
        b[2 * BLOCK_SIZE..].fill(0);
        assert!(decode(5, &b).is_none());
    }

    #[test]
    fn flipped_bits_and_misplaced_records_are_torn() {
        let e = sample();
        let mut b = vec![0u8; BLOCK_SIZE];
        encode(77, 9, 0, &e, &mut b).unwrap();
        assert!(decode(78, &b).is_none(), "read from the wrong block");
        for i in [0usize, 5, 9, 40, 100, 4095] {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(decode(77, &c).is_none(), "byte {i}");
        }
    }
}
