//! Diffs between two points of a disk as `keel diff`, exports and the control API use them:
//! naming the two sides, extents and reports, over the tree walk in
//! [`diff_walk`](crate::store::map::diff_walk).

use crate::store::Store;
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, block_of, place};
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK;
use crate::store::map::btree::NodeId;
pub use crate::store::map::diff_walk::{ChangedBlock, TreeDiff, diff_trees};
use crate::store::map::maps::VbaEntry;
use crate::store::map::pins::PinGuard;
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
            let at = block_of(entries[i].pba) * BLOCK;
            self.data.read_raw(&mut ab, at)?;
            self.data.covered(&mut ab, at)?;
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
            }
            // Every block checked: decrypted for the caller.
            self.data.plaintext(&mut ab, at, |j| {
                Some((*vbas.get(i + j)?, entries.get(i + j)?.pba))
            })?;
            for j in 0..n {
                let block = ab.block(j);
                let at = (i + j) * BLOCK as usize;
                compress::expand(
                    self.codec,
                    self.dict.get().map(|d| &**d),
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
