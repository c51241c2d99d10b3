//! The mirror's shared state: the view and component handles behind `state`, the locks that
//! order writes against state changes, persisting the view, and taking a component out.
//!
//! Locking: `gate` is held shared by every guest write for its whole duration and exclusively
//! by flush (briefly, to cut the dirty-chunk epoch) and by state changes, so no write is half
//! way between "targets chosen" and "I/O done" when the set changes shape. `state` guards the
//! view and is never held across data I/O (only across metadata updates). `chunk_locks`
//! orders guest writes against the resync copier on the same chunk.

use super::chunk_bitmap::ChunkBitmap;
use super::chunk_locks::ChunkLocks;
use super::config::MirrorOptions;
use super::error::MirrorError;
use super::fanout::FanOut;
use super::lsn::LsnClock;
use super::metadata::MetadataStore;
use super::provider::DeviceProvider;
use super::state::ComponentState;
use super::status::ResyncCounters;
use super::throttle::GuestActivity;
use super::view::{ComponentRecord, MirrorView, Outage};
use crate::device::BlockDevice;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LockResult, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Runtime handles of one component.
#[derive(Default)]
pub(super) struct Runtime {
    pub data: Option<Arc<dyn BlockDevice>>,
    pub meta: Option<MetadataStore>,
    /// The `last_lsn` its own metadata holds.
    pub durable_lsn: u64,
    pub counters: ResyncCounters,
}

/// Runtime handles of a delta component.
pub(super) struct DeltaRuntime {
    pub data: Arc<dyn BlockDevice>,
    pub meta: MetadataStore,
}

/// Everything `Shared::state` guards.
pub(super) struct State {
    pub view: MirrorView,
    pub comps: Vec<Runtime>,
    /// Keyed by the component the delta stands in for.
    pub deltas: HashMap<usize, DeltaRuntime>,
    /// Chunks written since the current flush epoch began.
    pub dirty_cur: ChunkBitmap,
    /// Chunks written in the epoch a flush is making durable (until it succeeds).
    pub dirty_prev: Option<ChunkBitmap>,
    /// A component is catching up: guest writes take chunk locks.
    pub catching_up: bool,
}

/// Where one write or flush goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Component(usize),
    Delta(usize),
}

pub(super) struct Shared {
    pub name: String,
    pub len: u64,
    pub chunk_size: u64,
    pub meta_len: u64,
    pub provider: Arc<dyn DeviceProvider>,
    pub options: MirrorOptions,
    pub gate: RwLock<()>,
    pub state: Mutex<State>,
    pub flush_lock: Mutex<()>,
    pub clock: LsnClock,
    pub chunk_locks: ChunkLocks,
    pub guest: GuestActivity,
    pub events: Mutex<VecDeque<String>>,
    /// Writer threads, when writes fan out (`parallel_write_min`).
    pub fanout: Option<FanOut>,
    /// A lock was poisoned by a panic mid-update: the state may be half-changed, so every
    /// guest request fails from then on instead of being served from it.
    pub poisoned: AtomicBool,
    /// Remote components being brought back, with their backoff.
    pub reconnects: super::reconnect::Reconnects,
}

/// Events kept for the status API.
const MAX_EVENTS: usize = 64;

impl Shared {
    pub fn lock_state(&self) -> MutexGuard<'_, State> {
        self.unpoison(self.state.lock(), "state")
    }

    pub fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.unpoison(self.gate.read(), "gate")
    }

    pub fn write_gate(&self) -> RwLockWriteGuard<'_, ()> {
        self.unpoison(self.gate.write(), "gate")
    }

    /// The guard of a lock, poisoned or not; a poisoned one fails the mirror (see
    /// [`Self::fail_poisoned`]), so the management calls can still look at it but no guest
    /// request is served any more.
    pub fn unpoison<G>(&self, locked: LockResult<G>, what: &str) -> G {
        locked.unwrap_or_else(|e| {
            self.fail_poisoned(what);
            e.into_inner()
        })
    }

    /// Fails every guest request from now on, logged once: a panic mid-update poisoned `what`.
    fn fail_poisoned(&self, what: &str) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            log::error!(
                "mirror {}: the {what} lock was poisoned by a panic mid-update; every request \
                 fails from now on (restart keeld to reopen the set)",
                self.name
            );
        }
    }

    /// EIO once a lock was poisoned: the state it guards may be half-changed.
    pub fn check_healthy(&self) -> io::Result<()> {
        if self.state.is_poisoned() || self.gate.is_poisoned() || self.flush_lock.is_poisoned() {
            self.fail_poisoned("state");
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Records an event for the status API and the log.
    pub fn event(&self, msg: String) {
        log::warn!("mirror {}: {msg}", self.name);
        let mut ev = self.unpoison(self.events.lock(), "events");
        if ev.len() == MAX_EVENTS {
            ev.pop_front();
        }
        ev.push_back(msg);
    }

    /// Writes the view to every reachable component's and delta's metadata. A component whose
    /// metadata cannot be written is taken out (if another one took the update) and the
    /// update repeated, so what is on disk always names who is current.
    pub fn persist(&self, st: &mut State) -> Result<(), MirrorError> {
        let n = st.view.components.len();
        for _ in 0..=n + st.deltas.len() {
            st.view.generation += 1;
            let mut ok = 0usize;
            let mut bad: Vec<Target> = Vec::new();
            for i in 0..n {
                let (Some(rec), Some(rt)) = (st.view.components.get(i), st.comps.get(i)) else {
                    continue;
                };
                let Some(meta) = rt.meta.as_ref().filter(|_| rec.state.receives_writes()) else {
                    continue;
                };
                match meta.store(&st.view, i) {
                    Ok(()) => {
                        ok += 1;
                        let lsn = rec.last_lsn;
                        if let Some(rt) = st.comps.get_mut(i) {
                            rt.durable_lsn = lsn;
                        }
                    }
                    Err(e) => {
                        log::error!("mirror {}: metadata of component {i}: {e}", self.name);
                        bad.push(Target::Component(i));
                    }
                }
            }
            for d in &st.view.deltas {
                let Some(rt) = st.deltas.get(&d.for_component).filter(|_| !d.failed) else {
                    continue;
                };
                match rt.meta.store(&st.view, n + d.for_component) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        log::error!("mirror {}: metadata of delta {}: {e}", self.name, d.path);
                        bad.push(Target::Delta(d.for_component));
                    }
                }
            }
            if ok == 0 {
                return Err(MirrorError::MetadataUnwritable);
            }
            if bad.is_empty() {
                return Ok(());
            }
            for t in bad {
                self.take_out(st, t, "its metadata could not be written");
            }
        }
        Err(MirrorError::MetadataUnwritable)
    }

    /// Marks a target failed in the view (not persisted): a component starts an outage whose
    /// tracking bitmap holds every chunk written since the last completed flush (those writes
    /// may not have reached its media); a delta stops being used.
    pub fn take_out(&self, st: &mut State, target: Target, why: &str) {
        match target {
            Target::Component(i) => {
                let mut seed = st.dirty_cur.clone();
                if let Some(p) = &st.dirty_prev {
                    seed.union_with(p);
                }
                let durable = st.comps.get(i).map_or(0, |r| r.durable_lsn);
                let Some(rec) = st.view.components.get_mut(i) else {
                    return;
                };
                if !rec.state.receives_writes() {
                    return;
                }
                // A remote component is expected to come and go with its network: it waits
                // offline, tracked, while it is reconnected.
                let remote = super::remote::is_remote(&rec.path);
                let state = if remote {
                    ComponentState::Offline
                } else {
                    ComponentState::Failed
                };
                start_outage(rec, state, durable, seed);
                rec.failed_why = Some(why.to_string());
                if let Some(rt) = st.comps.get_mut(i) {
                    rt.data = None;
                    rt.meta = None;
                }
                if remote {
                    self.event(format!("remote component {i} offline: {why}; reconnecting"));
                } else {
                    self.event(format!("component {i} failed: {why}"));
                }
            }
            Target::Delta(c) => {
                if let Some(d) = st.view.delta_for_mut(c).filter(|d| !d.failed) {
                    d.failed = true;
                    st.deltas.remove(&c);
                    self.event(format!("delta component for {c} failed: {why}"));
                }
            }
        }
        st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
    }

    /// Every target a write must reach, with its device.
    pub(super) fn write_targets(st: &State) -> Vec<(Target, Arc<dyn BlockDevice>)> {
        let mut out = Vec::with_capacity(st.comps.len() + st.deltas.len());
        for (i, (rec, rt)) in st.view.components.iter().zip(&st.comps).enumerate() {
            if let Some(d) = rt.data.as_ref().filter(|_| rec.state.receives_writes()) {
                out.push((Target::Component(i), d.clone()));
            }
        }
        for d in st.view.deltas.iter().filter(|d| !d.failed) {
            if let Some(rt) = st.deltas.get(&d.for_component) {
                out.push((Target::Delta(d.for_component), rt.data.clone()));
            }
        }
        out
    }
}

/// Moves a component out: into `state`, with an outage whose tracking bitmap is `seed`.
/// A component that was catching up keeps what it still had to copy.
pub(super) fn start_outage(
    rec: &mut ComponentRecord,
    state: ComponentState,
    durable: u64,
    seed: ChunkBitmap,
) {
    match rec.outage.as_mut() {
        Some(o) => {
            if let Some(plan) = o.resync.take() {
                let mut remaining = plan.work;
                remaining.subtract(&plan.done);
                o.tracking = remaining;
            }
            o.tracking.union_with(&seed);
        }
        None => {
            rec.last_lsn = durable;
            rec.outage = Some(Outage {
                start_lsn: durable,
                tracking: seed,
                resync: None,
            });
        }
    }
    rec.state = state;
}

/// What the open says about a component that stayed failed from an earlier run: why, whose
/// error that was, and how to bring it back. A failure is never cleared on its own, since the
/// component may hold anything; but one caused by Keel (an I/O it issued was refused as
/// invalid, EINVAL) says so, so it is not taken for a broken device.
pub(super) fn still_failed(disk: &str, i: usize, why: Option<&str>) -> String {
    let why = why.unwrap_or("no cause recorded");
    let whose = if why.contains(&format!("os error {}", libc::EINVAL)) {
        "the I/O Keel issued was refused as invalid: Keel's error, not the device's"
    } else {
        "check the device"
    };
    format!(
        "component {i} is still failed from an earlier run ({why}; {whose}); its copy is not \
         used. `keel mirror online {disk} {i}` brings it back and copies only the chunks \
         written since"
    )
}
