//! The cleaner: copies the live blocks of sparse segments elsewhere, changing only the
//! VBA -> PBA map (snapshot trees are untouched), so the segments can be reused once a
//! durable flush mark covers the move (see `mark_release`), or after the next checkpoint.
//!
//! A step takes one segment, or up to [`MAX_VICTIMS`] for a writer short of space, in two
//! halves: [`read_victims`](Store::read_victims) chooses, pins and lists them and reads their
//! live runs in pieces, all in flight (`victim_read`); [`write_victims`](Store::write_victims)
//! copies them to the cleaner's own open segment and writes the copies with several writes in
//! flight (`ring_io`) beside the **one** record that moves them all. The background cleaner
//! reads its next victim while the last one is written (`clean_ahead`). The record is applied
//! while its writes are in flight; moves the guest overtook since the reads are dropped under
//! the journal lock (and skipped by apply), so a guest write is never rolled back.

use super::clean_ahead::CleanAhead;
use super::io_class::ClassGuard;
use super::{victim, victim_read};
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, place};
use crate::store::error::Result;
use crate::store::layout::BLOCK;
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::journal::Entry;
use crate::store::log::pace::{Levels, Pace};
use crate::store::log::write::Committer;
use crate::store::map::maps::VbaEntry;
use crate::store::map::pins::PinGuard;
use crate::store::ring_io::RingIo;
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

/// Most victims one cleaning step empties (a writer short of space takes such steps; the
/// background cleaner one victim a step). Their live runs are read together and their copies
/// written together, with one record. Buffers: twice a segment per victim.
pub const MAX_VICTIMS: usize = 4;

/// Per live block of a victim, the VBAs in it: one, or those packed into it (moved together).
type LiveBlocks = Vec<(u64, Vec<(u64, VbaEntry)>)>;

/// Victims chosen, pinned, listed and read: what the second half of a cleaning step copies.
pub(in crate::store) struct ReadVictims {
    victims: Vec<Victim>,
    /// Each victim's segment as read (only its live runs).
    srcs: Vec<AlignedBuf>,
    moves_listed: u64,
    /// The victims, pinned until their moves are applied or dropped.
    _pin: PinGuard,
}

impl ReadVictims {
    /// The segments read.
    pub fn segments(&self) -> Vec<u64> {
        self.victims.iter().map(|v| v.seg).collect()
    }
}

/// A victim chosen, pinned and listed.
struct Victim {
    seg: u64,
    /// Its data's age, which the copies keep.
    stamp: u64,
    live: LiveBlocks,
}

impl Store {
    /// Cleans the sparsest sealed data segment, if any holds garbage worth reclaiming.
    /// The segment becomes free at the next durable mark or checkpoint.
    pub fn clean_step(&self) -> Result<Option<CleanReport>> {
        Ok(self.clean_several(1)?.into_iter().next())
    }

    /// Cleans up to `n` segments ([`MAX_VICTIMS`] at most) in one step, best first, the
    /// copies of all of them moved by one record; fewer when the cleaner's room or the
    /// journal would not take them. Nothing when no segment holds garbage worth reclaiming.
    pub fn clean_several(&self, n: usize) -> Result<Vec<CleanReport>> {
        self.clean_victims(n, self.clean_max_live())
    }

    /// The most live blocks a segment may hold to be worth cleaning.
    pub(in crate::store) fn clean_max_live(&self) -> u32 {
        (self.geo.seg_blocks * 9 / 10) as u32
    }

    /// [`clean_several`](Self::clean_several) among the segments with at most `max_live` live
    /// blocks.
    pub(in crate::store) fn clean_victims(
        &self,
        n: usize,
        max_live: u32,
    ) -> Result<Vec<CleanReport>> {
        self.ensure_ok()?;
        let mut cw = self.lock(&self.cleaner_writer);
        match self.read_victims(n, max_live, cw.free(), &[])? {
            Some(read) => self.write_victims(&mut cw, read, &mut Vec::new()),
            None => Ok(Vec::new()),
        }
    }

    /// The first half of a cleaning step: chooses up to `n` victims (not those in `exclude`)
    /// among the segments with at most `max_live` live blocks, pins them, lists their live
    /// blocks and reads them. `cleaner_room` is what the cleaner's open segment still takes.
    /// Nothing when no segment holds garbage worth reclaiming.
    ///
    /// Takes no lock the second half holds, so the background cleaner reads its next victim
    /// while the copies of the last are written (`clean_ahead`). Whatever happens between
    /// the two halves, the victims stay pinned (never reused) until written, and the second
    /// half drops every move the guest overtook.
    pub(in crate::store) fn read_victims(
        &self,
        n: usize,
        max_live: u32,
        cleaner_room: u64,
        exclude: &[u64],
    ) -> Result<Option<ReadVictims>> {
        self.ensure_ok()?;
        let seg_blocks = self.geo.seg_blocks;
        // Pinned until written: should the guest overwrite all of one meanwhile, it is not
        // reused under the reads below, nor before its moves are applied or dropped.
        let mut pin = PinGuard::new(&self.pins);
        let chosen: Vec<(u64, u64)> = {
            let st = self.read_lock(&self.state);
            let n = n.clamp(1, MAX_VICTIMS);
            let picks = victim::choose_many(
                &st.sut,
                self.geo.first_data_segment(),
                seg_blocks,
                max_live,
                self.opts.space.cleaner_policy,
                n + exclude.len(),
            );
            // Every copy must find room in the cleaner's open segment and the free segments
            // it may take before any victim is released; the first victim is tried whatever
            // (taking blocks makes room if it can).
            let keep = st.sut.cleaner_keep() + 1;
            let room = cleaner_room + st.sut.free_count().saturating_sub(keep) * seg_blocks;
            let mut need = 0;
            let mut chosen = Vec::with_capacity(n);
            for seg in picks.into_iter().filter(|s| !exclude.contains(s)).take(n) {
                need += u64::from(st.sut.live(seg));
                if !chosen.is_empty() && need > room {
                    break;
                }
                pin.pin(seg);
                chosen.push((seg, st.sut.stamp(seg)));
            }
            chosen
        };
        // Listed one by one, each under a hold of its own of the state lock; the record's
        // moves bounded to a quarter of the journal beyond the first victim.
        let move_bytes = Entry::Move {
            vba: 0,
            old_pba: 0,
            new_pba: 0,
            crc: Some(0),
        }
        .encoded_len() as u64;
        let budget = self.geo.journal_blocks() * BLOCK / 4;
        let mut victims: Vec<Victim> = Vec::with_capacity(chosen.len());
        let mut moves_listed = 0u64;
        for (seg, stamp) in chosen {
            let live = self.live_blocks(seg);
            let moves: u64 = live.iter().map(|(_, held)| held.len() as u64).sum();
            if !victims.is_empty() && (moves_listed + moves) * move_bytes > budget {
                break;
            }
            moves_listed += moves;
            victims.push(Victim { seg, stamp, live });
        }
        if victims.is_empty() {
            return Ok(None);
        }
        let mut srcs: Vec<AlignedBuf> = victims
            .iter()
            .map(|_| AlignedBuf::scratch(seg_blocks as usize))
            .collect();
        let t0 = Instant::now();
        // Only the live blocks' runs are read (a sparse victim's are a fraction of it), every
        // victim's at once. Checked as stored.
        let mut reads: Vec<victim_read::SegmentRead<'_>> = victims
            .iter()
            .zip(srcs.iter_mut())
            .map(|(v, buf)| {
                let start = self.geo.segment_start(v.seg);
                let offsets: Vec<u64> = v.live.iter().map(|(pba, _)| pba - start).collect();
                victim_read::SegmentRead {
                    buf: &mut buf[..],
                    start: start * BLOCK,
                    runs: victim_read::plan(&offsets),
                }
            })
            .collect();
        victim_read::read_segments(self.data.raw(), &mut reads)?;
        let mut read_bytes = 0;
        for r in &mut reads {
            for run in &r.runs {
                let bytes = run.bytes();
                let at = r.start + bytes.start as u64;
                self.data.covered(&mut r.buf[bytes], at)?;
            }
            read_bytes += victim_read::bytes_of(&r.runs);
        }
        drop(reads);
        Counters::add_since(&self.stats.cleaner_read_us, t0);
        Counters::add(&self.stats.cleaner_read_bytes, read_bytes);
        Ok(Some(ReadVictims {
            victims,
            srcs,
            moves_listed,
            _pin: pin,
        }))
    }

    /// The second half of a cleaning step: copies the victims `read` into blocks of the
    /// cleaner's writer `cw` and commits their moves with the copies. A block tweaked by its
    /// VBA is copied as it is; any other encrypted block is decrypted and sealed again for
    /// its new place. The buffers the victims were read into go to `used` once copied.
    pub(in crate::store) fn write_victims(
        &self,
        cw: &mut SegmentWriter,
        read: ReadVictims,
        used: &mut Vec<AlignedBuf>,
    ) -> Result<Vec<CleanReport>> {
        self.ensure_ok()?;
        let ReadVictims {
            victims,
            srcs,
            moves_listed,
            _pin: pin,
        } = read;
        let t0 = Instant::now();
        let mut moves = Vec::with_capacity(moves_listed as usize);
        let mut runs = Vec::new();
        for (v, src) in victims.iter().zip(&srcs) {
            self.copy_victim(cw, v, src, &mut moves, &mut runs)?;
        }
        used.extend(srcs);
        // The copies and the record that moves them are issued together, as a guest batch is,
        // with several writes in flight.
        let gathers = runs
            .iter()
            .map(|(p, b)| (p * BLOCK, vec![&b[..]]))
            .collect();
        let committed = self.commit_through(
            &mut RingIo(self.data.raw()),
            moves,
            gathers,
            &mut cw.retired,
            Committer::Cleaner,
        )?;
        drop(pin);
        Counters::add_since(&self.stats.cleaner_write_us, t0);
        Counters::add(&self.stats.cleaner_moves, committed.entries);
        Counters::add(&self.stats.segments_cleaned, victims.len() as u64);
        // Moves the guest overtook were dropped at commit: count each victim's that were not.
        let mut moved = vec![0u64; victims.len()];
        for e in &committed.applied {
            if let Entry::Move { old_pba, .. } = *e {
                let seg = self.geo.segment_of(place::block_of(old_pba));
                if let Some(i) = victims.iter().position(|v| v.seg == seg) {
                    moved[i] += 1;
                }
            }
        }
        Ok(victims
            .iter()
            .zip(moved)
            .map(|(v, moved)| CleanReport {
                segment: v.seg,
                live: v.live.len() as u64,
                moved,
            })
            .collect())
    }

    /// The live blocks of segment `seg` and the VBAs each holds.
    fn live_blocks(&self, seg: u64) -> LiveBlocks {
        let st = self.read_lock(&self.state);
        let start = self.geo.segment_start(seg);
        (start..start + self.geo.seg_blocks)
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
            .collect()
    }

    /// Copies victim `v`'s live blocks (read into `src`, its segment's buffer) into blocks
    /// taken from the cleaner's writer `cw`: their moves go to `moves`, the copies to `runs`
    /// (first block, bytes).
    fn copy_victim(
        &self,
        cw: &mut SegmentWriter,
        v: &Victim,
        src: &AlignedBuf,
        moves: &mut Vec<Entry>,
        runs: &mut Vec<(u64, AlignedBuf)>,
    ) -> Result<()> {
        let start = self.geo.segment_start(v.seg);
        let live = &v.live;
        let mut i = 0;
        while i < live.len() {
            let (dst, n) = self.take_blocks(cw, live.len() - i, true)?;
            // Relocated data keeps its age in its new segment.
            self.write_lock(&self.state)
                .sut
                .note_copied(self.geo.segment_of(dst), v.stamp);
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
        Ok(())
    }

    /// Free segments (the reserve included).
    pub fn free_segments(&self) -> u64 {
        self.read_lock(&self.state).sut.free_count()
    }

    /// Free segments guest writes leave to checkpoints and the cleaner, sized from the trees
    /// as they now are ([`Sut::reserved_segments`](crate::store::map::sut::Sut::reserved_segments)).
    pub fn reserved_segments(&self) -> u64 {
        self.read_lock(&self.state).sut.reserved_segments()
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
    std::thread::scope(|scope| {
        clean_until_stopped(store, cfg, stop, CleanAhead::new(scope, store))
    });
}

/// The cleaner's loop, its steps reading ahead through `ahead`.
fn clean_until_stopped(
    store: &Store,
    cfg: &CleanerConfig,
    stop: &AtomicBool,
    mut ahead: CleanAhead<'_>,
) {
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
        let reserve = store.reserved_segments();
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
        // One victim a step: a step of four applies a record four times the size under the
        // journal lock, and doubled the guest's p99 without raising its rate
        // (docs/benchmarks.md, "Several victims per step"). Writers short of space, which
        // wait for the cleaning anyway, take steps of several.
        // The next victim is read during this step when another follows at once.
        let read_next = urgent || matches!(pace, Pace::Urgent | Pace::Behind(_));
        let t0 = Instant::now();
        let cleaned = {
            let _class = ClassGuard::enter(class);
            ahead.step(store, class, read_next)
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
