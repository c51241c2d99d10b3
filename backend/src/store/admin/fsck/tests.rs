//! fsck across snapshot trees: a corrupt shared node is reported once per tree that places it
//! wrongly, or once when the fault is in the node itself; a corrupt unshared node only under
//! its tree; each distinct node is walked once however many snapshots share it.

use crate::device::BlockDevice;
use crate::store::codec::block_crc;
use crate::store::layout::BLOCK;
use crate::store::map::btree::{Body, NodeId};
use crate::store::tests::{new_store, small_opts};
use crate::store::{CreateOptions, Op, Store};
use crate::testing::FaultyDevice;
use std::sync::Arc;

/// A 16 MiB disk whose every even block is written: 1000 entries, several leaves, keys with
/// gaps so a key can be moved without colliding with a neighbour's.
fn store_with_gaps() -> (Arc<FaultyDevice>, Store) {
    let opts = CreateOptions {
        capacity: 16 << 20,
        ..small_opts()
    };
    let (dev, s) = new_store(&opts);
    let data = vec![0x5au8; BLOCK as usize];
    for chunk in 0..10u64 {
        let ops: Vec<Op<'_>> = (0..100u64)
            .map(|i| Op::Write {
                offset: (chunk * 100 + i) * 2 * BLOCK,
                data: &data,
            })
            .collect();
        s.write_batch(0, &ops).unwrap();
    }
    (dev, s)
}

/// Children of a tree's root: (node id, disk block, first key).
fn leaves(s: &Store, root: NodeId) -> Vec<(NodeId, u64, u64)> {
    let st = s.read_lock(&s.state);
    let f = &st.maps.lba;
    let Body::Internal { children, .. } = &f.node(root).body else {
        panic!("the tree should have more than one leaf");
    };
    children
        .iter()
        .map(|c| {
            let n = f.node(*c);
            (*c, n.disk.unwrap(), n.first_key().unwrap())
        })
        .collect()
}

/// Rewrites node block `pba` with `edit` applied and a valid checksum: a fault the node's own
/// checks cannot see, only its place in the trees can.
fn corrupt_node(dev: &FaultyDevice, pba: u64, edit: &dyn Fn(&mut [u8])) {
    let mut b = vec![0u8; BLOCK as usize];
    dev.read_at(&mut b, pba * BLOCK).unwrap();
    let sealer = crate::store::tests::sealer_of(dev);
    if let Some(sealer) = &sealer {
        sealer.open(&mut b, pba * BLOCK).unwrap();
    }
    edit(&mut b);
    b[4..8].fill(0);
    let crc = block_crc(pba, &b);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    if let Some(sealer) = &sealer {
        sealer.seal(&mut b, pba * BLOCK).unwrap();
    }
    dev.write_at(&b, pba * BLOCK).unwrap();
    dev.flush().unwrap();
}

const SEQ_AT: usize = 12;
const KEYS_AT: usize = 32;

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Snapshot "s1" of the even blocks, then a write into the last leaf: the running point
/// copies the root and that leaf and shares the others with s1.
fn shared_history() -> (Arc<FaultyDevice>, Store, u64) {
    let (dev, s) = store_with_gaps();
    let id = s.create_snapshot("s1").unwrap();
    let data = vec![0x11u8; BLOCK as usize];
    s.write_batch(
        0,
        &[Op::Write {
            offset: 1998 * BLOCK,
            data: &data,
        }],
    )
    .unwrap();
    s.checkpoint().unwrap();
    let f = s.fsck();
    assert!(f.is_clean(), "{:?}", f.problems);
    (dev, s, id)
}

fn reopen(dev: &Arc<FaultyDevice>) -> Store {
    Store::open(dev.clone(), crate::store::tests::store_opts()).unwrap()
}

#[test]
fn a_shared_node_with_a_key_outside_its_range_is_reported_under_both_trees() {
    let (dev, s, _) = shared_history();
    let snap_root = s.read_lock(&s.state).maps.snapshots[0].root;
    let running = s.read_lock(&s.state).maps.running;
    let l = leaves(&s, snap_root);
    let (id, pba, first) = l[1];
    assert!(
        leaves(&s, running).iter().any(|x| x.0 == id),
        "leaf 1 is shared"
    );
    let next = l[2].2;
    let last = {
        let st = s.read_lock(&s.state);
        st.maps
            .lba
            .entries(snap_root)
            .iter()
            .map(|e| e.0)
            .filter(|k| *k < next)
            .max()
            .unwrap()
    };
    drop(s);
    // The leaf's first key moves one below its separator (an odd LBA nobody maps).
    corrupt_node(&dev, pba, &|b| set_u64(b, KEYS_AT, first - 1));
    let r = reopen(&dev).fsck();
    let range = format!("[{first}, {next})");
    assert_eq!(
        r.problems,
        vec![
            format!(
                "snapshot 1 (s1): node at block {pba} (depth 1) holds keys {}..={last} outside its parent's range {range}",
                first - 1
            ),
            format!(
                "running point: node at block {pba} (depth 1) holds keys {}..={last} outside its parent's range {range}",
                first - 1
            ),
        ]
    );
}

#[test]
fn a_shared_node_newer_than_its_snapshot_is_reported_once() {
    let (dev, s, _) = shared_history();
    let (snap_root, snap_seq) = {
        let st = s.read_lock(&s.state);
        (st.maps.snapshots[0].root, st.maps.snapshots[0].seq)
    };
    let (_, pba, _) = leaves(&s, snap_root)[0];
    drop(s);
    // Newer than s1, which must not see it, but not than the running point, which may.
    corrupt_node(&dev, pba, &|b| set_u64(b, SEQ_AT, snap_seq + 1));
    let r = reopen(&dev).fsck();
    assert_eq!(
        r.problems,
        vec![format!(
            "snapshot 1 (s1): node at block {pba} (depth 1) has sequence number {}, newer than the tree's {snap_seq}",
            snap_seq + 1
        )]
    );
}

#[test]
fn an_unshared_node_is_reported_under_its_own_tree_only() {
    let (dev, s, _) = shared_history();
    let (snap_root, running) = {
        let st = s.read_lock(&s.state);
        (st.maps.snapshots[0].root, st.maps.running)
    };
    let shared: Vec<NodeId> = leaves(&s, snap_root).iter().map(|x| x.0).collect();
    let l = leaves(&s, running);
    let (id, pba, first) = *l.last().unwrap();
    assert!(
        !shared.contains(&id),
        "the last leaf is the running point's own copy"
    );
    let last = {
        let st = s.read_lock(&s.state);
        st.maps.lba.entries(running).last().unwrap().0
    };
    drop(s);
    corrupt_node(&dev, pba, &|b| set_u64(b, KEYS_AT, first - 1));
    let r = reopen(&dev).fsck();
    assert_eq!(
        r.problems,
        vec![format!(
            "running point: node at block {pba} (depth 1) holds keys {}..={last} outside its parent's range [{first}, 18446744073709551615)",
            first - 1
        )]
    );
}

#[test]
fn each_shared_node_is_walked_once() {
    let (_dev, s) = store_with_gaps();
    let data = vec![0x22u8; BLOCK as usize];
    for i in 0..10u64 {
        s.create_snapshot(&format!("s{i}")).unwrap();
        if i % 2 == 0 {
            // Every other snapshot changes one block; the rest share the whole tree.
            s.write_batch(
                0,
                &[Op::Write {
                    offset: i * 200 * BLOCK,
                    data: &data,
                }],
            )
            .unwrap();
        }
    }
    s.checkpoint().unwrap();
    let r = s.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
    let (distinct, leaves_per_tree) = {
        let st = s.read_lock(&s.state);
        let roots = st.maps.lba_roots();
        (
            st.maps.lba.reachable(&roots).len() as u64,
            leaves(&s, st.maps.running).len() as u64,
        )
    };
    assert_eq!(r.trees, 11);
    assert_eq!(r.tree_nodes_walked, distinct);
    // One full tree plus a root and a leaf per change, against 11 full trees walked
    // separately: the shared nodes were met again but not walked.
    assert_eq!(distinct, leaves_per_tree + 1 + 2 * 5);
    assert!(r.shared_nodes_skipped >= 10, "{}", r.shared_nodes_skipped);
    assert_eq!(r.lba_entries, 1000);
}
