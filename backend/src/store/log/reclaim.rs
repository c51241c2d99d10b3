//! Giving back a deleted snapshot's blocks, in the background.
//!
//! A delete only takes the snapshot off the list (one journal record). Its tree stays, frozen,
//! until this work is done: the candidates come from one diff against the next newer tree,
//! which holds everything else (sorted by kind, see [`Maps::unheld`](crate::store::map::maps::Maps::unheld));
//! then, a chunk at a time,
//! those no live tree holds are freed by one Release record, applied in order with the
//! guest's batches like any other. When all are done the tree itself is dropped.
//!
//! Nothing here needs to survive a crash: checkpoints list the snapshot as being deleted,
//! recovery replays the Release records that made it, and the work starts again from a fresh
//! diff (freeing a VBA already gone is a no-op, and one that no live tree holds never becomes
//! held again: trees only gain new VBAs, or the ones of a live snapshot they revert to).

use crate::store::log::journal::Entry;
use crate::store::log::write::Committer;
use crate::store::map::maps::Reclaim;
use crate::store::{Result, Store};

/// Candidates checked and freed per Release record: small enough that applying one holds
/// the maps for about a millisecond.
const CHUNK: usize = if cfg!(test) { 48 } else { 1024 };

/// The deleted snapshot being worked on.
pub(in crate::store) struct Progress {
    plan: Reclaim,
    /// Candidates done, counting `owned` then `inherited`.
    done: usize,
}

impl Store {
    /// Whether a deleted snapshot still has blocks to give back.
    pub fn reclaim_pending(&self) -> bool {
        self.deleting_snapshots() > 0
    }

    /// Deleted snapshots whose blocks are still being given back.
    pub fn deleting_snapshots(&self) -> usize {
        self.read_lock(&self.state).maps.doomed.len()
    }

    /// Gives back one chunk of the oldest deleted snapshot's blocks (at most one journal
    /// record), or drops its tree when none are left. Returns whether work remains.
    pub fn reclaim_step(&self) -> Result<bool> {
        self.ensure_ok()?;
        let mut progress = self.lock(&self.reclaim);
        if progress.is_none() {
            let st = self.read_lock(&self.state);
            let Some(first) = st.maps.doomed.first() else {
                return Ok(false);
            };
            *progress = st
                .maps
                .reclaim_candidates(first.id)
                .map(|plan| Progress { plan, done: 0 });
        }
        let Some(p) = progress.as_mut() else {
            return Ok(false);
        };
        let (owned, inherited) = (p.plan.owned.len(), p.plan.inherited.len());
        if p.done >= owned + inherited {
            let id = p.plan.id;
            *progress = None;
            let mut st = self.write_lock(&self.state);
            st.maps.drop_doomed(id);
            return Ok(!st.maps.doomed.is_empty());
        }
        let end = (p.done + CHUNK).min(owned + inherited);
        let o = &p.plan.owned[p.done.min(owned)..end.min(owned)];
        let i = &p.plan.inherited[p.done.saturating_sub(owned)..end.saturating_sub(owned)];
        let free = self.read_lock(&self.state).maps.unheld(p.plan.seq, o, i);
        p.done = end;
        if !free.is_empty() {
            let entries = free.iter().map(|&vba| Entry::Release { vba }).collect();
            self.commit_with(entries, Vec::new(), &mut Vec::new(), Committer::InOrder)?;
        }
        Ok(true)
    }

    /// Gives back every deleted snapshot's blocks now (tools, tests, a writer out of space).
    pub fn reclaim_all(&self) -> Result<()> {
        while self.reclaim_step()? {}
        Ok(())
    }
}
