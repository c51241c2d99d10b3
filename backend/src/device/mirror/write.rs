//! The mirror's write path: a guest write (or discard) fans out to every component that takes
//! writes, covering the chunks of absent ones first; a flush makes them durable everywhere.

use super::chunk_bitmap::ChunkBitmap;
use super::error::MirrorError;
use super::fanout::Job;
use super::shared::{Shared, State, Target};
use super::state::ComponentState;
use crate::device::{BlockDevice, check_range};
use crate::store::buf::AlignedBuf;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;

/// Per delta (keyed by the component it stands in for): edge chunks to fill, with sources.
type Fills = HashMap<usize, Vec<(u64, Vec<Arc<dyn BlockDevice>>)>>;

impl Shared {
    /// Sets the tracking bits of absent components and the presence bits of deltas for
    /// `first..=last`, persisting before returning if any bit was new.
    fn cover_chunks(&self, st: &mut State, first: u64, last: u64) -> Result<(), MirrorError> {
        let mut changed = false;
        for rec in st.view.components.iter_mut() {
            if let Some(o) = rec.outage.as_mut().filter(|_| rec.state.is_absent())
                && !o.tracking.all_set(first, last)
            {
                o.tracking.set_range(first, last);
                changed = true;
            }
        }
        for d in st.view.deltas.iter_mut().filter(|d| !d.failed) {
            if !d.present.all_set(first, last) {
                d.present.set_range(first, last);
                changed = true;
            }
        }
        let (rfirst, rlast) = self.intent_span(first, last);
        if self.options.write_intent
            && !st.view.intent.all_set(rfirst, rlast)
            && Self::write_targets(st).len() > 1
        {
            st.view.intent.set_range(rfirst, rlast);
            changed = true;
        }
        if changed {
            self.persist(st)?;
        }
        Ok(())
    }

    /// Chunks per write-intent region.
    fn intent_region_chunks(&self) -> u64 {
        (self.options.intent_region / self.chunk_size).max(1)
    }

    /// `first..=last` widened to whole write-intent regions (clamped to the disk).
    fn intent_span(&self, first: u64, last: u64) -> (u64, u64) {
        let r = self.intent_region_chunks();
        let chunks = self.len.div_ceil(self.chunk_size);
        (
            first / r * r,
            ((last / r + 1) * r).min(chunks).saturating_sub(1),
        )
    }

    /// Every write-intent region holding a chunk set in `bits`, as chunks.
    fn intent_regions_of(&self, bits: &ChunkBitmap) -> ChunkBitmap {
        let r = self.intent_region_chunks();
        let mut out = ChunkBitmap::new(bits.chunks());
        let mut at = 0;
        while let Some(c) = bits.next_set(at) {
            let (a, b) = self.intent_span(c, c);
            out.set_range(a, b);
            at = (c / r + 1) * r;
        }
        out
    }

    /// Adds the chunks written since the last completed flush to the write-intent bitmap (not
    /// persisted). Called when a component starts taking writes again: writes made while the
    /// set had a single target set no intent bits, and the resync may copy them to the
    /// returning component before the source has them durably.
    pub(super) fn intend_unflushed(&self, st: &mut State) {
        if !self.options.write_intent {
            return;
        }
        let mut dirty = st.dirty_cur.clone();
        if let Some(p) = &st.dirty_prev {
            dirty.union_with(p);
        }
        let regions = self.intent_regions_of(&dirty);
        st.view.intent.union_with(&regions);
    }

    /// Takes out every target that failed while another succeeded; an error only if all failed.
    fn settle(
        &self,
        targets: &[(Target, Arc<dyn BlockDevice>)],
        results: Vec<io::Result<()>>,
        what: &str,
    ) -> io::Result<()> {
        if results.iter().all(|r| r.is_ok()) {
            return Ok(());
        }
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let mut first_err = None;
        let mut failed = Vec::new();
        for ((t, _), r) in targets.iter().zip(results) {
            if let Err(e) = r {
                failed.push((*t, e.to_string()));
                first_err.get_or_insert(e);
            }
        }
        if ok == 0 {
            log::error!("mirror {}: {what} failed on every component", self.name);
            return Err(first_err.unwrap_or_else(|| io::Error::other("no component")));
        }
        let mut st = self.lock_state();
        for (t, e) in failed {
            self.take_out(&mut st, t, &format!("{what} error: {e}"));
        }
        self.persist(&mut st)?;
        Ok(())
    }

    pub(super) fn write_like(&self, data: Option<&[u8]>, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.len, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let _req = self.guest.begin();
        let _gate = self.read_gate();
        let chunk = self.chunk_size;
        let (first, last) = (offset / chunk, (offset + len - 1) / chunk);
        let (targets, fills, lock_chunks) = {
            let mut st = self.lock_state();
            let fills = self.delta_fills(&st, offset, len)?;
            st.dirty_cur.set_range(first, last);
            self.clock.next();
            self.cover_chunks(&mut st, first, last)?;
            let lock = st.catching_up || !st.deltas.is_empty();
            (Self::write_targets(&st), fills, lock)
        };
        if targets.is_empty() {
            return Err(MirrorError::NoUsableComponent.into());
        }
        let _chunks = lock_chunks.then(|| self.chunk_locks.lock_range(first, last));
        let one = |(t, dev): &(Target, Arc<dyn BlockDevice>)| {
            if let Target::Delta(c) = t
                && let Some(edges) = fills.get(c)
            {
                return self.write_filled(dev.as_ref(), edges, data, offset, len);
            }
            match data {
                Some(buf) => dev.write_at(buf, offset),
                None => dev.discard(offset, len),
            }
        };
        let parallel = self
            .options
            .parallel_write_min
            .is_some_and(|min| targets.len() > 1 && len as usize >= min);
        let results: Vec<io::Result<()>> = match self.fanout.as_ref().filter(|_| parallel) {
            Some(fanout) => {
                // Components after the first go to the writers with a shared copy of the
                // data; the first component, and deltas (which may need edge fills), are
                // written here meanwhile.
                let shared_data: Option<Arc<AlignedBuf>> =
                    data.map(|d| Arc::new(AlignedBuf::copy_of(d)));
                let mut jobs: Vec<(usize, Job)> = Vec::new();
                for (slot, (t, dev)) in targets.iter().enumerate().skip(1) {
                    if let Target::Component(_) = t {
                        let (dev, d) = (Arc::clone(dev), shared_data.clone());
                        let job: Job = Box::new(move || match d {
                            Some(b) => dev.write_at(&b, offset),
                            None => dev.discard(offset, len),
                        });
                        jobs.push((slot, job));
                    }
                }
                let mut out: Vec<Option<io::Result<()>>> = targets.iter().map(|_| None).collect();
                let pending = fanout.submit(jobs);
                for (slot, t) in targets.iter().enumerate() {
                    if slot == 0 || !matches!(t.0, Target::Component(_)) {
                        out[slot] = Some(one(t));
                    }
                }
                pending.wait(&mut out);
                out.into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(io::Error::other("mirror writer lost"))))
                    .collect()
            }
            None => targets.iter().map(one).collect(),
        };
        self.settle(
            &targets,
            results,
            if data.is_some() { "write" } else { "discard" },
        )
    }

    /// For each delta, the edge chunks of `[offset, offset+len)` that the write covers only in
    /// part and that the delta does not hold yet, with the components to fill them from: a
    /// delta holds whole chunks, so it can serve them alone and resync can copy them whole.
    /// Fails when such a chunk has no source (the mirrors are gone; only the delta is left).
    fn delta_fills(&self, st: &State, offset: u64, len: u64) -> Result<Fills, MirrorError> {
        let mut out = Fills::new();
        if st.deltas.is_empty() {
            return Ok(out);
        }
        let chunk = self.chunk_size;
        let (first, last) = (offset / chunk, (offset + len - 1) / chunk);
        let end = offset + len;
        for d in st.view.deltas.iter().filter(|d| !d.failed) {
            let mut edges = Vec::new();
            for k in [first, last] {
                let (start, clen) = st.view.chunk_bytes(k);
                let whole = offset <= start && end >= start + clen;
                if whole || d.present.get(k) || edges.iter().any(|(e, _)| *e == k) {
                    continue;
                }
                let sources: Vec<_> = Self::read_sources(st, k, k)
                    .into_iter()
                    .filter(|(t, _)| matches!(t, Target::Component(_)))
                    .map(|(_, dev)| dev)
                    .collect();
                if sources.is_empty() {
                    return Err(MirrorError::NoUsableComponent);
                }
                edges.push((k, sources));
            }
            if !edges.is_empty() {
                out.insert(d.for_component, edges);
            }
        }
        Ok(out)
    }

    /// Writes `[offset, offset+len)` to a delta widened to whole chunks, the edge chunks'
    /// other bytes read from a component that holds them.
    fn write_filled(
        &self,
        dev: &dyn BlockDevice,
        edges: &[(u64, Vec<Arc<dyn BlockDevice>>)],
        data: Option<&[u8]>,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        let chunk = self.chunk_size;
        let (first, last) = (offset / chunk, (offset + len - 1) / chunk);
        // Widen only at an edge being filled: a chunk the delta already holds keeps its bytes.
        let start = if edges.iter().any(|(k, _)| *k == first) {
            first * chunk
        } else {
            offset
        };
        let end = if edges.iter().any(|(k, _)| *k == last) {
            ((last + 1) * chunk).min(self.len)
        } else {
            offset + len
        };
        let mut buf = AlignedBuf::zeroed((end - start) as usize);
        for (k, sources) in edges {
            let at = k * chunk;
            let n = chunk.min(self.len - at) as usize;
            let Some(slot) = at
                .checked_sub(start)
                .and_then(|rel| buf.get_mut(rel as usize..rel as usize + n))
            else {
                return Err(io::Error::other("delta fill outside the write"));
            };
            let mut filled = Err(io::Error::other("no source for a delta fill"));
            for src in sources {
                filled = src.read_at(slot, at);
                if filled.is_ok() {
                    break;
                }
            }
            filled?;
        }
        let rel = (offset - start) as usize;
        match data {
            Some(d) => buf[rel..rel + d.len()].copy_from_slice(d),
            None => buf[rel..rel + len as usize].fill(0),
        }
        dev.write_at(&buf, start)
    }

    /// Makes all completed writes durable on every target, then records the flushed LSN.
    pub fn flush_all(&self) -> io::Result<()> {
        let _one_flush = self.unpoison(self.flush_lock.lock(), "flush");
        let (targets, lsn, present) = {
            let _gate = self.write_gate();
            let mut st = self.lock_state();
            let chunks = st.dirty_cur.chunks();
            let cur = std::mem::replace(&mut st.dirty_cur, ChunkBitmap::new(chunks));
            match st.dirty_prev.as_mut() {
                Some(p) => p.union_with(&cur),
                None => st.dirty_prev = Some(cur),
            }
            let present: Vec<(usize, ChunkBitmap)> = st
                .view
                .deltas
                .iter()
                .map(|d| (d.for_component, d.present.clone()))
                .collect();
            (Self::write_targets(&st), self.clock.last(), present)
        };
        if targets.is_empty() {
            return Err(MirrorError::NoUsableComponent.into());
        }
        let results = targets.iter().map(|(_, d)| d.flush()).collect();
        self.settle(&targets, results, "flush")?;
        let mut st = self.lock_state();
        let mut changed = false;
        for (c, bits) in present {
            if let Some(d) = st.view.delta_for_mut(c).filter(|d| !d.failed)
                && !bits.is_subset_of(&d.durable)
            {
                d.durable.union_with(&bits);
                changed = true;
            }
        }
        if self.options.write_intent {
            // Keep the epoch just flushed as well as the current one: a chunk written again
            // soon does not pay for another metadata update.
            let mut dirty = st.dirty_cur.clone();
            if let Some(p) = &st.dirty_prev {
                dirty.union_with(p);
            }
            let intent = self.intent_regions_of(&dirty);
            if intent != st.view.intent {
                st.view.intent = intent;
                changed = true;
            }
        }
        if lsn > st.view.lsn {
            st.view.lsn = lsn;
            for rec in st.view.components.iter_mut() {
                if rec.state == ComponentState::InSync {
                    rec.last_lsn = lsn;
                }
            }
            changed = true;
        }
        if changed {
            self.persist(&mut st)?;
        }
        st.dirty_prev = None;
        Ok(())
    }
}
