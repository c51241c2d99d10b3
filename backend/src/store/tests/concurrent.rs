//! Several writers at once: their batches' writes finish in any order, yet the maps must take
//! them in LSN order, so that what the disk reads before a crash is what recovery rebuilds.

use super::{new_store, small_opts};
use crate::device::BlockDevice;
use crate::store::{Gather, Op, Result, Store};
use crate::testing::SplitMix;
use std::io;
use std::sync::{Arc, Barrier};

/// Writes through the device after a random pause, each write of a batch in a random order,
/// so that a later batch of another writer often lands (and would apply) first.
struct ShuffledIo<'a> {
    dev: &'a dyn BlockDevice,
    rng: SplitMix,
}

impl ShuffledIo<'_> {
    /// Writes one batch of `ops` on `writer` through the plan API, in its own order.
    fn write_batch(&mut self, store: &Store, writer: usize, ops: &[Op<'_>]) -> Result<()> {
        let plan = store.plan_batch(writer, ops)?;
        let written = self.write_all_while(&plan.writes(), &mut || plan.apply_maps());
        let batch = store.apply_plan(plan);
        store.finish_batch_in_order(batch, written)
    }

    fn write_all_while(
        &mut self,
        writes: &[Gather<'_>],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let mut order: Vec<usize> = (0..writes.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        // The map changes apply before, between or after the writes.
        let apply_at = self.rng.below(writes.len() as u64 + 1) as usize;
        std::thread::sleep(std::time::Duration::from_micros(self.rng.below(300)));
        let mut written = Ok(());
        for (n, i) in order.into_iter().enumerate() {
            if n == apply_at {
                meanwhile();
            }
            if written.is_ok() {
                written = write_gather(self.dev, &writes[i]);
            }
        }
        if apply_at == writes.len() {
            meanwhile();
        }
        written
    }
}

/// One gathered write, part after part.
fn write_gather(dev: &dyn BlockDevice, (offset, parts): &Gather<'_>) -> io::Result<()> {
    let mut at = *offset;
    for p in parts {
        dev.write_at(p, at)?;
        at += p.len() as u64;
    }
    Ok(())
}

fn image(store: &Store) -> Vec<u8> {
    let mut img = vec![0u8; store.capacity() as usize];
    store.read(0, &mut img).unwrap();
    img
}

/// Races `writers` threads for `rounds` batches each of phase `phase`, all on the same 6 blocks
/// (3 blocks a batch) through the store's device with shuffled I/O, so the order of batches
/// decides; `seeds` are the bases of the block choice and of the I/O shuffling.
fn race_writers(store: &Arc<Store>, writers: usize, rounds: u64, phase: u64, seeds: (u64, u64)) {
    let start = Arc::new(Barrier::new(writers));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let (store, start) = (Arc::clone(store), Arc::clone(&start));
            std::thread::spawn(move || {
                let seed = phase * 16 + w as u64;
                let mut rng = SplitMix::new(seeds.0 + seed);
                // Through the store's device: sealed, on an encrypted container.
                let mut io = ShuffledIo {
                    dev: store.raw_device(),
                    rng: SplitMix::new(seeds.1 + seed),
                };
                start.wait();
                for round in 0..rounds {
                    let blk = rng.below(6);
                    let data = vec![(w as u8) << 6 | (round % 64) as u8; 3 * 4096];
                    let ops = [Op::Write {
                        offset: blk * 4096,
                        data: &data,
                    }];
                    io.write_batch(&store, w, &ops).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn writers_racing_on_the_same_blocks_agree_with_recovery() {
    // A journal that holds every record and room for every block written: replay alone
    // rebuilds the maps, no checkpoint hides a wrong order.
    let opts = crate::store::CreateOptions {
        capacity: 8 << 20,
        journal_bytes: Some(4 << 20),
        ..small_opts()
    };
    let (dev, store) = new_store(&opts);
    let store = Arc::new(store);
    let writers = 3;
    let rounds = 10u64;
    // Each phase races the writers for a few rounds, then compares the disk with what
    // recovery makes of a copy of the device: the last writes to each block decide.
    for phase in 0..15u64 {
        race_writers(&store, writers, rounds, phase, (0xc0ffee, 7));
        let before = image(&store);
        let copy = Arc::new(crate::testing::FaultyDevice::from_image(dev.contents()));
        let recovered = Store::open(copy, crate::store::tests::store_opts()).unwrap();
        assert_eq!(
            recovered.recovery_report().records_replayed,
            (phase + 1) * writers as u64 * rounds
        );
        assert!(
            image(&recovered) == before,
            "phase {phase}: recovery rebuilt another disk"
        );
    }
    let report = store.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// The same race with checkpoints running all along: each freezes the maps between two
/// records and writes while the writers go on into the journal ring past it. Recovery from a
/// copy taken at any point of that (the newest committed checkpoint, then the records after its
/// freeze point) rebuilds the same disk.
#[test]
fn writers_racing_with_checkpoints_agree_with_recovery() {
    let (dev, store) = new_store(&small_opts());
    let store = Arc::new(store);
    let writers = 3;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                store.checkpoint().unwrap();
                n += 1;
            }
            n
        })
    };
    for phase in 0..10u64 {
        race_writers(&store, writers, 20, phase, (0xbeef, 11));
        let before = image(&store);
        // Every write is done: a copy of the device now holds whatever a checkpoint running
        // meanwhile has written so far, and every record.
        let copy = Arc::new(crate::testing::FaultyDevice::from_image(dev.contents()));
        let recovered = Store::open(copy, crate::store::tests::store_opts()).unwrap();
        assert!(
            image(&recovered) == before,
            "phase {phase}: recovery rebuilt another disk ({:?})",
            recovered.recovery_report()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let checkpoints = checkpointer.join().unwrap();
    assert!(checkpoints > 10, "{checkpoints} checkpoints ran");
    let report = store.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A snapshot taken while writers run flat out holds every write that completed before the
/// create was asked for, and none that started after it answered: each block reads as a version
/// between the last one finished before the call and the last one begun before the answer.
#[test]
fn a_snapshot_under_full_speed_writes_holds_what_had_completed() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const WRITERS: usize = 3;
    const PER_WRITER: u64 = 40;
    // Room for what ten snapshots pin; a cleaner thread reclaims the rest as it goes.
    let (_dev, s) = new_store(&crate::store::CreateOptions {
        capacity: 16 << 20,
        overprovision_percent: 100,
        ..small_opts()
    });
    let s = Arc::new(s);
    let blocks = WRITERS as u64 * PER_WRITER;
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..blocks).map(|_| AtomicU64::new(0)).collect());
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..blocks).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // Version v of block b: every 8-byte word holds (b << 32) | v.
    let content = |b: u64, v: u64| -> Vec<u8> {
        std::iter::repeat_n(((b << 32) | v).to_le_bytes(), 512)
            .flatten()
            .collect()
    };
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (s, started, done, stop) = (
                Arc::clone(&s),
                Arc::clone(&started),
                Arc::clone(&done),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut rng = SplitMix::new(w as u64 + 7);
                let mut v = 0u64;
                while !stop.load(Ordering::Acquire) {
                    v += 1;
                    let b = w as u64 * PER_WRITER + rng.below(PER_WRITER);
                    started[b as usize].store(v, Ordering::SeqCst);
                    let data = content(b, v);
                    s.write_batch(
                        w,
                        &[Op::Write {
                            offset: b * 4096,
                            data: &data,
                        }],
                    )
                    .unwrap();
                    done[b as usize].fetch_max(v, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let cleaner = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                if s.clean_step().ok().flatten().is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        })
    };
    let mut checked = 0;
    for round in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let before: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let id = s.create_snapshot(&format!("under-load-{round}")).unwrap();
        let after: Vec<u64> = started.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let d = s
            .diff(
                crate::store::admin::diff::TreeRef::Empty,
                crate::store::admin::diff::TreeRef::Snapshot(id),
            )
            .unwrap();
        let mut held = vec![0u64; blocks as usize];
        for c in d.blocks {
            if let (Some(vba), true) = (c.vba, c.lba < blocks) {
                let mut buf = vec![0u8; 4096];
                s.read_vbas(&[vba], &mut buf).unwrap();
                let word = u64::from_le_bytes(buf[..8].try_into().unwrap());
                assert_eq!(
                    word >> 32,
                    c.lba,
                    "block {} holds another block's data",
                    c.lba
                );
                assert_eq!(
                    buf,
                    content(c.lba, word & 0xffff_ffff),
                    "block {} torn",
                    c.lba
                );
                held[c.lba as usize] = word & 0xffff_ffff;
            }
        }
        for b in 0..blocks as usize {
            assert!(
                before[b] <= held[b] && held[b] <= after[b],
                "round {round}, block {b}: snapshot holds version {}, completed before the \
                 create {}, begun before its answer {}",
                held[b],
                before[b],
                after[b]
            );
            checked += usize::from(before[b] > 0);
        }
    }
    stop.store(true, Ordering::Release);
    for h in handles {
        h.join().unwrap();
    }
    cleaner.join().unwrap();
    assert!(checked > 100, "the writers made progress: {checked}");
}

/// Applies the batch's map changes first, then writes after a pause: the widest window in
/// which another thread finds a block mapped whose data is not on the device yet.
struct LateIo<'a> {
    dev: &'a dyn BlockDevice,
    applied: &'a std::sync::atomic::AtomicBool,
}

impl LateIo<'_> {
    /// Writes one batch of `ops` on writer 0 through the plan API, late.
    fn write_batch(&mut self, store: &Store, ops: &[Op<'_>]) -> Result<()> {
        let plan = store.plan_batch(0, ops)?;
        plan.apply_maps();
        self.applied
            .store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(30));
        let written = (plan.writes().iter()).try_for_each(|w| write_gather(self.dev, w));
        let batch = store.apply_plan(plan);
        store.finish_batch_in_order(batch, written)
    }
}

/// A reader that looks a block up while the batch that maps it is still being written waits
/// for the write: it reads the new data, never what the new place held before (which fails
/// its checksum) and never an error.
#[test]
fn a_read_of_a_block_being_written_waits_for_its_data() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_dev, s) = new_store(&small_opts());
    let s = Arc::new(s);
    let old = vec![0x11u8; 4096];
    s.write_batch(
        0,
        &[Op::Write {
            offset: 0,
            data: &old,
        }],
    )
    .unwrap();
    for round in 0..5u8 {
        let new = vec![0x20 + round; 4096];
        let applied = Arc::new(AtomicBool::new(false));
        let reader = {
            let (s, applied) = (Arc::clone(&s), Arc::clone(&applied));
            std::thread::spawn(move || {
                while !applied.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                let mut got = vec![0u8; 4096];
                s.read(0, &mut got).map(|()| got[0])
            })
        };
        let mut io = LateIo {
            dev: s.raw_device(),
            applied: &applied,
        };
        io.write_batch(
            &s,
            &[Op::Write {
                offset: 0,
                data: &new,
            }],
        )
        .unwrap();
        let seen = reader.join().unwrap();
        assert_eq!(
            seen.map_err(|e| e.to_string()),
            Ok(0x20 + round),
            "round {round}: the reader went ahead of the write"
        );
    }
    assert!(s.fsck().is_clean());
}
