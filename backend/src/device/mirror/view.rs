//! The mirror set's shared state, as persisted in every reachable component's metadata:
//! each component's state and last LSN, the tracking bitmap of every outage, the sync bitmap
//! of every resync in progress, and the delta components.
//!
//! The copy with the highest generation wins at open, so a component that was away (and
//! so missed updates) cannot roll the set back.

use super::chunk_bitmap::ChunkBitmap;
use super::state::ComponentState;
use serde::{Deserialize, Serialize};

/// Where a resync copies from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An in-sync mirror component (index).
    Mirror(usize),
    /// The delta component that collected the returning component's writes.
    Delta,
}

/// A resync in progress: what to copy (`work`) and what is already copied (`done`, the
/// sync bitmap), so a restart resumes instead of starting over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResyncPlan {
    pub source: Source,
    pub work: ChunkBitmap,
    pub done: ChunkBitmap,
}

impl ResyncPlan {
    /// Chunks still to copy.
    pub fn remaining(&self) -> u64 {
        self.work.count_ones() - self.done.count_ones()
    }

    /// Whether `chunk` holds current data on the target.
    pub fn chunk_in_sync(&self, chunk: u64) -> bool {
        !self.work.get(chunk) || self.done.get(chunk)
    }
}

/// What an absent (or returning) component missed since `start_lsn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    /// The tracking bitmap covers every write with an LSN above this one.
    pub start_lsn: u64,
    /// Chunks written since `start_lsn`, set durably before the writes they cover.
    pub tracking: ChunkBitmap,
    pub resync: Option<ResyncPlan>,
}

/// One mirror component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentRecord {
    pub path: String,
    pub state: ComponentState,
    /// The last LSN it holds durably (frozen while it is not in sync).
    pub last_lsn: u64,
    pub outage: Option<Outage>,
    /// Why it is `failed`, kept so that the next open can say it (and only while it is).
    pub failed_why: Option<String>,
}

/// A sparse stand-in that takes an absent component's writes during maintenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaRecord {
    pub for_component: usize,
    pub path: String,
    pub start_lsn: u64,
    /// The delta's own tracking bitmap: chunks it holds current data for.
    pub present: ChunkBitmap,
    /// The part of `present` known durable (as of the delta's last completed flush). After a
    /// crash only these are trusted: a chunk first written after that flush may have lost
    /// the write, and the absent component still holds the chunk as it was.
    pub durable: ChunkBitmap,
    /// A delta that missed a write can no longer serve as a source.
    pub failed: bool,
}

/// The whole set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorView {
    pub set_id: String,
    pub generation: u64,
    pub len: u64,
    pub chunk_size: u64,
    /// The LSN of the last completed flush.
    pub lsn: u64,
    pub components: Vec<ComponentRecord>,
    pub deltas: Vec<DeltaRecord>,
    /// Write-intent bitmap: chunks that may have writes not yet flushed on every copy. Set
    /// before such a write, trimmed at flush; after an unclean stop these chunks are copied
    /// from the first in-sync component to the others.
    pub intent: ChunkBitmap,
}

impl MirrorView {
    pub fn chunks(&self) -> u64 {
        self.len.div_ceil(self.chunk_size)
    }

    /// Chunk indexes `first..=last` that `[offset, offset+len)` touches (`len` > 0).
    pub fn chunk_span(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = offset / self.chunk_size;
        let last = (offset + len.max(1) - 1) / self.chunk_size;
        (first, last)
    }

    /// Byte range of a chunk, clipped to the disk.
    pub fn chunk_bytes(&self, chunk: u64) -> (u64, u64) {
        let start = chunk * self.chunk_size;
        (start, self.chunk_size.min(self.len.saturating_sub(start)))
    }

    pub fn delta_for(&self, component: usize) -> Option<&DeltaRecord> {
        self.deltas.iter().find(|d| d.for_component == component)
    }

    pub fn delta_for_mut(&mut self, component: usize) -> Option<&mut DeltaRecord> {
        self.deltas
            .iter_mut()
            .find(|d| d.for_component == component)
    }

    pub fn in_sync(&self) -> impl Iterator<Item = usize> + '_ {
        self.components
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state == ComponentState::InSync)
            .map(|(i, _)| i)
    }

    /// Whether component `i` holds current data for `chunk`.
    pub fn component_valid_for(&self, i: usize, chunk: u64) -> bool {
        let Some(c) = self.components.get(i) else {
            return false;
        };
        match c.state {
            ComponentState::InSync => true,
            ComponentState::Stale | ComponentState::Resyncing => c
                .outage
                .as_ref()
                .and_then(|o| o.resync.as_ref())
                .is_some_and(|p| p.chunk_in_sync(chunk)),
            _ => false,
        }
    }

    /// Whether the delta for `component` holds current data for `chunk`.
    pub fn delta_valid_for(&self, component: usize, chunk: u64) -> bool {
        self.delta_for(component)
            .is_some_and(|d| !d.failed && d.present.get(chunk))
    }

    /// Picks the source and chunk list to bring component `target`, whose data is current up
    /// to `stale_lsn`, back in sync: the candidate whose tracking bitmap starts at or before
    /// `stale_lsn` and names the fewest chunks (the delta wins ties: it serves no guest reads).
    /// Falls back to a full copy from a mirror when no bitmap covers `stale_lsn`.
    pub fn plan_resync(&self, target: usize, stale_lsn: Option<u64>) -> Option<ResyncPlan> {
        let chunks = self.chunks();
        let mirror = self.in_sync().find(|&i| i != target);
        let mut best: Option<(Source, &ChunkBitmap)> = None;
        if let (Some(stale), Some(d)) = (stale_lsn, self.delta_for(target))
            && !d.failed
            && d.start_lsn <= stale
        {
            best = Some((Source::Delta, &d.present));
        }
        if let (Some(stale), Some(m), Some(o)) = (
            stale_lsn,
            mirror,
            self.components.get(target).and_then(|c| c.outage.as_ref()),
        ) && o.start_lsn <= stale
            && best.is_none_or(|(_, b)| o.tracking.count_ones() < b.count_ones())
        {
            best = Some((Source::Mirror(m), &o.tracking));
        }
        match (best, mirror) {
            (Some((source, bits)), _) => Some(ResyncPlan {
                source,
                work: bits.clone(),
                done: ChunkBitmap::new(chunks),
            }),
            (None, Some(m)) => Some(ResyncPlan {
                source: Source::Mirror(m),
                work: ChunkBitmap::full(chunks),
                done: ChunkBitmap::new(chunks),
            }),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn two_way(chunks: u64) -> MirrorView {
        let rec = |p: &str| ComponentRecord {
            path: p.into(),
            state: ComponentState::InSync,
            last_lsn: 0,
            outage: None,
            failed_why: None,
        };
        MirrorView {
            set_id: "00".into(),
            generation: 1,
            len: chunks * 4096,
            chunk_size: 4096,
            lsn: 0,
            components: vec![rec("a"), rec("b")],
            deltas: vec![],
            intent: ChunkBitmap::new(chunks),
        }
    }

    #[test]
    fn plan_prefers_the_covering_bitmap_with_least_work() {
        let mut v = two_way(100);
        let mut tracking = ChunkBitmap::new(100);
        tracking.set_range(10, 19);
        v.components[1].state = ComponentState::Maintenance;
        v.components[1].outage = Some(Outage {
            start_lsn: 5,
            tracking: tracking.clone(),
            resync: None,
        });
        let mut present = ChunkBitmap::new(100);
        present.set_range(10, 14);
        v.deltas.push(DeltaRecord {
            for_component: 1,
            path: "d".into(),
            start_lsn: 7,
            durable: present.clone(),
            present,
            failed: false,
        });
        // The delta started after LSN 5: it does not cover a component stale since 5.
        let p = v.plan_resync(1, Some(5)).unwrap();
        assert_eq!((p.source, p.work.count_ones()), (Source::Mirror(0), 10));
        // Stale since 8: both cover, the delta names fewer chunks.
        let p = v.plan_resync(1, Some(8)).unwrap();
        assert_eq!((p.source, p.work.count_ones()), (Source::Delta, 5));
        // Stale before every bitmap: full copy from the mirror.
        let p = v.plan_resync(1, Some(2)).unwrap();
        assert_eq!((p.source, p.work.count_ones()), (Source::Mirror(0), 100));
        // No mirror left: only the delta can serve, and only if it covers.
        v.components[0].state = ComponentState::Failed;
        assert_eq!(v.plan_resync(1, Some(8)).unwrap().source, Source::Delta);
        assert!(v.plan_resync(1, Some(5)).is_none());
    }

    #[test]
    fn validity_per_chunk() {
        let mut v = two_way(8);
        let mut work = ChunkBitmap::new(8);
        work.set_range(2, 3);
        let mut done = ChunkBitmap::new(8);
        done.set(2);
        v.components[1].state = ComponentState::Resyncing;
        v.components[1].outage = Some(Outage {
            start_lsn: 0,
            tracking: work.clone(),
            resync: Some(ResyncPlan {
                source: Source::Mirror(0),
                work,
                done,
            }),
        });
        let valid: Vec<bool> = (0..5).map(|c| v.component_valid_for(1, c)).collect();
        assert_eq!(valid, vec![true, true, true, false, true]);
        assert!(v.component_valid_for(0, 3));
        assert!(!v.component_valid_for(2, 0));
        assert_eq!(v.chunk_span(4095, 2), (0, 1));
        assert_eq!(v.chunk_bytes(7), (7 * 4096, 4096));
    }
}
