//! The background cleaner keeping ahead: it cleans before space is short without waiting for
//! the guest to go idle; with it at work, the disk always reads as the model says, and a crash
//! at any moment recovers to a state after the last completed flush.

use super::{read_all, small_opts};
use crate::store::log::pace::Levels;
use crate::store::{CleanerConfig, CleanerHandle, CleanerIo, Op, Store, StoreOptions};
use crate::testing::{FaultyDevice, SplitMix};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BLOCK: usize = 4096;

/// Cleans ahead on the small container, never because the guest is idle.
fn eager() -> CleanerConfig {
    CleanerConfig {
        low_water: 4,
        ahead_percent: 50,
        idle: Duration::from_secs(3600),
        pause: Duration::from_millis(1),
    }
}

/// keeld's options: a guest write that finds no segment waits (10 s) for the cleaner, which
/// may be mid-step, instead of failing at once.
fn served() -> StoreOptions {
    served_with(CleanerIo::default())
}

/// [`served`] with the cleaner's I/O in `io`'s class while it cleans ahead.
fn served_with(io: CleanerIo) -> StoreOptions {
    StoreOptions {
        space: crate::store::SpaceOptions {
            wait: Duration::from_secs(10),
            cleaner_io: io,
            ..Default::default()
        },
        ..crate::store::tests::store_opts()
    }
}

fn levels(s: &Store, cfg: &CleanerConfig) -> Levels {
    let geo = s.geometry();
    Levels::new(
        s.reserved_segments(),
        crate::store::log::spare::spare_segments(&geo),
        cfg.low_water,
        cfg.ahead_percent,
    )
}

/// A random batch of 1 to 4 block writes or a discard; applied to `model` too.
fn batch(rng: &mut SplitMix, model: &mut [u8], tag: u8) -> Vec<(u64, Option<Vec<u8>>)> {
    let blocks = (model.len() / BLOCK) as u64;
    (0..1 + rng.below(4))
        .map(|_| {
            let lba = rng.below(blocks);
            let at = lba as usize * BLOCK;
            if rng.chance(1, 16) {
                model[at..at + BLOCK].fill(0);
                (lba, None)
            } else {
                let mut b = vec![tag; BLOCK];
                b[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                model[at..at + BLOCK].copy_from_slice(&b);
                (lba, Some(b))
            }
        })
        .collect()
}

fn apply(s: &Store, reqs: &[(u64, Option<Vec<u8>>)]) -> crate::store::Result<()> {
    let ops: Vec<Op<'_>> = reqs
        .iter()
        .map(|(lba, d)| match d {
            Some(data) => Op::Write {
                offset: lba * BLOCK as u64,
                data,
            },
            None => Op::Discard {
                offset: lba * BLOCK as u64,
                len: BLOCK as u64,
            },
        })
        .collect();
    s.write_batch(0, &ops)
}

/// Below the target but above the urgent level, with the guest still counted busy, the
/// cleaner cleans (and guest writers never had to).
#[test]
fn cleans_before_space_is_short_while_the_guest_is_busy() {
    let opts = small_opts();
    let geo = opts.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), &opts).unwrap();
    let s = Arc::new(Store::open(dev, served()).unwrap());
    let cfg = eager();
    let l = levels(&s, &cfg);
    let mut model = vec![0u8; opts.capacity as usize];
    let mut rng = SplitMix::new(7);
    // Overwrite at random until the free segments drop below the target.
    let mut tag = 1u8;
    while s.free_segments() + s.pending_segments() >= l.target {
        apply(&s, &batch(&mut rng, &mut model, tag)).unwrap();
        tag = tag.wrapping_add(1).max(1);
    }
    assert!(s.free_segments() >= l.urgent, "not short of space yet");
    let before = s.stats();
    assert_eq!(before.segments_cleaned, 0);
    let cleaner = CleanerHandle::spawn(Arc::clone(&s), cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.stats().segments_cleaned == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(cleaner);
    let after = s.stats();
    assert!(after.segments_cleaned > 0, "the cleaner worked ahead");
    assert_eq!(after.writer_cleaned, 0);
    assert_eq!(read_all(&s, model.len()), model);
}

/// Random batches with the cleaner at work in the background: every read matches the model,
/// through reopens, and fsck stays clean. Every other round the cleaner's I/O goes in the idle
/// class while it cleans ahead, and it still does the cleaning.
#[test]
fn the_disk_matches_the_model_while_the_cleaner_works() {
    let opts = small_opts();
    let geo = opts.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), &opts).unwrap();
    let mut model = vec![0u8; opts.capacity as usize];
    let mut rng = SplitMix::new(11);
    let (mut cleaned, mut cleaned_idle) = (0, 0);
    for round in 0..4u8 {
        let io = match round % 2 {
            0 => CleanerIo::Normal,
            _ => CleanerIo::Idle,
        };
        let s = Arc::new(Store::open(dev.clone(), served_with(io)).unwrap());
        let cleaner = CleanerHandle::spawn(Arc::clone(&s), eager()).unwrap();
        for i in 0..1500u32 {
            apply(&s, &batch(&mut rng, &mut model, round * 50 + 1)).unwrap();
            if i % 100 == 0 {
                let lba = rng.below(opts.capacity / BLOCK as u64) as usize;
                let mut b = vec![0u8; BLOCK];
                s.read((lba * BLOCK) as u64, &mut b).unwrap();
                assert_eq!(b, model[lba * BLOCK..(lba + 1) * BLOCK], "LBA {lba}");
            }
        }
        drop(cleaner);
        assert_eq!(read_all(&s, model.len()), model, "round {round}");
        let f = s.fsck();
        assert!(f.is_clean(), "round {round}: {:?}", f.problems);
        let st = s.stats();
        cleaned += st.segments_cleaned - st.writer_cleaned;
        if io == CleanerIo::Idle {
            cleaned_idle += st.segments_cleaned - st.writer_cleaned;
        }
        s.flush().unwrap();
    }
    assert!(cleaned > 0, "the background cleaner did the cleaning");
    assert!(cleaned_idle > 0, "in the idle class too");
}

/// Crashes while the cleaner works in the background: the recovered disk is the state after
/// some batch at or after the last completed flush, and fsck is clean.
#[test]
fn crashes_while_the_cleaner_works_recover_a_flushed_state() {
    let runs: u64 = std::env::var("KEEL_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(40, |n: u64| n / 20 + 1);
    let mut cleaned = 0;
    for seed in 0..runs {
        let mut rng = SplitMix::new(0xc1ea_0000 + seed);
        let opts = small_opts();
        let geo = opts.geometry().unwrap();
        let fresh = FaultyDevice::new(geo.container_bytes());
        Store::format(&fresh, &opts).unwrap();
        let dev = Arc::new(fresh);
        let s = Arc::new(Store::open(dev.clone(), served()).unwrap());
        let cleaner = CleanerHandle::spawn(Arc::clone(&s), eager()).unwrap();
        let mut model = vec![0u8; opts.capacity as usize];
        let mut allowed = vec![model.clone()];
        for i in 0..200 + rng.below(800) {
            if let Err(e) = apply(&s, &batch(&mut rng, &mut model, (i % 250) as u8 + 1)) {
                panic!(
                    "seed {seed} batch {i}: {e}; free {} pending {} stats {:?}",
                    s.free_segments(),
                    s.pending_segments(),
                    s.stats()
                );
            }
            allowed.push(model.clone());
            if rng.chance(1, 50) {
                s.flush().unwrap();
                allowed = vec![model.clone()];
            }
        }
        // The plug is pulled while the cleaner may be mid-step.
        let (mode, img) = crate::store::tests::random_crash(&dev, &mut rng);
        let st = s.stats();
        cleaned += st.segments_cleaned - st.writer_cleaned;
        drop(cleaner);
        drop(s);
        let s = Store::open(
            Arc::new(FaultyDevice::from_image(img)),
            crate::store::tests::store_opts(),
        )
        .unwrap_or_else(|e| panic!("seed {seed} ({mode:?}): recovery failed: {e}"));
        let got = read_all(&s, model.len());
        assert!(
            allowed.contains(&got),
            "seed {seed} ({mode:?}): the recovered disk is none of the {} states since the last flush",
            allowed.len()
        );
        let f = s.fsck();
        assert!(f.is_clean(), "seed {seed} ({mode:?}): {:?}", f.problems);
    }
    assert!(cleaned > 0, "the background cleaner was at work");
}
