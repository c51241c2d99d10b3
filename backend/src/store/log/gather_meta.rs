//! Gathering sparse metadata segments. A tree node's block dies only when a checkpoint
//! supersedes the node, so a node that does not change keeps its segment alive long after the
//! segment's other nodes were superseded. The nodes in Meta segments at most half live are
//! marked dirty (with their ancestors), and an ordinary live checkpoint writes them elsewhere:
//! the segments empty and are free once it commits.
//!
//! The marking needs the maps' lock only, not the journal: it changes which nodes are dirty,
//! never what the maps say, so it need not be ordered with the records (they apply under the
//! same lock and keep a dirty node dirty), and nothing of it is durable until a checkpoint
//! writes the nodes (a crash before that recovers the old checkpoint, whose blocks are still
//! counted live). Two things it must not race with, both settled under that lock:
//! - the trees a checkpoint froze and still encodes: a marked node loses its block, and a
//!   frozen parent encoded afterwards would name no block for it. The marking waits until no
//!   tree is pinned.
//! - the freeze that writes the marked nodes: every freeze after the marking places every
//!   dirty node, and only a freeze (or writing ahead, elsewhere) gives a dirty node a block,
//!   so the marks reach the next checkpoint whoever takes it, and the blocks they superseded
//!   die in its usage table.

use crate::store::error::{Result, StoreError};
use crate::store::layout::Geometry;
use crate::store::map::sut::{SegKind, Sut};
use crate::store::stats::Counters;
use crate::store::{State, Store};
use std::collections::HashSet;
use std::time::Instant;

/// Meta segments no writer has open that are at most half live.
fn sparse_meta_segments(sut: &Sut, geo: &Geometry, segments: u64) -> Vec<u64> {
    let half = (geo.seg_blocks / 2) as u32;
    (geo.first_data_segment()..segments)
        .filter(|s| sut.kind(*s) == SegKind::Meta && !sut.is_open(*s) && sut.live(*s) <= half)
        .collect()
}

impl Store {
    /// Frees sparse metadata segments: marks the nodes stored in them dirty, then takes a
    /// live checkpoint (guest batches wait only for its freeze), after which those segments
    /// are free. Returns the nodes marked.
    pub fn clean_meta(&self) -> Result<usize> {
        self.ensure_ok()?;
        let marked = self.mark_sparse_meta()?;
        if marked > 0 {
            self.checkpoint()?;
        }
        Ok(marked)
    }

    /// Marks dirty every node stored in a sparse metadata segment, and its ancestors, in every
    /// tree that reaches it, under the maps' lock alone (see the module comment); the next
    /// checkpoint writes them elsewhere. Returns the nodes marked.
    pub(in crate::store) fn mark_sparse_meta(&self) -> Result<usize> {
        loop {
            self.ensure_ok()?;
            if let Some(marked) = self.try_mark_sparse_meta() {
                return Ok(marked);
            }
            // A checkpoint still encodes the trees it froze: wait until it is done.
            let j = self.lock(&self.journal);
            drop(self.wait_checkpoint_done(j));
            if self.poisoned() {
                return Err(StoreError::Failed);
            }
        }
    }

    /// [`mark_sparse_meta`](Self::mark_sparse_meta), unless a checkpoint still encodes the
    /// trees it froze: `None` then, and nothing is marked.
    pub(in crate::store) fn try_mark_sparse_meta(&self) -> Option<usize> {
        let mut st = self.write_lock(&self.state);
        if st.maps.lba.is_pinned() || st.maps.vba.is_pinned() {
            return None;
        }
        let t0 = Instant::now();
        let marked = self.mark_in(&mut st);
        drop(st);
        if marked > 0 {
            Counters::add(&self.stats.meta_gathers, 1);
            Counters::add(&self.stats.meta_nodes_marked, marked as u64);
            Counters::add_since(&self.stats.meta_mark_us, t0);
        }
        Some(marked)
    }

    /// The marking itself; the caller holds the maps' lock and saw no tree pinned.
    fn mark_in(&self, st: &mut State) -> usize {
        let sparse: HashSet<u64> = sparse_meta_segments(&st.sut, &self.geo, self.segments())
            .into_iter()
            .collect();
        if sparse.is_empty() {
            return 0;
        }
        let geo = self.geo;
        let doomed = |pba: u64| sparse.contains(&geo.segment_of(pba));
        let maps = &mut st.maps;
        let roots = maps.lba_roots();
        let vba_root = maps.vba_root;
        maps.lba.evacuate(&roots, &doomed) + maps.vba.evacuate(&[vba_root], &doomed)
    }

    /// Whether enough metadata segments are sparse for [`clean_meta`](Self::clean_meta) to
    /// be worth its checkpoint (which rewrites every node it moves): as many as half the
    /// reserve.
    pub fn meta_sparse(&self) -> bool {
        let enough = (self.geometry().reserved_segments() / 2).max(2) as usize;
        self.sparse_meta_segments().len() >= enough
    }

    /// The metadata segments [`clean_meta`](Self::clean_meta) would gather now.
    pub fn sparse_meta_segments(&self) -> Vec<u64> {
        let st = self.read_lock(&self.state);
        sparse_meta_segments(&st.sut, &self.geo, self.segments())
    }
}
