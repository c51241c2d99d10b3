//! B+tree nodes in memory and their 4 KiB on-disk form.
//!
//! On disk a node is: magic `KND1` (4), crc32c (4, over the block with this field zeroed and
//! seeded with the node's own block address), kind (1: 0 leaf, 1 internal), tree tag (1),
//! count (2), seq (8), reserved (12) — 32 header bytes — then `count` keys (u64), then
//! `count` values (leaf, `V::SIZE` bytes each) or child block addresses (internal, u64).

use crate::store::codec::{Get, Put, block_crc};
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK_SIZE;

pub const NODE_MAGIC: &[u8; 4] = b"KND1";
pub const NODE_HEADER: usize = 32;
/// Children per internal node.
pub const INTERNAL_CAP: usize = (BLOCK_SIZE - NODE_HEADER) / 16;

/// Index of a node in a [`super::Forest`]'s arena.
pub type NodeId = u32;

/// A fixed-size value stored in tree leaves.
pub trait TreeValue: Copy + Eq + std::fmt::Debug + Send + Sync + 'static {
    const SIZE: usize;
    /// Tag stored in each node so a node of one tree is never read as the other.
    const TREE_TAG: u8;
    fn encode(&self, out: &mut Put<'_>);
    fn decode(g: &mut Get<'_>) -> Option<Self>;
}

/// Entries per leaf for value type `V`.
pub const fn leaf_cap<V: TreeValue>() -> usize {
    (BLOCK_SIZE - NODE_HEADER) / (8 + V::SIZE)
}

#[derive(Debug, Clone)]
pub enum Body<V> {
    /// `(key, value)` pairs sorted by key: a lookup's key and value share a cache line.
    Leaf { entries: Vec<(u64, V)> },
    /// `keys[i]` (i > 0) is the smallest key child `i` may hold; `keys[0]` is unused for routing.
    Internal {
        keys: Vec<u64>,
        children: Vec<NodeId>,
    },
}

#[derive(Debug, Clone)]
pub struct Node<V> {
    /// Sequence number of the operation that last wrote this node.
    pub seq: u64,
    pub body: Body<V>,
    /// Where the current contents are on disk; `None` while dirty.
    pub disk: Option<u64>,
}

impl<V: TreeValue> Node<V> {
    pub fn len(&self) -> usize {
        match &self.body {
            Body::Leaf { entries } => entries.len(),
            Body::Internal { keys, .. } => keys.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn first_key(&self) -> Option<u64> {
        match &self.body {
            Body::Leaf { entries } => entries.first().map(|e| e.0),
            Body::Internal { keys, .. } => keys.first().copied(),
        }
    }

    /// Encodes the node for block `pba`; `child_pba` gives each child's block address.
    pub fn encode(&self, pba: u64, child_pba: &dyn Fn(NodeId) -> u64, out: &mut [u8]) -> bool {
        out.fill(0);
        let (kind, count) = match &self.body {
            Body::Leaf { entries } => (0u8, entries.len()),
            Body::Internal { keys, .. } => (1u8, keys.len()),
        };
        let mut p = Put::new(out);
        p.bytes(NODE_MAGIC)
            .u32(0)
            .u8(kind)
            .u8(V::TREE_TAG)
            .u16(count as u16)
            .u64(self.seq);
        let mut p = Put::at(p_into(p), NODE_HEADER);
        match &self.body {
            Body::Leaf { entries } => {
                entries.iter().for_each(|(k, _)| {
                    p.u64(*k);
                });
                entries.iter().for_each(|(_, v)| v.encode(&mut p));
            }
            Body::Internal { keys, children } => {
                keys.iter().for_each(|k| {
                    p.u64(*k);
                });
                children.iter().for_each(|c| {
                    p.u64(child_pba(*c));
                });
            }
        }
        if !p.ok() {
            return false;
        }
        let out = p_into(p);
        let crc = block_crc(pba, out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        true
    }
}

fn p_into<'a>(p: Put<'a>) -> &'a mut [u8] {
    p.into_inner()
}

/// A node as read from disk: children are still block addresses.
pub struct DiskNode<V> {
    pub seq: u64,
    pub keys: Vec<u64>,
    pub leaf_vals: Option<Vec<V>>,
    pub child_pbas: Vec<u64>,
}

/// Decodes and verifies the node stored at `pba`.
pub fn decode<V: TreeValue>(pba: u64, b: &[u8]) -> Result<DiskNode<V>> {
    let bad = |d: String| StoreError::corrupt("tree node", format!("block {pba}: {d}"));
    if b.len() != BLOCK_SIZE || &b[..4] != NODE_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let stored = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let mut copy = [0u8; BLOCK_SIZE];
    copy.copy_from_slice(b);
    copy[4..8].fill(0);
    if block_crc(pba, &copy) != stored {
        return Err(bad("checksum mismatch".into()));
    }
    let mut g = Get::at(b, 8);
    let short = || bad("truncated".into());
    let kind = g.u8().ok_or_else(short)?;
    let tag = g.u8().ok_or_else(short)?;
    let count = g.u16().ok_or_else(short)? as usize;
    let seq = g.u64().ok_or_else(short)?;
    if tag != V::TREE_TAG {
        return Err(bad(format!(
            "belongs to tree {tag}, expected {}",
            V::TREE_TAG
        )));
    }
    let mut g = Get::at(b, NODE_HEADER);
    let cap = if kind == 0 {
        leaf_cap::<V>()
    } else {
        INTERNAL_CAP
    };
    if count > cap || kind > 1 {
        return Err(bad(format!("kind {kind} with {count} entries")));
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(g.u64().ok_or_else(short)?);
    }
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad("keys out of order".into()));
    }
    if kind == 0 {
        let mut vals = Vec::with_capacity(count);
        for _ in 0..count {
            vals.push(V::decode(&mut g).ok_or_else(short)?);
        }
        Ok(DiskNode {
            seq,
            keys,
            leaf_vals: Some(vals),
            child_pbas: Vec::new(),
        })
    } else {
        if count == 0 {
            return Err(bad("empty internal node".into()));
        }
        let mut child_pbas = Vec::with_capacity(count);
        for _ in 0..count {
            child_pbas.push(g.u64().ok_or_else(short)?);
        }
        Ok(DiskNode {
            seq,
            keys,
            leaf_vals: None,
            child_pbas,
        })
    }
}
