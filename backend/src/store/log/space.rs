//! Where a container's space goes, how close it is to running out, and what keeps guest writes
//! going when it does: growing the container file (`max_size`) and waiting a bounded time for
//! the cleaner or a snapshot delete to give space back.
//!
//! Growth adds segments at the end of the container. The new segments enter the usage table
//! as pending, and the checkpoint that records the table and the new segment count in the
//! superblock is what makes them free: a crash before it leaves a longer file whose tail no
//! checkpoint names (the next growth reuses it), never a superblock naming space the file
//! lacks, since the file is extended and synced first.

use crate::store::Store;
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, Geometry};
use crate::store::map::btree::{Body, Forest, NodeId, TreeValue};
use crate::store::map::sut::{SUT_ENTRY, SegKind, Sut};
use keel_protocol::control::{SpaceReport, SpaceState};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Thresholds, growth limit and waiting time of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceOptions {
    /// `low` from this percentage of the usable space held.
    pub warn_percent: u8,
    /// `critical` from this percentage.
    pub critical_percent: u8,
    /// How long a guest write waits for space before it fails (none by default: keeld's
    /// `space_wait_ms` sets it for the disks it serves).
    pub wait: Duration,
    /// The size the container file may grow to; `None`: it keeps its size.
    pub max_container_bytes: Option<u64>,
    /// How the cleaner picks the segments it empties.
    pub cleaner_policy: crate::store::log::victim::VictimPolicy,
    /// The I/O priority class of the background cleaner's I/O while it cleans ahead.
    pub cleaner_io: crate::store::log::io_class::CleanerIo,
}

impl Default for SpaceOptions {
    fn default() -> Self {
        Self {
            warn_percent: 85,
            critical_percent: 95,
            wait: Duration::ZERO,
            max_container_bytes: None,
            cleaner_policy: Default::default(),
            cleaner_io: Default::default(),
        }
    }
}

/// Each growth adds this fraction of the data segments (at least [`MIN_GROWTH_SEGMENTS`]).
const GROWTH_DIVISOR: u64 = 8;
const MIN_GROWTH_SEGMENTS: u64 = 16;
/// The container grows instead of cleaning once the segments in use hold at least this
/// percentage of live blocks: cleaning them would move much to gain little.
const GROW_WHEN_HELD_PERCENT: u64 = 75;
/// Free segments beyond the reserve under which growth is considered.
const GROW_BELOW_FREE: u64 = 24;
/// After a failed growth, the next try waits this long.
const GROW_RETRY: Duration = Duration::from_secs(5);
/// Percentage points under a threshold the held space must fall before the log says the
/// state is better again.
const LOG_HYSTERESIS: f64 = 1.0;
/// A waiting write looks again at least this often (a delete also wakes it).
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// The space bookkeeping an open store keeps.
pub(in crate::store) struct SpaceWatch {
    /// How long a guest write waits for space, in microseconds (`SpaceOptions::wait` at open).
    wait_us: AtomicU64,
    /// The state last logged, as `SpaceState as u8`.
    logged: AtomicU8,
    /// Guest writes that waited for space.
    waits: AtomicU64,
    /// Set when a wait ran out; later writes fail at once until space comes back, so a full
    /// container answers quickly instead of making every request wait in turn.
    exhausted: AtomicBool,
    /// One growth at a time; holds when the last one failed (the host's file system may be
    /// full), so that it is not retried on every write.
    growing: Mutex<Option<Instant>>,
    /// Bumped and signalled when space may have come back.
    freed: (Mutex<u64>, Condvar),
}

impl SpaceWatch {
    pub(in crate::store) fn new(opts: &SpaceOptions) -> Self {
        Self {
            wait_us: AtomicU64::new(opts.wait.as_micros() as u64),
            logged: AtomicU8::new(0),
            waits: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
            growing: Mutex::new(None),
            freed: (Mutex::new(0), Condvar::new()),
        }
    }
}

fn state_code(s: SpaceState) -> u8 {
    match s {
        SpaceState::Ok => 0,
        SpaceState::Low => 1,
        SpaceState::Critical => 2,
    }
}

/// The state for `used_percent` under `opts`' thresholds.
pub fn state_for(used_percent: f64, opts: &SpaceOptions) -> SpaceState {
    if used_percent >= f64::from(opts.critical_percent) {
        SpaceState::Critical
    } else if used_percent >= f64::from(opts.warn_percent) {
        SpaceState::Low
    } else {
        SpaceState::Ok
    }
}

/// Entries of the tree at `root`, counted by leaf: the space report walks the running disk's
/// map this way, a few microseconds per thousand blocks mapped.
fn count_entries<V: TreeValue>(forest: &Forest<V>, root: NodeId) -> u64 {
    match &forest.node(root).body {
        Body::Leaf { entries } => entries.len() as u64,
        Body::Internal { children, .. } => children.iter().map(|c| count_entries(forest, *c)).sum(),
    }
}

/// Segments of a container of at most `bytes` bytes with `geo`'s segment size, and no more
/// than a usage table (one segment at most, with the root block) can describe.
pub(in crate::store) fn segments_within(geo: &Geometry, bytes: u64) -> u64 {
    let table_limit = (geo.seg_blocks - 1) * BLOCK / SUT_ENTRY as u64;
    (bytes / (geo.seg_blocks * BLOCK)).min(table_limit)
}

impl Store {
    /// Segments the container has now (more once it grew).
    pub(in crate::store) fn segments(&self) -> u64 {
        self.segments.load(Ordering::Acquire)
    }

    /// The most segments the container may have: its size now, or `max_size`'s.
    pub(in crate::store) fn max_segments(&self) -> u64 {
        let max = self
            .opts
            .space
            .max_container_bytes
            .map_or(0, |b| segments_within(&self.geo, b));
        max.max(self.segments())
    }

    /// Held blocks (data of the disk and its snapshots, metadata) in percent of the blocks
    /// guest data may use: every data segment but the reserve, of the largest container.
    fn used_percent(&self, held: u64) -> f64 {
        let geo = self.geometry();
        let usable = (self.max_segments() - geo.first_data_segment())
            .saturating_sub(geo.reserved_segments())
            * geo.seg_blocks;
        held as f64 * 100.0 / usable.max(1) as f64
    }

    /// How close the container is to running out: cheap, for the cleaner's loop.
    pub fn space_state(&self) -> SpaceState {
        let held = self.read_lock(&self.state).sut.held_blocks();
        state_for(self.used_percent(held), &self.opts.space)
    }

    /// Checks the state and logs when it changed (a warning when it got worse). A state logged
    /// is left only `LOG_HYSTERESIS` points below its threshold, so that a container hovering
    /// at one does not fill the log.
    pub fn watch_space(&self) -> SpaceState {
        let held = self.read_lock(&self.state).sut.held_blocks();
        let pct = self.used_percent(held);
        let mut now = state_for(pct, &self.opts.space);
        let before = self.space.logged.load(Ordering::Acquire);
        if state_code(now) < before
            && state_code(state_for(pct + LOG_HYSTERESIS, &self.opts.space)) >= before
        {
            now = state_for(pct + LOG_HYSTERESIS, &self.opts.space);
        }
        self.space.logged.store(state_code(now), Ordering::Release);
        if before != state_code(now) {
            let (grows, advice) = match self.opts.space.max_container_bytes {
                Some(max) => (
                    format!(" (growing up to {max} bytes)"),
                    "delete snapshots or raise max_size",
                ),
                None => (String::new(), "delete snapshots or set max_size"),
            };
            if state_code(now) > before {
                log::warn!(
                    "space {}: {pct:.1}% of the container's usable space{grows} is held by the \
                     disk, its snapshots and metadata; {advice}",
                    now.as_str()
                );
            } else {
                log::info!("space {} again: {pct:.1}% held", now.as_str());
            }
        }
        now
    }

    /// Where the container's space goes. Counts the running disk's map once, leaf by leaf (to
    /// tell its blocks from those only snapshots hold).
    pub fn space(&self) -> SpaceReport {
        let st = self.read_lock(&self.state);
        // The table's count: a growth may have added segments it has not published yet.
        let geo = Geometry {
            segments: st.sut.segments(),
            ..self.geometry()
        };
        let (mut data, mut meta) = (0u64, 0u64);
        for seg in geo.first_data_segment()..geo.segments {
            match st.sut.kind(seg) {
                SegKind::Data => data += u64::from(st.sut.live(seg)),
                SegKind::Meta => meta += u64::from(st.sut.live(seg)),
                SegKind::Free => {}
            }
        }
        let running = count_entries(&st.maps.lba, st.maps.running);
        let held = st.sut.held_blocks();
        let free_segs = st.sut.free_count();
        let reserve = st.sut.reserved_segments();
        drop(st);
        let total = geo.data_segments() * geo.seg_blocks;
        let spare = free_segs.min(reserve) * geo.seg_blocks;
        let free = free_segs * geo.seg_blocks - spare;
        let live = running.min(data);
        let used_percent = self.used_percent(held);
        let max = self.max_segments().max(geo.segments);
        SpaceReport {
            container_bytes: geo.container_bytes(),
            max_container_bytes: (max > geo.segments).then(|| max * geo.seg_blocks * BLOCK),
            data_bytes: total * BLOCK,
            live_bytes: live * BLOCK,
            snapshot_bytes: (data - live) * BLOCK,
            metadata_bytes: meta * BLOCK,
            reclaimable_bytes: total.saturating_sub(data + meta + free + spare) * BLOCK,
            free_bytes: free * BLOCK,
            spare_bytes: spare * BLOCK,
            used_percent,
            state: state_for(used_percent, &self.opts.space),
            space_waits: self.space.waits.load(Ordering::Relaxed),
            stale: false,
        }
    }

    /// Grows the container when free segments run short and cleaning would gain little
    /// (or, with `starved`, whenever a writer found no segment at all). True if it grew; a
    /// failure is logged, and growth is tried again only after a pause.
    pub fn grow_if_short(&self, starved: bool) -> bool {
        if self.max_segments() <= self.segments() {
            return false;
        }
        let short = {
            let st = self.read_lock(&self.state);
            let geo = Geometry {
                segments: st.sut.segments(),
                ..self.geometry()
            };
            let free = st.sut.free_count();
            let in_use = geo.data_segments().saturating_sub(free) * geo.seg_blocks;
            free < st.sut.reserved_segments() + GROW_BELOW_FREE
                && st.sut.held_blocks() * 100 >= in_use * GROW_WHEN_HELD_PERCENT
        };
        if !(short || starved) {
            return false;
        }
        if self
            .lock(&self.space.growing)
            .is_some_and(|t| t.elapsed() < GROW_RETRY)
        {
            return false;
        }
        let before = self.segments();
        let add = (self.geometry().data_segments() / GROWTH_DIVISOR).max(MIN_GROWTH_SEGMENTS);
        match self.grow_container(before + add) {
            Ok(now) => now > before,
            Err(e) => {
                log::warn!("the container could not grow: {e}");
                *self.lock(&self.space.growing) = Some(Instant::now());
                false
            }
        }
    }

    /// Grows the container to `segments` segments (at most `max_size`'s); returns how many
    /// it has now. The file is extended and synced first, then a checkpoint records the new
    /// count and usage table; only then are the new segments free.
    pub fn grow_container(&self, segments: u64) -> Result<u64> {
        self.ensure_ok()?;
        let mut failed = self.lock(&self.space.growing);
        let old = self.segments();
        let new = segments.min(self.max_segments());
        if new <= old {
            return Ok(old);
        }
        let geo = Geometry {
            segments: new,
            ..self.geometry()
        };
        if Sut::encoded_blocks(&geo) + 1 > geo.seg_blocks {
            return Err(StoreError::Invalid(format!(
                "a container of {} bytes needs a usage table larger than a segment",
                geo.container_bytes()
            )));
        }
        self.dev.grow_to(geo.container_bytes())?;
        let mut j = self.quiet_journal();
        {
            let mut st = self.write_lock(&self.state);
            st.sut.extend(new);
            st.maps.grow_blocks(new * geo.seg_blocks);
        }
        j.superblock.geometry.segments = new;
        if let Err(e) = self.checkpoint_locked(&mut j) {
            j.superblock.geometry.segments = old;
            self.write_lock(&self.state).sut.truncate(old);
            return Err(e);
        }
        self.segments.store(new, Ordering::Release);
        *failed = None;
        drop(j);
        log::info!(
            "container grown from {} to {} bytes ({} segments added)",
            old * geo.seg_blocks * BLOCK,
            geo.container_bytes(),
            new - old
        );
        self.note_space_coming();
        Ok(new)
    }

    /// How long a guest write that finds no space waits for some.
    pub fn space_wait(&self) -> Duration {
        Duration::from_micros(self.space.wait_us.load(Ordering::Relaxed))
    }

    /// Changes how long guest writes wait for space (from the next write that runs out).
    pub fn set_space_wait(&self, wait: Duration) {
        self.space
            .wait_us
            .store(wait.as_micros() as u64, Ordering::Relaxed);
    }

    /// Space may have come back (segments released by a checkpoint): wakes writes waiting.
    pub(in crate::store) fn note_space_freed(&self) {
        let (n, cv) = &self.space.freed;
        *self.lock(n) += 1;
        cv.notify_all();
    }

    /// A guest write found no space. Starts (or continues) its wait: returns false when the
    /// wait is over (`deadline` passed, or an earlier wait ran out and nothing came back since),
    /// else sleeps a little or until space may be back, and returns true to look again.
    pub(in crate::store) fn wait_for_space(&self, deadline: &mut Option<Instant>) -> bool {
        let wait = self.space_wait();
        if wait.is_zero() || self.space.exhausted.load(Ordering::Acquire) {
            return false;
        }
        let end = *deadline.get_or_insert_with(|| {
            self.space.waits.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "no space left in the container: a guest write waits up to {wait:?} for the \
                 cleaner or a snapshot delete"
            );
            Instant::now() + wait
        });
        let now = Instant::now();
        if now >= end {
            self.space.exhausted.store(true, Ordering::Release);
            log::error!("no space came back: guest writes fail until space is freed");
            return false;
        }
        self.wake_cleaner();
        let (n, cv) = &self.space.freed;
        let seen = self.lock(n);
        drop(self.unpoison(cv.wait_timeout(seen, (end - now).min(WAIT_SLICE))));
        true
    }

    /// Space is coming back (a snapshot deleted, the file grown): writes that find none wait
    /// again, and those waiting look now.
    pub(in crate::store) fn note_space_coming(&self) {
        self.space.exhausted.store(false, Ordering::Release);
        self.note_space_freed();
    }

    /// A writer got a segment: writes wait again the next time space runs out.
    pub(in crate::store) fn note_space_found(&self) {
        if self.space.exhausted.swap(false, Ordering::AcqRel) {
            log::info!("space is back: guest writes go on");
        }
    }
}
