//! Copy-on-write B+tree with node sharing by operation sequence numbers.
//!
//! A [`Forest`] holds the nodes of several trees (the running point and frozen snapshots) in
//! one arena. Every node records the sequence number of the operation that last wrote it.
//! An update passes `frozen`, the sequence number of the newest snapshot: a node with
//! `seq > frozen` belongs to the running point alone and is changed in place; an older node
//! may be shared with a snapshot and is copied first (path copying up to the root).
//!
//! On disk every node is written out of place at each checkpoint: changing a clean node
//! in place in memory makes its old block garbage, released when the next checkpoint commits.
//!
//! Every node also counts the references to it (parents' child pointers and tree roots), in
//! memory only (rebuilt when the trees are loaded). The count lets a node with `seq <= frozen`
//! that no other tree shares any more (its snapshot was deleted) change in place, and makes
//! dropping a tree free exactly the nodes no other tree holds, at a cost that grows with those
//! nodes, not with the forest.
//!
//! Deletion removes empty nodes but does not merge underfull ones; a tree keeps working
//! with sparse nodes and the next splits refill them.

mod node;
mod search;
mod verify;
pub use verify::{child_range, children_fit, shape_problems};

pub use node::{Body, INTERNAL_CAP, Node, NodeId, TreeValue, leaf_cap};

use crate::store::error::{Result, StoreError};
use search::{Bounds, find_by, find_within, route, route_within};
use std::collections::{HashMap, HashSet};

/// Deepest tree accepted from disk; 8 levels of 127-way nodes hold far more than 2^64 keys.
const MAX_DEPTH: usize = 12;

/// Nodes of every tree of one kind, in one arena.
pub struct Forest<V> {
    nodes: Vec<Option<Node<V>>>,
    /// References to each node: child pointers in live nodes plus tree roots held.
    refs: Vec<u32>,
    free_ids: Vec<NodeId>,
    /// Disk blocks of nodes superseded since the last checkpoint.
    pub garbage: Vec<u64>,
    /// Roots a checkpoint froze and still encodes (see [`pin`](Self::pin)).
    pinned: Vec<NodeId>,
    /// Sequence number the pinned trees were frozen at (0: none pinned).
    pin_seq: u64,
}

impl<V: TreeValue> Default for Forest<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: TreeValue> Forest<V> {
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            refs: Vec::new(),
            free_ids: Vec::new(),
            garbage: Vec::new(),
            pinned: Vec::new(),
            pin_seq: 0,
        }
    }

    /// A new node with one reference: the pointer (or root) its caller stores.
    fn alloc(&mut self, n: Node<V>) -> NodeId {
        if let Some(id) = self.free_ids.pop() {
            self.nodes[id as usize] = Some(n);
            self.refs[id as usize] = 1;
            id
        } else {
            self.nodes.push(Some(n));
            self.refs.push(1);
            (self.nodes.len() - 1) as NodeId
        }
    }

    /// One more reference to `id` (a snapshot taking a root, a copied parent's pointer).
    pub fn retain(&mut self, id: NodeId) {
        if let Some(r) = self.refs.get_mut(id as usize) {
            *r += 1;
        }
    }

    /// Drops one reference to `id`; a node left with none is freed, and its children lose
    /// the reference it held. Returns the number of nodes freed.
    pub fn unref(&mut self, id: NodeId) -> usize {
        let mut freed = 0;
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let Some(r) = self.refs.get_mut(id as usize) else {
                continue;
            };
            assert!(*r > 0, "tree node {id}: reference count underflow");
            *r -= 1;
            if *r > 0 {
                continue;
            }
            if let Some(n) = self.nodes.get_mut(id as usize).and_then(Option::take) {
                if let Some(p) = n.disk {
                    self.garbage.push(p);
                }
                if let Body::Internal { children, .. } = n.body {
                    stack.extend(children);
                }
                self.free_ids.push(id);
                freed += 1;
            }
        }
        freed
    }

    /// References to node `id` (0 for a freed one).
    pub fn refs(&self, id: NodeId) -> u32 {
        self.refs.get(id as usize).copied().unwrap_or(0)
    }

    /// The node `id`. Ids only come from this arena, so a missing node is a broken invariant.
    pub fn node(&self, id: NodeId) -> &Node<V> {
        match self.nodes.get(id as usize) {
            Some(Some(n)) => n,
            _ => panic!("B+tree invariant broken: node {id} is not live"),
        }
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node<V> {
        match self.nodes.get_mut(id as usize) {
            Some(Some(n)) => n,
            _ => panic!("B+tree invariant broken: node {id} is not live"),
        }
    }

    /// A new empty leaf, the root of an empty tree.
    pub fn new_leaf(&mut self, seq: u64) -> NodeId {
        self.alloc(Node {
            seq,
            disk: None,
            body: Body::Leaf {
                entries: Vec::new(),
            },
        })
    }

    /// Keeps the trees at `roots`, as operation `seq` left them, unchanged until
    /// [`unpin`](Self::unpin): a checkpoint encodes them after it let new records go on. Like
    /// a snapshot, each root gains a reference and every node written up to `seq` is copied
    /// before a later operation changes it, so nothing a pinned tree reaches changes or is freed.
    pub fn pin(&mut self, roots: &[NodeId], seq: u64) {
        for r in roots {
            self.retain(*r);
        }
        self.pinned.extend_from_slice(roots);
        self.pin_seq = self.pin_seq.max(seq);
    }

    /// Lets the pinned trees go: nodes only they still held are freed (their blocks are garbage
    /// once the next checkpoint commits), and the others change in place again.
    pub fn unpin(&mut self) {
        self.pin_seq = 0;
        for r in std::mem::take(&mut self.pinned) {
            self.unref(r);
        }
    }

    /// Whether a checkpoint has trees pinned (it froze them and still encodes them).
    pub fn is_pinned(&self) -> bool {
        !self.pinned.is_empty()
    }

    /// Number of live nodes in the arena.
    pub fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free_ids.len()
    }

    pub fn get(&self, root: NodeId, key: u64) -> Option<V> {
        let mut id = root;
        let mut bounds = Bounds::default();
        loop {
            match &self.node(id).body {
                Body::Leaf { entries } => {
                    return find_within(entries, key, |e| e.0, bounds)
                        .ok()
                        .map(|i| entries[i].1);
                }
                Body::Internal { keys, children } => {
                    let idx = route_within(keys, key, bounds);
                    bounds = bounds.child(keys, idx);
                    id = *children.get(idx)?;
                }
            }
        }
    }

    /// Makes `id` writable by the operation `seq`: in place if it is newer than `frozen`, or
    /// if no other tree holds it any more (one reference, from a parent already private to
    /// this tree: callers go top down), otherwise as a private copy that takes over the
    /// caller's reference (the caller stores the id returned where `id` was).
    fn writable(&mut self, id: NodeId, seq: u64, frozen: u64) -> NodeId {
        let frozen = frozen.max(self.pin_seq);
        let only_here = self.refs(id) == 1;
        let n = self.node_mut(id);
        if n.seq > frozen || only_here {
            n.seq = seq;
            if let Some(p) = n.disk.take() {
                self.garbage.push(p);
            }
            return id;
        }
        let mut copy = n.clone();
        copy.seq = seq;
        copy.disk = None;
        if let Body::Internal { children, .. } = &copy.body {
            for c in children.clone() {
                self.retain(c);
            }
        }
        let copy = self.alloc(copy);
        self.unref(id);
        copy
    }

    /// Maps `key` to `val` in the tree rooted at `*root`; returns the previous value (which
    /// may equal `val`: the path is made writable either way).
    pub fn insert(
        &mut self,
        root: &mut NodeId,
        key: u64,
        val: V,
        seq: u64,
        frozen: u64,
    ) -> Option<V> {
        let r = self.writable(*root, seq, frozen);
        *root = r;
        let (old, split) = self.insert_rec(r, key, val, seq, frozen);
        if let Some((sep, right)) = split {
            let left_min = self.node(r).first_key().unwrap_or(0);
            *root = self.alloc(Node {
                seq,
                disk: None,
                body: Body::Internal {
                    keys: vec![left_min, sep],
                    children: vec![r, right],
                },
            });
        }
        old
    }

    fn insert_rec(
        &mut self,
        id: NodeId,
        key: u64,
        val: V,
        seq: u64,
        frozen: u64,
    ) -> (Option<V>, Option<(u64, NodeId)>) {
        let (idx, child) = match &mut self.node_mut(id).body {
            Body::Leaf { entries } => {
                let old = match find_by(entries, key, |e| e.0) {
                    Ok(i) => Some(std::mem::replace(&mut entries[i].1, val)),
                    Err(i) => {
                        entries.insert(i, (key, val));
                        None
                    }
                };
                let split = (entries.len() > leaf_cap::<V>()).then(|| {
                    let at_end = entries.last().map(|e| e.0) == Some(key);
                    let mid = if at_end {
                        entries.len() - 1
                    } else {
                        entries.len() / 2
                    };
                    entries.split_off(mid)
                });
                let split = split.map(|right| {
                    let sep = right.first().map_or(key, |e| e.0);
                    let right = self.alloc(Node {
                        seq,
                        disk: None,
                        body: Body::Leaf { entries: right },
                    });
                    (sep, right)
                });
                return (old, split);
            }
            Body::Internal { keys, children } => {
                let idx = route(keys, key);
                if key < keys[idx] {
                    keys[idx] = key;
                }
                (idx, children[idx])
            }
        };
        let wc = self.writable(child, seq, frozen);
        let (old, split) = self.insert_rec(wc, key, val, seq, frozen);
        let Body::Internal { keys, children } = &mut self.node_mut(id).body else {
            unreachable!("node {id} changed kind during insert")
        };
        children[idx] = wc;
        if let Some((sep, right)) = split {
            keys.insert(idx + 1, sep);
            children.insert(idx + 1, right);
        }
        if keys.len() <= INTERNAL_CAP {
            return (old, None);
        }
        let mid = keys.len() / 2;
        let (rk, rc) = (keys.split_off(mid), children.split_off(mid));
        let sep = rk[0];
        let right = self.alloc(Node {
            seq,
            disk: None,
            body: Body::Internal {
                keys: rk,
                children: rc,
            },
        });
        (old, Some((sep, right)))
    }

    /// Removes `key` from the tree rooted at `*root`; returns the removed value.
    pub fn remove(&mut self, root: &mut NodeId, key: u64, seq: u64, frozen: u64) -> Option<V> {
        self.get(*root, key)?;
        let r = self.writable(*root, seq, frozen);
        *root = r;
        let old = self.remove_rec(r, key, seq, frozen);
        // Shrink the root while it is an internal node with a single child.
        loop {
            let n = self.node(*root);
            match &n.body {
                Body::Internal { children, .. } if children.len() == 1 => {
                    let only = children[0];
                    let old_root = *root;
                    *root = only;
                    // The tree's reference moves from the old root to its only child.
                    self.retain(only);
                    self.unref(old_root);
                }
                Body::Internal { children, .. } if children.is_empty() => {
                    let old_root = *root;
                    *root = self.new_leaf(seq);
                    self.unref(old_root);
                }
                _ => break,
            }
        }
        old
    }

    fn remove_rec(&mut self, id: NodeId, key: u64, seq: u64, frozen: u64) -> Option<V> {
        let (idx, child) = match &mut self.node_mut(id).body {
            Body::Leaf { entries } => {
                let i = find_by(entries, key, |e| e.0).ok()?;
                return Some(entries.remove(i).1);
            }
            Body::Internal { keys, children } => {
                let idx = route(keys, key);
                (idx, children[idx])
            }
        };
        let wc = self.writable(child, seq, frozen);
        let old = self.remove_rec(wc, key, seq, frozen);
        let empty = self.node(wc).is_empty();
        if empty {
            self.unref(wc);
        }
        let Body::Internal { keys, children } = &mut self.node_mut(id).body else {
            unreachable!("node {id} changed kind during remove")
        };
        if empty {
            keys.remove(idx);
            children.remove(idx);
        } else {
            children[idx] = wc;
            self.merge_sparse_leaf(id, idx, seq, frozen);
        }
        old
    }

    /// Merges child `idx` of internal node `id` (private to this operation) into a neighbour
    /// when it is a leaf under a quarter full and the two fit in three quarters of a leaf.
    /// Keys removed at random from a tree only ever appended to (the VBA map: a block's VBA
    /// dies when it is overwritten, and new ones are handed out at the end) would otherwise
    /// leave leaves that never refill: under random overwrites such a tree settled at about a
    /// sixth of its leaves' room, and a checkpoint rewrote six times the nodes. Only a
    /// neighbour this operation may change in place is merged into: copying one a snapshot
    /// shares would cost a node to save one.
    fn merge_sparse_leaf(&mut self, id: NodeId, idx: usize, seq: u64, frozen: u64) {
        let cap = leaf_cap::<V>();
        // This child and its neighbours (no copy of the parent's children: this runs on
        // every removal).
        let (before, mine, after) = match &self.node(id).body {
            Body::Internal { children, .. } => (
                idx.checked_sub(1).map(|i| children[i]),
                children[idx],
                children.get(idx + 1).copied(),
            ),
            Body::Leaf { .. } => return,
        };
        let len = |f: &Self, c: NodeId| match &f.node(c).body {
            Body::Leaf { entries } => Some(entries.len()),
            Body::Internal { .. } => None,
        };
        let Some(mine_len) = len(self, mine) else {
            return;
        };
        if mine_len * 4 >= cap {
            return;
        }
        let fits = |f: &Self, c: NodeId| {
            f.changes_in_place(c, frozen)
                && len(f, c).is_some_and(|n| (n + mine_len) * 4 <= cap * 3)
        };
        // The left one of the pair keeps the entries (its first key stays the pair's least).
        let (left, lid, rid) = match (before, after) {
            (Some(l), _) if fits(self, l) => (idx - 1, l, mine),
            (_, Some(r)) if fits(self, r) => (idx, mine, r),
            _ => return,
        };
        let (lid, rid) = (
            self.writable(lid, seq, frozen),
            self.writable(rid, seq, frozen),
        );
        let Body::Leaf { entries: moved } = std::mem::replace(
            &mut self.node_mut(rid).body,
            Body::Leaf {
                entries: Vec::new(),
            },
        ) else {
            unreachable!("node {rid} changed kind during a merge")
        };
        if let Body::Leaf { entries } = &mut self.node_mut(lid).body {
            entries.extend(moved);
        }
        self.unref(rid);
        let Body::Internal { keys, children } = &mut self.node_mut(id).body else {
            unreachable!("node {id} changed kind during a merge")
        };
        children[left] = lid;
        keys.remove(left + 1);
        children.remove(left + 1);
    }

    /// Whether the operation may change node `id` in place ([`writable`](Self::writable)
    /// would not copy it), reached through a parent private to it.
    fn changes_in_place(&self, id: NodeId, frozen: u64) -> bool {
        self.node(id).seq > frozen.max(self.pin_seq) || self.refs(id) == 1
    }

    /// Calls `f` for every entry with `lo <= key < hi`, in key order.
    pub fn range(&self, root: NodeId, lo: u64, hi: u64, f: &mut dyn FnMut(u64, V)) {
        match &self.node(root).body {
            Body::Leaf { entries } => {
                let start = find_by(entries, lo, |e| e.0).unwrap_or_else(|i| i);
                for &(k, v) in &entries[start..] {
                    if k >= hi {
                        break;
                    }
                    f(k, v);
                }
            }
            Body::Internal { keys, children } => {
                for i in route(keys, lo)..children.len() {
                    if i > 0 && keys[i] >= hi {
                        break;
                    }
                    self.range(children[i], lo, hi, f);
                }
            }
        }
    }

    /// All entries of a tree, in key order.
    pub fn entries(&self, root: NodeId) -> Vec<(u64, V)> {
        let mut out = Vec::new();
        self.range(root, 0, u64::MAX, &mut |k, v| out.push((k, v)));
        out
    }

    /// Dirty nodes of the tree, children before parents (the order they must be written in).
    pub fn dirty_post_order(
        &self,
        root: NodeId,
        out: &mut Vec<NodeId>,
        seen: &mut HashSet<NodeId>,
    ) {
        let n = self.node(root);
        if n.disk.is_some() || !seen.insert(root) {
            return;
        }
        if let Body::Internal { children, .. } = &n.body {
            for c in children {
                self.dirty_post_order(*c, out, seen);
            }
        }
        out.push(root);
    }

    /// Marks dirty every node of the trees at `roots` that is stored where `doomed` says, and
    /// every ancestor of one (a clean node must only have clean children: its block names
    /// theirs), so that the next checkpoint writes them elsewhere and their old blocks die.
    /// Returns the nodes newly marked.
    pub fn evacuate(&mut self, roots: &[NodeId], doomed: &dyn Fn(u64) -> bool) -> usize {
        let mut verdict: HashMap<NodeId, bool> = HashMap::new();
        let mut marked = 0;
        for &r in roots {
            marked += self.evacuate_rec(r, doomed, &mut verdict).1;
        }
        marked
    }

    /// Whether `id` is dirty once evacuated, and how many nodes this call marked.
    fn evacuate_rec(
        &mut self,
        id: NodeId,
        doomed: &dyn Fn(u64) -> bool,
        verdict: &mut HashMap<NodeId, bool>,
    ) -> (bool, usize) {
        if let Some(&d) = verdict.get(&id) {
            return (d, 0);
        }
        let children = match &self.node(id).body {
            Body::Internal { children, .. } => children.clone(),
            Body::Leaf { .. } => Vec::new(),
        };
        let mut marked = 0;
        let mut child_dirty = false;
        for c in children {
            let (d, m) = self.evacuate_rec(c, doomed, verdict);
            child_dirty |= d;
            marked += m;
        }
        let n = self.node_mut(id);
        let dirty = match n.disk {
            None => true,
            Some(p) if child_dirty || doomed(p) => {
                n.disk = None;
                self.garbage.push(p);
                marked += 1;
                true
            }
            Some(_) => false,
        };
        verdict.insert(id, dirty);
        (dirty, marked)
    }

    /// Records that node `id` now lives at block `pba`.
    pub fn set_disk(&mut self, id: NodeId, pba: u64) {
        self.node_mut(id).disk = Some(pba);
    }

    /// Encodes node `id` (whose children all have disk addresses) for block `pba`.
    pub fn encode_node(&self, id: NodeId, pba: u64, out: &mut [u8]) -> bool {
        let child_pba = |c: NodeId| self.node(c).disk.unwrap_or(u64::MAX);
        self.node(id).encode(pba, &child_pba, out)
    }

    /// Loads the tree whose root is at `pba`, reusing nodes already loaded (shared subtrees).
    pub fn load(
        &mut self,
        pba: u64,
        read: &mut dyn FnMut(u64) -> Result<Vec<u8>>,
        loaded: &mut HashMap<u64, NodeId>,
    ) -> Result<NodeId> {
        self.load_at(pba, read, loaded, 0)
    }

    fn load_at(
        &mut self,
        pba: u64,
        read: &mut dyn FnMut(u64) -> Result<Vec<u8>>,
        loaded: &mut HashMap<u64, NodeId>,
        depth: usize,
    ) -> Result<NodeId> {
        if let Some(&id) = loaded.get(&pba) {
            // One more parent or root shares it.
            self.retain(id);
            return Ok(id);
        }
        if depth > MAX_DEPTH {
            return Err(StoreError::corrupt(
                "tree",
                format!("deeper than {MAX_DEPTH} levels at block {pba}"),
            ));
        }
        let block = read(pba)?;
        let d = node::decode::<V>(pba, &block)?;
        let body = match d.leaf_vals {
            Some(vals) => Body::Leaf {
                entries: d.keys.into_iter().zip(vals).collect(),
            },
            None => {
                let mut children = Vec::with_capacity(d.child_pbas.len());
                for c in d.child_pbas {
                    let child = self.load_at(c, read, loaded, depth + 1)?;
                    children.push(child);
                }
                Body::Internal {
                    keys: d.keys,
                    children,
                }
            }
        };
        let id = self.alloc(Node {
            seq: d.seq,
            disk: Some(pba),
            body,
        });
        loaded.insert(pba, id);
        Ok(id)
    }

    /// Dirty leaves reachable from `roots` (only dirty nodes are walked: a clean node has
    /// clean children), with the sequence number of the operation that last wrote each.
    pub fn dirty_leaves(&self, roots: &[NodeId]) -> Vec<(NodeId, u64)> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = roots.to_vec();
        while let Some(id) = stack.pop() {
            let n = self.node(id);
            if n.disk.is_some() || !seen.insert(id) {
                continue;
            }
            match &n.body {
                Body::Leaf { .. } => out.push((id, n.seq)),
                Body::Internal { children, .. } => stack.extend(children.iter().copied()),
            }
        }
        out
    }

    /// Whether `id` is still a dirty leaf last written by operation `seq`: not changed,
    /// freed or written out since it was picked (a reused id carries a later `seq`).
    pub fn is_dirty_leaf(&self, id: NodeId, seq: u64) -> bool {
        matches!(
            self.nodes.get(id as usize),
            Some(Some(n)) if n.disk.is_none() && n.seq == seq && matches!(n.body, Body::Leaf { .. })
        )
    }
}

/// Decodes and verifies one on-disk node without loading its children.
pub fn decode_only<V: TreeValue>(pba: u64, block: &[u8]) -> Result<()> {
    node::decode::<V>(pba, block).map(|_| ())
}

#[cfg(test)]
mod tests;
