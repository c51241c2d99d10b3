//! Packed blocks through the whole store, whatever this run's settings: each codec, plain and
//! encrypted. Many guest blocks share a physical block; overwrites, a snapshot, the cleaner,
//! a delete and a reopen keep every version readable and the usage table exact (fsck).
//! Containers made before `FINE_SLOTS` (sector slots) do the same and keep their layout.

use super::super::compress::{Codec, place};
use super::super::log::persist::write_superblock;
use super::super::log::recovery::pick_superblock;
use super::super::log::superblock::INCOMPAT_FINE_SLOTS;
use super::super::seal::Key;
use super::super::{CreateOptions, Op, Store};
use super::{new_store, opts_for, small_opts};
use crate::device::BlockDevice;
use std::collections::HashMap;

const BLOCK: usize = 4096;

/// A compressible block that says which LBA and round wrote it.
fn block(lba: u64, round: u8) -> Vec<u8> {
    let mut b = vec![round; BLOCK];
    b[..8].copy_from_slice(&lba.to_le_bytes());
    b
}

fn write(s: &Store, lbas: &[u64], round: u8, model: &mut HashMap<u64, Vec<u8>>) {
    let data: Vec<Vec<u8>> = lbas.iter().map(|l| block(*l, round)).collect();
    let ops: Vec<Op<'_>> = lbas
        .iter()
        .zip(&data)
        .map(|(l, d)| Op::Write {
            offset: l * BLOCK as u64,
            data: d,
        })
        .collect();
    s.write_batch(0, &ops).unwrap();
    for (l, d) in lbas.iter().zip(data) {
        model.insert(*l, d);
    }
}

fn check(s: &Store, model: &HashMap<u64, Vec<u8>>) {
    let mut b = vec![0u8; 64 * BLOCK];
    s.read(0, &mut b).unwrap();
    for lba in 0..64u64 {
        let want = model.get(&lba).cloned().unwrap_or_else(|| vec![0; BLOCK]);
        let at = lba as usize * BLOCK;
        assert!(b[at..at + BLOCK] == want[..], "LBA {lba}");
    }
    // Part of a block, from the middle of a packed one.
    let mut part = vec![0u8; 1024];
    s.read(5 * BLOCK as u64 + 512, &mut part).unwrap();
    assert!(part[..] == model[&5][512..1536]);
    let r = s.fsck();
    assert!(r.is_clean(), "{:?}", r.problems);
}

fn key() -> Key {
    let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(77) ^ 0x21).collect();
    Key::from_bytes(&raw).unwrap()
}

/// Whether the container's superblock has `FINE_SLOTS`.
fn fine_slots(dev: &dyn BlockDevice) -> bool {
    pick_superblock(dev).unwrap().superblock.incompat & INCOMPAT_FINE_SLOTS != 0
}

/// The container on `dev` as a Keel before `FINE_SLOTS` made it: slots on sectors.
fn drop_fine_slots(dev: &dyn BlockDevice) {
    let mut sb = pick_superblock(dev).unwrap().superblock;
    sb.incompat &= !INCOMPAT_FINE_SLOTS;
    write_superblock(dev, &sb).unwrap();
}

/// Every packed slot of the running point starts and ends on a multiple of `unit` bytes.
fn slots_on(s: &Store, unit: usize) -> bool {
    let st = s.state.read().unwrap();
    (0..64u64)
        .filter_map(|l| st.maps.lookup(l))
        .filter_map(|(_, e)| place::slot_of(e.pba))
        .all(|slot| slot.range().start % unit == 0 && slot.range().len() % unit == 0)
}

#[test]
fn packed_blocks_survive_overwrites_snapshots_cleaning_deletes_and_reopen() {
    for codec in [Codec::Lz4, Codec::Zstd] {
        for encrypted in [false, true] {
            for sectors in [false, true] {
                survives_all(codec, encrypted, sectors);
            }
        }
    }
}

/// The whole life of packed blocks in a container of `codec`, maybe encrypted, with fine
/// slots or (`sectors`) as made before them.
fn survives_all(codec: Codec, encrypted: bool, sectors: bool) {
    let opts = CreateOptions {
        compression: Some(codec),
        encryption: encrypted.then(key),
        ..small_opts()
    };
    let (dev, s) = new_store(&opts);
    assert!(
        fine_slots(dev.as_ref()),
        "new compressed containers get fine slots"
    );
    let (dev, s) = if sectors {
        drop(s);
        drop_fine_slots(dev.as_ref());
        let s = Store::open(dev.clone(), opts_for(&opts)).unwrap();
        (dev, s)
    } else {
        (dev, s)
    };
    let mut model = HashMap::new();
    for batch in 0..4u64 {
        let lbas: Vec<u64> = (batch * 16..batch * 16 + 16).collect();
        write(&s, &lbas, 1, &mut model);
    }
    let info = s.info();
    assert_eq!(info.compression, codec.name());
    assert_eq!(info.data_bytes_logical, 64 * BLOCK as u64);
    // Each block compresses to a few dozen bytes: one granule, or one sector.
    if sectors {
        assert_eq!(info.data_bytes_stored, 64 * 512, "{info:?}");
        assert!(info.used_data_bytes <= 8 * BLOCK as u64, "{info:?}");
    } else {
        assert_eq!(info.data_bytes_stored, 64 * 64, "{info:?}");
        assert!(info.used_data_bytes <= 4 * BLOCK as u64, "{info:?}");
    }
    assert!(slots_on(&s, if sectors { 512 } else { 64 }));
    check(&s, &model);

    let snap = s.create_snapshot("s").unwrap();
    let before_snapshot = model.clone();
    // Twice, one block a batch: the first round's blocks become garbage beside the
    // packed blocks of the first segment.
    for round in [2, 3] {
        for lba in (0..64u64).step_by(2) {
            write(&s, &[lba], round, &mut model);
        }
    }
    check(&s, &model);
    // The first segment's packed blocks are half held by the running point, half by
    // the snapshot alone: the cleaner moves them whole.
    let mut moved = 0;
    for _ in 0..4 {
        if let Some(r) = s.clean_step().unwrap() {
            moved += r.moved;
        }
    }
    s.checkpoint().unwrap();
    assert!(moved > 0, "{codec:?}: the cleaner moved packed blocks");
    check(&s, &model);
    let mut old = vec![0u8; BLOCK];
    let diff = s
        .diff(
            super::super::diff::TreeRef::Empty,
            super::super::diff::TreeRef::Snapshot(snap),
        )
        .unwrap();
    let vbas: Vec<u64> = diff.blocks.iter().filter_map(|b| b.vba).collect();
    assert_eq!(vbas.len(), 64);
    let mut all = vec![0u8; 64 * BLOCK];
    s.read_vbas(&vbas, &mut all).unwrap();
    for (b, data) in diff.blocks.iter().zip(all.chunks(BLOCK)) {
        old.copy_from_slice(data);
        assert!(old == before_snapshot[&b.lba], "snapshot's LBA {}", b.lba);
    }

    s.delete_snapshot(snap).unwrap();
    s.reclaim_all().unwrap();
    s.checkpoint().unwrap();
    check(&s, &model);
    drop(s);
    let s = Store::open(dev.clone(), opts_for(&opts)).unwrap();
    check(&s, &model);
    // A container keeps the layout it has: writes after a reopen too.
    write(&s, &[1, 2, 3], 4, &mut model);
    check(&s, &model);
    assert!(slots_on(&s, if sectors { 512 } else { 64 }));
    s.checkpoint().unwrap();
    drop(s);
    assert_eq!(fine_slots(dev.as_ref()), !sectors);
}
