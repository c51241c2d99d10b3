use super::pack::{MAX_SECTORS, Misses, PROBE_EVERY, Packed, Physical, pack_batch};
use super::place::{self, SECTORS, Slot};
use super::*;

fn patterned(seed: u8) -> Vec<u8> {
    (0..BLOCK_SIZE).map(|i| (i / 64) as u8 ^ seed).collect()
}

fn random() -> Vec<u8> {
    (0..BLOCK_SIZE).map(|_| fastrand::u8(..)).collect()
}

fn expand_all(codec: Codec, blocks: &[&[u8]], packed: &Packed) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new(); blocks.len()];
    for p in &packed.phys {
        match p {
            Physical::Raw(i) => out[*i] = blocks[*i].to_vec(),
            Physical::Packed { index, slots } => {
                for (i, slot) in slots {
                    let pba = place::packed(1000 + *index as u64, *slot);
                    let mut b = vec![0u8; BLOCK_SIZE];
                    expand(Some(codec), None, packed.buf.block(*index), pba, &mut b).unwrap();
                    out[*i] = b;
                }
            }
        }
    }
    out
}

#[test]
fn packed_blocks_read_back_and_random_ones_stay_raw() {
    for codec in [Codec::Lz4, Codec::Zstd] {
        let data: Vec<Vec<u8>> = (0..20u8)
            .map(|i| if i % 3 == 2 { random() } else { patterned(i) })
            .collect();
        let blocks: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        let packed = pack_batch(codec, None, &blocks, &Misses::default());
        let raw = packed
            .phys
            .iter()
            .filter(|p| matches!(p, Physical::Raw(_)))
            .count();
        assert_eq!(raw, 6, "{codec:?}: the random blocks stay raw");
        assert!(
            packed.phys.len() < 10,
            "{codec:?}: 14 compressible blocks pack into few: {}",
            packed.phys.len()
        );
        for p in &packed.phys {
            if let Physical::Packed { slots, .. } = p {
                let sectors: u8 = slots.iter().map(|(_, s)| s.sectors).sum();
                assert!(sectors <= SECTORS);
                assert!(slots.iter().all(|(_, s)| s.sectors <= MAX_SECTORS));
            }
        }
        assert_eq!(expand_all(codec, &blocks, &packed), data);
    }
}

#[test]
fn place_round_trips_and_rejects_malformed_addresses() {
    let slot = Slot {
        first: 3,
        sectors: 5,
    };
    let pba = place::packed(123_456, slot);
    assert_eq!(place::slot_of(pba), Some(slot));
    assert_eq!(block_of(pba), 123_456);
    assert!(place::is_valid(pba));
    assert_eq!(stored_len(pba), 2560);
    let moved = place::moved(pba, 77);
    assert_eq!((block_of(moved), place::slot_of(moved)), (77, Some(slot)));
    assert!(place::is_valid(42) && place::slot_of(42).is_none());
    assert!(!place::is_valid(1 << 50));
    let overflowing = place::packed(
        1,
        Slot {
            first: 6,
            sectors: 3,
        },
    );
    assert!(!place::is_valid(overflowing));
}

#[test]
fn a_damaged_slot_is_an_error_not_a_panic() {
    let data = patterned(1);
    let packed = pack_batch(Codec::Zstd, None, &[&data], &Misses::default());
    let Physical::Packed { slots, .. } = &packed.phys[0] else {
        panic!("a patterned block packs");
    };
    let pba = place::packed(9, slots[0].1);
    let mut block = packed.buf.block(0).to_vec();
    let mut out = vec![0u8; BLOCK_SIZE];
    block[0] = 0xff;
    block[1] = 0xff;
    assert!(expand(Some(Codec::Zstd), None, &block, pba, &mut out).is_err());
    block[..2].copy_from_slice(&10u16.to_le_bytes());
    assert!(expand(Some(Codec::Zstd), None, &block, pba, &mut out).is_err());
    assert!(expand(None, None, packed.buf.block(0), pba, &mut out).is_err());
    for codec in [Codec::Lz4, Codec::Zstd] {
        let mut junk = vec![0u8; BLOCK_SIZE];
        junk[..2].copy_from_slice(&100u16.to_le_bytes());
        junk[2..102].fill(0xa5);
        assert!(expand(Some(codec), None, &junk, pba, &mut out).is_err());
    }
}

#[test]
fn uncompressible_streams_stop_being_tried() {
    let misses = Misses::default();
    let data: Vec<Vec<u8>> = (0..200).map(|_| random()).collect();
    let blocks: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
    let packed = pack_batch(Codec::Lz4, None, &blocks, &misses);
    assert!(packed.phys.iter().all(|p| matches!(p, Physical::Raw(_))));
    assert!(!(0..PROBE_CHECK).all(|_| misses.worth_trying()));
    // One block that shrinks turns attempts back on.
    let p = patterned(0);
    let mut tries = 0;
    while !matches!(
        pack_batch(Codec::Lz4, None, &[&p], &misses).phys[0],
        Physical::Packed { .. }
    ) {
        tries += 1;
        assert!(tries <= PROBE_EVERY, "a probe comes");
    }
    assert!((0..PROBE_CHECK).all(|_| misses.worth_trying()));
}

const PROBE_CHECK: usize = 8;

/// A slot compressed with the dictionary says so in its length, reads back with it, and is
/// an error without it (or with a codec that has none).
#[test]
fn a_slot_compressed_with_the_dictionary_needs_it() {
    let words: Vec<u8> = b"the container keeps every block it was given in its log "
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    let dict = Dictionary::new(words[..4096].to_vec()).unwrap();
    let data = words[4096..].to_vec();
    let packed = pack_batch(Codec::Zstd, Some(&dict), &[&data], &Misses::default());
    let Physical::Packed { index, slots } = &packed.phys[0] else {
        panic!("text packs");
    };
    let block = packed.buf.block(*index);
    let len = u16::from_le_bytes([block[0], block[1]]);
    assert_ne!(
        len & dict::DICT_SLOT,
        0,
        "the slot says it used the dictionary"
    );
    let pba = place::packed(9, slots[0].1);
    let mut out = vec![0u8; BLOCK_SIZE];
    expand(Some(Codec::Zstd), Some(&dict), block, pba, &mut out).unwrap();
    assert!(out == data);
    assert!(expand(Some(Codec::Zstd), None, block, pba, &mut out).is_err());
    assert!(expand(Some(Codec::Lz4), Some(&dict), block, pba, &mut out).is_err());
    let other = Dictionary::new(vec![0x5a; 4096]).unwrap();
    let wrong = expand(Some(Codec::Zstd), Some(&other), block, pba, &mut out);
    assert!(
        wrong.is_err() || out != data,
        "another dictionary does not give the block back"
    );
}
