//! Checking a forest: what `roots` reach, whether the reference counts match, and whether every
//! node keeps its keys in order and in its parent's range (for fsck and tests).
//!
//! [`shape_problems`] holds the rules one node must keep on its own; this walk and fsck's walk
//! of the LBA trees (`admin/fsck/trees.rs`, which also checks what the entries point at and
//! shares the work between trees) both apply it.

use super::Forest;
use super::node::{Body, INTERNAL_CAP, NodeId, TreeValue, leaf_cap};
use std::collections::{HashMap, HashSet};

impl<V: TreeValue> Forest<V> {
    /// Every node reachable from `roots`.
    pub fn reachable(&self, roots: &[NodeId]) -> HashSet<NodeId> {
        let mut seen = HashSet::new();
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Body::Internal { children, .. } = &self.node(id).body {
                stack.extend(children.iter().copied());
            }
        }
        seen
    }

    /// Checks the reference counts against `roots` (each entry one tree's reference): every
    /// live node is reachable and counts exactly its parents and roots. For tests and fsck.
    pub fn check_refs(&self, roots: &[NodeId]) -> std::result::Result<(), String> {
        let mut want: HashMap<NodeId, u32> = HashMap::new();
        for r in roots {
            *want.entry(*r).or_default() += 1;
        }
        for id in self.reachable(roots) {
            if let Body::Internal { children, .. } = &self.node(id).body {
                for c in children {
                    *want.entry(*c).or_default() += 1;
                }
            }
        }
        if want.len() != self.live_nodes() {
            return Err(format!(
                "{} live nodes, {} reachable",
                self.live_nodes(),
                want.len()
            ));
        }
        match want.iter().find(|(id, n)| self.refs(**id) != **n) {
            Some((id, n)) => Err(format!(
                "node {id} has {} references, {n} expected",
                self.refs(*id)
            )),
            None => Ok(()),
        }
    }

    /// Checks the tree's structure: sorted keys within their parent's bounds, non-empty
    /// internal nodes, all leaves at one depth. Returns the number of entries.
    pub fn verify(&self, root: NodeId, problems: &mut Vec<String>, name: &str) -> u64 {
        self.verify_shared(root, problems, name, &mut HashSet::new())
    }

    /// [`verify`](Self::verify), skipping nodes already in `verified` (checked as part of
    /// another tree that shares them) and adding the nodes it checks.
    pub fn verify_shared(
        &self,
        root: NodeId,
        problems: &mut Vec<String>,
        name: &str,
        verified: &mut HashSet<NodeId>,
    ) -> u64 {
        let mut leaf_depth = None;
        self.verify_rec(
            root,
            0,
            u64::MAX,
            0,
            &mut leaf_depth,
            problems,
            name,
            verified,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_rec(
        &self,
        id: NodeId,
        lo: u64,
        hi: u64,
        depth: usize,
        leaf_depth: &mut Option<usize>,
        problems: &mut Vec<String>,
        name: &str,
        verified: &mut HashSet<NodeId>,
    ) -> u64 {
        if !verified.insert(id) {
            return 0;
        }
        let n = self.node(id);
        let where_ = || format!("{name}: node at {:?} (depth {depth})", n.disk);
        for p in shape_problems(&n.body, lo, hi) {
            problems.push(format!("{} {p}", where_()));
        }
        match &n.body {
            Body::Leaf { entries } => {
                match leaf_depth {
                    None => *leaf_depth = Some(depth),
                    Some(d) if *d != depth => {
                        problems.push(format!("{} leaf at uneven depth", where_()))
                    }
                    _ => {}
                }
                entries.len() as u64
            }
            Body::Internal { keys, children } => {
                if !children_fit(keys, children) {
                    return 0;
                }
                let mut total = 0;
                for (i, c) in children.iter().enumerate() {
                    let (clo, chi) = child_range(keys, i, lo, hi);
                    total += self.verify_rec(
                        *c,
                        clo,
                        chi,
                        depth + 1,
                        leaf_depth,
                        problems,
                        name,
                        verified,
                    );
                }
                total
            }
        }
    }
}

/// Whether an internal node's children match its keys (one per key, at least one, at most
/// [`INTERNAL_CAP`]); a node that fails this is not walked further.
pub fn children_fit(keys: &[u64], children: &[NodeId]) -> bool {
    !children.is_empty() && children.len() == keys.len() && keys.len() <= INTERNAL_CAP
}

/// The key range `[lo, hi)` of child `i` of an internal node placed at `[lo, hi)`.
pub fn child_range(keys: &[u64], i: usize, lo: u64, hi: u64) -> (u64, u64) {
    let clo = if i == 0 { lo } else { keys[i].max(lo) };
    let chi = keys.get(i + 1).copied().unwrap_or(hi).min(hi);
    (clo, chi)
}

/// What is wrong with one node on its own, placed at key range `[lo, hi)`: keys out of order,
/// too many entries, a leaf's keys outside the range, an internal node's children not matching
/// its keys or a separator outside the range. Each problem reads after the node's name.
pub fn shape_problems<V: TreeValue>(body: &Body<V>, lo: u64, hi: u64) -> Vec<String> {
    let mut problems = Vec::new();
    match body {
        Body::Leaf { entries } => {
            if entries.windows(2).any(|w| w[0].0 >= w[1].0) {
                problems.push("has keys out of order".to_string());
            }
            if entries.len() > leaf_cap::<V>() {
                problems.push("is overfull".to_string());
            }
            let keys = entries.iter().map(|e| e.0);
            if let Some((min, max)) = keys.clone().min().zip(keys.max())
                && (min < lo || max >= hi)
            {
                problems.push(format!(
                    "holds keys {min}..={max} outside its parent's range [{lo}, {hi})"
                ));
            }
        }
        Body::Internal { keys, children } => {
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                problems.push("has keys out of order".to_string());
            }
            if !children_fit(keys, children) {
                problems.push(format!("has {} children", children.len()));
                return problems;
            }
            for &k in &keys[1..] {
                if k < lo || k >= hi {
                    problems.push(format!("has separator {k} outside [{lo}, {hi})"));
                }
            }
        }
    }
    problems
}
