//! Whole-store tests: a model check with proptest, seeded crash tests on a
//! fault-injecting device, and corruption of every kind of block.

mod clean_ahead;
mod cleaner_apply;
mod cleaning;
mod concurrent;
mod corruption;
mod crash;
mod dictionary;
mod guest_pace;
mod hold;
mod import_crash;
mod import_disk;
mod in_flight;
mod incompressible;
mod keep_ahead;
mod live;
mod mark_release;
mod meta_gather;
mod model;
mod no_wait;
mod packed;
mod poison;
mod several_victims;
mod space;
mod staging;
mod stored_crc;
mod tree_reserve;
mod vba_tweak;

use super::seal::Key;
use super::{CreateOptions, Store, StoreOptions};
use crate::testing::{CrashMode, FaultyDevice, SplitMix};
use std::sync::Arc;

/// Whether this run's store tests use encrypted containers: `KEEL_TEST_ENCRYPTED=1` (test.sh
/// runs the store's tests both ways).
pub(crate) fn encrypted_run() -> bool {
    std::env::var_os("KEEL_TEST_ENCRYPTED").is_some_and(|v| v == "1")
}

/// The codec of this run's containers: `KEEL_TEST_COMPRESSION=lz4|zstd` (test.sh runs the
/// store's tests compressed too); none otherwise.
pub(crate) fn test_compression() -> Option<super::compress::Codec> {
    let name = std::env::var("KEEL_TEST_COMPRESSION").ok()?;
    super::compress::Codec::parse(&name).expect("KEEL_TEST_COMPRESSION: none, lz4 or zstd")
}

/// The key of this run's containers, in an encrypted run.
pub(crate) fn test_key() -> Option<Key> {
    encrypted_run().then(|| {
        let raw: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(151).wrapping_add(7))
            .collect();
        Key::from_bytes(&raw).expect("a valid test key")
    })
}

/// Options to open this run's containers with: the defaults, and the key in an encrypted run.
pub(crate) fn store_opts() -> StoreOptions {
    StoreOptions {
        key: test_key(),
        ..StoreOptions::default()
    }
}

/// A small container: 1 MiB disk (256 blocks), 64 KiB segments, a 128 KiB journal
/// (encrypted in an encrypted run, compressed in a compressed one).
pub(super) fn small_opts() -> CreateOptions {
    CreateOptions {
        capacity: 1 << 20,
        segment_bytes: 64 << 10,
        journal_bytes: Some(128 << 10),
        overprovision_percent: 25,
        encryption: test_key(),
        compression: test_compression(),
    }
}

/// The byte offset of byte `within` of what the VBA entry `pba` stores (its slot in a packed
/// block, the block itself otherwise): damage there fails the entry's checksum.
pub(super) fn stored_byte(pba: u64, within: u64) -> u64 {
    use super::compress::place;
    let start = place::block_of(pba) * super::layout::BLOCK;
    match place::slot_of(pba) {
        Some(s) => start + s.range().start as u64 + within % s.range().len() as u64,
        None => start + within,
    }
}

/// `len` bytes that do not compress, the same for the same `seed`.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The first `len` bytes of the disk.
pub(super) fn read_all(s: &Store, len: usize) -> Vec<u8> {
    let mut img = vec![0u8; len];
    s.read(0, &mut img).unwrap();
    img
}

pub(super) fn new_store(opts: &CreateOptions) -> (Arc<FaultyDevice>, Store) {
    let geo = opts.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), opts).unwrap();
    let store = Store::open(dev.clone(), opts_for(opts)).unwrap();
    (dev, store)
}

/// The cipher of the container on `dev` in an encrypted run (with this run's key), for tests
/// that edit blocks behind the store's back; `None` for a plaintext container.
pub(crate) fn sealer_of(dev: &dyn crate::device::BlockDevice) -> Option<super::seal::Sealer> {
    let fields = super::log::recovery::pick_superblock(dev)
        .expect("a container")
        .superblock
        .seal;
    fields
        .is_encrypted()
        .then(|| fields.unlock(test_key().as_ref()).expect("this run's key"))
}

/// Options to open a container made with `create`: with its key, if it has one.
pub(super) fn opts_for(create: &CreateOptions) -> StoreOptions {
    StoreOptions {
        key: create.encryption.clone(),
        ..StoreOptions::default()
    }
}

#[test]
fn write_read_reopen() {
    use super::Op;
    let (dev, s) = new_store(&small_opts());
    let a = vec![0xabu8; 8192];
    let b = vec![0x11u8; 512];
    s.write_batch(
        0,
        &[
            Op::Write {
                offset: 4096,
                data: &a,
            },
            Op::Write {
                offset: 4096 + 512,
                data: &b,
            },
        ],
    )
    .unwrap();
    let mut r = vec![0u8; 3 * 4096];
    s.read(0, &mut r).unwrap();
    assert!(r[..4096].iter().all(|x| *x == 0));
    assert_eq!(r[4096], 0xab);
    assert!(r[4096 + 512..4096 + 1024].iter().all(|x| *x == 0x11));
    assert_eq!(r[4096 + 1024], 0xab);
    assert!(r[3 * 4096 - 1] == 0xab);
    s.flush().unwrap();
    let st = s.stats();
    // One record for the batch, one saying the flush made it durable.
    assert_eq!(
        (
            st.batches,
            st.journal_writes,
            st.flush_marks,
            st.guest_writes
        ),
        (1, 2, 1, 2)
    );
    // A second flush with nothing new to cover writes no mark.
    s.flush().unwrap();
    assert_eq!(s.stats().flush_marks, 1);
    drop(s);
    let s = Store::open(dev.clone(), store_opts()).unwrap();
    assert_eq!(s.recovery_report().records_replayed, 2);
    let mut r2 = vec![0u8; 3 * 4096];
    s.read(0, &mut r2).unwrap();
    assert_eq!(r, r2);
    s.checkpoint().unwrap();
    drop(s);
    let s = Store::open(dev, store_opts()).unwrap();
    assert_eq!(s.recovery_report().records_replayed, 0);
    let mut r3 = vec![0u8; 3 * 4096];
    s.read(0, &mut r3).unwrap();
    assert_eq!(r, r3);
    let f = s.fsck();
    assert!(f.is_clean(), "{:?}", f.problems);
    assert_eq!(f.lba_entries, 2);
}

/// A read of whole blocks from one run hands its bytes out as read, checksums checked; any
/// other read (partial blocks, holes, several runs) takes the copying path.
#[test]
fn whole_block_reads_from_one_run_skip_the_copy_and_still_check_checksums() {
    use super::{AlignedBuf, Op};
    let (_dev, s) = new_store(&small_opts());
    // Noise: stored raw in a compressed run too, so the blocks make one run.
    let data = noise(2 * 4096, 5);
    s.write_batch(
        0,
        &[Op::Write {
            offset: 8192,
            data: &data,
        }],
    )
    .unwrap();
    // The container's bytes as stored: what a queue reads (ciphertext if it is encrypted).
    let read_runs = |plan: &super::ReadPlan| -> Vec<AlignedBuf> {
        let mut bufs = plan.buffers();
        for (run, b) in plan.runs().iter().zip(bufs.iter_mut()) {
            s.raw_device().read_at(b, run.offset()).unwrap();
        }
        bufs
    };
    let plan = s.plan_read(8192, 8192).unwrap();
    let mut bufs = read_runs(&plan);
    let got = s.finished_run(&plan, &mut bufs).expect("one run").unwrap();
    assert_eq!(got, &data[..]);
    for (offset, len) in [(8192, 512), (4096, 8192), (8192 + 512, 4096)] {
        let plan = s.plan_read(offset, len).unwrap();
        assert!(
            s.finished_run(&plan, &mut read_runs(&plan)).is_none(),
            "{offset}+{len} is not one whole run"
        );
    }
    let plan = s.plan_read(8192, 8192).unwrap();
    let mut bufs = read_runs(&plan);
    bufs[0][4096 + 7] ^= 1;
    assert!(matches!(
        s.finished_run(&plan, &mut bufs),
        Some(Err(super::StoreError::DataChecksum { lba: 3, .. }))
    ));
}

/// A container is linked into place only once formatted: what a crash mid-create leaves (a
/// partial temporary) is replaced by the next create, never found at the path itself.
#[test]
fn a_create_interrupted_by_a_crash_leaves_nothing_at_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.keel");
    let leftover = dir.path().join("d.keel.creating");
    std::fs::write(&leftover, vec![0xffu8; 8192]).unwrap();
    assert!(!path.exists());
    Store::create_path(&path, &small_opts()).unwrap();
    assert!(!leftover.exists(), "the temporary outlived the create");
    let s = Store::open_path(&path, store_opts()).unwrap();
    assert_eq!(s.capacity(), small_opts().capacity);
    drop(s);
    let again = Store::create_path(&path, &small_opts());
    assert!(again.is_err(), "a second create replaced the container");
    assert!(Store::open_path(&path, store_opts()).is_ok());
}

/// Pulls the plug on `dev` in a mode `rng` picks; returns the mode and what survives of it.
pub(super) fn random_crash(dev: &FaultyDevice, rng: &mut SplitMix) -> (CrashMode, Vec<u8>) {
    let mode = match rng.below(3) {
        0 => CrashMode::DropAll,
        1 => CrashMode::TornPrefix,
        _ => CrashMode::RandomSubset,
    };
    (mode, dev.crash_image(mode, rng))
}

/// Runs crash-point test `what` once per seed: only the seed in env `seed_var` when it is set
/// (to replay a failure), else the `regressions` then `points` (env `points_var`, default
/// `default_points`) seeds counting up from `base`. Panics with the seed that failed and how to
/// replay it; returns the crashes all runs survived.
pub(super) fn run_crash_points(
    what: &str,
    (points_var, seed_var): (&str, &str),
    default_points: u64,
    (base, regressions): (u64, &[u64]),
    run: impl Fn(u64) -> Result<u64, String>,
) -> u64 {
    let points: u64 = std::env::var(points_var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_points);
    let seeds: Vec<u64> = match std::env::var(seed_var).ok().and_then(|v| v.parse().ok()) {
        Some(s) => vec![s],
        None => regressions
            .iter()
            .copied()
            .chain((0..points).map(|i| base + i))
            .collect(),
    };
    let mut crashes = 0;
    for seed in seeds {
        match run(seed) {
            Ok(n) => crashes += n,
            Err(e) => panic!("{what} failed; replay with {seed_var}={seed}: {e}"),
        }
    }
    crashes
}
