//! Verification of the LBA trees, oldest snapshot first and the running point last, each
//! child tree against the nodes its parents already verified.
//!
//! A node is verified once, the first time a tree reaches it: key order and fill, separators
//! inside the node's range, children of one height, every VBA present in the VBA map. What
//! that leaves is a [`Summary`] of the subtree (key range, height, newest sequence number,
//! newest VBA). When a later tree reaches the same node, only the summary is checked against
//! the place it has there: inside the parent's key range, at the right height, no newer than
//! the tree's sequence number, no VBA allocated after the tree was frozen. So shared nodes
//! cost O(1) per extra tree, and a node that does not fit where a tree puts it is reported
//! under that tree's name. The rules a node keeps on its own are the B+tree's
//! ([`shape_problems`]), the same the forest's own verifier applies.

use crate::store::map::btree::{Body, Forest, NodeId, child_range, children_fit, shape_problems};
use crate::store::map::maps::{Vba, VbaEntry};
use std::collections::{HashMap, HashSet};

/// What a verified subtree holds.
#[derive(Debug, Clone, Copy)]
struct Summary {
    /// Smallest and largest key; `None` for an empty leaf.
    keys: Option<(u64, u64)>,
    /// 0 for a leaf.
    height: usize,
    /// Newest sequence number of any node in it.
    max_seq: u64,
    /// Newest VBA any entry maps to.
    max_vba: Option<u64>,
    entries: u64,
}

/// What one tree may hold.
pub struct Limits {
    /// How problems name the tree: "running point", "snapshot 3 (nightly)".
    pub name: String,
    /// No node may be newer (a snapshot's freeze point).
    pub max_seq: u64,
    /// Every VBA must be below this (the VBA watermark at the freeze).
    pub vba_limit: u64,
}

/// Walks every tree of one forest; see the module doc.
pub struct TreeChecker<'a> {
    lba: &'a Forest<Vba>,
    vba: &'a Forest<VbaEntry>,
    vba_root: NodeId,
    capacity_blocks: u64,
    verified: HashMap<NodeId, Summary>,
    /// Every VBA some tree maps to.
    pub referenced: HashSet<u64>,
    pub problems: Vec<String>,
    /// Nodes verified in full (each distinct reachable node once).
    pub walked: u64,
    /// Times a tree reached a node verified already and checked only its summary.
    pub skipped: u64,
}

fn at(disk: Option<u64>, depth: usize) -> String {
    match disk {
        Some(p) => format!("node at block {p} (depth {depth})"),
        None => format!("unwritten node (depth {depth})"),
    }
}

impl<'a> TreeChecker<'a> {
    pub fn new(
        lba: &'a Forest<Vba>,
        vba: &'a Forest<VbaEntry>,
        vba_root: NodeId,
        capacity_blocks: u64,
    ) -> Self {
        Self {
            lba,
            vba,
            vba_root,
            capacity_blocks,
            verified: HashMap::new(),
            referenced: HashSet::new(),
            problems: Vec::new(),
            walked: 0,
            skipped: 0,
        }
    }

    /// Verifies the tree at `root`; returns its number of entries.
    pub fn check_tree(&mut self, root: NodeId, lim: &Limits) -> u64 {
        self.node(root, 0, u64::MAX, 0, None, lim).entries
    }

    /// Verifies (or, if verified already, fits) node `id` placed at key range `[lo, hi)` and
    /// `depth`; `height` is the height its siblings have, if known.
    fn node(
        &mut self,
        id: NodeId,
        lo: u64,
        hi: u64,
        depth: usize,
        height: Option<usize>,
        lim: &Limits,
    ) -> Summary {
        let s = match self.verified.get(&id) {
            Some(s) => {
                self.skipped += 1;
                let s = *s;
                self.fit_shared(id, &s, lo, hi, depth, lim);
                s
            }
            None => {
                let s = self.verify(id, lo, hi, depth, lim);
                self.verified.insert(id, s);
                s
            }
        };
        if let Some(h) = height
            && h != s.height
        {
            self.problems.push(format!(
                "{}: {} is {} levels above the leaves, its siblings {h}",
                lim.name,
                at(self.lba.node(id).disk, depth),
                s.height
            ));
        }
        s
    }

    /// Checks that a subtree verified as part of an earlier tree fits the place this tree
    /// gives it. Problems inside it were reported when it was verified; these are about the
    /// place.
    fn fit_shared(
        &mut self,
        id: NodeId,
        s: &Summary,
        lo: u64,
        hi: u64,
        depth: usize,
        lim: &Limits,
    ) {
        let where_ = format!("{}: {}", lim.name, at(self.lba.node(id).disk, depth));
        if let Some((min, max)) = s.keys
            && (min < lo || max >= hi)
        {
            self.problems.push(format!(
                "{where_} holds keys {min}..={max} outside its parent's range [{lo}, {hi})"
            ));
        }
        if s.max_seq > lim.max_seq {
            self.problems.push(format!(
                "{where_} holds sequence number {}, newer than the tree's {}",
                s.max_seq, lim.max_seq
            ));
        }
        if let Some(v) = s.max_vba
            && v >= lim.vba_limit
        {
            self.problems.push(format!(
                "{where_} maps VBA {v}, allocated after the tree was frozen (its first later VBA is {})",
                lim.vba_limit
            ));
        }
    }

    /// The full check of a node not seen before, children first.
    fn verify(&mut self, id: NodeId, lo: u64, hi: u64, depth: usize, lim: &Limits) -> Summary {
        self.walked += 1;
        let lba = self.lba;
        let n = lba.node(id);
        let here = || format!("{}: {}", lim.name, at(n.disk, depth));
        let mut s = Summary {
            keys: None,
            height: 0,
            max_seq: n.seq,
            max_vba: None,
            entries: 0,
        };
        if n.seq > lim.max_seq {
            self.problems.push(format!(
                "{} has sequence number {}, newer than the tree's {}",
                here(),
                n.seq,
                lim.max_seq
            ));
        }
        for p in shape_problems(&n.body, lo, hi) {
            self.problems.push(format!("{} {p}", here()));
        }
        match &n.body {
            Body::Leaf { entries } => {
                for &(k, v) in entries {
                    if k >= self.capacity_blocks {
                        self.problems.push(format!("LBA {k} is beyond the disk"));
                    }
                    let first = self.referenced.insert(v.0);
                    if first && self.vba.get(self.vba_root, v.0).is_none() {
                        self.problems.push(format!(
                            "LBA {k} maps to VBA {} which the VBA map lacks",
                            v.0
                        ));
                    }
                }
                let keys = entries.iter().map(|e| e.0);
                s.keys = keys.clone().min().zip(keys.max());
                s.max_vba = entries.iter().map(|e| e.1.0).max();
                s.entries = entries.len() as u64;
                if let Some(v) = s.max_vba
                    && v >= lim.vba_limit
                {
                    self.problems.push(format!(
                        "{} maps VBA {v}, allocated after the tree was frozen (its first later VBA is {})",
                        here(),
                        lim.vba_limit
                    ));
                }
            }
            Body::Internal { keys, children } => {
                if !children_fit(keys, children) {
                    return s;
                }
                let mut child_height = None;
                for (i, c) in children.iter().enumerate() {
                    let (clo, chi) = child_range(keys, i, lo, hi);
                    let cs = self.node(*c, clo, chi, depth + 1, child_height, lim);
                    child_height.get_or_insert(cs.height);
                    s.keys = match (s.keys, cs.keys) {
                        (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
                        (x, y) => x.or(y),
                    };
                    s.max_seq = s.max_seq.max(cs.max_seq);
                    s.max_vba = s.max_vba.max(cs.max_vba);
                    s.entries += cs.entries;
                }
                s.height = child_height.unwrap_or(0) + 1;
            }
        }
        s
    }
}
