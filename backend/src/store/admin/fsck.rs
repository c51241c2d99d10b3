//! Consistency check of an open (recovered) container: every tree's structure, the
//! LBA -> VBA -> PBA chain, the segment usage table against a recount, every metadata
//! block's and every data block's checksum.
//!
//! Snapshot trees share nodes; a node verified as part of one tree is not walked again for
//! the next, only checked to fit where that tree has it ([`trees`]), so the cost grows with
//! the distinct nodes, not with the number of snapshots.

mod trees;

#[cfg(test)]
mod tests;

use crate::store::Store;
use crate::store::admin::scrub::{StoredBlock, check_stored};
use crate::store::buf::AlignedBuf;
use crate::store::compress::{block_of, place};
use crate::store::layout::BLOCK;
use crate::store::map::btree::{Forest, TreeValue};
use crate::store::map::sut::SegKind;
use std::collections::HashMap;

/// The outcome of `keel fsck`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FsckReport {
    /// Everything that does not agree; empty when the container is consistent.
    pub problems: Vec<String>,
    pub trees: usize,
    pub lba_entries: u64,
    pub vbas: u64,
    pub nodes_verified: u64,
    pub data_blocks_verified: u64,
    /// LBA tree nodes verified in full: each distinct node once, however many trees share it.
    pub tree_nodes_walked: u64,
    /// Times a tree reached a node verified already, and only its fit was checked.
    pub shared_nodes_skipped: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Cap on reported problems, so a badly damaged container still gives a readable report.
const MAX_PROBLEMS: usize = 1000;

fn check_nodes_on_disk<V: TreeValue>(
    store: &Store,
    f: &Forest<V>,
    roots: &[u32],
    r: &mut FsckReport,
) -> Vec<u64> {
    let mut pbas = Vec::new();
    for id in f.reachable(roots) {
        let Some(pba) = f.node(id).disk else { continue };
        pbas.push(pba);
        let mut b = AlignedBuf::blocks(1);
        let res = store
            .dev
            .read_at(&mut b, pba * BLOCK)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                crate::store::map::btree::decode_only::<V>(pba, &b).map_err(|e| e.to_string())
            });
        r.nodes_verified += 1;
        if let Err(e) = res {
            r.problems.push(format!("tree node at block {pba}: {e}"));
        }
    }
    pbas
}

impl Store {
    /// Checks the whole container; see [`FsckReport`].
    pub fn fsck(&self) -> FsckReport {
        // With no batch in flight, every mapped block is on the device.
        let j = self.quiet_journal();
        // A leaf written ahead counts once it is settled (see prewrite.rs).
        let _prewriter = self.lock(&self.prewriter);
        let st = self.read_lock(&self.state);
        let geo = self.geometry();
        let mut r = FsckReport::default();
        let maps = &st.maps;
        // 0. Both superblock copies are current after every checkpoint: a damaged one is a
        // problem even though the other kept the container whole (open rewrote it).
        if let Some(p) = &self.recovery.other_superblock {
            r.problems
                .push(format!("{p} (rewritten from the valid copy when opened)"));
        }

        // 1-2. The LBA trees, oldest snapshot first: structure, fit of shared nodes, and
        // every LBA -> VBA in range and present. Shared subtrees are walked once.
        let roots = maps.lba_roots();
        r.trees = roots.len();
        let mut tc =
            trees::TreeChecker::new(&maps.lba, &maps.vba, maps.vba_root, geo.capacity_blocks());
        for s in &maps.snapshots {
            let lim = trees::Limits {
                name: format!("snapshot {} ({})", s.id, s.name),
                max_seq: s.seq,
                vba_limit: s.vba_watermark,
            };
            tc.check_tree(s.root, &lim);
        }
        let running = trees::Limits {
            name: "running point".into(),
            max_seq: maps.seq,
            vba_limit: maps.next_vba,
        };
        r.lba_entries = tc.check_tree(maps.running, &running);
        if let Some(st) = &maps.staging {
            let staging = trees::Limits {
                name: "import staging tree".into(),
                max_seq: maps.seq,
                vba_limit: maps.next_vba,
            };
            tc.check_tree(st.root, &staging);
        }
        r.tree_nodes_walked = tc.walked;
        r.shared_nodes_skipped = tc.skipped;
        r.problems.append(&mut tc.problems);
        let mut referenced = std::mem::take(&mut tc.referenced);
        // A snapshot being deleted: its structure only. Its VBAs may be freed already, and
        // the ones left are still its own, not leaked.
        for d in &maps.doomed {
            let name = format!("snapshot {} ({}, being deleted)", d.id, d.name);
            maps.lba.verify(d.root, &mut r.problems, &name);
            maps.lba.range(d.root, 0, u64::MAX, &mut |_, v| {
                referenced.insert(v.0);
            });
        }
        maps.vba.verify(maps.vba_root, &mut r.problems, "VBA map");
        // The in-memory reference counts (rebuilt at open, kept by every change since): a
        // node no tree reaches, or a count off, would leak or free a shared node.
        for (name, res) in [
            ("LBA trees", maps.lba.check_refs(&roots)),
            ("VBA map", maps.vba.check_refs(&[maps.vba_root])),
        ] {
            if let Err(e) = res {
                r.problems.push(format!("{name}: node references: {e}"));
            }
        }

        // 3. VBA -> PBA: referenced, unique, inside data segments, reverse map agrees.
        let mut data_per_seg = vec![0u32; geo.segments as usize];
        let mut seen_pba = HashMap::new();
        let vbas = maps.vba.entries(maps.vba_root);
        r.vbas = vbas.len() as u64;
        for (v, e) in &vbas {
            if !referenced.contains(v) {
                r.problems.push(format!(
                    "VBA {v} (block {}) is referenced by no tree (leaked)",
                    e.pba
                ));
            }
            if *v >= maps.next_vba {
                r.problems.push(format!(
                    "VBA {v} is not below the next VBA {}",
                    maps.next_vba
                ));
            }
            let pba = block_of(e.pba);
            if !geo.is_data_block(pba) || !self.data.valid_pba(e.pba) {
                r.problems.push(format!(
                    "VBA {v} points outside the segments ({:#x})",
                    e.pba
                ));
                continue;
            }
            // A raw block has one VBA; a packed one any number, counted once.
            let packed = place::slot_of(e.pba).is_some();
            let first = match seen_pba.entry(pba) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(packed);
                    true
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    if !packed || !*o.get() {
                        r.problems.push(format!("block {pba} is used by two VBAs"));
                    }
                    false
                }
            };
            let agrees = if packed {
                maps.packed_owners(pba).contains(v) && maps.owner(pba).is_none()
            } else {
                maps.owner(pba) == Some(*v)
            };
            if !agrees {
                r.problems
                    .push(format!("reverse map disagrees for block {pba}"));
            }
            let seg = geo.segment_of(pba);
            if st.sut.kind(seg) != SegKind::Data {
                r.problems.push(format!(
                    "VBA {v} lives in segment {seg} of kind {:?}",
                    st.sut.kind(seg)
                ));
            }
            if first {
                data_per_seg[seg as usize] += 1;
            }
        }

        // 4. Metadata blocks: re-read and verify, count per segment.
        let mut meta = check_nodes_on_disk(self, &maps.lba, &roots, &mut r);
        meta.extend(check_nodes_on_disk(
            self,
            &maps.vba,
            &[maps.vba_root],
            &mut r,
        ));
        meta.extend(
            maps.lba
                .garbage
                .iter()
                .chain(&maps.vba.garbage)
                .chain(&st.ckpt_blocks),
        );
        let mut meta_per_seg = vec![0u32; geo.segments as usize];
        for p in meta {
            if let Some(c) = meta_per_seg.get_mut(geo.segment_of(p) as usize) {
                *c += 1;
            }
        }

        // 5. The SUT against the recount.
        for seg in geo.first_data_segment()..geo.segments {
            let want = data_per_seg[seg as usize] + meta_per_seg[seg as usize];
            let have = st.sut.live(seg);
            if want != have {
                r.problems.push(format!(
                    "segment {seg}: usage table says {have} live blocks, the maps use {want}"
                ));
            }
        }
        if st.sut.underflows > 0 {
            r.problems.push(format!(
                "segment usage went below zero {} times",
                st.sut.underflows
            ));
        }

        // 6. Every data block against its checksum, as stored: the data of an encrypted
        // container with CIPHERTEXT_CRC is not decrypted (see scrub.rs).
        let mut stored: Vec<StoredBlock> = vbas
            .iter()
            .filter(|(_, e)| geo.is_data_block(block_of(e.pba)) && self.data.valid_pba(e.pba))
            .map(|(v, e)| StoredBlock {
                pba: e.pba,
                vba: *v,
                crc: e.crc,
            })
            .collect();
        r.data_blocks_verified =
            check_stored(&self.data, &mut stored, &mut r.problems, MAX_PROBLEMS);
        drop(j);
        r.problems.truncate(MAX_PROBLEMS);
        r
    }
}
