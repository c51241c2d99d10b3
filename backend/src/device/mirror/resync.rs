//! The resync copier: copies the chunks a resync plan names from its source onto the
//! returning component, checkpointing the sync bitmap so a crash resumes rather than restarts.
//!
//! Each chunk is copied under its chunk lock, and guest writes to a catching-up component take
//! the same lock, so a guest write is either before the copy (the source has it, the copy
//! carries it) or after (it lands on the target itself). Sync bits are persisted only after the
//! target is flushed, so a bit set on disk always means the chunk's copy is durable. The copier
//! runs in the batch scheduling class and pauses while the guest is busy (see `throttle`).

use super::device::MirrorDevice;
use super::error::MirrorError;
use super::shared::{Shared, Target};
use super::state::ComponentState;
use super::throttle::{BatchScheduling, Throttle};
use super::view::Source;
use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// How a call to the copier ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncOutcome {
    /// The component is in sync; `bytes` copied by this call.
    Completed { bytes: u64 },
    /// The chunk budget ran out first; call again to continue.
    Paused { bytes: u64 },
    /// The component left the catching-up states (taken offline, failed, replaced).
    Interrupted { bytes: u64 },
}

/// One chunk to copy and the devices to copy it with.
struct Step {
    chunk: u64,
    offset: u64,
    len: u64,
    source: Source,
    from: Arc<dyn BlockDevice>,
    to: Arc<dyn BlockDevice>,
}

enum Next {
    Copy(Step),
    Finished,
    Gone,
}

impl Shared {
    /// Finds the next chunk to copy at or after `cursor`, re-picking the source if the planned
    /// one is gone.
    fn next_step(&self, n: usize, cursor: u64) -> Result<Next, MirrorError> {
        let mut st = self.lock_state();
        let st = &mut *st;
        let Some(rec) = st.view.components.get(n) else {
            return Ok(Next::Gone);
        };
        if rec.state != ComponentState::Resyncing {
            return Ok(Next::Gone);
        }
        let Some(to) = st.comps.get(n).and_then(|r| r.data.clone()) else {
            return Ok(Next::Gone);
        };
        let first_mirror = st.view.in_sync().find(|&i| i != n);
        let tracking = rec.outage.as_ref().map(|o| o.tracking.clone());
        let Some(planned) = rec
            .outage
            .as_ref()
            .and_then(|o| o.resync.as_ref())
            .map(|p| p.source)
        else {
            return Ok(Next::Gone);
        };
        let usable = match planned {
            Source::Mirror(m) => st
                .view
                .components
                .get(m)
                .is_some_and(|c| c.state == ComponentState::InSync),
            Source::Delta => st.deltas.contains_key(&n),
        };
        let Some(plan) = st
            .view
            .components
            .get_mut(n)
            .and_then(|r| r.outage.as_mut())
            .and_then(|o| o.resync.as_mut())
        else {
            return Ok(Next::Gone);
        };
        if !usable {
            // The delta's bits are a subset of the tracking bitmap, so a mirror copying the
            // tracking bitmap too covers everything the delta would have.
            let m = first_mirror.ok_or(MirrorError::NoSource(n))?;
            if let (Source::Delta, Some(t)) = (plan.source, tracking) {
                plan.work.union_with(&t);
            }
            plan.source = Source::Mirror(m);
            self.event(format!(
                "resync of component {n} now copies from component {m}"
            ));
        }
        let mut chunk = cursor;
        let found = loop {
            match plan.work.next_set(chunk) {
                Some(c) if plan.done.get(c) => chunk = c + 1,
                other => break other,
            }
        };
        let Some(chunk) = found else {
            return Ok(Next::Finished);
        };
        let source = plan.source;
        let from = match source {
            Source::Mirror(m) => st.comps.get(m).and_then(|r| r.data.clone()),
            Source::Delta => st.deltas.get(&n).map(|d| d.data.clone()),
        }
        .ok_or(MirrorError::NoSource(n))?;
        let (offset, len) = st.view.chunk_bytes(chunk);
        Ok(Next::Copy(Step {
            chunk,
            offset,
            len,
            source,
            from,
            to,
        }))
    }

    /// Makes the copies of `copied` durable, then records them as done, durably.
    ///
    /// With the write-intent bitmap, only the target is flushed. A copied chunk may carry
    /// guest writes not yet durable on the source, but every such chunk lies in the durable
    /// intent bitmap (`online` and `replace` add the chunks written since the last flush),
    /// and after a crash the open takes intent chunks out of the sync bitmap and copies them
    /// again from the first in-sync component. Without the bitmap the whole set is flushed,
    /// so the target never durably holds what another component could still lose. Flushing
    /// only the target keeps the checkpoint from forcing out the guest's dirty data on the
    /// in-sync components, and it leaves the guest's flush epochs alone.
    fn checkpoint(&self, n: usize, copied: &mut Vec<u64>) -> Result<(), MirrorError> {
        if copied.is_empty() {
            return Ok(());
        }
        if self.options.write_intent {
            let target = self.lock_state().comps.get(n).and_then(|r| r.data.clone());
            let Some(target) = target else {
                // Taken out meanwhile: its progress no longer counts.
                copied.clear();
                return Ok(());
            };
            if let Err(e) = target.flush() {
                copied.clear();
                let mut st = self.lock_state();
                self.take_out(
                    &mut st,
                    Target::Component(n),
                    &format!("resync flush error: {e}"),
                );
                self.persist(&mut st)?;
                return Err(MirrorError::io("flushing the resync target", e));
            }
        } else if let Err(e) = self.flush_all() {
            copied.clear();
            return Err(MirrorError::io("flushing before a resync checkpoint", e));
        }
        let mut st = self.lock_state();
        if let Some(plan) = st
            .view
            .components
            .get_mut(n)
            .filter(|r| r.state == ComponentState::Resyncing)
            .and_then(|r| r.outage.as_mut())
            .and_then(|o| o.resync.as_mut())
        {
            for &c in copied.iter() {
                plan.done.set(c);
            }
        }
        copied.clear();
        self.persist(&mut st)
    }

    /// Declares component `n` in sync and drops its outage and delta. The set is flushed
    /// first: the copies may hold guest writes that the source has not made durable yet, and
    /// an in-sync component that holds writes the others could lose in a crash would, as the
    /// lowest-numbered copy, win the reconciliation at the next open.
    fn complete(&self, n: usize) -> Result<bool, MirrorError> {
        if self.options.write_intent {
            self.flush_all()
                .map_err(|e| MirrorError::io("flushing before a resync completes", e))?;
        }
        let _gate = self.write_gate();
        let mut st = self.lock_state();
        let st = &mut *st;
        let lsn = st.view.lsn;
        let Some(rec) = st.view.components.get_mut(n) else {
            return Ok(false);
        };
        let finished = rec.state == ComponentState::Resyncing
            && rec
                .outage
                .as_ref()
                .and_then(|o| o.resync.as_ref())
                .is_some_and(|p| p.remaining() == 0);
        if !finished {
            return Ok(false);
        }
        rec.state = ComponentState::InSync;
        rec.outage = None;
        rec.last_lsn = lsn;
        if let Some(pos) = st.view.deltas.iter().position(|d| d.for_component == n) {
            let d = st.view.deltas.remove(pos);
            st.deltas.remove(&n);
            if let Err(e) = self.provider.remove(Path::new(&d.path)) {
                log::warn!("mirror {}: removing delta {}: {e}", self.name, d.path);
            }
        }
        st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
        self.persist(st)?;
        self.event(format!("component {n} in sync"));
        Ok(true)
    }

    /// Runs component `n`'s resync for at most `max_chunks` chunks (all if `None`).
    pub fn run_resync(
        self: &Arc<Self>,
        n: usize,
        max_chunks: Option<u64>,
    ) -> Result<ResyncOutcome, MirrorError> {
        {
            let mut st = self.lock_state();
            let state = st
                .view
                .components
                .get(n)
                .map(|c| c.state)
                .ok_or(MirrorError::NoSuchComponent(n))?;
            if !state.is_catching_up() {
                return Err(MirrorError::WrongState {
                    index: n,
                    state,
                    operation: "resync",
                    wanted: "stale or resyncing",
                });
            }
            if let Some(r) = st.view.components.get_mut(n) {
                r.state = ComponentState::Resyncing;
            }
            if let Some(rt) = st.comps.get_mut(n) {
                rt.counters.run_started = Some(Instant::now());
                rt.counters.run_bytes = 0;
            }
        }
        let _batch = BatchScheduling::enter();
        let mut throttle = Throttle::new(
            self.options.throttle,
            std::sync::Arc::clone(&self.options.resync_rate),
        );
        let mut copied: Vec<u64> = Vec::new();
        let mut cursor = 0u64;
        let mut bytes = 0u64;
        let mut budget = max_chunks;
        // Aligned, so O_DIRECT components take the copies as they are.
        let mut chunk_buf = AlignedBuf::scratch_len(self.chunk_size as usize);
        loop {
            let step = match self.next_step(n, cursor) {
                Ok(Next::Copy(step)) => step,
                Ok(Next::Finished) => {
                    // A source switch may add chunks behind the cursor: sweep again from the
                    // start until a sweep finds nothing.
                    if cursor == 0 {
                        break;
                    }
                    self.checkpoint(n, &mut copied)?;
                    cursor = 0;
                    continue;
                }
                Ok(Next::Gone) => {
                    self.checkpoint(n, &mut copied)?;
                    return Ok(ResyncOutcome::Interrupted { bytes });
                }
                Err(e) => {
                    self.checkpoint(n, &mut copied)?;
                    return Err(e);
                }
            };
            if budget == Some(0) {
                self.checkpoint(n, &mut copied)?;
                return Ok(ResyncOutcome::Paused { bytes });
            }
            throttle.pace(step.len, &self.guest);
            let Some(buf) = chunk_buf.get_mut(..step.len as usize) else {
                return Err(MirrorError::io(
                    format!("resync of chunk {}", step.chunk),
                    std::io::Error::other("chunk longer than the chunk size"),
                ));
            };
            let (read, wrote) = {
                let _lock = self.chunk_locks.lock_range(step.chunk, step.chunk);
                let read = step.from.read_at(buf, step.offset);
                let wrote = match read {
                    Ok(()) => step.to.write_at(buf, step.offset),
                    Err(_) => Ok(()),
                };
                (read, wrote)
            };
            if let Err(e) = read {
                let mut st = self.lock_state();
                let source = match step.source {
                    Source::Mirror(m) => Target::Component(m),
                    Source::Delta => Target::Delta(n),
                };
                let others = st
                    .view
                    .in_sync()
                    .filter(|&i| Target::Component(i) != source)
                    .count();
                if others == 0 && step.source != Source::Delta {
                    drop(st);
                    self.checkpoint(n, &mut copied)?;
                    return Err(MirrorError::io(
                        format!("resync read of chunk {}", step.chunk),
                        e,
                    ));
                }
                self.take_out(&mut st, source, &format!("resync read error: {e}"));
                self.persist(&mut st)?;
                continue;
            }
            if let Err(e) = wrote {
                let mut st = self.lock_state();
                self.take_out(
                    &mut st,
                    Target::Component(n),
                    &format!("resync write error: {e}"),
                );
                self.persist(&mut st)?;
                return Err(MirrorError::io(
                    format!("resync write of chunk {}", step.chunk),
                    e,
                ));
            }
            copied.push(step.chunk);
            cursor = step.chunk + 1;
            bytes += step.len;
            budget = budget.map(|b| b - 1);
            if let Some(rt) = self.lock_state().comps.get_mut(n) {
                rt.counters.bytes_copied += step.len;
                rt.counters.run_bytes += step.len;
            }
            if copied.len() as u64 >= self.options.checkpoint_chunks.max(1) {
                self.checkpoint(n, &mut copied)?;
            }
        }
        self.checkpoint(n, &mut copied)?;
        if self.complete(n)? {
            Ok(ResyncOutcome::Completed { bytes })
        } else {
            Ok(ResyncOutcome::Interrupted { bytes })
        }
    }
}

impl MirrorDevice {
    /// Runs component `n`'s resync to the end on this thread (the scheduler does this on its
    /// own threads when one is configured).
    pub fn run_resync(&self, n: usize) -> Result<ResyncOutcome, MirrorError> {
        self.shared.run_resync(n, None)
    }

    /// Copies at most `max_chunks` chunks of component `n`'s resync, then checkpoints.
    pub fn resync_step(&self, n: usize, max_chunks: u64) -> Result<ResyncOutcome, MirrorError> {
        self.shared.run_resync(n, Some(max_chunks))
    }
}
