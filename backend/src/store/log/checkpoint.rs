//! The checkpoint root: everything needed to load the maps, written out of place at every
//! checkpoint and pointed at by the superblock. One block, or a run of contiguous blocks when
//! the snapshots do not fit in one.
//!
//! Layout: magic `KCK1` (4), crc32c (4, over all the root's blocks, seeded with the first
//! block's address, field zeroed), generation (8), lsn of the last record folded in (8),
//! journal chain seed (4), SUT crc32c (4), next_vba (8), seq (8), next_snapshot_id (8), running
//! root (8), VBA root (8), SUT first block (8), SUT blocks (4), snapshot count (4), root blocks
//! (4; 0 in containers from before multi-block roots, meaning 1), 4 zero bytes, then per
//! snapshot: id (8), seq (8), root (8), VBA watermark (8), created (8), name length (1),
//! name (31). A live import's staging tree (with `INCOMPAT_STAGING`) is one more record of the
//! same size, last, flagged in its name length byte: the view being staged (8), its cursor
//! (8), its root (8), then zeroes.

use crate::store::codec::{Get, Put, block_crc};
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK_SIZE;

pub const CHECKPOINT_MAGIC: &[u8; 4] = b"KCK1";
const HEADER: usize = 96;
const SNAP_BYTES: usize = 72;
const NAME_MAX: usize = 31;
/// Snapshots a container holds at most.
pub const MAX_SNAPSHOTS: usize = 1024;
/// Longest root: room for [`MAX_SNAPSHOTS`] and a staging tree.
pub const MAX_ROOT_BLOCKS: usize = (HEADER + (MAX_SNAPSHOTS + 1) * SNAP_BYTES).div_ceil(BLOCK_SIZE);

/// Snapshots a container with `seg_blocks`-block segments holds: [`MAX_SNAPSHOTS`], or fewer
/// when segments are too small for that long a root (the root lies inside one segment).
pub fn max_snapshots(seg_blocks: u64) -> usize {
    let room = (seg_blocks as usize * BLOCK_SIZE).saturating_sub(HEADER) / SNAP_BYTES;
    room.min(MAX_SNAPSHOTS)
}

/// Blocks a root with `snapshots` snapshots takes.
pub fn root_blocks(snapshots: usize) -> usize {
    (HEADER + snapshots * SNAP_BYTES)
        .div_ceil(BLOCK_SIZE)
        .max(1)
}

/// Blocks of the root whose first block is `first`, read from its header (before the crc is
/// checked: the caller reads that many and decodes them all).
pub fn root_blocks_in(first: &[u8]) -> usize {
    let n = first
        .get(88..92)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    n.clamp(1, MAX_ROOT_BLOCKS)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: u64,
    pub seq: u64,
    pub root: u64,
    pub vba_watermark: u64,
    pub created: u64,
    pub name: String,
    /// Deleted, its blocks still being given back (bit 7 of the name length byte).
    pub deleting: bool,
    /// The running point was reverted between the tree before it and it (bit 6).
    pub reverted_before: bool,
}

/// Bit of the name length byte that marks a snapshot being deleted.
const DELETING: u8 = 0x80;
/// Bit of the name length byte: a revert happened just before the snapshot was taken.
const REVERTED_BEFORE: u8 = 0x40;
/// Bit of the name length byte: the record is an import's staging tree, not a snapshot.
const STAGING: u8 = 0x20;
/// Bit of the root's flags: the running point was reverted since the newest snapshot.
const RUNNING_REVERTED: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRoot {
    pub generation: u64,
    pub lsn: u64,
    pub chain_seed: u32,
    pub next_vba: u64,
    pub seq: u64,
    pub next_snapshot_id: u64,
    pub running_root: u64,
    pub vba_root: u64,
    pub sut_pba: u64,
    pub sut_blocks: u32,
    pub sut_crc: u32,
    pub running_reverted: bool,
    pub snapshots: Vec<SnapshotRecord>,
    pub staging: Option<StagingRecord>,
}

/// A live import's staging tree: its root and how far the import got in staging its views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingRecord {
    pub root: u64,
    /// Views frozen so far (the index of the view being staged).
    pub view: u64,
    /// Every block below this LBA of that view is staged.
    pub cursor: u64,
}

/// Truncates a snapshot name to what the format stores, on a character boundary.
pub fn clamp_name(name: &str) -> String {
    let mut end = name.len().min(NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

impl CheckpointRoot {
    /// Encodes the root for block `pba` onwards: [`root_blocks`] blocks.
    pub fn encode(&self, pba: u64) -> Option<Vec<u8>> {
        if self.snapshots.len() > MAX_SNAPSHOTS {
            return None;
        }
        let records = self.snapshots.len() + usize::from(self.staging.is_some());
        let blocks = root_blocks(records);
        let mut b = vec![0u8; blocks * BLOCK_SIZE];
        let mut p = Put::new(&mut b);
        p.bytes(CHECKPOINT_MAGIC)
            .u32(0)
            .u64(self.generation)
            .u64(self.lsn)
            .u32(self.chain_seed)
            .u32(self.sut_crc)
            .u64(self.next_vba)
            .u64(self.seq)
            .u64(self.next_snapshot_id)
            .u64(self.running_root)
            .u64(self.vba_root)
            .u64(self.sut_pba)
            .u32(self.sut_blocks)
            .u32(records as u32)
            .u32(blocks as u32)
            .u32(if self.running_reverted {
                RUNNING_REVERTED
            } else {
                0
            });
        let mut p = Put::at(p.into_inner(), HEADER);
        for s in &self.snapshots {
            let name = clamp_name(&s.name);
            let mut padded = [0u8; NAME_MAX];
            padded[..name.len()].copy_from_slice(name.as_bytes());
            p.u64(s.id)
                .u64(s.seq)
                .u64(s.root)
                .u64(s.vba_watermark)
                .u64(s.created)
                .u8(name.len() as u8
                    | if s.deleting { DELETING } else { 0 }
                    | if s.reverted_before {
                        REVERTED_BEFORE
                    } else {
                        0
                    })
                .bytes(&padded);
        }
        if let Some(s) = &self.staging {
            p.u64(s.view)
                .u64(s.cursor)
                .u64(s.root)
                .u64(0)
                .u64(0)
                .u8(STAGING)
                .bytes(&[0u8; NAME_MAX]);
        }
        if !p.ok() {
            return None;
        }
        let crc = block_crc(pba, &b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        Some(b)
    }

    /// Decodes the root read from block `pba` onwards ([`root_blocks_in`] blocks).
    pub fn decode(pba: u64, b: &[u8]) -> Result<Self> {
        let bad = |d: &str| StoreError::corrupt("checkpoint", format!("block {pba}: {d}"));
        if b.len() < BLOCK_SIZE || &b[..4] != CHECKPOINT_MAGIC {
            return Err(bad("bad magic"));
        }
        if b.len() != root_blocks_in(b) * BLOCK_SIZE {
            return Err(bad("length does not match its header"));
        }
        let mut copy = b.to_vec();
        copy[4..8].fill(0);
        if block_crc(pba, &copy) != u32::from_le_bytes([b[4], b[5], b[6], b[7]]) {
            return Err(bad("checksum mismatch"));
        }
        let short = || bad("truncated");
        let mut g = Get::at(b, 8);
        let generation = g.u64().ok_or_else(short)?;
        let lsn = g.u64().ok_or_else(short)?;
        let chain_seed = g.u32().ok_or_else(short)?;
        let sut_crc = g.u32().ok_or_else(short)?;
        let next_vba = g.u64().ok_or_else(short)?;
        let seq = g.u64().ok_or_else(short)?;
        let next_snapshot_id = g.u64().ok_or_else(short)?;
        let running_root = g.u64().ok_or_else(short)?;
        let vba_root = g.u64().ok_or_else(short)?;
        let sut_pba = g.u64().ok_or_else(short)?;
        let sut_blocks = g.u32().ok_or_else(short)?;
        let n = g.u32().ok_or_else(short)? as usize;
        let _root_blocks = g.u32().ok_or_else(short)?;
        let flags = g.u32().ok_or_else(short)?;
        if n > MAX_SNAPSHOTS + 1 || HEADER + n * SNAP_BYTES > b.len() {
            return Err(bad("too many snapshots"));
        }
        let mut g = Get::at(b, HEADER);
        let mut snapshots = Vec::with_capacity(n);
        let mut staging = None;
        for _ in 0..n {
            let id = g.u64().ok_or_else(short)?;
            let sseq = g.u64().ok_or_else(short)?;
            let root = g.u64().ok_or_else(short)?;
            let vba_watermark = g.u64().ok_or_else(short)?;
            let created = g.u64().ok_or_else(short)?;
            let len_byte = g.u8().ok_or_else(short)?;
            if len_byte == STAGING {
                g.bytes(NAME_MAX).ok_or_else(short)?;
                if staging.is_some() {
                    return Err(bad("two staging trees"));
                }
                staging = Some(StagingRecord {
                    view: id,
                    cursor: sseq,
                    root,
                });
                continue;
            }
            let deleting = len_byte & DELETING != 0;
            let reverted_before = len_byte & REVERTED_BEFORE != 0;
            let len = ((len_byte & !(DELETING | REVERTED_BEFORE)) as usize).min(NAME_MAX);
            let raw = g.bytes(NAME_MAX).ok_or_else(short)?;
            let name = String::from_utf8_lossy(&raw[..len]).into_owned();
            snapshots.push(SnapshotRecord {
                id,
                seq: sseq,
                root,
                vba_watermark,
                created,
                name,
                deleting,
                reverted_before,
            });
        }
        Ok(Self {
            generation,
            lsn,
            chain_seed,
            next_vba,
            seq,
            next_snapshot_id,
            running_root,
            vba_root,
            sut_pba,
            sut_blocks,
            sut_crc,
            running_reverted: flags & RUNNING_REVERTED != 0,
            snapshots,
            staging,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let c = CheckpointRoot {
            generation: 3,
            lsn: 99,
            chain_seed: 7,
            next_vba: 1000,
            seq: 55,
            next_snapshot_id: 3,
            running_root: 400,
            vba_root: 401,
            sut_pba: 402,
            sut_blocks: 2,
            sut_crc: 11,
            running_reverted: true,
            snapshots: vec![
                SnapshotRecord {
                    id: 2,
                    seq: 40,
                    root: 300,
                    vba_watermark: 800,
                    created: 1_700_000_000,
                    name: "before-upgrade".into(),
                    deleting: false,
                    reverted_before: true,
                },
                SnapshotRecord {
                    id: 3,
                    seq: 41,
                    root: 301,
                    vba_watermark: 900,
                    created: 1_700_000_100,
                    name: "x".repeat(NAME_MAX),
                    deleting: true,
                    reverted_before: false,
                },
            ],
            staging: Some(StagingRecord {
                root: 302,
                view: 2,
                cursor: 4096,
            }),
        };
        let b = c.encode(500).unwrap();
        assert_eq!(b.len(), BLOCK_SIZE);
        assert_eq!(CheckpointRoot::decode(500, &b).unwrap(), c);
        assert!(CheckpointRoot::decode(501, &b).is_err());
        let mut f = b.clone();
        f[200] ^= 1;
        assert!(CheckpointRoot::decode(500, &f).is_err());
        // A root from before multi-block roots says 0 blocks: one.
        let mut old = b;
        old[88..92].fill(0);
        old[4..8].fill(0);
        let crc = block_crc(500, &old);
        old[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(CheckpointRoot::decode(500, &old).unwrap(), c);
        assert_eq!(clamp_name("é".repeat(20).as_str()).len(), 30);
    }

    #[test]
    fn a_thousand_snapshots_span_several_blocks() {
        let snap = |i: u64| SnapshotRecord {
            id: i + 1,
            seq: i * 2,
            root: 10_000 + i,
            vba_watermark: i * 100,
            created: 1_700_000_000 + i,
            name: format!("hourly-{i}"),
            deleting: i.is_multiple_of(3),
            reverted_before: i.is_multiple_of(5),
        };
        let c = CheckpointRoot {
            generation: 9,
            lsn: 1,
            chain_seed: 2,
            next_vba: 3,
            seq: 4,
            next_snapshot_id: 1025,
            running_root: 5,
            vba_root: 6,
            sut_pba: 7,
            sut_blocks: 1,
            sut_crc: 8,
            running_reverted: false,
            snapshots: (0..MAX_SNAPSHOTS as u64).map(snap).collect(),
            staging: None,
        };
        let b = c.encode(900).unwrap();
        assert_eq!(b.len(), MAX_ROOT_BLOCKS * BLOCK_SIZE);
        assert_eq!(root_blocks_in(&b), MAX_ROOT_BLOCKS);
        assert_eq!(CheckpointRoot::decode(900, &b).unwrap(), c);
        let mut torn = b.clone();
        torn[BLOCK_SIZE * 5 + 3] ^= 1;
        assert!(
            CheckpointRoot::decode(900, &torn).is_err(),
            "every block is checksummed"
        );
        assert!(
            CheckpointRoot::decode(900, &b[..BLOCK_SIZE]).is_err(),
            "short"
        );
        let mut more = c;
        more.snapshots.push(snap(5000));
        assert!(more.encode(900).is_none());
    }
}
