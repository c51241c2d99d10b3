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

use crate::store::map::btree::{Body, Forest, NodeId};
use crate::store::map::maps::Vba;

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
