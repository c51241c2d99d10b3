//! The changed blocks between two LBA trees (two snapshots, or a snapshot and the running
//! point), computed from the trees themselves: the basis of incremental backup.
//!
//! Both trees are walked together as two sorted streams of entries. When both streams are
//! about to enter the same node (same id in the arena: copy-on-write never changes a node a
//! snapshot can reach), the subtree is identical in both and is skipped whole, so the cost
//! grows with the changed paths, not with the disk size. Otherwise the taller of the two
//! nodes is opened (the shorter one may be shared with a descendant of the taller), leaves
//! are opened into entries, and entries are merged by key.
//!
//! Invariant of the walk: everything consumed from either stream has a smaller key than
//! anything not yet consumed from either stream, so a subtree that ends before the other
//! stream's next key is wholly absent from the other tree.
//!
//! A block counts as changed when its VBA differs: VBAs are never reused, so an equal VBA is
//! equal data, and a rewrite with the same bytes is reported (the diff is exact about the
//! trees, conservative about contents).

use super::Store;
use super::btree::{Body, Forest, NodeId};
use super::buf::AlignedBuf;
use super::codec::block_crc;
use super::compress::{self, block_of, place};
use super::error::{Result, StoreError};
use super::layout::BLOCK;
use super::maps::{Vba, VbaEntry};
use super::pins::PinGuard;
use serde::{Deserialize, Serialize};

/// The reserved name of the running point (what the guest sees now).
pub const RUNNING: &str = "@running";
/// The reserved name of the empty disk: a diff from it lists every mapped block (a full backup).
pub const EMPTY: &str = "@empty";

/// One side of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeRef {
    Empty,
    Running,
    Snapshot(u64),
}

/// One block that differs: `vba` is its data in the newer tree, `None` when it reads as
/// zeroes there (unmapped, discarded or write-zeroed) but was mapped in the older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedBlock {
    pub lba: u64,
    pub vba: Option<u64>,
}

/// What a diff found, block by block in LBA order, with the walk's cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeDiff {
    pub blocks: Vec<ChangedBlock>,
    /// Nodes opened (a leaf opened into its entries counts once).
    pub nodes_opened: u64,
    /// Subtrees skipped because both trees share them.
    pub shared_skipped: u64,
}

/// Whether an extent carries new data or reads as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    Data,
    Zero,
}

/// A run of changed blocks, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
}

/// A diff as `keel diff` and the control API show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    pub from: String,
    pub to: String,
    pub disk_size: u64,
    pub block_size: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub nodes_opened: u64,
    pub shared_skipped: u64,
    pub extents: Vec<Extent>,
}

impl TreeDiff {
    /// Adjacent blocks of the same kind merged into extents.
    pub fn extents(&self) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        for b in &self.blocks {
            let kind = if b.vba.is_some() {
                ExtentKind::Data
            } else {
                ExtentKind::Zero
            };
            let offset = b.lba * BLOCK;
            match out.last_mut() {
                Some(e) if e.kind == kind && e.offset + e.length == offset => e.length += BLOCK,
                _ => out.push(Extent {
                    offset,
                    length: BLOCK,
                    kind,
                }),
            }
        }
        out
    }

    /// The report for `keel diff`, naming the two sides as the caller did.
    pub fn report(&self, from: &str, to: &str, disk_size: u64) -> DiffReport {
        let data = self.blocks.iter().filter(|b| b.vba.is_some()).count() as u64;
        DiffReport {
            from: from.to_string(),
            to: to.to_string(),
            disk_size,
            block_size: BLOCK,
            data_bytes: data * BLOCK,
            zero_bytes: (self.blocks.len() as u64 - data) * BLOCK,
            nodes_opened: self.nodes_opened,
            shared_skipped: self.shared_skipped,
            extents: self.extents(),
        }
    }
}

/// The next unconsumed piece of one tree's entry stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Node(NodeId),
    Entry(u64, u64),
}

/// One tree's stream: a stack whose top is the next item.
struct Cursor<'a> {
    f: &'a Forest<Vba>,
    stack: Vec<Item>,
}

impl<'a> Cursor<'a> {
    fn new(f: &'a Forest<Vba>, root: Option<NodeId>) -> Self {
        Self {
            f,
            stack: root.map(Item::Node).into_iter().collect(),
        }
    }

    fn peek(&self) -> Option<Item> {
        self.stack.last().copied()
    }

    /// Replaces the node on top by its children (or its entries, for a leaf).
    fn open(&mut self, opened: &mut u64) {
        let Some(Item::Node(id)) = self.stack.pop() else {
            return;
        };
        *opened += 1;
        match &self.f.node(id).body {
            Body::Leaf { entries } => self
                .stack
                .extend(entries.iter().rev().map(|(k, v)| Item::Entry(*k, v.0))),
            Body::Internal { children, .. } => self
                .stack
                .extend(children.iter().rev().map(|c| Item::Node(*c))),
        }
    }

    /// Smallest and largest key under `item`; `None` for an empty subtree.
    fn bounds(&self, item: Item) -> Option<(u64, u64)> {
        match item {
            Item::Entry(k, _) => Some((k, k)),
            Item::Node(id) => Some((self.edge(id, true)?, self.edge(id, false)?)),
        }
    }

    fn edge(&self, mut id: NodeId, first: bool) -> Option<u64> {
        loop {
            match &self.f.node(id).body {
                Body::Leaf { entries } => {
                    return if first {
                        entries.first()
                    } else {
                        entries.last()
                    }
                    .map(|e| e.0);
                }
                Body::Internal { children, .. } => {
                    id = *if first {
                        children.first()
                    } else {
                        children.last()
                    }?;
                }
            }
        }
    }

    fn height(&self, mut id: NodeId) -> usize {
        let mut h = 0;
        while let Body::Internal { children, .. } = &self.f.node(id).body {
            match children.first() {
                Some(c) => id = *c,
                None => break,
            }
            h += 1;
        }
        h
    }

    /// Consumes the top item whole, calling `f` for each of its entries in key order.
    fn consume(&mut self, f: &mut dyn FnMut(u64, u64)) {
        match self.stack.pop() {
            Some(Item::Entry(k, v)) => f(k, v),
            Some(Item::Node(id)) => self.f.range(id, 0, u64::MAX, &mut |k, v| f(k, v.0)),
            None => {}
        }
    }
}

/// The blocks whose mapping differs between tree `from` and tree `to` (`None`: empty tree).
pub fn diff_trees(f: &Forest<Vba>, from: Option<NodeId>, to: Option<NodeId>) -> TreeDiff {
    let mut a = Cursor::new(f, from);
    let mut b = Cursor::new(f, to);
    let mut d = TreeDiff::default();
    let out = &mut d.blocks;
    let gone = |out: &mut Vec<ChangedBlock>, lba: u64| out.push(ChangedBlock { lba, vba: None });
    let new = |out: &mut Vec<ChangedBlock>, lba: u64, vba: u64| {
        out.push(ChangedBlock {
            lba,
            vba: Some(vba),
        })
    };
    loop {
        let (ia, ib) = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => {
                a.consume(&mut |k, _| gone(out, k));
                continue;
            }
            (None, Some(_)) => {
                b.consume(&mut |k, v| new(out, k, v));
                continue;
            }
            (Some(x), Some(y)) => (x, y),
        };
        if let (Item::Node(x), Item::Node(y)) = (ia, ib)
            && x == y
        {
            a.stack.pop();
            b.stack.pop();
            d.shared_skipped += 1;
            continue;
        }
        let Some((amin, amax)) = a.bounds(ia) else {
            a.stack.pop();
            continue;
        };
        let Some((bmin, bmax)) = b.bounds(ib) else {
            b.stack.pop();
            continue;
        };
        if amax < bmin {
            a.consume(&mut |k, _| gone(out, k));
            continue;
        }
        if bmax < amin {
            b.consume(&mut |k, v| new(out, k, v));
            continue;
        }
        match (ia, ib) {
            (Item::Entry(_, va), Item::Entry(kb, vb)) => {
                // Overlapping entries have the same key.
                a.stack.pop();
                b.stack.pop();
                if va != vb {
                    new(out, kb, vb);
                }
            }
            (Item::Node(_), Item::Entry(..)) => a.open(&mut d.nodes_opened),
            (Item::Entry(..), Item::Node(_)) => b.open(&mut d.nodes_opened),
            (Item::Node(x), Item::Node(y)) => {
                let (hx, hy) = (a.height(x), b.height(y));
                if hx >= hy {
                    a.open(&mut d.nodes_opened);
                }
                if hy >= hx {
                    b.open(&mut d.nodes_opened);
                }
            }
        }
    }
    d
}

impl Store {
    /// Resolves a diff side: [`RUNNING`], [`EMPTY`], a snapshot name, or a snapshot id.
    pub fn tree_ref(&self, name: &str) -> Result<TreeRef> {
        match name {
            RUNNING => return Ok(TreeRef::Running),
            EMPTY => return Ok(TreeRef::Empty),
            _ => {}
        }
        let st = self.read_lock(&self.state);
        let snaps = &st.maps.snapshots;
        snaps
            .iter()
            .find(|s| s.name == name)
            .or_else(|| {
                name.parse::<u64>()
                    .ok()
                    .and_then(|id| snaps.iter().find(|s| s.id == id))
            })
            .map(|s| TreeRef::Snapshot(s.id))
            .ok_or_else(|| StoreError::Invalid(format!("no snapshot {name:?}")))
    }

    /// The blocks that differ between `from` and `to`, at one instant (under the map lock,
    /// which the walk holds only for as long as the changed paths take).
    pub fn diff(&self, from: TreeRef, to: TreeRef) -> Result<TreeDiff> {
        let st = self.read_lock(&self.state);
        let maps = &st.maps;
        let root = |t: TreeRef| -> Result<Option<NodeId>> {
            match t {
                TreeRef::Empty => Ok(None),
                TreeRef::Running => Ok(Some(maps.running)),
                TreeRef::Snapshot(id) => maps
                    .snapshots
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| Some(s.root))
                    .ok_or_else(|| StoreError::Invalid(format!("no snapshot {id}"))),
            }
        };
        Ok(diff_trees(&maps.lba, root(from)?, root(to)?))
    }

    /// Reads the data of blocks `vbas` (one block each, in order) into `out`, checking every
    /// block against its checksum. A VBA no tree holds any more (its snapshot was deleted, or
    /// the running point overwrote it since the diff) is an error: the caller's view is stale.
    pub fn read_vbas(&self, vbas: &[u64], out: &mut [u8]) -> Result<()> {
        if out.len() as u64 != vbas.len() as u64 * BLOCK {
            return Err(StoreError::Invalid(format!(
                "{} bytes of buffer for {} blocks",
                out.len(),
                vbas.len()
            )));
        }
        // The segments are pinned at lookup: a block the cleaner moves is not reused before
        // it is read.
        let mut pins = PinGuard::new(&self.pins);
        let entries = {
            let st = self.read_lock(&self.state);
            vbas.iter()
                .map(|v| {
                    let e = st.maps.vba.get(st.maps.vba_root, *v);
                    if let Some(e) = e {
                        pins.pin(self.geo.segment_of(block_of(e.pba)));
                    }
                    e.ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "block VBA {v} is no longer held by any tree: the disk changed \
                             since the diff (export from a snapshot instead)"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        self.unwritten
            .wait_for(entries.iter().map(|e| (block_of(e.pba), 1)));
        self.ensure_ok()?;
        let mut i = 0;
        while i < entries.len() {
            // Runs of raw blocks are read together; a packed block alone.
            let raw = |e: &VbaEntry| place::slot_of(e.pba).is_none();
            let mut n = 1;
            while raw(&entries[i])
                && i + n < entries.len()
                && n < 256
                && raw(&entries[i + n])
                && entries[i + n].pba == entries[i].pba + n as u64
            {
                n += 1;
            }
            let mut ab = AlignedBuf::scratch(n);
            self.dev
                .read_at(&mut ab, block_of(entries[i].pba) * BLOCK)?;
            for j in 0..n {
                let block = ab.block(j);
                let stored = compress::stored_bytes(block, entries[i + j].pba);
                if block_crc(vbas[i + j], stored) != entries[i + j].crc {
                    return Err(StoreError::corrupt(
                        "data block",
                        format!(
                            "VBA {} at physical block {} fails its checksum",
                            vbas[i + j],
                            block_of(entries[i + j].pba)
                        ),
                    ));
                }
                let at = (i + j) * BLOCK as usize;
                compress::expand(
                    self.codec,
                    block,
                    entries[i + j].pba,
                    &mut out[at..at + BLOCK as usize],
                )?;
            }
            i += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
