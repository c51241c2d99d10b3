//! [`MirrorDevice`]: a [`BlockDevice`] over N component devices.
//!
//! Writes go to every component that receives writes (and to a delta component during
//! maintenance) and are acknowledged once all of them have them; a component that fails while
//! another one succeeds is taken out, and the survivors start a tracking bitmap for it, made
//! durable before the writes it covers. Reads go to the lowest-numbered component that holds
//! current data for the range, falling over to the next on error.
//!
//! Locking: `gate` is held shared by every guest write for its whole duration and exclusively
//! by flush (briefly, to cut the dirty-chunk epoch) and by state changes, so no write is half
//! way between "targets chosen" and "I/O done" when the set changes shape. `state` guards the
//! view and is never held across data I/O (only across metadata updates). `chunk_locks`
//! orders guest writes against the resync copier on the same chunk.

use super::chunk_bitmap::ChunkBitmap;
use super::chunk_locks::ChunkLocks;
use super::config::{MirrorConfig, MirrorOptions};
use super::error::MirrorError;
use super::fanout::{FanOut, Job};
use super::lsn::LsnClock;
use super::metadata::{MetadataStore, metadata_len};
use super::provider::{DeviceProvider, FileProvider};
use super::state::ComponentState;
use super::status::ResyncCounters;
use super::throttle::GuestActivity;
use super::view::{ComponentRecord, MirrorView, Outage, ResyncPlan, Source};
use crate::device::{BlockDevice, check_range};
use crate::store::buf::AlignedBuf;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

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

/// Per delta (keyed by the component it stands in for): edge chunks to fill, with sources.
type Fills = HashMap<usize, Vec<(u64, Vec<Arc<dyn BlockDevice>>)>>;

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
}

/// A mirrored block device. Cheap to share: clone the `Arc` it usually lives in.
pub struct MirrorDevice {
    pub(super) shared: Arc<Shared>,
}

const MAX_EVENTS: usize = 64;

fn random_set_id() -> String {
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if from_os.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Shared {
    pub fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write_gate(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event for the status API and the log.
    pub fn event(&self, msg: String) {
        log::warn!("mirror {}: {msg}", self.name);
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
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
                start_outage(rec, ComponentState::Failed, durable, seed);
                rec.failed_why = Some(why.to_string());
                if let Some(rt) = st.comps.get_mut(i) {
                    rt.data = None;
                    rt.meta = None;
                }
                self.event(format!("component {i} failed: {why}"));
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

    fn write_like(&self, data: Option<&[u8]>, offset: u64, len: u64) -> io::Result<()> {
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

    /// Devices that hold current data for all of `first..=last`, in preference order.
    fn read_sources(st: &State, first: u64, last: u64) -> Vec<(Target, Arc<dyn BlockDevice>)> {
        let mut out = Vec::new();
        for (i, rt) in st.comps.iter().enumerate() {
            let Some(d) = rt.data.as_ref() else { continue };
            if (first..=last).all(|c| st.view.component_valid_for(i, c)) {
                out.push((Target::Component(i), d.clone()));
            }
        }
        for (&c, rt) in &st.deltas {
            if (first..=last).all(|k| st.view.delta_valid_for(c, k)) {
                out.push((Target::Delta(c), rt.data.clone()));
            }
        }
        out
    }

    fn read_range(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let chunk = self.chunk_size;
        let (first, last) = (offset / chunk, (offset + buf.len() as u64 - 1) / chunk);
        let sources = Self::read_sources(&self.lock_state(), first, last);
        if sources.is_empty() {
            if first == last {
                return Err(MirrorError::NoUsableComponent.into());
            }
            // No single component holds the whole range: read it chunk by chunk.
            let mut done = 0usize;
            while done < buf.len() {
                let at = offset + done as u64;
                let n = ((chunk - at % chunk) as usize).min(buf.len() - done);
                self.read_range(&mut buf[done..done + n], at)?;
                done += n;
            }
            return Ok(());
        }
        let mut failed: Vec<(Target, String)> = Vec::new();
        let mut last_err = None;
        for (t, dev) in &sources {
            match dev.read_at(buf, offset) {
                Ok(()) => {
                    if !failed.is_empty() {
                        let mut st = self.lock_state();
                        for (t, e) in failed {
                            self.take_out(&mut st, t, &format!("read error: {e}"));
                        }
                        self.persist(&mut st)?;
                    }
                    return Ok(());
                }
                Err(e) => {
                    failed.push((*t, e.to_string()));
                    last_err = Some(e);
                }
            }
        }
        log::error!("mirror {}: read failed on every component", self.name);
        Err(last_err.unwrap_or_else(|| io::Error::other("no component")))
    }

    /// Makes all completed writes durable on every target, then records the flushed LSN.
    pub fn flush_all(&self) -> io::Result<()> {
        let _one_flush = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
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

impl MirrorDevice {
    /// Opens a mirror of files, each with a `<path>.keelmirror` metadata sidecar.
    pub fn open(config: MirrorConfig) -> Result<Self, MirrorError> {
        let provider = Arc::new(FileProvider {
            direct: config.options.direct,
        });
        Self::open_with(config, provider)
    }

    /// Opens a mirror whose devices come from `provider`.
    pub fn open_with(
        config: MirrorConfig,
        provider: Arc<dyn DeviceProvider>,
    ) -> Result<Self, MirrorError> {
        let n = config.components.len();
        if n == 0 {
            return Err(MirrorError::NoComponents);
        }
        let chunk = config.chunk_size;
        if chunk < 4096 || !chunk.is_power_of_two() {
            return Err(MirrorError::BadChunkSize(chunk));
        }
        let data: Vec<Option<Arc<dyn BlockDevice>>> = config
            .components
            .iter()
            .enumerate()
            .map(|(i, p)| match provider.open_data(p, config.size) {
                Ok(d) => Some(d),
                Err(e) => {
                    log::error!(
                        "mirror {}: component {i} ({}): {e}",
                        config.name,
                        p.display()
                    );
                    None
                }
            })
            .collect();
        let len = match config.size {
            Some(s) => s,
            None => data
                .iter()
                .flatten()
                .next()
                .map(|d| d.len())
                .ok_or(MirrorError::NoUsableComponent)?,
        };
        for (i, d) in data.iter().enumerate() {
            if let Some(d) = d.as_ref().filter(|d| d.len() < len) {
                return Err(MirrorError::TooSmall {
                    index: i,
                    have: d.len(),
                    need: len,
                });
            }
        }
        let meta_len = metadata_len(len, chunk, n);
        let mut metas: Vec<Option<MetadataStore>> = Vec::with_capacity(n);
        let mut loaded = Vec::with_capacity(n);
        for (i, (p, d)) in config.components.iter().zip(&data).enumerate() {
            let m = d
                .as_ref()
                .and_then(|_| match provider.open_meta(p, meta_len) {
                    Ok(m) => Some(MetadataStore::new(m)),
                    Err(e) => {
                        log::error!("mirror {}: metadata of component {i}: {e}", config.name);
                        None
                    }
                });
            let (m, l) = match m.as_ref().map(|m| m.load()) {
                Some(Ok(l)) => (m, l),
                Some(Err(e)) => {
                    // Unreadable metadata: the component is treated as unreachable.
                    log::error!(
                        "mirror {}: reading metadata of component {i}: {e}",
                        config.name
                    );
                    (None, None)
                }
                None => (None, None),
            };
            loaded.push(l);
            metas.push(m);
        }
        let shared = Shared {
            name: config.name.clone(),
            len,
            chunk_size: chunk,
            meta_len,
            provider,
            options: config.options.clone(),
            gate: RwLock::new(()),
            state: Mutex::new(State {
                view: MirrorView {
                    set_id: String::new(),
                    generation: 0,
                    len,
                    chunk_size: chunk,
                    lsn: 0,
                    components: Vec::new(),
                    deltas: Vec::new(),
                    intent: ChunkBitmap::new(0),
                },
                comps: Vec::new(),
                deltas: HashMap::new(),
                dirty_cur: ChunkBitmap::new(len.div_ceil(chunk)),
                dirty_prev: None,
                catching_up: false,
            }),
            flush_lock: Mutex::new(()),
            clock: LsnClock::starting_after(0),
            chunk_locks: ChunkLocks::default(),
            guest: GuestActivity::default(),
            events: Mutex::new(VecDeque::new()),
            fanout: match config.options.parallel_write_min {
                // One writer per component besides the one the writing thread serves.
                Some(_) if n > 1 => Some(
                    FanOut::new(&config.name, n - 1)
                        .map_err(|e| MirrorError::io("starting the mirror's writer threads", e))?,
                ),
                _ => None,
            },
        };
        let newest = newest_view(&loaded)?;
        let view = match newest {
            None => fresh_view(&config, len, &data)?,
            Some(v) => {
                check_view(&v, &config, len, &loaded)?;
                newer_from_deltas(&shared, v)?
            }
        };
        let mut st = State {
            dirty_cur: ChunkBitmap::new(view.chunks()),
            dirty_prev: None,
            catching_up: false,
            comps: Vec::with_capacity(n),
            deltas: HashMap::new(),
            view,
        };
        for (i, rec) in st.view.components.iter().enumerate() {
            if rec.state == ComponentState::Failed {
                shared.event(still_failed(&config.name, i, rec.failed_why.as_deref()));
            }
        }
        for (i, (d, m)) in data.into_iter().zip(metas).enumerate() {
            let blank = loaded.get(i).is_some_and(|l| l.is_none());
            let Some(rec) = st.view.components.get_mut(i) else {
                continue;
            };
            rec.path = config.components[i].to_string_lossy().into_owned();
            let usable = d.is_some() && m.is_some();
            let mut rt = Runtime {
                durable_lsn: rec.last_lsn,
                ..Runtime::default()
            };
            if rec.state.receives_writes() && !usable {
                let msg = format!("component {i} is unreachable at open");
                let chunks = len.div_ceil(chunk);
                start_outage(
                    rec,
                    ComponentState::Failed,
                    rec.last_lsn,
                    ChunkBitmap::new(chunks),
                );
                rec.failed_why = Some("unreachable at open".into());
                shared.event(msg);
            } else if rec.state == ComponentState::InSync && blank && st.view.generation > 0 {
                // Fresh metadata under a set that knows this component: a replaced disk.
                let chunks = st.view.len.div_ceil(st.view.chunk_size);
                rec.state = ComponentState::Stale;
                rec.last_lsn = 0;
                rec.outage = Some(Outage {
                    start_lsn: 0,
                    tracking: ChunkBitmap::full(chunks),
                    resync: None,
                });
                shared.event(format!("component {i} has no mirror metadata: full resync"));
            }
            if rec.state.receives_writes() {
                rt.data = d;
                rt.meta = m;
            }
            st.comps.push(rt);
        }
        // Catching-up components resume; a component found stale above gets its plan now.
        for i in 0..n {
            let needs_plan = st.view.components.get(i).is_some_and(|r| {
                r.state.is_catching_up() && r.outage.as_ref().is_some_and(|o| o.resync.is_none())
            });
            if needs_plan {
                let plan = st.view.plan_resync(i, None);
                if let Some(o) = st
                    .view
                    .components
                    .get_mut(i)
                    .and_then(|r| r.outage.as_mut())
                {
                    o.resync = plan;
                }
            }
            if let Some(r) = st.view.components.get_mut(i)
                && r.state == ComponentState::Resyncing
            {
                r.state = ComponentState::Stale;
            }
        }
        for d in st.view.deltas.iter_mut().filter(|d| !d.failed) {
            match shared.provider.open(Path::new(&d.path), None, meta_len) {
                Ok(dev) => {
                    st.deltas.insert(
                        d.for_component,
                        DeltaRuntime {
                            data: dev.data,
                            meta: MetadataStore::new(dev.meta),
                        },
                    );
                }
                Err(e) => {
                    d.failed = true;
                    shared.event(format!("delta {} unreachable at open: {e}", d.path));
                }
            }
        }
        if st.view.in_sync().next().is_none() {
            return Err(MirrorError::NoUsableComponent);
        }
        resync_intent(&shared, &mut st);
        repair_deltas(&shared, &mut st);
        st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
        // Writes after the last flush may have used LSNs beyond it: never hand them out again.
        let lsn = st
            .view
            .components
            .iter()
            .flat_map(|c| [Some(c.last_lsn), c.outage.as_ref().map(|o| o.start_lsn)])
            .flatten()
            .chain(st.view.deltas.iter().map(|d| d.start_lsn))
            .fold(st.view.lsn, u64::max);
        st.view.lsn = lsn;
        shared.persist(&mut st)?;
        let shared = Shared {
            clock: LsnClock::starting_after(lsn),
            state: Mutex::new(st),
            ..shared
        };
        let dev = Self {
            shared: Arc::new(shared),
        };
        for i in dev.pending_resyncs() {
            dev.queue_resync(i);
        }
        Ok(dev)
    }

    /// The disk's name, as logs and events give it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// LSN of the last write handed out.
    pub fn lsn(&self) -> u64 {
        self.shared.clock.last()
    }

    /// Chunk (tracking-bitmap) size in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.shared.chunk_size
    }

    /// Components waiting for or in a resync.
    pub fn pending_resyncs(&self) -> Vec<usize> {
        let st = self.shared.lock_state();
        st.view
            .components
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state.is_catching_up())
            .map(|(i, _)| i)
            .collect()
    }

    /// Shuts the mirror down cleanly: flushes, and clears the write-intent bitmap so the next
    /// open has nothing to reconcile. Without it (a crash), the next open resyncs the chunks
    /// that had writes in flight.
    pub fn close(self) -> Result<(), MirrorError> {
        self.shut_down()
    }

    /// What [`close`](Self::close) does, for an owner that holds the device in an `Arc` and
    /// stops using it (an engine being dropped). Writes after it set intent bits again.
    pub fn shut_down(&self) -> Result<(), MirrorError> {
        let s = &self.shared;
        s.flush_all()
            .map_err(|e| MirrorError::io("flushing at close", e))?;
        let _gate = s.write_gate();
        let mut st = s.lock_state();
        if !st.view.intent.is_clear() {
            let chunks = st.view.chunks();
            st.view.intent = ChunkBitmap::new(chunks);
            s.persist(&mut st)?;
        }
        Ok(())
    }

    /// Component `n`'s data path, as the set records it.
    pub fn component_path(&self, n: usize) -> Option<PathBuf> {
        let st = self.shared.lock_state();
        st.view.components.get(n).map(|c| PathBuf::from(&c.path))
    }
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

/// After an unclean stop, a delta's chunks first written after its last flush may not hold
/// what their presence bit claims. With an in-sync mirror at hand they are copied again from
/// it; without one they are dropped (the absent component still holds them as they were at
/// the last flush, which is all a crash promises), including from a resync reading the delta.
fn repair_deltas(shared: &Shared, st: &mut State) {
    let mirror = st
        .view
        .in_sync()
        .find_map(|i| st.comps.get(i).and_then(|r| r.data.clone()));
    let (len, chunk) = (st.view.len, st.view.chunk_size);
    let intent = st.view.intent.clone();
    for d in st.view.deltas.iter_mut().filter(|d| !d.failed) {
        let mut tentative = d.present.clone();
        tentative.subtract(&d.durable);
        let mut rewritten = intent.clone();
        rewritten.intersect_with(&d.present);
        if mirror.is_some() {
            // Chunks the delta holds but that were written since the last flush may differ
            // from the mirror's copy: refresh them too.
            tentative.union_with(&rewritten);
        }
        if tentative.is_clear() {
            continue;
        }
        let Some(delta) = st.deltas.get(&d.for_component) else {
            continue;
        };
        let mut repaired = mirror.is_some();
        if let Some(m) = &mirror {
            let mut chunk_buf = AlignedBuf::scratch_len(chunk as usize);
            for k in tentative.iter_set() {
                let at = k * chunk;
                let buf = &mut chunk_buf[..chunk.min(len - at) as usize];
                if m.read_at(buf, at)
                    .and_then(|()| delta.data.write_at(buf, at))
                    .is_err()
                {
                    repaired = false;
                    break;
                }
            }
            repaired = repaired && delta.data.flush().is_ok();
        }
        if repaired {
            d.durable = d.present.clone();
            continue;
        }
        d.present = d.durable.clone();
        shared.event(format!(
            "delta {}: dropped {} unflushed chunks",
            d.path,
            tentative.count_ones()
        ));
        let Some(plan) = st
            .view
            .components
            .get_mut(d.for_component)
            .and_then(|c| c.outage.as_mut())
            .and_then(|o| o.resync.as_mut())
            .filter(|p| p.source == Source::Delta)
        else {
            continue;
        };
        let mut keep = d.durable.clone();
        keep.union_with(&plan.done);
        let mut drop = plan.work.clone();
        drop.subtract(&keep);
        plan.work.subtract(&drop);
    }
}

/// After an unclean stop, in-sync copies may differ in the chunks of the write-intent
/// bitmap: the first in-sync component's copy is taken as the truth and the others resync
/// those chunks from it (reads already prefer it, so the guest sees no change).
fn resync_intent(shared: &Shared, st: &mut State) {
    let chunks = st.view.chunks();
    let intent = std::mem::replace(&mut st.view.intent, ChunkBitmap::new(chunks));
    if intent.is_clear() {
        return;
    }
    let Some(primary) = st.view.in_sync().next() else {
        return;
    };
    let mut moved = 0;
    for (i, rec) in st.view.components.iter_mut().enumerate() {
        if i == primary {
            continue;
        }
        if let Some(o) = rec.outage.as_mut().filter(|_| rec.state.is_absent()) {
            // It may have taken writes until the crash (it was found unreachable at this
            // open) or hold a resync's copies of unflushed data: it catches up on the intent
            // chunks too when it returns.
            o.tracking.union_with(&intent);
        } else if rec.state == ComponentState::InSync {
            rec.state = ComponentState::Stale;
            rec.outage = Some(Outage {
                start_lsn: rec.last_lsn,
                tracking: intent.clone(),
                resync: Some(ResyncPlan {
                    source: Source::Mirror(primary),
                    work: intent.clone(),
                    done: ChunkBitmap::new(intent.chunks()),
                }),
            });
            moved += 1;
        } else if let Some(o) = rec.outage.as_mut() {
            let tracking = o.tracking.clone();
            if let Some(plan) = o.resync.as_mut() {
                // The intent chunks come from the primary, which holds every chunk: a delta
                // source would not. The mirror then also covers the whole tracking bitmap.
                if plan.source == Source::Delta {
                    plan.work.union_with(&tracking);
                }
                plan.source = Source::Mirror(primary);
                plan.work.union_with(&intent);
                plan.done.subtract(&intent);
            }
        }
    }
    st.catching_up = st.view.components.iter().any(|c| c.state.is_catching_up());
    shared.event(format!(
        "unclean stop: {} chunks with writes in flight resync from component {primary} to {moved} other(s)",
        intent.count_ones()
    ));
}

/// The highest-generation view among the components' metadata; all must be one set.
fn newest_view(loaded: &[Option<(MirrorView, usize)>]) -> Result<Option<MirrorView>, MirrorError> {
    let newest = loaded
        .iter()
        .flatten()
        .max_by_key(|(v, _)| v.generation)
        .map(|(v, _)| v.clone());
    if let Some(v) = &newest {
        for (i, (other, _)) in loaded
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((i, l.as_ref()?)))
        {
            if other.set_id != v.set_id {
                return Err(MirrorError::ForeignSet {
                    index: i,
                    found: other.set_id.clone(),
                    expected: v.set_id.clone(),
                });
            }
        }
    }
    Ok(newest)
}

fn check_view(
    v: &MirrorView,
    config: &MirrorConfig,
    len: u64,
    loaded: &[Option<(MirrorView, usize)>],
) -> Result<(), MirrorError> {
    if v.components.len() != config.components.len() {
        return Err(MirrorError::MetadataMismatch(format!(
            "names {} components, the configuration {}",
            v.components.len(),
            config.components.len()
        )));
    }
    if v.chunk_size != config.chunk_size || v.len != len {
        return Err(MirrorError::MetadataMismatch(format!(
            "says {} bytes in {}-byte chunks, the configuration {len} in {}",
            v.len, v.chunk_size, config.chunk_size
        )));
    }
    for (i, l) in loaded.iter().enumerate() {
        if let Some((_, idx)) = l
            && *idx != i
        {
            return Err(MirrorError::MetadataMismatch(format!(
                "of component {i} says it is component {idx}: was the order changed?"
            )));
        }
    }
    Ok(())
}

/// A delta may hold a newer view than every component (the last mirror failed during
/// maintenance): take it.
fn newer_from_deltas(shared: &Shared, mut v: MirrorView) -> Result<MirrorView, MirrorError> {
    for d in v.deltas.clone().iter().filter(|d| !d.failed) {
        let Ok(meta) = shared
            .provider
            .open_meta(Path::new(&d.path), shared.meta_len)
        else {
            continue;
        };
        if let Ok(Some((dv, _))) = MetadataStore::new(meta).load()
            && dv.set_id == v.set_id
            && dv.generation > v.generation
        {
            v = dv;
        }
    }
    Ok(v)
}

/// The view of a brand-new set: component 0 is the reference; the others are in sync only
/// if the configuration vouches for it, else they get a full copy.
fn fresh_view(
    config: &MirrorConfig,
    len: u64,
    data: &[Option<Arc<dyn BlockDevice>>],
) -> Result<MirrorView, MirrorError> {
    if data.first().is_none_or(|d| d.is_none()) {
        return Err(MirrorError::NoUsableComponent);
    }
    let chunks = len.div_ceil(config.chunk_size);
    let components = config
        .components
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let clean = i == 0 || config.options.assume_clean;
            ComponentRecord {
                path: p.to_string_lossy().into_owned(),
                state: if clean {
                    ComponentState::InSync
                } else {
                    ComponentState::Stale
                },
                last_lsn: 0,
                outage: (!clean).then(|| Outage {
                    start_lsn: 0,
                    tracking: ChunkBitmap::full(chunks),
                    resync: Some(ResyncPlan {
                        source: Source::Mirror(0),
                        work: ChunkBitmap::full(chunks),
                        done: ChunkBitmap::new(chunks),
                    }),
                }),
                failed_why: None,
            }
        })
        .collect();
    Ok(MirrorView {
        set_id: random_set_id(),
        generation: 0,
        len,
        chunk_size: config.chunk_size,
        lsn: 0,
        components,
        deltas: Vec::new(),
        intent: ChunkBitmap::new(chunks),
    })
}

impl BlockDevice for MirrorDevice {
    fn len(&self) -> u64 {
        self.shared.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.shared.len, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _req = self.shared.guest.begin();
        let _gate = self.shared.read_gate();
        self.shared.read_range(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.shared.write_like(Some(buf), offset, buf.len() as u64)
    }

    fn flush(&self) -> io::Result<()> {
        self.shared.flush_all()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.shared.write_like(None, offset, len)
    }
}
