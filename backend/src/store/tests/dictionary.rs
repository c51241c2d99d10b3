//! A zstd container's dictionary through the whole store: trained from the first blocks
//! that compress, it makes later text blocks smaller; every block reads back before and
//! after it, after a reopen and after the cleaner moved them; a crash anywhere in its
//! write leaves a container that opens; damage to it is refused at open; an encrypted
//! container never stores it in plaintext.

use super::{encrypted_run, noise, opts_for, store_opts, test_key};
use crate::store::compress::dict::{self, BODY_PBA, HEADER_PBA};
use crate::store::compress::{Codec, place};
use crate::store::log::superblock::INCOMPAT_ZSTD_DICT;
use crate::store::{CreateOptions, Op, Store, StoreError};
use crate::testing::{CrashMode, FaultyDevice, SplitMix};
use std::collections::HashMap;
use std::sync::Arc;

const BLOCK: usize = 4096;
/// Blocks that fill the sample.
const SAMPLE_BLOCKS: u64 = (crate::store::compress::SAMPLE_BYTES / BLOCK) as u64;
/// Blocks per batch.
const BATCH: u64 = 16;

/// A zstd container of 4 MiB (room for two samples' worth of blocks and their overwrites),
/// encrypted in an encrypted run.
fn opts() -> CreateOptions {
    CreateOptions {
        capacity: 4 << 20,
        segment_bytes: 64 << 10,
        journal_bytes: Some(256 << 10),
        overprovision_percent: 50,
        encryption: test_key(),
        compression: Some(Codec::Zstd),
    }
}

fn new_store(opts: &CreateOptions) -> (Arc<FaultyDevice>, Store) {
    let dev = Arc::new(FaultyDevice::new(
        opts.geometry().unwrap().container_bytes(),
    ));
    Store::format(dev.as_ref(), opts).unwrap();
    let s = Store::open(dev.clone(), opts_for(opts)).unwrap();
    (dev, s)
}

/// A block of log lines, different for every `seed`: what a dictionary helps with (the
/// same words and shapes in every block, too few of them in one block to refer back to).
pub(super) fn text(seed: u64) -> Vec<u8> {
    const LEVELS: [&str; 3] = ["INFO", "WARN", "DEBUG"];
    const WHAT: [&str; 8] = [
        "request served from the queue",
        "checkpoint written to the metadata segment",
        "segment cleaned and given back to the free list",
        "flush completed for the batch",
        "snapshot created for the running point",
        "mirror component caught up after a resync",
        "journal record replayed during recovery",
        "guest asked for a discard of the range",
    ];
    let mut rng = SplitMix::new(seed);
    let mut out = Vec::with_capacity(BLOCK + 200);
    while out.len() < BLOCK {
        let (r, id) = (rng.next_u64(), rng.next_u64() as u32);
        out.extend_from_slice(
            format!(
                "2026-12-07T08:{:02}:{:02}.{:06}Z {} keeld::store: {} (queue {}, lsn {}, {} blocks, id {id:08x})\n",
                r % 60,
                (r >> 8) % 60,
                (r >> 16) % 1_000_000,
                LEVELS[(r >> 40) as usize % 3],
                WHAT[(r >> 44) as usize % 8],
                (r >> 48) % 4,
                (r >> 20) % 100_000,
                (r >> 52) % 256,
            )
            .as_bytes(),
        );
    }
    out.truncate(BLOCK);
    out
}

type Model = HashMap<u64, Vec<u8>>;

/// Writes `lbas` in batches, each with `data(lba)`.
fn write(
    s: &Store,
    model: &mut Model,
    lbas: impl Iterator<Item = u64>,
    data: impl Fn(u64) -> Vec<u8>,
) {
    let lbas: Vec<u64> = lbas.collect();
    for chunk in lbas.chunks(BATCH as usize) {
        let blocks: Vec<Vec<u8>> = chunk.iter().map(|l| data(*l)).collect();
        let ops: Vec<Op<'_>> = chunk
            .iter()
            .zip(&blocks)
            .map(|(l, d)| Op::Write {
                offset: l * BLOCK as u64,
                data: d,
            })
            .collect();
        s.write_batch(0, &ops).unwrap();
        for (l, d) in chunk.iter().zip(blocks) {
            model.insert(*l, d);
        }
    }
}

fn check(s: &Store, model: &Model, what: &str) {
    let mut b = vec![0u8; BLOCK];
    for (lba, want) in model {
        s.read(lba * BLOCK as u64, &mut b)
            .unwrap_or_else(|e| panic!("{what}: LBA {lba}: {e}"));
        assert!(b == *want, "{what}: LBA {lba} reads other data");
    }
    let r = s.fsck();
    assert!(r.is_clean(), "{what}: {:?}", r.problems);
}

/// Bytes the running point's blocks in `lbas` take as stored.
fn stored(s: &Store, lbas: std::ops::Range<u64>) -> u64 {
    let st = s.read_lock(&s.state);
    lbas.map(|l| place::stored_len(st.maps.lookup(l).unwrap().1.pba))
        .sum()
}

/// Whether the slot of `lba`'s block says it was compressed with the dictionary.
fn uses_dictionary(s: &Store, lba: u64) -> bool {
    let pba = s.read_lock(&s.state).maps.lookup(lba).unwrap().1.pba;
    let Some(slot) = place::slot_of(pba) else {
        return false;
    };
    // Packed blocks are sealed under their place, as metadata: the store's device opens them.
    let mut block = crate::store::AlignedBuf::scratch(1);
    s.dev
        .read_at(&mut block, place::block_of(pba) * BLOCK as u64)
        .unwrap();
    let at = slot.range().start;
    u16::from_le_bytes([block[at], block[at + 1]]) & dict::DICT_SLOT != 0
}

/// Fills the sample with text and waits for the dictionary.
fn trained(s: &Store, model: &mut Model) {
    write(s, model, 0..SAMPLE_BLOCKS, text);
    s.wait_for_dictionary();
    assert!(s.dictionary().is_some(), "a dictionary was trained");
}

#[test]
fn the_dictionary_is_trained_and_later_text_takes_less_room() {
    let (_dev, s) = new_store(&opts());
    assert_ne!(
        s.lock(&s.journal).superblock.incompat & INCOMPAT_ZSTD_DICT,
        0,
        "a new zstd container has the feature"
    );
    let mut model = Model::new();
    trained(&s, &mut model);
    let len = s.dictionary_bytes().unwrap();
    assert!(len > 0 && len <= dict::MAX_DICT_BYTES as u64, "{len}");
    assert_eq!(s.info().dictionary_bytes, Some(len));
    assert_eq!(s.data_bytes().dictionary, Some(len));
    assert!(
        !uses_dictionary(&s, 0),
        "blocks before it stay as they were"
    );
    // The same kind of text again, after it.
    let n = SAMPLE_BLOCKS;
    write(&s, &mut model, n..2 * n, |l| text(l + 1_000_000));
    assert!(uses_dictionary(&s, n));
    let (before, after) = (stored(&s, 0..n), stored(&s, n..2 * n));
    assert!(
        after * 10 <= before * 8,
        "with the dictionary {after} bytes, without {before}"
    );
    check(&s, &model, "written");
}

#[test]
fn blocks_before_and_after_the_dictionary_survive_overwrites_cleaning_and_reopen() {
    let opts = opts();
    let (dev, s) = new_store(&opts);
    let mut model = Model::new();
    trained(&s, &mut model);
    let n = SAMPLE_BLOCKS;
    write(&s, &mut model, n..2 * n, |l| text(l << 20));
    // Three quarters of both halves overwritten (with the dictionary): segments mostly
    // garbage, their live packed blocks of either kind for the cleaner to move.
    write(&s, &mut model, (0..2 * n).filter(|l| l % 16 < 12), |l| {
        text(l << 40)
    });
    check(&s, &model, "overwritten");
    let mut moved = 0;
    for _ in 0..16 {
        if let Some(r) = s.clean_step().unwrap() {
            moved += r.moved;
        }
    }
    s.checkpoint().unwrap();
    assert!(moved > 0, "the cleaner moved blocks");
    check(&s, &model, "cleaned");
    let dictionary = s.dictionary().unwrap().to_vec();
    drop(s);
    let s = Store::open(dev.clone(), opts_for(&opts)).unwrap();
    assert_eq!(
        s.dictionary(),
        Some(&dictionary[..]),
        "the same after a reopen"
    );
    check(&s, &model, "reopened");
    // Never trained again: new text goes on with the same one.
    write(&s, &mut model, 2 * n..3 * n, |l| text(l << 50));
    s.wait_for_dictionary();
    assert_eq!(s.dictionary(), Some(&dictionary[..]));
    check(&s, &model, "written after the reopen");
}

/// A crash at every write and flush of the dictionary leaves a container that opens, with
/// the dictionary whole or none, every block readable, and that trains one again.
#[test]
fn a_crash_anywhere_in_the_dictionary_write_recovers() {
    let opts = opts();
    let bytes = {
        let (_, s) = new_store(&opts);
        let mut model = Model::new();
        trained(&s, &mut model);
        s.dictionary().unwrap().to_vec()
    };
    let mut rng = SplitMix::new(0x6469_6374);
    // Its writes: the body, then the header; its flushes: after each.
    for (writes, flushes) in [(0, 9), (1, 9), (2, 0), (2, 1), (2, 9)] {
        let (dev, s) = new_store(&opts);
        let mut model = Model::new();
        write(&s, &mut model, 0..BATCH, text);
        s.flush().unwrap();
        dev.fail_writes_after(Some(writes));
        dev.fail_flushes_after(Some(flushes));
        let done = s.dict.install(bytes.clone()).is_ok();
        assert_eq!(
            done,
            writes >= 2 && flushes >= 2,
            "writes {writes}, flushes {flushes}"
        );
        assert_eq!(s.dictionary().is_some(), done, "used only once durable");
        drop(s);
        dev.fail_writes_after(None);
        dev.fail_flushes_after(None);
        for mode in [
            CrashMode::DropAll,
            CrashMode::TornPrefix,
            CrashMode::RandomSubset,
        ] {
            let what = format!("writes {writes}, flushes {flushes}, {mode:?}");
            let image = dev.crash_image(mode, &mut rng);
            let dev = Arc::new(FaultyDevice::from_image(image));
            let s = Store::open(dev, store_opts())
                .unwrap_or_else(|e| panic!("{what}: open after the crash: {e}"));
            if let Some(d) = s.dictionary() {
                assert_eq!(d, &bytes[..], "{what}");
            }
            check(&s, &model, &what);
            let mut model = model.clone();
            trained(&s, &mut model);
            check(&s, &model, &format!("{what}, trained after"));
        }
    }
}

/// A crash after blocks used the dictionary: they come back with it.
#[test]
fn a_crash_after_blocks_used_the_dictionary_keeps_them_readable() {
    let (dev, s) = new_store(&opts());
    let mut model = Model::new();
    trained(&s, &mut model);
    write(&s, &mut model, SAMPLE_BLOCKS..SAMPLE_BLOCKS + 64, |l| {
        text(!l)
    });
    assert!(uses_dictionary(&s, SAMPLE_BLOCKS));
    s.flush().unwrap();
    drop(s);
    dev.crash(CrashMode::RandomSubset);
    let s = Store::open(dev, store_opts()).unwrap();
    check(&s, &model, "after the crash");
}

/// The dictionary's header or body damaged: a clear error at open, not garbage.
#[test]
fn a_damaged_dictionary_is_refused_at_open() {
    let opts = opts();
    let (dev, s) = new_store(&opts);
    let mut model = Model::new();
    trained(&s, &mut model);
    drop(s);
    let image = dev.contents();
    for (at, what) in [
        (BODY_PBA * BLOCK as u64 + 100, "dictionary"),
        (HEADER_PBA * BLOCK as u64 + 9, "dictionary header"),
    ] {
        let dev = Arc::new(FaultyDevice::from_image(image.clone()));
        dev.corrupt(at, 0x40);
        match Store::open(dev, opts_for(&opts)) {
            Err(StoreError::Corrupt { what: w, .. }) => assert_eq!(w, what),
            Err(e) => panic!("{what}: another error: {e}"),
            Ok(_) => panic!("{what}: damaged, and the container opened"),
        }
    }
}

/// On an encrypted container the dictionary is sealed like metadata: its bytes appear
/// nowhere in the device, and it reads back whole.
#[test]
fn an_encrypted_container_does_not_store_its_dictionary_in_plaintext() {
    let key = test_key().unwrap_or_else(|| {
        let raw: Vec<u8> = (0..64u8).map(|i| i ^ 0x5c).collect();
        crate::store::seal::Key::from_bytes(&raw).unwrap()
    });
    let opts = CreateOptions {
        encryption: Some(key),
        ..opts()
    };
    let (dev, s) = new_store(&opts);
    let mut model = Model::new();
    trained(&s, &mut model);
    let bytes = s.dictionary().unwrap().to_vec();
    drop(s);
    let image = dev.contents();
    let window = &bytes[bytes.len() / 2..bytes.len() / 2 + 64];
    assert!(
        !image.windows(64).any(|w| w == window),
        "a piece of the dictionary is stored in plaintext"
    );
    let s = Store::open(dev, opts_for(&opts)).unwrap();
    assert_eq!(s.dictionary(), Some(&bytes[..]));
    check(&s, &model, "reopened");
}

/// Where blocks do not compress, nothing is sampled and no dictionary is made.
#[test]
fn data_that_does_not_compress_trains_nothing() {
    let (_dev, s) = new_store(&opts());
    let mut model = Model::new();
    write(&s, &mut model, 0..SAMPLE_BLOCKS + 64, |l| noise(BLOCK, l));
    s.wait_for_dictionary();
    assert!(s.dictionary().is_none());
    assert_eq!(s.dict.sampled(), 0);
    assert!(!encrypted_run() || s.sealer().is_some());
}

/// A zstd container made before the feature never gets a dictionary (export and import
/// into a new container to have one), and reads as before.
#[test]
fn a_zstd_container_without_the_feature_trains_nothing() {
    let opts = opts();
    let (dev, s) = new_store(&opts);
    drop(s);
    let mut sb = crate::store::log::recovery::pick_superblock(dev.as_ref())
        .unwrap()
        .superblock;
    sb.incompat &= !INCOMPAT_ZSTD_DICT;
    crate::store::log::persist::write_superblock(dev.as_ref(), &sb).unwrap();
    let s = Store::open(dev, opts_for(&opts)).unwrap();
    let mut model = Model::new();
    write(&s, &mut model, 0..SAMPLE_BLOCKS + 64, text);
    s.wait_for_dictionary();
    assert!(s.dictionary().is_none());
    assert_eq!(s.info().dictionary_bytes, None);
    check(&s, &model, "written");
}

/// A clone starts with its source's dictionary, and its blocks read back.
#[test]
fn a_clone_keeps_the_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let opts = opts();
    let (src_path, clone_path) = (dir.path().join("src.keel"), dir.path().join("clone.keel"));
    Store::create_path(&src_path, &opts).unwrap();
    let s = Store::open_path(&src_path, opts_for(&opts)).unwrap();
    let mut model = Model::new();
    trained(&s, &mut model);
    let snap = s.create_snapshot("gold").unwrap();
    s.clone_snapshot(snap, &clone_path).unwrap();
    let c = Store::open_path(&clone_path, opts_for(&opts)).unwrap();
    assert_eq!(c.dictionary(), s.dictionary());
    assert!(uses_dictionary(&c, 0), "its first block used it");
    check(&c, &model, "the clone");
}
