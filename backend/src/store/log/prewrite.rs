//! Writing the snapshot trees' dirty nodes ahead of the checkpoint, in the background.
//!
//! A snapshot freezes the nodes the running point changed since the last checkpoint. They
//! never change again (a write copies them), yet they stay dirty until the next checkpoint
//! writes them, and a checkpoint holds new journal records back while it places and encodes
//! them (its freeze). With snapshots taken often, they are most of what a checkpoint writes
//! (130 000 nodes, most of a second). The cleaner thread writes them instead, a chunk at a time while the guest goes
//! on; the checkpoint then finds them clean and only names them from their parents.
//!
//! Only leaves are written here (an internal node needs its children's addresses first; they
//! are few). A leaf is placed and encoded under the maps' lock, written without it, and marked
//! clean only if it is still the same dirty leaf; otherwise its block is given back at once.
//! Nothing durable changes: until a checkpoint names them, the blocks belong to nothing.
//! Checkpoints (and fsck) take the same writer lock as a chunk, so neither sees a block placed
//! but not yet settled.

use crate::store::buf::AlignedBuf;
use crate::store::io::{BatchIo, DeviceIo};
use crate::store::layout::BLOCK;
use crate::store::log::persist::take_meta;
use crate::store::map::btree::NodeId;
use crate::store::map::sut::SegKind;
use crate::store::{Result, Store};
use std::sync::atomic::Ordering;

/// Leaves per chunk: encoding them holds the maps for about a millisecond.
const CHUNK: usize = 512;

impl Store {
    /// A snapshot was taken (or the container opened): its tree's dirty nodes are frozen.
    pub(in crate::store) fn note_frozen_nodes(&self) {
        self.prewrite_due.store(true, Ordering::Release);
        self.wake_cleaner();
    }

    /// Whether snapshot trees may have dirty leaves to write ahead of the checkpoint.
    pub fn prewrite_pending(&self) -> bool {
        self.prewrite_due.load(Ordering::Acquire)
    }

    /// Writes the dirty leaves of the snapshot trees taken since the last call (a tree only
    /// gains frozen leaves when it is taken), a chunk at a time; returns how many were
    /// written and marked clean.
    pub fn prewrite_frozen(&self) -> Result<usize> {
        self.ensure_ok()?;
        if !self.prewrite_due.swap(false, Ordering::AcqRel) {
            return Ok(0);
        }
        let picked = {
            let st = self.read_lock(&self.state);
            let after = self.prewritten_seq.load(Ordering::Acquire);
            let new: Vec<_> = (st.maps.snapshots.iter())
                .chain(st.maps.doomed.iter())
                .filter(|s| s.seq > after)
                .collect();
            let newest = new.iter().map(|s| s.seq).max().unwrap_or(after);
            self.prewritten_seq.store(newest, Ordering::Release);
            let roots: Vec<NodeId> = new.iter().map(|s| s.root).collect();
            st.maps.lba.dirty_leaves(&roots)
        };
        let mut done = 0;
        for chunk in picked.chunks(CHUNK) {
            done += self.prewrite_chunk(chunk)?;
        }
        Ok(done)
    }

    fn prewrite_chunk(&self, chunk: &[(NodeId, u64)]) -> Result<usize> {
        let mut w = self.lock(&self.prewriter);
        let (runs, placed) = {
            let mut st = self.write_lock(&self.state);
            let live: Vec<(NodeId, u64)> = (chunk.iter().copied())
                .filter(|(id, seq)| st.maps.lba.is_dirty_leaf(*id, *seq))
                .collect();
            if live.is_empty() {
                return Ok(0);
            }
            let pbas = take_meta(&mut st, &mut w, live.len(), false)?;
            for p in &pbas {
                st.sut.add(*p, SegKind::Meta);
            }
            // Runs of contiguous blocks, each encoded straight into its buffer.
            let mut runs: Vec<(u64, AlignedBuf)> = Vec::new();
            let mut i = 0;
            while i < pbas.len() {
                let mut n = 1;
                while i + n < pbas.len() && pbas[i + n] == pbas[i] + n as u64 && n < 1024 {
                    n += 1;
                }
                let mut ab = AlignedBuf::blocks(n);
                for k in 0..n {
                    let (id, _) = live[i + k];
                    st.maps.lba.encode_node(id, pbas[i + k], ab.block_mut(k));
                }
                runs.push((pbas[i], ab));
                i += n;
            }
            let placed: Vec<(NodeId, u64, u64)> = (live.iter().zip(&pbas))
                .map(|(&(id, seq), &p)| (id, seq, p))
                .collect();
            (runs, placed)
        };
        let writes: Vec<(u64, &[u8])> = runs.iter().map(|(p, b)| (p * BLOCK, &b[..])).collect();
        let res = DeviceIo(self.dev.as_ref()).write_all(&writes);
        let mut st = self.write_lock(&self.state);
        let mut marked = 0;
        for (id, seq, pba) in placed {
            if res.is_ok() && st.maps.lba.is_dirty_leaf(id, seq) {
                st.maps.lba.set_disk(id, pba);
                marked += 1;
            } else {
                st.sut.dec(pba);
            }
        }
        res?;
        Ok(marked)
    }
}
