//! Hot/cold separation of guest writes (`store::log::temperature`): in one batch, blocks whose
//! previous version is young go to another open segment than first writes and blocks whose
//! previous version is old; a crash recovers both.

use super::{new_store, opts_for, small_opts};
use crate::store::{CreateOptions, Op, Store};
use crate::testing::{CrashMode, FaultyDevice};
use std::collections::BTreeSet;
use std::sync::Arc;

fn write(s: &Store, lbas: impl Iterator<Item = u64>, byte: u8) {
    let lbas: Vec<u64> = lbas.collect();
    let data: Vec<Vec<u8>> = lbas.iter().map(|l| vec![byte ^ *l as u8; 4096]).collect();
    let ops: Vec<Op<'_>> = (lbas.iter().zip(&data))
        .map(|(l, d)| Op::Write {
            offset: l * 4096,
            data: d,
        })
        .collect();
    s.write_batch(0, &ops).unwrap();
}

/// The segments the current versions of `lbas` live in.
fn segments(s: &Store, lbas: impl Iterator<Item = u64>) -> BTreeSet<u64> {
    let st = s.read_lock(&s.state);
    lbas.map(|l| st.maps.lookup(l).expect("mapped").1.pba / s.geo.seg_blocks)
        .collect()
}

#[test]
fn hot_and_cold_writes_of_one_batch_go_to_different_segments() {
    // Raw blocks (packed batches are not separated), 1 MiB segments: a batch fits in one.
    let opts = CreateOptions {
        capacity: 16 << 20,
        segment_bytes: 1 << 20,
        journal_bytes: Some(1 << 20),
        compression: None,
        ..small_opts()
    };
    let (dev, s) = new_store(&opts);
    // A version is young while fewer than a disk's worth of blocks (4096) were written since.
    assert_eq!(s.young_blocks(), 4096);
    // A segment of filler, then the blocks that will be old, then 5120 more blocks written:
    // 1000..1256 twenty times over (hot from the second round on).
    write(&s, 3000..3256, 1);
    write(&s, 0..200, 1);
    for round in 0..20u8 {
        write(&s, 1000..1256, round);
    }
    // One batch: blocks written last (young), old ones, and never written ones.
    let (hot, old, new) = (1000..1020u64, 100..120u64, 2000..2020u64);
    let lbas = hot.clone().chain(old.clone()).chain(new.clone());
    write(&s, lbas, 2);
    let hot_segs = segments(&s, hot.clone());
    let cold_segs = segments(&s, old.clone().chain(new.clone()));
    assert_eq!(hot_segs.len(), 1, "{hot_segs:?}");
    assert_eq!(cold_segs.len(), 1, "{cold_segs:?}");
    assert!(
        hot_segs.is_disjoint(&cold_segs),
        "{hot_segs:?} {cold_segs:?}"
    );
    // A second round: the hot blocks are hot again and stay apart from cold ones.
    write(&s, hot.clone(), 3);
    write(&s, 2100..2110, 2);
    assert!(segments(&s, hot.clone()).is_disjoint(&segments(&s, 2100..2110)));
    s.flush().unwrap();
    drop(s);
    dev.crash(CrashMode::DropAll);
    let r = Store::open(
        Arc::new(FaultyDevice::from_image(dev.contents())),
        opts_for(&opts),
    )
    .unwrap();
    let mut b = vec![0u8; 4096];
    for (lbas, byte) in [
        (hot, 3u8),
        (old, 2),
        (new, 2),
        (150..160, 1),
        (1100..1110, 19),
    ] {
        for l in lbas {
            r.read(l * 4096, &mut b).unwrap();
            assert!(b.iter().all(|x| *x == byte ^ l as u8), "lba {l}");
        }
    }
    assert!(r.fsck().is_clean());
}
