//! The checkpoint root block: everything needed to load the maps, written out of place at
//! every checkpoint and pointed at by the superblock.
//!
//! Layout (4 KiB): magic `KCK1` (4), crc32c (4, seeded with the block address, field zeroed),
//! generation (8), lsn of the last record folded in (8), journal chain seed (4), SUT crc32c (4),
//! next_vba (8), seq (8), next_snapshot_id (8), running root (8), VBA root (8), SUT first
//! block (8), SUT blocks (4), snapshot count (4), then per snapshot: id (8), seq (8),
//! root (8), VBA watermark (8), created (8), name length (1), name (31).

use super::codec::{Get, Put, block_crc};
use super::error::{Result, StoreError};
use super::layout::BLOCK_SIZE;

pub const CHECKPOINT_MAGIC: &[u8; 4] = b"KCK1";
const HEADER: usize = 96;
const SNAP_BYTES: usize = 72;
const NAME_MAX: usize = 31;
/// Snapshots one checkpoint block holds.
pub const MAX_SNAPSHOTS: usize = (BLOCK_SIZE - HEADER) / SNAP_BYTES;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: u64,
    pub seq: u64,
    pub root: u64,
    pub vba_watermark: u64,
    pub created: u64,
    pub name: String,
}

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
    pub snapshots: Vec<SnapshotRecord>,
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
    pub fn encode(&self, pba: u64) -> Option<[u8; BLOCK_SIZE]> {
        if self.snapshots.len() > MAX_SNAPSHOTS {
            return None;
        }
        let mut b = [0u8; BLOCK_SIZE];
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
            .u32(self.snapshots.len() as u32);
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
                .u8(name.len() as u8)
                .bytes(&padded);
        }
        if !p.ok() {
            return None;
        }
        let crc = block_crc(pba, &b);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        Some(b)
    }

    pub fn decode(pba: u64, b: &[u8]) -> Result<Self> {
        let bad = |d: &str| StoreError::corrupt("checkpoint", format!("block {pba}: {d}"));
        if b.len() != BLOCK_SIZE || &b[..4] != CHECKPOINT_MAGIC {
            return Err(bad("bad magic"));
        }
        let mut copy = [0u8; BLOCK_SIZE];
        copy.copy_from_slice(b);
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
        if n > MAX_SNAPSHOTS {
            return Err(bad("too many snapshots"));
        }
        let mut g = Get::at(b, HEADER);
        let mut snapshots = Vec::with_capacity(n);
        for _ in 0..n {
            let id = g.u64().ok_or_else(short)?;
            let sseq = g.u64().ok_or_else(short)?;
            let root = g.u64().ok_or_else(short)?;
            let vba_watermark = g.u64().ok_or_else(short)?;
            let created = g.u64().ok_or_else(short)?;
            let len = (g.u8().ok_or_else(short)? as usize).min(NAME_MAX);
            let raw = g.bytes(NAME_MAX).ok_or_else(short)?;
            let name = String::from_utf8_lossy(&raw[..len]).into_owned();
            snapshots.push(SnapshotRecord {
                id,
                seq: sseq,
                root,
                vba_watermark,
                created,
                name,
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
            snapshots,
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
            snapshots: vec![SnapshotRecord {
                id: 2,
                seq: 40,
                root: 300,
                vba_watermark: 800,
                created: 1_700_000_000,
                name: "before-upgrade".into(),
            }],
        };
        let b = c.encode(500).unwrap();
        assert_eq!(CheckpointRoot::decode(500, &b).unwrap(), c);
        assert!(CheckpointRoot::decode(501, &b).is_err());
        let mut f = b;
        f[200] ^= 1;
        assert!(CheckpointRoot::decode(500, &f).is_err());
        assert_eq!(clamp_name("é".repeat(20).as_str()).len(), 30);
    }
}
