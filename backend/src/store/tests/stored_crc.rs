//! What data checksums cover: the bytes as stored (ciphertext on an encrypted container made
//! with CIPHERTEXT_CRC), through writes, the cleaner's moves and replay; and the plaintext on
//! an encrypted container from before that bit, which still reads and checks clean.

use super::super::admin::scrub::{StoredBlock, check_stored};
use super::super::codec::block_crc;
use super::super::compress::{block_of, place, stored_bytes};
use super::super::layout::BLOCK;
use super::super::log::superblock::{INCOMPAT_CIPHERTEXT_CRC, INCOMPAT_VBA_TWEAK};
use super::super::log::{persist, recovery};
use super::super::seal::{DataView, Key, pba_tweak, vba_tweak};
use super::super::{CreateOptions, Op, Store, StoreOptions};
use super::{new_store, noise, opts_for, sealer_of, small_opts, stored_byte};
use crate::device::BlockDevice;
use crate::testing::FaultyDevice;
use std::sync::Arc;

const LBAS: u64 = 48;

/// Block `lba`'s contents in round `round`: half noise, half text, so a compressed container
/// packs some blocks and stores others raw.
fn contents(lba: u64, round: u64) -> Vec<u8> {
    if lba.is_multiple_of(2) {
        noise(4096, lba * 1000 + round)
    } else {
        format!("lba {lba} round {round} ").repeat(400).into_bytes()[..4096].to_vec()
    }
}

fn write_round(s: &Store, round: u64) {
    for lba in 0..LBAS {
        let data = contents(lba, round);
        s.write_batch(
            0,
            &[Op::Write {
                offset: lba * BLOCK,
                data: &data,
            }],
        )
        .unwrap();
    }
}

fn assert_reads(s: &Store, round: u64) {
    for lba in 0..LBAS {
        let mut got = vec![0u8; 4096];
        s.read(lba * BLOCK, &mut got).unwrap();
        assert!(got == contents(lba, round), "LBA {lba} reads round {round}");
    }
}

/// The running point's data blocks: where each is stored, its VBA and its checksum.
fn stored_blocks(s: &Store) -> Vec<StoredBlock> {
    let st = s.read_lock(&s.state);
    (0..LBAS)
        .filter_map(|lba| st.maps.lookup(lba))
        .map(|(vba, e)| StoredBlock {
            pba: e.pba,
            vba,
            crc: e.crc,
        })
        .collect()
}

/// The crc of block `b` over its bytes as read from `dev` and, on an encrypted container,
/// over their decryption (under the block's tweak).
fn crcs_of(dev: &dyn BlockDevice, b: &StoredBlock) -> (u32, Option<u32>) {
    let at = block_of(b.pba) * BLOCK;
    let mut raw = vec![0u8; 4096];
    dev.read_at(&mut raw, at).unwrap();
    let stored = block_crc(b.vba, stored_bytes(&raw, b.pba));
    let by_vba =
        recovery::pick_superblock(dev).unwrap().superblock.incompat & INCOMPAT_VBA_TWEAK != 0;
    let plain = sealer_of(dev).map(|sealer| {
        let tweak = match place::slot_of(b.pba) {
            None if by_vba => vba_tweak(b.vba),
            _ => pba_tweak(block_of(b.pba)),
        };
        sealer.open_each(&mut raw, |_| tweak).unwrap();
        block_crc(b.vba, stored_bytes(&raw, b.pba))
    });
    (stored, plain)
}

/// Every data block's checksum is the crc of its bytes as stored, read raw from the
/// container: after writes, after the cleaner moved them (a moved block is as it was stored, or
/// a packed one encrypted under its new place) and after a reopen replayed those moves from the
/// journal.
#[test]
fn data_checksums_cover_the_bytes_as_stored() {
    let opts = small_opts();
    let (dev, s) = new_store(&opts);
    write_round(&s, 1);
    let check = |s: &Store| {
        let blocks = stored_blocks(s);
        assert_eq!(blocks.len(), LBAS as usize);
        for b in &blocks {
            let (stored, plain) = crcs_of(dev.as_ref(), b);
            assert_eq!(
                stored, b.crc,
                "block {:#x}: crc over the stored bytes",
                b.pba
            );
            if let Some(plain) = plain {
                assert_ne!(plain, b.crc, "not over the plaintext");
            }
        }
    };
    check(&s);
    // Half the blocks overwritten: the cleaner has live blocks to move.
    for lba in (0..LBAS).step_by(2) {
        let data = contents(lba, 1);
        s.write_batch(
            0,
            &[Op::Write {
                offset: lba * BLOCK,
                data: &data,
            }],
        )
        .unwrap();
    }
    let before: Vec<u64> = stored_blocks(&s).iter().map(|b| block_of(b.pba)).collect();
    while s.clean_step().unwrap().is_some() {}
    let after: Vec<u64> = stored_blocks(&s).iter().map(|b| block_of(b.pba)).collect();
    assert_ne!(before, after, "the cleaner moved blocks");
    check(&s);
    assert_reads(&s, 1);
    drop(s);
    // The moves are replayed from the journal (no checkpoint since).
    let s = Store::open(dev.clone(), opts_for(&opts)).unwrap();
    check(&s);
    assert_reads(&s, 1);
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A byte flipped in a stored data block is found by the data check with nothing but the
/// device and the blocks' places and checksums: no key (the container's checksums cover its
/// ciphertext). fsck, with the key, finds it too, and so does a read.
#[test]
fn a_flipped_byte_in_stored_data_is_found_without_the_key() {
    let opts = small_opts();
    let (dev, s) = new_store(&opts);
    write_round(&s, 1);
    s.checkpoint().unwrap();
    let mut blocks = stored_blocks(&s);
    drop(s);
    let keyless = DataView::new(dev.clone() as Arc<dyn BlockDevice>, None, true);
    let mut problems = Vec::new();
    let checked = check_stored(&keyless, &mut blocks, &mut problems, 100);
    assert_eq!(checked, LBAS);
    assert!(problems.is_empty(), "{problems:?}");
    let victim = blocks[7];
    dev.corrupt(stored_byte(victim.pba, 100), 0x10);
    check_stored(&keyless, &mut blocks, &mut problems, 100);
    assert_eq!(
        problems,
        vec![format!(
            "data block {} (VBA {}) fails its checksum",
            block_of(victim.pba),
            victim.vba
        )]
    );
    let s = Store::open(dev.clone(), opts_for(&opts)).unwrap();
    let report = s.fsck();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("fails its checksum"));
}

/// An encrypted container made before CIPHERTEXT_CRC (its checksums cover the plaintext)
/// opens, reads, is cleaned and replayed, and checks clean; what it writes keeps that scheme.
#[test]
fn an_encrypted_container_with_plaintext_checksums_still_works() {
    let key = super::test_key()
        .unwrap_or_else(|| Key::from_bytes(&(0..64u8).collect::<Vec<u8>>()).unwrap());
    let opts = CreateOptions {
        encryption: Some(key.clone()),
        ..small_opts()
    };
    let geo = opts.geometry().unwrap();
    let dev = Arc::new(FaultyDevice::new(geo.container_bytes()));
    Store::format(dev.as_ref(), &opts).unwrap();
    // The container as the previous Keel made it: no CIPHERTEXT_CRC.
    let mut sb = recovery::pick_superblock(dev.as_ref()).unwrap().superblock;
    assert_ne!(
        sb.incompat & INCOMPAT_CIPHERTEXT_CRC,
        0,
        "new containers get it"
    );
    // Nor VBA_TWEAK, which came later still and needs it.
    sb.incompat &= !(INCOMPAT_CIPHERTEXT_CRC | INCOMPAT_VBA_TWEAK);
    persist::write_superblock(dev.as_ref(), &sb).unwrap();
    let sopts = || StoreOptions {
        key: Some(key.clone()),
        ..StoreOptions::default()
    };
    let s = Store::open(dev.clone(), sopts()).unwrap();
    write_round(&s, 2);
    for lba in (0..LBAS).step_by(3) {
        let data = contents(lba, 2);
        s.write_batch(
            0,
            &[Op::Write {
                offset: lba * BLOCK,
                data: &data,
            }],
        )
        .unwrap();
    }
    while s.clean_step().unwrap().is_some() {}
    let unlock = |dev: &dyn BlockDevice| {
        let fields = recovery::pick_superblock(dev).unwrap().superblock.seal;
        fields.unlock(Some(&key)).unwrap()
    };
    let sealer = unlock(dev.as_ref());
    for b in stored_blocks(&s) {
        let at = block_of(b.pba) * BLOCK;
        let mut raw = vec![0u8; 4096];
        dev.read_at(&mut raw, at).unwrap();
        sealer.open(&mut raw, at).unwrap();
        assert_eq!(
            block_crc(b.vba, stored_bytes(&raw, b.pba)),
            b.crc,
            "over the plaintext"
        );
    }
    assert_reads(&s, 2);
    drop(s);
    let s = Store::open(dev.clone(), sopts()).unwrap();
    assert_reads(&s, 2);
    let report = s.fsck();
    assert!(report.is_clean(), "{:?}", report.problems);
    s.checkpoint().unwrap();
    drop(s);
    let sb = recovery::pick_superblock(dev.as_ref()).unwrap().superblock;
    assert_eq!(
        sb.incompat & INCOMPAT_CIPHERTEXT_CRC,
        0,
        "the scheme never changes in place"
    );
}
