//! The tree diff against brute force on random forests, its cost on a large tree, and whole
//! stores with random histories against a model that keeps a copy of the disk per snapshot.

use super::*;
use crate::store::CreateOptions;
use crate::store::Op;
use crate::store::map::btree::Forest;
use crate::store::map::maps::Vba;
use crate::store::tests::{new_store, small_opts};
use crate::testing::SplitMix;
use std::collections::BTreeMap;

/// Every entry of a tree (`None`: the empty tree).
fn all(f: &Forest<Vba>, r: Option<NodeId>) -> BTreeMap<u64, u64> {
    r.map(|r| f.entries(r).into_iter().map(|(k, v)| (k, v.0)).collect())
        .unwrap_or_default()
}

/// The exact answer, from the full entry lists of both trees.
fn brute_maps(a: &BTreeMap<u64, u64>, b: &BTreeMap<u64, u64>) -> Vec<ChangedBlock> {
    let mut keys: Vec<u64> = a.keys().chain(b.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(k) != b.get(k))
        .map(|k| ChangedBlock {
            lba: k,
            vba: b.get(&k).copied(),
        })
        .collect()
}

fn brute(f: &Forest<Vba>, from: Option<NodeId>, to: Option<NodeId>) -> Vec<ChangedBlock> {
    brute_maps(&all(f, from), &all(f, to))
}

/// A forest with a running tree and frozen snapshots, updated the way the maps do it.
struct Trees {
    f: Forest<Vba>,
    running: NodeId,
    snaps: Vec<(u64, NodeId)>,
    seq: u64,
    next_val: u64,
}

impl Trees {
    fn new() -> Self {
        let mut f = Forest::new();
        let running = f.new_leaf(1);
        Self {
            f,
            running,
            snaps: Vec::new(),
            seq: 2,
            next_val: 0,
        }
    }

    fn frozen(&self) -> u64 {
        self.snaps.last().map_or(0, |s| s.0)
    }

    fn put(&mut self, k: u64) {
        self.seq += 1;
        let (seq, frozen) = (self.seq, self.frozen());
        self.next_val += 1;
        self.f
            .insert(&mut self.running, k, Vba(self.next_val), seq, frozen);
    }

    fn del(&mut self, k: u64) {
        self.seq += 1;
        let (seq, frozen) = (self.seq, self.frozen());
        self.f.remove(&mut self.running, k, seq, frozen);
    }

    fn snapshot(&mut self) {
        self.f.retain(self.running);
        self.snaps.push((self.seq, self.running));
        self.seq += 1;
    }
}

#[test]
fn random_forests_agree_with_brute_force() {
    for seed in 0..6u64 {
        let mut rng = SplitMix::new(seed);
        let mut t = Trees::new();
        let space = [300u64, 5_000, 60_000][seed as usize % 3];
        for round in 0..6 {
            let n = rng.below(3_000) + 1;
            for _ in 0..n {
                // Runs of neighbours as well as scattered keys, and some removals.
                let k = rng.below(space);
                match rng.below(10) {
                    0..=1 => t.del(k),
                    2 => {
                        for j in 0..rng.below(64) {
                            t.put((k + j) % space);
                        }
                    }
                    _ => t.put(k),
                }
            }
            if round % 3 != 2 {
                t.snapshot();
            }
        }
        let mut roots: Vec<Option<NodeId>> = vec![None, Some(t.running)];
        roots.extend(t.snaps.iter().map(|s| Some(s.1)));
        let contents: Vec<_> = roots.iter().map(|r| all(&t.f, *r)).collect();
        for (i, &x) in roots.iter().enumerate() {
            for (j, &y) in roots.iter().enumerate() {
                let d = diff_trees(&t.f, x, y);
                let want = brute_maps(&contents[i], &contents[j]);
                assert_eq!(d.blocks, want, "seed {seed}: {x:?} -> {y:?}");
            }
        }
    }
}

#[test]
fn cost_grows_with_the_changes_not_the_tree() {
    let mut t = Trees::new();
    for k in 0..200_000u64 {
        t.put(k * 3);
    }
    t.snapshot();
    t.put(300_001);
    t.put(9);
    t.del(450_000);
    let (s, r) = (Some(t.snaps[0].1), Some(t.running));
    let d = diff_trees(&t.f, s, r);
    assert_eq!(
        d.blocks,
        vec![
            ChangedBlock {
                lba: 9,
                vba: Some(200_002)
            },
            ChangedBlock {
                lba: 300_001,
                vba: Some(200_001)
            },
            ChangedBlock {
                lba: 450_000,
                vba: None
            },
        ]
    );
    // Three changed root-to-leaf paths of a 3-level tree, in both trees: a few dozen nodes
    // at most, against the ~800 leaves of the whole tree.
    assert!(d.nodes_opened <= 24, "opened {} nodes", d.nodes_opened);
    assert!(d.shared_skipped > 0);
    let same = diff_trees(&t.f, s, s);
    assert!(same.blocks.is_empty());
    assert_eq!((same.nodes_opened, same.shared_skipped), (0, 1));
    // From the empty tree: every entry, by walking the whole tree once.
    assert_eq!(diff_trees(&t.f, None, s).blocks.len(), 200_000);
}

#[test]
fn extents_merge_neighbours_of_one_kind() {
    let d = TreeDiff {
        blocks: vec![
            ChangedBlock {
                lba: 1,
                vba: Some(7),
            },
            ChangedBlock {
                lba: 2,
                vba: Some(3),
            },
            ChangedBlock { lba: 3, vba: None },
            ChangedBlock { lba: 5, vba: None },
            ChangedBlock { lba: 6, vba: None },
        ],
        ..TreeDiff::default()
    };
    let e = |o: u64, l: u64, kind| Extent {
        offset: o * BLOCK,
        length: l * BLOCK,
        kind,
    };
    assert_eq!(
        d.extents(),
        vec![
            e(1, 2, ExtentKind::Data),
            e(3, 1, ExtentKind::Zero),
            e(5, 2, ExtentKind::Zero)
        ]
    );
    let r = d.report("a", "b", 1 << 20);
    assert_eq!((r.data_bytes, r.zero_bytes), (2 * BLOCK, 3 * BLOCK));
}

/// The disk's contents, one optional block each (`None` reads as zeroes).
type Image = Vec<Option<Vec<u8>>>;

fn block_of(seed: u64) -> Vec<u8> {
    let mut r = SplitMix::new(seed);
    (0..BLOCK / 8)
        .flat_map(|_| r.next_u64().to_le_bytes())
        .collect()
}

/// Applies a diff onto `base` with the data read back from the store by VBA.
fn apply(store: &Store, d: &TreeDiff, base: &Image) -> Image {
    let mut img = base.clone();
    for b in &d.blocks {
        img[b.lba as usize] = b.vba.map(|v| {
            let mut buf = vec![0u8; BLOCK as usize];
            store.read_vbas(&[v], &mut buf).unwrap();
            buf
        });
    }
    img
}

fn zeroes_as_none(img: &Image) -> Vec<Vec<u8>> {
    img.iter()
        .map(|b| b.clone().unwrap_or_else(|| vec![0; BLOCK as usize]))
        .collect()
}

#[test]
fn random_histories_against_a_model_with_a_copy_per_snapshot() {
    // Steps: create (deleting the oldest past 5), delete, revert, clone, discard, write; every
    // 25 steps each pair of trees is diffed against brute force.
    let opts = CreateOptions {
        capacity: 4 << 20,
        overprovision_percent: 100,
        ..small_opts()
    };
    let blocks = (opts.capacity / BLOCK) as usize;
    let mut clones = 0;
    for seed in 0..6u64 {
        let (_dev, s) = new_store(&opts);
        let mut rng = SplitMix::new(100 + seed);
        let mut now: Image = vec![None; blocks];
        let mut copies: BTreeMap<u64, Image> = BTreeMap::new();
        for step in 0..300u64 {
            match rng.below(20) {
                0 => {
                    if copies.len() >= 5 {
                        let oldest = *copies.keys().next().unwrap();
                        s.delete_snapshot(oldest).unwrap();
                        copies.remove(&oldest);
                    }
                    let id = s.create_snapshot(&format!("s{step}")).unwrap();
                    copies.insert(id, now.clone());
                }
                1 if !copies.is_empty() => {
                    let ids: Vec<u64> = copies.keys().copied().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    s.delete_snapshot(id).unwrap();
                    copies.remove(&id);
                }
                2 if !copies.is_empty() => {
                    let ids: Vec<u64> = copies.keys().copied().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    s.revert_to_snapshot(id).unwrap();
                    now = copies[&id].clone();
                }
                19 if !copies.is_empty() && rng.chance(1, 3) => {
                    // A clone of a random snapshot is a new container holding its copy.
                    let ids: Vec<u64> = copies.keys().copied().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("clone.keel");
                    s.clone_snapshot(id, &path).unwrap();
                    let c = Store::open_path(&path, crate::store::tests::store_opts()).unwrap();
                    let mut got = vec![0u8; BLOCK as usize];
                    for (lba, want) in zeroes_as_none(&copies[&id]).iter().enumerate() {
                        c.read(lba as u64 * BLOCK, &mut got).unwrap();
                        assert_eq!(
                            &got, want,
                            "seed {seed} step {step}: clone of {id}, block {lba}"
                        );
                    }
                    assert!(c.fsck().is_clean(), "seed {seed} step {step}: clone fsck");
                    clones += 1;
                }
                3..=4 => {
                    let lba = rng.below(blocks as u64 - 8);
                    let n = rng.below(8) + 1;
                    s.write_batch(
                        0,
                        &[Op::Discard {
                            offset: lba * BLOCK,
                            len: n * BLOCK,
                        }],
                    )
                    .unwrap();
                    for b in &mut now[lba as usize..(lba + n) as usize] {
                        *b = None;
                    }
                }
                _ => {
                    let lba = rng.below(blocks as u64 - 16);
                    let n = rng.below(16) + 1;
                    let data: Vec<u8> = (0..n).flat_map(|i| block_of(step * 64 + i)).collect();
                    s.write_batch(
                        0,
                        &[Op::Write {
                            offset: lba * BLOCK,
                            data: &data,
                        }],
                    )
                    .unwrap();
                    for i in 0..n {
                        now[(lba + i) as usize] = Some(block_of(step * 64 + i));
                    }
                }
            }
            if step % 25 != 24 {
                continue;
            }
            // Every pair of sides: exact against brute force, and applying the diff to the
            // older side's copy gives the newer side's copy.
            let mut sides: Vec<(TreeRef, Image)> = vec![
                (TreeRef::Empty, vec![None; blocks]),
                (TreeRef::Running, now.clone()),
            ];
            sides.extend(
                copies
                    .iter()
                    .map(|(id, c)| (TreeRef::Snapshot(*id), c.clone())),
            );
            for (from, from_img) in &sides {
                for (to, to_img) in &sides {
                    let d = s.diff(*from, *to).unwrap();
                    let st = s.read_lock(&s.state);
                    let root = |t: &TreeRef| match t {
                        TreeRef::Empty => None,
                        TreeRef::Running => Some(st.maps.running),
                        TreeRef::Snapshot(id) => st
                            .maps
                            .snapshots
                            .iter()
                            .find(|x| x.id == *id)
                            .map(|x| x.root),
                    };
                    let exact = brute(&st.maps.lba, root(from), root(to));
                    drop(st);
                    assert_eq!(d.blocks, exact, "seed {seed} step {step} {from:?}->{to:?}");
                    let got = apply(&s, &d, from_img);
                    assert!(
                        zeroes_as_none(&got) == zeroes_as_none(to_img),
                        "seed {seed} step {step}: {from:?} + diff != {to:?}"
                    );
                }
            }
        }
    }
    assert!(clones > 0, "the histories cloned no snapshot");
}

#[test]
fn names_resolve_and_stale_vbas_are_refused() {
    let (_dev, s) = new_store(&small_opts());
    let data = block_of(1);
    let w = |s: &Store| {
        s.write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &data,
            }],
        )
        .unwrap()
    };
    w(&s);
    let id = s.create_snapshot("base").unwrap();
    assert_eq!(s.tree_ref("base").unwrap(), TreeRef::Snapshot(id));
    assert_eq!(s.tree_ref(&id.to_string()).unwrap(), TreeRef::Snapshot(id));
    assert_eq!(s.tree_ref(RUNNING).unwrap(), TreeRef::Running);
    assert_eq!(s.tree_ref(EMPTY).unwrap(), TreeRef::Empty);
    assert!(matches!(s.tree_ref("nope"), Err(StoreError::Invalid(_))));
    assert!(s.diff(TreeRef::Snapshot(99), TreeRef::Running).is_err());

    // A running-point block overwritten after the diff is gone: reading it is refused.
    w(&s);
    let d = s.diff(TreeRef::Snapshot(id), TreeRef::Running).unwrap();
    let vba = d.blocks[0].vba.unwrap();
    let mut buf = vec![0u8; BLOCK as usize];
    s.read_vbas(&[vba], &mut buf).unwrap();
    assert_eq!(buf, data);
    w(&s);
    let e = s.read_vbas(&[vba], &mut buf).unwrap_err();
    assert!(e.to_string().contains("changed since the diff"), "{e}");
    assert!(s.read_vbas(&[vba], &mut buf[..10]).is_err());
}

/// Found by the model test: after a revert the running point shares the snapshot's blocks,
/// so deleting that snapshot must not free them.
#[test]
fn deleting_a_snapshot_the_disk_was_reverted_to_keeps_its_blocks() {
    let (_dev, s) = new_store(&small_opts());
    let w = |s: &Store, seed| {
        s.write_batch(
            0,
            &[Op::Write {
                offset: 0,
                data: &block_of(seed),
            }],
        )
        .unwrap()
    };
    w(&s, 1);
    let s1 = s.create_snapshot("s1").unwrap();
    w(&s, 2);
    let _s2 = s.create_snapshot("s2").unwrap();
    s.revert_to_snapshot(s1).unwrap();
    let s3 = s.create_snapshot("s3").unwrap();
    w(&s, 3);
    s.delete_snapshot(s1).unwrap();
    let f = s.fsck();
    assert!(f.is_clean(), "{:?}", f.problems);
    s.revert_to_snapshot(s3).unwrap();
    let mut buf = vec![0u8; BLOCK as usize];
    s.read(0, &mut buf).unwrap();
    assert_eq!(buf, block_of(1));
}
