//! Control operations on a mirror: take a component offline, into maintenance behind a delta
//! component, bring it back online (resync), replace it, and report status.

use super::chunk_bitmap::ChunkBitmap;
use super::device::MirrorDevice;
use super::error::MirrorError;
use super::metadata::MetadataStore;
use super::shared::{DeltaRuntime, Shared, State, Target, start_outage};
use super::state::ComponentState;
use super::status::{ComponentStatus, DeltaStatus, MirrorStatus, ResyncStatus};
use super::view::{DeltaRecord, Outage, ResyncPlan, Source};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Shared {
    fn state_of(st: &State, n: usize) -> Result<ComponentState, MirrorError> {
        st.view
            .components
            .get(n)
            .map(|c| c.state)
            .ok_or(MirrorError::NoSuchComponent(n))
    }

    /// Takes an in-sync (or catching-up) component out on purpose. Writes are drained by the
    /// caller holding the gate, and the component is flushed first, so its outage starts at
    /// the current LSN with an empty tracking bitmap.
    fn take_down(
        &self,
        st: &mut State,
        n: usize,
        state: ComponentState,
        op: &'static str,
    ) -> Result<(), MirrorError> {
        let current = Self::state_of(st, n)?;
        if !current.receives_writes() {
            return Err(MirrorError::WrongState {
                index: n,
                state: current,
                operation: op,
                wanted: "in_sync, stale or resyncing",
            });
        }
        if current == ComponentState::InSync && st.view.in_sync().all(|i| i == n) {
            return Err(MirrorError::LastInSync(n));
        }
        let lsn = self.clock.last();
        let chunks = st.view.chunks();
        if current == ComponentState::InSync {
            // Writes are drained: make everything durable on every target before `n` leaves,
            // so `n` holds nothing that the others could still lose in a crash.
            let mut failed = Vec::new();
            for (t, d) in Shared::write_targets(st) {
                match d.flush() {
                    Ok(()) => {}
                    Err(e) if t == Target::Component(n) => {
                        return Err(MirrorError::io(format!("flushing component {n}"), e));
                    }
                    Err(e) => failed.push((t, e)),
                }
            }
            for (t, e) in failed {
                self.take_out(st, t, &format!("flush error: {e}"));
            }
            if st.view.in_sync().all(|i| i == n) {
                self.persist(st)?;
                return Err(MirrorError::LastInSync(n));
            }
            st.view.lsn = st.view.lsn.max(lsn);
            for rec in st.view.components.iter_mut() {
                if rec.state == ComponentState::InSync {
                    rec.last_lsn = lsn;
                }
            }
            for d in st.view.deltas.iter_mut() {
                d.durable = d.present.clone();
            }
            st.dirty_cur = ChunkBitmap::new(chunks);
            st.dirty_prev = None;
            // Its own metadata records the LSN it is current to: its stale LSN on return.
            self.persist(st)?;
        }
        // A component that was catching up was not flushed above: what it took since the
        // last flush may not be on its media.
        let mut seed = ChunkBitmap::new(chunks);
        if current != ComponentState::InSync {
            seed.union_with(&st.dirty_cur);
            if let Some(p) = &st.dirty_prev {
                seed.union_with(p);
            }
        }
        let durable = st.comps.get(n).map_or(0, |r| r.durable_lsn);
        if let Some(rec) = st.view.components.get_mut(n) {
            start_outage(rec, state, durable, seed);
        }
        if let Some(rt) = st.comps.get_mut(n) {
            rt.data = None;
            rt.meta = None;
        }
        st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
        Ok(())
    }

    pub(super) fn queue_resync(self: &Arc<Self>, n: usize) {
        let Some(sched) = self.options.scheduler.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let what = format!("{} component {n}", self.name);
        sched.submit(&self.name, self.options.priority, what, move || {
            if let Some(shared) = weak.upgrade()
                && let Err(e) = shared.run_resync(n, None)
            {
                shared.event(format!("resync of component {n} stopped: {e}"));
            }
        });
    }
}

impl Shared {
    /// Brings an offline, failed or maintained component back: reads its stale LSN from its
    /// own metadata, picks the source whose tracking bitmap covers it with the least work,
    /// and queues the resync (it takes writes from now on).
    pub(super) fn online(self: &Arc<Self>, n: usize) -> Result<(), MirrorError> {
        let s = self;
        {
            let _gate = s.write_gate();
            let mut st = s.lock_state();
            let current = Shared::state_of(&st, n)?;
            if !current.is_absent() {
                return Err(MirrorError::WrongState {
                    index: n,
                    state: current,
                    operation: "online",
                    wanted: "offline, failed or maintenance",
                });
            }
            let path = st
                .view
                .components
                .get(n)
                .map(|c| c.path.clone())
                .unwrap_or_default();
            let dev = s
                .provider
                .open(Path::new(&path), None, s.meta_len)
                .map_err(|e| MirrorError::io(format!("opening component {n} ({path})"), e))?;
            if dev.data.len() < s.len {
                return Err(MirrorError::TooSmall {
                    index: n,
                    have: dev.data.len(),
                    need: s.len,
                });
            }
            let meta = MetadataStore::new(dev.meta);
            let stale_lsn = match meta
                .load()
                .map_err(|e| MirrorError::io(format!("reading metadata of component {n}"), e))?
            {
                Some((v, idx)) if v.set_id == st.view.set_id && idx == n => {
                    v.components.get(n).map(|c| c.last_lsn)
                }
                Some((v, _)) if v.set_id != st.view.set_id => {
                    return Err(MirrorError::ForeignSet {
                        index: n,
                        found: v.set_id,
                        expected: st.view.set_id.clone(),
                    });
                }
                _ => None,
            };
            let plan = st
                .view
                .plan_resync(n, stale_lsn)
                .ok_or(MirrorError::NoSource(n))?;
            let work = plan.work.count_ones();
            let source = plan.source;
            let chunks = st.view.chunks();
            if let Some(rec) = st.view.components.get_mut(n) {
                rec.state = ComponentState::Stale;
                rec.failed_why = None;
                let o = rec.outage.get_or_insert_with(|| Outage {
                    start_lsn: stale_lsn.unwrap_or(0),
                    tracking: ChunkBitmap::new(chunks),
                    resync: None,
                });
                o.resync = Some(plan);
            }
            if let Some(rt) = st.comps.get_mut(n) {
                rt.data = Some(dev.data);
                rt.meta = Some(meta);
            }
            st.catching_up = true;
            s.intend_unflushed(&mut st);
            s.persist(&mut st)?;
            s.event(format!(
                "component {n} online (stale LSN {stale_lsn:?}): {work} chunks to copy from {source:?}"
            ));
        }
        self.queue_resync(n);
        Ok(())
    }
}

impl MirrorDevice {
    pub(super) fn queue_resync(&self, n: usize) {
        self.shared.queue_resync(n);
    }

    /// Takes component `n` down on purpose; the others track what it misses.
    pub fn offline(&self, n: usize) -> Result<(), MirrorError> {
        let s = &self.shared;
        let _gate = s.write_gate();
        let mut st = s.lock_state();
        s.take_down(&mut st, n, ComponentState::Offline, "offline")?;
        s.persist(&mut st)?;
        s.event(format!("component {n} taken offline"));
        Ok(())
    }

    /// Takes component `n` down for maintenance with a delta component at `delta_path` (a
    /// new sparse file) that takes its writes, so new data keeps two copies meanwhile.
    pub fn maintenance(&self, n: usize, delta_path: &Path) -> Result<(), MirrorError> {
        let s = &self.shared;
        let _gate = s.write_gate();
        let mut st = s.lock_state();
        let current = Shared::state_of(&st, n)?;
        if current != ComponentState::InSync || st.view.delta_for(n).is_some() {
            return Err(MirrorError::WrongState {
                index: n,
                state: current,
                operation: "maintenance",
                wanted: "in_sync without a delta",
            });
        }
        if st.view.in_sync().all(|i| i == n) {
            return Err(MirrorError::LastInSync(n));
        }
        let dev = s
            .provider
            .open(delta_path, Some(s.len), s.meta_len)
            .map_err(|e| MirrorError::io(format!("creating delta {}", delta_path.display()), e))?;
        s.take_down(&mut st, n, ComponentState::Maintenance, "maintenance")?;
        let start_lsn = st
            .view
            .components
            .get(n)
            .and_then(|c| c.outage.as_ref())
            .map_or(0, |o| o.start_lsn);
        let chunks = st.view.chunks();
        st.view.deltas.push(DeltaRecord {
            for_component: n,
            path: delta_path.to_string_lossy().into_owned(),
            start_lsn,
            present: ChunkBitmap::new(chunks),
            durable: ChunkBitmap::new(chunks),
            failed: false,
        });
        st.deltas.insert(
            n,
            DeltaRuntime {
                data: dev.data,
                meta: MetadataStore::new(dev.meta),
            },
        );
        s.persist(&mut st)?;
        s.event(format!(
            "component {n} in maintenance, delta at {}",
            delta_path.display()
        ));
        Ok(())
    }

    /// Brings an offline, failed or maintained component back: reads its stale LSN from its
    /// own metadata, picks the source whose tracking bitmap covers it with the least work,
    /// and queues the resync (it takes writes from now on).
    pub fn online(&self, n: usize) -> Result<(), MirrorError> {
        self.shared.online(n)
    }

    /// Replaces component `n` with a new device at `new_path` (created sparse if absent) and
    /// queues a full copy onto it.
    pub fn replace(&self, n: usize, new_path: &Path) -> Result<(), MirrorError> {
        let s = &self.shared;
        {
            let _gate = s.write_gate();
            let mut st = s.lock_state();
            Shared::state_of(&st, n)?;
            let Some(mirror) = st.view.in_sync().find(|&i| i != n) else {
                return Err(MirrorError::LastInSync(n));
            };
            let dev = s
                .provider
                .open(new_path, Some(s.len), s.meta_len)
                .map_err(|e| MirrorError::io(format!("opening {}", new_path.display()), e))?;
            if dev.data.len() < s.len {
                return Err(MirrorError::TooSmall {
                    index: n,
                    have: dev.data.len(),
                    need: s.len,
                });
            }
            let chunks = st.view.chunks();
            if let Some(pos) = st.view.deltas.iter().position(|d| d.for_component == n) {
                let d = st.view.deltas.remove(pos);
                st.deltas.remove(&n);
                if let Err(e) = s.provider.remove(Path::new(&d.path)) {
                    log::warn!("mirror {}: removing delta {}: {e}", s.name, d.path);
                }
            }
            if let Some(rec) = st.view.components.get_mut(n) {
                rec.path = new_path.to_string_lossy().into_owned();
                rec.state = ComponentState::Stale;
                rec.failed_why = None;
                rec.last_lsn = 0;
                rec.outage = Some(Outage {
                    start_lsn: 0,
                    tracking: ChunkBitmap::full(chunks),
                    resync: Some(ResyncPlan {
                        source: Source::Mirror(mirror),
                        work: ChunkBitmap::full(chunks),
                        done: ChunkBitmap::new(chunks),
                    }),
                });
            }
            if let Some(rt) = st.comps.get_mut(n) {
                rt.data = Some(dev.data);
                rt.meta = Some(MetadataStore::new(dev.meta));
                rt.durable_lsn = 0;
            }
            st.catching_up = true;
            s.intend_unflushed(&mut st);
            s.persist(&mut st)?;
            s.event(format!(
                "component {n} replaced by {}: full copy queued",
                new_path.display()
            ));
        }
        self.queue_resync(n);
        Ok(())
    }

    /// Waits at most `within` until component `n`'s resync (queued by `online` or `replace`)
    /// has copied a chunk, finished, or failed, and says which: a resync that cannot write to
    /// the component fails on its first chunk, and whoever brought the component back must hear
    /// of it. A resync still queued behind other jobs when the time is up counts as under way.
    pub fn watch_resync(&self, n: usize, within: Duration) -> Result<(), MirrorError> {
        let s = &self.shared;
        let copied = |st: &State| st.comps.get(n).map(|r| r.counters.bytes_copied);
        let before = copied(&s.lock_state()).ok_or(MirrorError::NoSuchComponent(n))?;
        let until = Instant::now() + within;
        loop {
            {
                let st = s.lock_state();
                let state = Shared::state_of(&st, n)?;
                if state == ComponentState::Failed {
                    let why = st.view.components.get(n).and_then(|c| c.failed_why.clone());
                    let why = why.unwrap_or_else(|| "no cause recorded".into());
                    return Err(MirrorError::ResyncFailed { index: n, why });
                }
                if !state.is_catching_up() || copied(&st) > Some(before) {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Per-component state, LSNs, dirty chunks and resync progress.
    pub fn status(&self) -> MirrorStatus {
        let s = &self.shared;
        let st = s.lock_state();
        let chunk = st.view.chunk_size;
        let components = st
            .view
            .components
            .iter()
            .zip(&st.comps)
            .enumerate()
            .map(|(i, (rec, rt))| {
                let outage = rec.outage.as_ref();
                let resync = outage.and_then(|o| o.resync.as_ref()).map(|p| {
                    let remaining = p.remaining();
                    let (rate, eta) = rt.counters.rate_and_eta(remaining * chunk);
                    ResyncStatus {
                        source: p.source,
                        total_chunks: p.work.count_ones(),
                        done_chunks: p.done.count_ones(),
                        rate_bytes_per_sec: rate,
                        eta_secs: eta,
                    }
                });
                ComponentStatus {
                    index: i,
                    path: rec.path.clone(),
                    state: rec.state,
                    last_lsn: if rec.state == ComponentState::InSync {
                        s.clock.last()
                    } else {
                        rec.last_lsn
                    },
                    dirty_chunks: outage.map_or(0, |o| o.tracking.count_ones()),
                    resync,
                    resync_bytes_copied: rt.counters.bytes_copied,
                    remote: super::remote::is_remote(&rec.path),
                    reconnect: s.reconnects.status(i),
                    why: rec.failed_why.clone(),
                }
            })
            .collect();
        let deltas = st
            .view
            .deltas
            .iter()
            .map(|d| DeltaStatus {
                for_component: d.for_component,
                path: d.path.clone(),
                chunks_held: d.present.count_ones(),
                failed: d.failed,
            })
            .collect();
        let events = s
            .unpoison(s.events.lock(), "events")
            .iter()
            .cloned()
            .collect();
        MirrorStatus {
            name: s.name.clone(),
            set_id: st.view.set_id.clone(),
            chunk_size: chunk,
            resync_bps_limit: s.options.resync_rate.get(),
            lsn: s.clock.last(),
            components,
            deltas,
            events,
        }
    }
}
