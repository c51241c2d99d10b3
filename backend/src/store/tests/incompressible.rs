//! Data that does not compress, through the whole store: it is stored raw and reads back; a
//! writer that gave up trying it compresses text that follows within a bounded number of
//! blocks, as well as a fresh container does; and its giving up does not stop another
//! writer's text from compressing.

use super::dictionary::text;
use super::{new_store, noise, opts_for, small_opts};
use crate::store::compress::{Codec, PROBE_EVERY, place};
use crate::store::{CreateOptions, Op, Store};

const BLOCK: usize = 4096;
/// Blocks per batch.
const BATCH: usize = 4;
/// Random blocks written first by writer 0: more than enough for it to give up.
const RANDOM: u64 = 100;
/// Text blocks written next by writer 1.
const OTHER_TEXT: u64 = 32;
/// The disk's blocks (small_opts: 1 MiB); writer 0's text takes the rest.
const BLOCKS: u64 = 256;

/// Writes `data` to consecutive LBAs from `first`, `BATCH` blocks per batch, as `writer`.
fn write(s: &Store, writer: usize, first: u64, data: &[Vec<u8>]) {
    for (k, chunk) in data.chunks(BATCH).enumerate() {
        let at = first + (k * BATCH) as u64;
        let ops: Vec<Op<'_>> = (chunk.iter().enumerate())
            .map(|(i, d)| Op::Write {
                offset: (at + i as u64) * BLOCK as u64,
                data: d,
            })
            .collect();
        s.write_batch(writer, &ops).unwrap();
    }
}

/// The bytes each LBA of `lbas` takes in the container (4096 for a raw block).
fn stored(s: &Store, lbas: std::ops::Range<u64>) -> Vec<u64> {
    let st = s.state.read().unwrap();
    lbas.map(|l| place::stored_len(st.maps.lookup(l).expect("mapped").1.pba))
        .collect()
}

/// Every block written reads back as written, and the container checks clean.
fn check(s: &Store, want: &[Vec<u8>]) {
    let mut all = vec![0u8; BLOCKS as usize * BLOCK];
    s.read(0, &mut all).unwrap();
    for (lba, w) in want.iter().enumerate() {
        assert!(all[lba * BLOCK..][..BLOCK] == w[..], "LBA {lba} reads back");
    }
    let r = s.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

#[test]
fn random_data_is_stored_raw_and_text_after_it_compresses_again() {
    for codec in [Codec::Lz4, Codec::Zstd] {
        text_after_random(codec);
    }
}

fn text_after_random(codec: Codec) {
    let opts = CreateOptions {
        compression: Some(codec),
        ..small_opts()
    };
    let random: Vec<Vec<u8>> = (0..RANDOM).map(|i| noise(BLOCK, 0xbad + i)).collect();
    let other: Vec<Vec<u8>> = (0..OTHER_TEXT).map(|i| text(1000 + i)).collect();
    let first_text = RANDOM + OTHER_TEXT;
    let mine: Vec<Vec<u8>> = (first_text..BLOCKS).map(text).collect();

    let (dev, s) = new_store(&opts);
    write(&s, 0, 0, &random);
    write(&s, 1, RANDOM, &other);
    write(&s, 0, first_text, &mine);

    assert!(
        stored(&s, 0..RANDOM).iter().all(|&n| n == BLOCK as u64),
        "{codec:?}: random blocks are stored raw"
    );
    assert!(
        stored(&s, RANDOM..first_text)
            .iter()
            .all(|&n| n < BLOCK as u64),
        "{codec:?}: another writer's text packs from its first block"
    );
    // The same text in a container that saw no random data first: how it packs normally.
    let (_, fresh) = new_store(&opts);
    write(&fresh, 0, first_text, &mine);
    let normal = stored(&fresh, first_text..BLOCKS);
    assert!(
        normal.iter().all(|&n| n < BLOCK as u64),
        "{codec:?}: every text block packs"
    );
    let after = stored(&s, first_text..BLOCKS);
    let recovered = after.iter().position(|&n| n < BLOCK as u64);
    assert!(
        recovered.is_some_and(|k| k <= PROBE_EVERY as usize),
        "{codec:?}: text packs again within {PROBE_EVERY} blocks (at {recovered:?})"
    );
    let k = recovered.unwrap_or(0);
    assert_eq!(
        after[k..],
        normal[k..],
        "{codec:?}: from then on it packs as in a fresh container"
    );

    let want: Vec<Vec<u8>> = random.into_iter().chain(other).chain(mine).collect();
    check(&s, &want);
    drop(s);
    let s = Store::open(dev, opts_for(&opts)).unwrap();
    check(&s, &want);
}
