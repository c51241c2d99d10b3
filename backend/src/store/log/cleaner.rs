//! The cleaner: copies the live blocks of sparse segments elsewhere, changing only the
//! VBA -> PBA map (snapshot trees are untouched), so the segments can be reused once a
//! durable flush mark covers the move (see `mark_release`), or after the next checkpoint.

use super::io_class::ClassGuard;
use super::{victim, victim_read};
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, place};
use crate::store::error::Result;
use crate::store::layout::BLOCK;
use crate::store::log::journal::Entry;
use crate::store::log::pace::{Levels, Pace};
use crate::store::map::maps::VbaEntry;
use crate::store::map::pins::PinGuard;
use crate::store::stats::Counters;
use crate::store::{Store, now_millis_pub};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One cleaned segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanReport {
    pub segment: u64,
    /// Live blocks found in the segment.
    pub live: u64,
    /// Blocks copied and remapped (fewer if the guest overwrote some meanwhile).
    pub moved: u64,
}

impl Store {
    /// Cleans the sparsest sealed data segment, if any holds garbage worth reclaiming.
    /// The segment becomes free at the next durable mark or checkpoint.
    pub fn clean_step(&self) -> Result<Option<CleanReport>> {
        self.clean_below((self.geo.seg_blocks * 9 / 10) as u32)
    }

    /// [`clean_step`](Self::clean_step) among the segments with at most `max_live` live blocks.
    pub(in crate::store) fn clean_below(&self, max_live: u32) -> Result<Option<CleanReport>> {
        self.ensure_ok()?;
        let mut cw = self.lock(&self.cleaner_writer);
        let seg_blocks = self.geo.seg_blocks;
        let mut pin = PinGuard::new(&self.pins);
        let (seg, live, stamp) = {
            let st = self.read_lock(&self.state);
            let Some(seg) = victim::choose(
                &st.sut,
                self.geo.first_data_segment(),
                seg_blocks,
                max_live,
                self.opts.space.cleaner_policy,
            ) else {
                return Ok(None);
            };
            // Pinned: should the guest overwrite all of it meanwhile, it is not reused under
            // the read below.
            pin.pin(seg);
            let start = self.geo.segment_start(seg);
            // Per live block, the VBAs in it: one, or those packed into it (moved together).
            let live: Vec<(u64, Vec<(u64, VbaEntry)>)> = (start..start + seg_blocks)
                .filter_map(|pba| {
                    let owners = match st.maps.owner(pba) {
                        Some(vba) => vec![vba],
                        None => st.maps.packed_owners(pba).to_vec(),
                    };
                    let held: Vec<(u64, VbaEntry)> = owners
                        .into_iter()
                        .filter_map(|v| Some((v, st.maps.vba.get(st.maps.vba_root, v)?)))
                        .collect();
                    (!held.is_empty()).then_some((pba, held))
                })
                .collect();
            (seg, live, st.sut.stamp(seg))
        };
        let start = self.geo.segment_start(seg);
        let mut src = AlignedBuf::scratch(seg_blocks as usize);
        let t0 = Instant::now();
        // Only the live blocks' runs are read (a sparse victim's are a fraction of it).
        // Checked as stored. A block tweaked by its VBA is copied as it is; any other
        // encrypted block is decrypted and sealed again for its new place.
        let offsets: Vec<u64> = live.iter().map(|(pba, _)| pba - start).collect();
        let runs = victim_read::plan(&offsets);
        victim_read::read_runs(self.data.raw(), &mut src, start * BLOCK, &runs)?;
        for r in &runs {
            let bytes = r.bytes();
            let at = start * BLOCK + bytes.start as u64;
            self.data.covered(&mut src[bytes], at)?;
        }
        Counters::add_since(&self.stats.cleaner_read_us, t0);
        Counters::add(&self.stats.cleaner_read_bytes, victim_read::bytes_of(&runs));
        let t0 = Instant::now();
        let mut moves = Vec::with_capacity(live.len());
        let mut runs = Vec::new();
        let mut i = 0;
        while i < live.len() {
            let (dst, n) = self.take_blocks(&mut cw, live.len() - i, true)?;
            // Relocated data keeps its age in its new segment.
            self.write_lock(&self.state)
                .sut
                .note_copied(self.geo.segment_of(dst), stamp);
            let mut ab = AlignedBuf::scratch(n);
            for j in 0..n {
                let (pba, held) = &live[i + j];
                let block = src.block((pba - start) as usize);
                // Held by one VBA, or by several packed into it: the same for all.
                let as_stored = held.iter().all(|(_, e)| self.data.moves_as_stored(e.pba));
                for (vba, e) in held {
                    if block_crc(*vba, compress::stored_bytes(block, e.pba)) != e.crc {
                        // Moved as it is: reads keep failing loudly instead of the damage
                        // spreading.
                        Counters::add(&self.stats.checksum_errors, 1);
                        log::error!("cleaner: VBA {vba} at block {pba} fails its checksum");
                    }
                    moves.push(Entry::Move {
                        vba: *vba,
                        old_pba: e.pba,
                        new_pba: place::moved(e.pba, dst + j as u64),
                        // Set over the new ciphertext when the batch is sealed; a block
                        // moved as stored keeps its checksum.
                        crc: (self.data.crc_over_ciphertext() && !as_stored).then_some(e.crc),
                    });
                }
                ab.block_mut(j).copy_from_slice(block);
                if !as_stored {
                    self.data
                        .plaintext(ab.block_mut(j), *pba * BLOCK, |_| None)?;
                }
            }
            Counters::add(&self.stats.cleaner_write_bytes, ab.len() as u64);
            runs.push((dst, ab));
            i += n;
        }
        drop(pin);
        // The copies and the record that moves them are issued together, as a guest batch is.
        let gathers = runs
            .iter()
            .map(|(p, b)| (p * BLOCK, vec![&b[..]]))
            .collect();
        let moved = self
            .commit_with(moves, gathers, &mut cw.retired, true)?
            .entries;
        Counters::add_since(&self.stats.cleaner_write_us, t0);
        Counters::add(&self.stats.cleaner_moves, moved);
        Counters::add(&self.stats.segments_cleaned, 1);
        Ok(Some(CleanReport {
            segment: seg,
            live: live.len() as u64,
            moved,
        }))
    }

    /// Free segments (the reserve included).
    pub fn free_segments(&self) -> u64 {
        self.read_lock(&self.state).sut.free_count()
    }

    /// Emptied segments waiting for a durable mark or the next checkpoint.
    pub fn pending_segments(&self) -> u64 {
        self.read_lock(&self.state).sut.pending_count()
    }
}

/// When the background cleaner works.
#[derive(Debug, Clone)]
pub struct CleanerConfig {
    /// The most free segments beyond the reserve under which the cleaner works without pause
    /// (an eighth of the spare segments, at least 2). Also how many emptied segments only a
    /// checkpoint may release wait for it while cleaning ahead (half as many when urgent; at
    /// most a quarter of the spare); those a mark may release go two at a time.
    pub low_water: u64,
    /// Clean ahead, before space is short, until this percentage of the spare segments (at
    /// least 2, at most `low_water`) is free above the urgent level (see [`pace`](crate::store::log::pace)).
    pub ahead_percent: u64,
    /// Clean opportunistically when the guest has done no I/O for this long.
    pub idle: Duration,
    /// Pause between steps when not urgent (the throttle against guest I/O).
    pub pause: Duration,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        Self {
            low_water: 24,
            ahead_percent: 10,
            idle: Duration::from_millis(200),
            pause: Duration::from_millis(20),
        }
    }
}

/// A running background cleaner; stops and joins when dropped.
pub struct CleanerHandle {
    stop: Arc<AtomicBool>,
    store: Arc<Store>,
    thread: Option<JoinHandle<()>>,
}

impl Store {
    /// Pauses the cleaner for `d`, or until [`wake_cleaner`](Self::wake_cleaner).
    fn cleaner_nap(&self, d: Duration) {
        let (flag, cv) = &self.cleaner_wake;
        let mut woken = self.lock(flag);
        if !*woken {
            woken = self.unpoison(cv.wait_timeout(woken, d)).0;
        }
        *woken = false;
    }

    /// Ends the cleaner's pause now: there is work (a deleted snapshot's blocks) or it stops.
    pub(in crate::store) fn wake_cleaner(&self) {
        let (flag, cv) = &self.cleaner_wake;
        *self.lock(flag) = true;
        cv.notify_all();
    }
}

impl CleanerHandle {
    /// Starts cleaning `store` in a background thread.
    pub fn spawn(store: Arc<Store>, cfg: CleanerConfig) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("keel-cleaner".into())
            .spawn(move || run(&worker, &cfg, &flag))?;
        // The journal's checkpoints are taken by this thread from now on.
        store.set_background_checkpoints(true);
        Ok(Self {
            stop,
            store,
            thread: Some(thread),
        })
    }
}

impl Drop for CleanerHandle {
    fn drop(&mut self) {
        self.store.guest_pace.disable();
        self.store.set_background_checkpoints(false);
        self.stop.store(true, Ordering::Release);
        self.store.wake_cleaner();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(store: &Store, cfg: &CleanerConfig, stop: &AtomicBool) {
    let mut release_helps = true;
    let mut has_victims = true;
    while !stop.load(Ordering::Acquire) {
        // Batches go on meanwhile; only the freeze holds them.
        if store.take_checkpoint_request() {
            if let Err(e) = store.checkpoint() {
                log::warn!("cleaner: checkpoint the journal asked for failed: {e}");
                store.cleaner_nap(cfg.pause);
            }
            continue;
        }
        store.watch_space();
        // Growing the file is far cheaper than moving mostly live segments.
        if store.grow_if_short(false) {
            continue;
        }
        let free = store.free_segments();
        let geo = store.geometry();
        let reserve = geo.reserved_segments();
        let pending = store.pending_segments();
        let spare = crate::store::log::spare::spare_segments(&geo);
        let levels = Levels::new(reserve, spare, cfg.low_water, cfg.ahead_percent);
        let urgent = free < levels.urgent;
        // Guests are paced to the cleaner only while it finds victims: when it finds none,
        // slowing them gains no room.
        match has_victims {
            true => store.guest_pace.enable(&levels, reserve),
            false => store.guest_pace.disable(),
        }
        let pace = levels.pace(free, pending, cfg.pause);
        if urgent && release_helps {
            // Emptied segments only wait for a mark or a checkpoint: far cheaper than
            // cleaning. If that frees nothing (reads still pin them), clean instead until
            // something changes.
            match release_batched(store, &levels, spare, cfg, true, free <= reserve + 1) {
                Ok(false) => {}
                Ok(true) => {
                    release_helps = store.free_segments() > free;
                    continue;
                }
                Err(e) => {
                    log::warn!("cleaner: releasing emptied segments failed: {e}");
                    release_helps = false;
                    continue;
                }
            }
        }
        release_helps = true;
        if urgent && store.meta_sparse() {
            if let Err(e) = store.clean_meta() {
                log::warn!("cleaner: metadata segments: {e}");
                store.cleaner_nap(cfg.pause);
            }
            continue;
        }
        let idle_ms = now_millis_pub().saturating_sub(store.last_guest_io.load(Ordering::Relaxed));
        let idle = idle_ms >= cfg.idle.as_millis() as u64;
        // Snapshot trees' dirty leaves, written ahead so the next checkpoint is short.
        if store.prewrite_pending() {
            if let Err(e) = store.prewrite_frozen() {
                log::warn!("cleaner: writing snapshot tree nodes ahead: {e}");
                store.cleaner_nap(cfg.pause * 5);
            }
            continue;
        }
        // A deleted snapshot's blocks come back before any live block is moved: a chunk at a
        // time, paced while the guest is busy (each chunk holds the maps about 1 ms).
        if store.reclaim_pending() {
            if let Err(e) = store.reclaim_step() {
                log::warn!("cleaner: giving back a deleted snapshot's blocks: {e}");
                store.cleaner_nap(cfg.pause * 5);
            } else if !(urgent || idle) {
                store.cleaner_nap(cfg.pause / 4);
            }
            continue;
        }
        if !(urgent || idle) && pace == Pace::Ahead {
            store.cleaner_nap(cfg.pause);
            continue;
        }
        // With `cleaner_io = "idle"`, ahead of need the guest's batches go first in the
        // device's queue (`io_class`).
        let class = store
            .opts
            .space
            .cleaner_io
            .class(urgent || pace == Pace::Urgent);
        let t0 = Instant::now();
        let cleaned = {
            let _class = ClassGuard::enter(class);
            store.clean_step()
        };
        match cleaned {
            Ok(Some(r)) => {
                // What a step costs per block it wins back sets the guest's pace when space
                // runs low (`guest_pace`).
                let net = geo.seg_blocks.saturating_sub(r.moved);
                store.guest_pace.note_step(net, t0.elapsed());
                has_victims = true;
                let starving = store.free_segments() <= reserve + 1;
                if let Err(e) = release_batched(store, &levels, spare, cfg, urgent, starving) {
                    log::warn!("cleaner: releasing emptied segments failed: {e}");
                }
                match pace {
                    _ if urgent => {}
                    Pace::Urgent => {}
                    Pace::Behind(d) => store.cleaner_nap(d),
                    Pace::Ahead => store.cleaner_nap(cfg.pause),
                }
            }
            Ok(None) => {
                has_victims = false;
                store.cleaner_nap(cfg.pause * 5);
            }
            Err(e) => {
                log::warn!("cleaner: {e}");
                store.cleaner_nap(cfg.pause * 5);
            }
        }
    }
}

/// Releases emptied segments once enough of them wait: those a mark may release by a mark,
/// the others by a checkpoint, each in batches of [`Levels::release_batch`] (a checkpoint
/// rewrites every dirty map node and holds guest batches while it freezes, so its releases are
/// batched far more); any a checkpoint may release when the free segments are down to the
/// reserve (`starving`). Marks keep their batch then: a writer that finds no segment releases
/// what waits itself once it has no victim left to clean. Returns whether it released (or
/// tried to).
fn release_batched(
    store: &Store,
    levels: &Levels,
    spare: u64,
    cfg: &CleanerConfig,
    urgent: bool,
    starving: bool,
) -> crate::store::Result<bool> {
    let (pending, markable) = store.pending_and_markable();
    let enough = |n: u64, by_mark: bool| {
        n > 0
            && ((starving && !by_mark)
                || n >= levels.release_batch(spare, cfg.low_water, urgent, by_mark))
    };
    if enough(markable, true) {
        store.release_by_mark()?;
        return Ok(true);
    }
    if enough(pending - markable, false) {
        store.checkpoint()?;
        return Ok(true);
    }
    Ok(false)
}
