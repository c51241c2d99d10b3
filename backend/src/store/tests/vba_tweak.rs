//! Data blocks tweaked by their VBA (`VBA_TWEAK`): the cleaner moves a raw block's ciphertext
//! byte for byte, a packed block is sealed again for its new place, and a container made
//! before the bit keeps its location tweaks and MoveCrc entries.

use super::super::StoreError;
use super::super::compress::{Codec, block_of, place};
use super::super::layout::BLOCK;
use super::super::log::{persist, recovery, superblock};
use super::super::seal::Key;
use super::super::{CreateOptions, Op, Store, StoreOptions};
use super::{noise, small_opts};
use crate::device::BlockDevice;
use crate::testing::{CrashMode, FaultyDevice, SplitMix};
use std::collections::HashMap;
use std::sync::Arc;

const LBAS: u64 = 48;

fn key() -> Key {
    super::test_key().unwrap_or_else(|| Key::from_bytes(&(0..64u8).collect::<Vec<u8>>()).unwrap())
}

/// An encrypted container (whatever this run's defaults), compressed with `codec`.
fn encrypted(codec: Option<Codec>) -> (CreateOptions, StoreOptions) {
    let create = CreateOptions {
        encryption: Some(key()),
        compression: codec,
        ..small_opts()
    };
    let open = StoreOptions {
        key: Some(key()),
        ..StoreOptions::default()
    };
    (create, open)
}

/// Block `lba`'s contents in round `round`: noise (stored raw) for even LBAs, text (packed
/// in a compressed container) for odd ones.
fn contents(lba: u64, round: u64) -> Vec<u8> {
    if lba.is_multiple_of(2) {
        noise(4096, lba * 1000 + round)
    } else {
        format!("lba {lba} round {round} ").repeat(400).into_bytes()[..4096].to_vec()
    }
}

fn write(s: &Store, lbas: impl Iterator<Item = u64>, round: u64) {
    for lba in lbas {
        let data = contents(lba, round);
        let op = Op::Write {
            offset: lba * BLOCK,
            data: &data,
        };
        s.write_batch(0, &[op]).unwrap();
    }
}

fn assert_reads(s: &Store, round: u64) {
    for lba in 0..LBAS {
        let mut got = vec![0u8; 4096];
        s.read(lba * BLOCK, &mut got).unwrap();
        assert!(got == contents(lba, round), "LBA {lba} reads round {round}");
    }
}

/// Per LBA: its VBA, where it is stored (as the map has it) and the stored 4 KiB there.
fn placed(s: &Store, dev: &dyn BlockDevice) -> HashMap<u64, (u64, u64, Vec<u8>)> {
    let st = s.read_lock(&s.state);
    (0..LBAS)
        .filter_map(|lba| {
            let (vba, e) = st.maps.lookup(lba)?;
            let mut raw = vec![0u8; 4096];
            dev.read_at(&mut raw, block_of(e.pba) * BLOCK).unwrap();
            Some((lba, (vba, e.pba, raw)))
        })
        .collect()
}

/// Writes a round, overwrites every third LBA (so the first segments hold live blocks among
/// garbage) and cleans until nothing is worth cleaning. Returns where the blocks were before
/// cleaning and after.
type Placed = HashMap<u64, (u64, u64, Vec<u8>)>;
fn write_and_clean(s: &Store, dev: &dyn BlockDevice) -> (Placed, Placed) {
    write(s, 0..LBAS, 1);
    write(s, (0..LBAS).step_by(3), 1);
    let before = placed(s, dev);
    while s.clean_step().unwrap().is_some() {}
    let after = placed(s, dev);
    (before, after)
}

/// What survives a power loss now (everything the flush made durable), opened again.
fn crash_and_reopen(
    s: Store,
    dev: &FaultyDevice,
    opts: StoreOptions,
) -> (Arc<FaultyDevice>, Store) {
    s.flush().unwrap();
    let img = dev.crash_image(CrashMode::DropAll, &mut SplitMix::new(7));
    drop(s);
    let dev = Arc::new(FaultyDevice::from_image(img));
    let s = Store::open(dev.clone(), opts).unwrap();
    (dev, s)
}

/// The cleaner moves a raw encrypted block without touching its ciphertext: the bytes at its
/// new place are those of its old place, under the same checksum. Reads give the plaintext,
/// and after a power loss the replayed moves read the same.
#[test]
fn the_cleaner_moves_raw_ciphertext_unchanged() {
    let (create, open) = encrypted(None);
    let (dev, s) = super::new_store(&create);
    let sb = recovery::pick_superblock(dev.as_ref()).unwrap().superblock;
    assert_ne!(
        sb.incompat & superblock::INCOMPAT_VBA_TWEAK,
        0,
        "new containers get it"
    );
    let (before, after) = write_and_clean(&s, dev.as_ref());
    let mut moved = 0;
    for (lba, (vba, pba, raw)) in &after {
        let (old_vba, old_pba, old_raw) = &before[lba];
        assert_eq!(vba, old_vba, "the cleaner keeps VBAs");
        if pba != old_pba {
            moved += 1;
            assert!(
                raw == old_raw,
                "LBA {lba}: moved ciphertext {old_pba} -> {pba} changed"
            );
        }
    }
    assert!(moved > 0, "the cleaner moved blocks");
    // Checksums unchanged too: the stored crcs still match the bytes.
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_reads(&s, 1);
    let (dev, s) = crash_and_reopen(s, &dev, open.clone());
    assert!(placed(&s, dev.as_ref()) == after, "the moves are replayed");
    assert_reads(&s, 1);
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// In a compressed, encrypted container packed blocks keep their place as the tweak: the
/// cleaner seals them again where they go, and everything reads back after the moves and
/// after a power loss.
#[test]
fn packed_encrypted_blocks_read_after_cleaning() {
    let (create, open) = encrypted(Some(Codec::Zstd));
    let (dev, s) = super::new_store(&create);
    let (before, after) = write_and_clean(&s, dev.as_ref());
    let (mut packed_moved, mut raw_moved) = (0, 0);
    for (lba, (_, pba, raw)) in &after {
        let (_, old_pba, old_raw) = &before[lba];
        if block_of(*pba) == block_of(*old_pba) {
            continue;
        }
        if place::slot_of(*pba).is_some() {
            packed_moved += 1;
            assert!(
                raw != old_raw,
                "LBA {lba}: a packed block is sealed for its new place"
            );
        } else {
            raw_moved += 1;
            assert!(raw == old_raw, "LBA {lba}: a raw block is moved as stored");
        }
    }
    assert!(
        packed_moved > 0 && raw_moved > 0,
        "{packed_moved} packed, {raw_moved} raw moved"
    );
    assert_reads(&s, 1);
    let (_dev, s) = crash_and_reopen(s, &dev, open);
    assert_reads(&s, 1);
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// An encrypted container made before `VBA_TWEAK` (location tweaks, checksums over the
/// ciphertext) still opens, reads, is cleaned (a moved block is sealed again for its new
/// place, its new checksum in a MoveCrc entry) and recovers; it never gains the bit.
#[test]
fn a_container_without_vba_tweaks_keeps_location_tweaks() {
    let (create, open) = encrypted(None);
    let geo = create.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), &create).unwrap();
    let mut sb = recovery::pick_superblock(dev.as_ref()).unwrap().superblock;
    sb.incompat &= !superblock::INCOMPAT_VBA_TWEAK;
    persist::write_superblock(dev.as_ref(), &sb).unwrap();
    let s = Store::open(dev.clone(), open.clone()).unwrap();
    let (before, after) = write_and_clean(&s, dev.as_ref());
    let sealer = super::super::seal::SealFields::unlock(&sb.seal, Some(&key())).unwrap();
    let mut moved = 0;
    for (lba, (_, pba, raw)) in &after {
        // Under the location tweak, its place decrypts it.
        let mut plain = raw.clone();
        sealer.open(&mut plain, block_of(*pba) * BLOCK).unwrap();
        assert!(
            plain == contents(*lba, 1),
            "LBA {lba} under its place's tweak"
        );
        if pba != &before[lba].1 {
            moved += 1;
            assert!(
                raw != &before[lba].2,
                "LBA {lba}: sealed again where it went"
            );
        }
    }
    assert!(moved > 0, "the cleaner moved blocks");
    assert_reads(&s, 1);
    let (dev, s) = crash_and_reopen(s, &dev, open);
    assert_reads(&s, 1);
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
    s.checkpoint().unwrap();
    drop(s);
    let sb = recovery::pick_superblock(dev.as_ref()).unwrap().superblock;
    assert_eq!(
        sb.incompat & superblock::INCOMPAT_VBA_TWEAK,
        0,
        "never set in place"
    );
}

/// `VBA_TWEAK` without checksums over the ciphertext is refused as corrupt.
#[test]
fn vba_tweak_without_ciphertext_crc_is_refused() {
    let (create, open) = encrypted(None);
    let geo = create.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), &create).unwrap();
    let mut sb = recovery::pick_superblock(dev.as_ref()).unwrap().superblock;
    sb.incompat &= !superblock::INCOMPAT_CIPHERTEXT_CRC;
    persist::write_superblock(dev.as_ref(), &sb).unwrap();
    let r = Store::open(dev.clone(), open);
    assert!(
        matches!(r, Err(StoreError::Corrupt { .. })),
        "{:?}",
        r.err()
    );
}

/// VBAs given out before a power loss are never given out again, even those of batches whose
/// records were lost (their data, sealed under those VBAs, may be on the disk): after recovery,
/// and after a second power loss right after the first write that follows it.
#[test]
fn vbas_lost_in_a_crash_are_never_given_out_again() {
    let (create, open) = encrypted(None);
    let (dev, s) = super::new_store(&create);
    write(&s, 0..LBAS, 1);
    s.flush().unwrap();
    // Not flushed (and too few to need space, so no checkpoint): lost in the power loss below.
    write(&s, 0..4, 2);
    let given = s.read_lock(&s.state).maps.next_vba;
    let vba_of = |s: &Store, lba: u64| s.read_lock(&s.state).maps.lookup(lba).unwrap().0;
    let (dev, s) = crash_and_reopen_unflushed(s, &dev, open.clone());
    for lba in 0..LBAS {
        let mut got = vec![0u8; 4096];
        s.read(lba * BLOCK, &mut got).unwrap();
        assert!(got == contents(lba, 1), "LBA {lba}");
    }
    write(&s, 0..1, 3);
    let first = vba_of(&s, 0);
    assert!(
        first >= given,
        "VBA {first} was given out before the crash (up to {given})"
    );
    // The skip is durable before the write it allowed: lose everything unflushed again.
    let (_dev, s) = crash_and_reopen_unflushed(s, &dev, open);
    write(&s, 0..1, 4);
    let second = vba_of(&s, 0);
    assert!(
        second >= given,
        "VBA {second} was given out before the first crash"
    );
}

/// What survives a power loss now, without a flush first, opened again.
fn crash_and_reopen_unflushed(
    s: Store,
    dev: &FaultyDevice,
    opts: StoreOptions,
) -> (Arc<FaultyDevice>, Store) {
    let img = dev.crash_image(CrashMode::DropAll, &mut SplitMix::new(11));
    drop(s);
    let dev = Arc::new(FaultyDevice::from_image(img));
    let s = Store::open(dev.clone(), opts).unwrap();
    (dev, s)
}
