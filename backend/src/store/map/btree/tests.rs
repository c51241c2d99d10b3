use super::*;
use crate::store::codec::{Get, Put};
use crate::store::layout::BLOCK_SIZE;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct V(u64);

impl TreeValue for V {
    const SIZE: usize = 8;
    const TREE_TAG: u8 = 99;
    fn encode(&self, out: &mut Put<'_>) {
        out.u64(self.0);
    }
    fn decode(g: &mut Get<'_>) -> Option<Self> {
        g.u64().map(V)
    }
}

#[test]
fn insert_lookup_range_remove() {
    let mut f = Forest::<V>::new();
    let mut root = f.new_leaf(1);
    for k in (0..5000u64).rev() {
        assert_eq!(f.insert(&mut root, k * 3, V(k), 1, 0), None);
    }
    assert_eq!(f.get(root, 300), Some(V(100)));
    assert_eq!(f.get(root, 301), None);
    let mut got = Vec::new();
    f.range(root, 10, 22, &mut |k, v| got.push((k, v.0)));
    assert_eq!(got, vec![(12, 4), (15, 5), (18, 6), (21, 7)]);
    let mut problems = Vec::new();
    assert_eq!(f.verify(root, &mut problems, "t"), 5000);
    assert!(problems.is_empty(), "{problems:?}");
    for k in 0..5000u64 {
        assert_eq!(f.remove(&mut root, k * 3, 2, 0), Some(V(k)));
    }
    assert!(f.entries(root).is_empty());
    assert_eq!(
        f.live_nodes(),
        1,
        "empty nodes are freed and the root collapses"
    );
}

/// Keys handed out in order and removed at random, as a disk's VBAs are under random
/// overwrites: sparse leaves merge, so the tree keeps its leaves about half full instead of
/// settling at a sixth (without merging, a leaf lives until its last key is removed).
#[test]
fn random_removals_from_an_appended_tree_keep_its_leaves_filled() {
    let cap = leaf_cap::<V>() as u64;
    let live_keys = 40 * cap;
    let mut f = Forest::<V>::new();
    let mut root = f.new_leaf(1);
    let mut model = BTreeMap::new();
    let mut live = Vec::new();
    let mut next = 0u64;
    for _ in 0..live_keys {
        f.insert(&mut root, next, V(next), 1, 0);
        model.insert(next, V(next));
        live.push(next);
        next += 1;
    }
    let packed = f.live_nodes();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for round in 0..8 * live_keys {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let victim = live.swap_remove((x % live.len() as u64) as usize);
        assert_eq!(
            f.remove(&mut root, victim, 2 + round, 0),
            model.remove(&victim)
        );
        f.insert(&mut root, next, V(next), 2 + round, 0);
        model.insert(next, V(next));
        live.push(next);
        next += 1;
    }
    let mut problems = Vec::new();
    assert_eq!(f.verify(root, &mut problems, "t"), live_keys);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(f.entries(root), model.into_iter().collect::<Vec<_>>());
    let nodes = f.live_nodes();
    assert!(
        nodes * 3 < packed * 7,
        "{nodes} nodes for {live_keys} keys, {packed} when packed"
    );
}

/// A tree of 1000 keys written at seq 1 and frozen as a snapshot: (forest, running, snapshot).
fn snapshotted_tree() -> (Forest<V>, NodeId, NodeId) {
    let mut f = Forest::<V>::new();
    let mut running = f.new_leaf(1);
    for k in 0..1000 {
        f.insert(&mut running, k, V(k), 1, 0);
    }
    f.retain(running);
    (f, running, running)
}

#[test]
fn frozen_nodes_are_copied_newer_nodes_change_in_place() {
    // Snapshot at seq 1: the running point continues at seq 2.
    let (mut f, mut running, snap) = snapshotted_tree();
    let before = f.live_nodes();
    f.insert(&mut running, 5, V(555), 2, 1);
    assert_ne!(running, snap, "a frozen root is copied");
    assert_eq!(f.get(snap, 5), Some(V(5)), "the snapshot keeps its value");
    assert_eq!(f.get(running, 5), Some(V(555)));
    let copied = f.live_nodes() - before;
    assert_eq!(copied, 2, "root and one leaf copied, the rest shared");
    // The copies carry seq 2 > frozen 1 now: a second write changes them in place.
    let root_after = running;
    f.insert(&mut running, 6, V(666), 3, 1);
    assert_eq!(running, root_after);
    assert_eq!(f.live_nodes() - before, 2);
    // Shared nodes are reachable from both roots.
    let shared = f
        .reachable(&[snap])
        .intersection(&f.reachable(&[running]))
        .count();
    assert!(shared > 0);
    f.check_refs(&[running, snap]).unwrap();
    // Dropping the snapshot frees exactly the nodes only it used.
    let freed = f.unref(snap);
    assert_eq!(freed, 2, "the snapshot's own root and leaf");
    assert_eq!(f.live_nodes(), f.reachable(&[running]).len());
    f.check_refs(&[running]).unwrap();
    assert_eq!(f.get(running, 7), Some(V(7)));
}

#[test]
fn a_node_no_snapshot_holds_any_more_changes_in_place() {
    let (mut f, mut running, snap) = snapshotted_tree();
    // The snapshot is dropped; `frozen` still says 1, but nothing shares the nodes now.
    f.unref(snap);
    let before = (running, f.live_nodes());
    f.insert(&mut running, 5, V(555), 2, 1);
    assert_eq!(
        (running, f.live_nodes()),
        before,
        "changed in place, nothing copied"
    );
    f.check_refs(&[running]).unwrap();
}

#[test]
fn disk_round_trip_keeps_sharing() {
    let mut f = Forest::<V>::new();
    let mut running = f.new_leaf(1);
    for k in 0..2000 {
        f.insert(&mut running, k * 7, V(k), 1, 0);
    }
    let snap = running;
    f.retain(snap);
    f.insert(&mut running, 7, V(1), 2, 1);
    let mut disk: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut next = 100u64;
    for root in [snap, running] {
        let mut order = Vec::new();
        f.dirty_post_order(root, &mut order, &mut HashSet::new());
        for id in &order {
            f.set_disk(*id, next);
            next += 1;
        }
        for id in &order {
            let pba = f.node(*id).disk.unwrap();
            let mut b = vec![0u8; BLOCK_SIZE];
            assert!(f.encode_node(*id, pba, &mut b));
            disk.insert(pba, b);
        }
    }
    let (sp, rp) = (f.node(snap).disk.unwrap(), f.node(running).disk.unwrap());
    let mut g = Forest::<V>::new();
    let mut loaded = HashMap::new();
    let mut read = |p: u64| {
        disk.get(&p)
            .cloned()
            .ok_or(StoreError::corrupt("x", "missing"))
    };
    let s2 = g.load(sp, &mut read, &mut loaded).unwrap();
    let r2 = g.load(rp, &mut read, &mut loaded).unwrap();
    assert_eq!(g.entries(s2), f.entries(snap));
    assert_eq!(g.entries(r2), f.entries(running));
    assert_eq!(g.live_nodes(), f.live_nodes(), "shared nodes load once");
    g.check_refs(&[s2, r2]).unwrap();
    // A flipped bit in a node is caught at load.
    let mut bad = disk.clone();
    bad.get_mut(&rp).unwrap()[40] ^= 1;
    let mut read_bad = |p: u64| {
        bad.get(&p)
            .cloned()
            .ok_or(StoreError::corrupt("x", "missing"))
    };
    let r = Forest::<V>::new().load(rp, &mut read_bad, &mut HashMap::new());
    assert!(matches!(r, Err(StoreError::Corrupt { .. })));
}

proptest! {
    #[test]
    fn matches_a_btreemap(ops in proptest::collection::vec((0u8..4, 0u64..3000, any::<u64>()), 1..600)) {
        let mut f = Forest::<V>::new();
        let mut root = f.new_leaf(1);
        let mut model = BTreeMap::new();
        let mut snaps = Vec::new();
        let mut frozen = 0u64;
        for (i, (op, k, v)) in ops.into_iter().enumerate() {
            let seq = i as u64 + 2;
            match op {
                0 => prop_assert_eq!(f.insert(&mut root, k, V(v), seq, frozen), model.insert(k, V(v))),
                1 => prop_assert_eq!(f.remove(&mut root, k, seq, frozen), model.remove(&k)),
                2 => if k % 50 == 0 {
                    frozen = seq;
                    f.retain(root);
                    snaps.push((root, f.entries(root)));
                },
                // Drop a snapshot: `frozen` stays, as for an older snapshot's delete.
                _ => if k % 7 == 0 && !snaps.is_empty() {
                    let (r, _) = snaps.remove(v as usize % snaps.len());
                    f.unref(r);
                },
            }
        }
        let mut roots: Vec<NodeId> = snaps.iter().map(|(r, _)| *r).collect();
        roots.push(root);
        prop_assert_eq!(f.check_refs(&roots), Ok(()));
        prop_assert_eq!(f.entries(root), model.into_iter().collect::<Vec<_>>());
        for (r, e) in snaps {
            prop_assert_eq!(f.entries(r), e);
        }
        let mut problems = Vec::new();
        f.verify(root, &mut problems, "t");
        prop_assert!(problems.is_empty(), "{:?}", problems);
    }
}

/// Every node reachable from `root`, encoded as if at block 0.
fn encoded(f: &Forest<V>, root: NodeId) -> Vec<(NodeId, Vec<u8>)> {
    let mut ids: Vec<NodeId> = f.reachable(&[root]).into_iter().collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| {
            let mut b = vec![0u8; BLOCK_SIZE];
            assert!(f.encode_node(id, 0, &mut b));
            (id, b)
        })
        .collect()
}

#[test]
fn a_pinned_tree_stays_as_frozen_while_the_running_one_changes() {
    let mut f = Forest::<V>::new();
    let mut running = f.new_leaf(1);
    for k in 0..3000 {
        f.insert(&mut running, k * 2, V(k), 1, 0);
    }
    // A checkpoint gave every node a block, then pinned the tree at seq 1.
    let mut ids: Vec<NodeId> = f.reachable(&[running]).into_iter().collect();
    ids.sort_unstable();
    for (i, id) in ids.iter().enumerate() {
        f.set_disk(*id, 1000 + i as u64);
    }
    let pinned = running;
    f.pin(&[pinned], 1);
    let frozen = encoded(&f, pinned);
    // Later operations overwrite, insert (splitting leaves) and remove.
    for k in 0..3000 {
        f.insert(&mut running, k * 2, V(k + 7), 2, 0);
        f.insert(&mut running, k * 2 + 1, V(k), 2, 0);
    }
    for k in 0..1000 {
        f.remove(&mut running, k * 2, 3, 0);
    }
    assert_eq!(
        encoded(&f, pinned),
        frozen,
        "the pinned nodes did not change"
    );
    assert_eq!(f.get(pinned, 10), Some(V(5)));
    assert_eq!(f.get(running, 10), None);
    assert_eq!(f.get(running, 4000), Some(V(2007)));
    f.check_refs(&[running, pinned]).unwrap();
    // Unpinned, the nodes only the pinned tree held are freed and their blocks are garbage.
    f.garbage.clear();
    f.unpin();
    f.check_refs(&[running]).unwrap();
    assert_eq!(f.live_nodes(), f.reachable(&[running]).len());
    assert!(!f.garbage.is_empty(), "the superseded nodes' blocks die");
    // And the running tree's nodes change in place again.
    let root = running;
    f.insert(&mut running, 1, V(1), 4, 0);
    assert_eq!(running, root);
}
