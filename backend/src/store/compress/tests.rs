use super::pack::{MAX_PACKED, Misses, PROBE_EVERY, Packed, Physical, pack_batch};
use super::place::{self, GRANULE, GRANULES, Grain, Slot};
use super::*;
use proptest::prelude::*;

const GRAINS: [Grain; 2] = [Grain::Sector, Grain::Fine];

fn patterned(seed: u8) -> Vec<u8> {
    (0..BLOCK_SIZE).map(|i| (i / 64) as u8 ^ seed).collect()
}

fn random() -> Vec<u8> {
    (0..BLOCK_SIZE).map(|_| fastrand::u8(..)).collect()
}

fn expand_all(codec: Codec, grain: Grain, blocks: &[&[u8]], packed: &Packed) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new(); blocks.len()];
    for p in &packed.phys {
        match p {
            Physical::Raw(i) => out[*i] = blocks[*i].to_vec(),
            Physical::Packed { index, slots } => {
                for (i, slot) in slots {
                    let pba = place::packed(1000 + *index as u64, *slot, grain);
                    assert!(place::is_valid(pba, grain));
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
    for (codec, grain) in [Codec::Lz4, Codec::Zstd]
        .into_iter()
        .flat_map(|c| GRAINS.map(|g| (c, g)))
    {
        let data: Vec<Vec<u8>> = (0..20u8)
            .map(|i| if i % 3 == 2 { random() } else { patterned(i) })
            .collect();
        let blocks: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        let packed = pack_batch(codec, None, grain, &blocks, &Misses::default());
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
                let used: u8 = slots.iter().map(|(_, s)| s.len).sum();
                assert!(used <= GRANULES);
                assert!(slots.iter().all(|(_, s)| s.range().len() <= MAX_PACKED));
                if grain == Grain::Sector {
                    assert!(slots.iter().all(|(_, s)| s.range().start % 512 == 0));
                    assert!(slots.iter().all(|(_, s)| s.range().len() % 512 == 0));
                }
            }
        }
        assert_eq!(expand_all(codec, grain, &blocks, &packed), data);
    }
}

#[test]
fn place_round_trips_and_rejects_malformed_addresses() {
    // The sector layout as containers before FINE_SLOTS have it: sector 3, 5 sectors long.
    let slot = Slot { first: 24, len: 40 };
    let pba = place::packed(123_456, slot, Grain::Sector);
    assert_eq!(pba, 123_456 | 1 << 63 | 3 << 56 | 5 << 52);
    assert_eq!(place::slot_of(pba), Some(slot));
    assert_eq!(block_of(pba), 123_456);
    assert!(place::is_valid(pba, Grain::Sector));
    assert!(!place::is_valid(pba, Grain::Fine));
    assert_eq!(stored_len(pba), 2560);
    let moved = place::moved(pba, 77);
    assert_eq!((block_of(moved), place::slot_of(moved)), (77, Some(slot)));
    // The granule layout: granule 5, 27 granules long.
    let fine = Slot { first: 5, len: 27 };
    let pba = place::packed(123_456, fine, Grain::Fine);
    assert_eq!(pba, 123_456 | 1 << 63 | 1 << 62 | 26 << 54 | 5 << 48);
    assert_eq!(place::slot_of(pba), Some(fine));
    assert!(place::is_valid(pba, Grain::Fine));
    assert!(!place::is_valid(pba, Grain::Sector));
    assert_eq!(stored_len(pba), 27 * 64);
    assert_eq!(fine.range(), 320..2048);
    for grain in GRAINS {
        assert!(place::is_valid(42, grain) && place::slot_of(42).is_none());
        assert!(!place::is_valid(1 << 50, grain));
        assert!(!place::is_valid(pba | 1 << 60, grain));
    }
    let overflowing = place::packed(1, Slot { first: 48, len: 24 }, Grain::Sector);
    assert!(!place::is_valid(overflowing, Grain::Sector));
    let overflowing = place::packed(1, Slot { first: 60, len: 5 }, Grain::Fine);
    assert!(!place::is_valid(overflowing, Grain::Fine));
}

#[test]
fn slots_round_up_to_their_grain() {
    assert_eq!(Grain::Fine.granules(1574), 25);
    assert_eq!(Grain::Sector.granules(1574), 32);
    assert_eq!(Grain::Fine.granules(64), 1);
    assert_eq!(Grain::Sector.granules(1), 8);
    assert_eq!(Grain::Sector.granules(MAX_PACKED), 48);
}

proptest! {
    /// Every slot inside a block encodes and decodes to itself in its grain, is valid there
    /// and nowhere else, and moves with its block.
    #[test]
    fn every_slot_round_trips(
        block in 0u64..(1 << 48),
        first in 0u8..GRANULES,
        len in 1u8..=GRANULES,
        to in 0u64..(1 << 48),
        fine in any::<bool>(),
    ) {
        let (grain, other) = if fine {
            (Grain::Fine, Grain::Sector)
        } else {
            (Grain::Sector, Grain::Fine)
        };
        let step = if fine { 1 } else { 8 };
        let slot = Slot { first: first / step * step, len: len.div_ceil(step) * step };
        prop_assume!(slot.first as usize + slot.len as usize <= GRANULES as usize);
        let pba = place::packed(block, slot, grain);
        prop_assert_eq!(place::slot_of(pba), Some(slot));
        prop_assert_eq!(block_of(pba), block);
        prop_assert!(place::is_valid(pba, grain));
        prop_assert!(!place::is_valid(pba, other));
        prop_assert_eq!(stored_len(pba), slot.len as u64 * GRANULE as u64);
        let moved = place::moved(pba, to);
        prop_assert_eq!((block_of(moved), place::slot_of(moved)), (to, Some(slot)));
    }

    /// Whatever a batch holds, its slots lie in their blocks, on their grain, without
    /// overlapping, and read back.
    #[test]
    fn packed_batches_read_back(kinds in proptest::collection::vec(0u8..4, 1..24), fine in any::<bool>()) {
        let grain = if fine { Grain::Fine } else { Grain::Sector };
        let data: Vec<Vec<u8>> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                0 => random(),
                // Compressible to different lengths: part noise, part pattern.
                k => {
                    let mut b = patterned(i as u8);
                    b[..*k as usize * 700].iter_mut().for_each(|x| *x = fastrand::u8(..));
                    b
                }
            })
            .collect();
        let blocks: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        let packed = pack_batch(Codec::Lz4, None, grain, &blocks, &Misses::default());
        for p in &packed.phys {
            if let Physical::Packed { slots, .. } = p {
                let mut end = 0;
                for (_, s) in slots {
                    prop_assert!(s.range().start >= end && s.range().end <= BLOCK_SIZE);
                    end = s.range().end;
                }
            }
        }
        prop_assert_eq!(expand_all(Codec::Lz4, grain, &blocks, &packed), data);
    }
}

#[test]
fn a_damaged_slot_is_an_error_not_a_panic() {
    let data = patterned(1);
    let packed = pack_batch(Codec::Zstd, None, Grain::Fine, &[&data], &Misses::default());
    let Physical::Packed { slots, .. } = &packed.phys[0] else {
        panic!("a patterned block packs");
    };
    let pba = place::packed(9, slots[0].1, Grain::Fine);
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
    let packed = pack_batch(Codec::Lz4, None, Grain::Fine, &blocks, &misses);
    assert!(packed.phys.iter().all(|p| matches!(p, Physical::Raw(_))));
    assert!(!(0..PROBE_CHECK).all(|_| misses.worth_trying()));
    // One block that shrinks turns attempts back on.
    let p = patterned(0);
    let mut tries = 0;
    while !matches!(
        pack_batch(Codec::Lz4, None, Grain::Fine, &[&p], &misses).phys[0],
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
    let packed = pack_batch(
        Codec::Zstd,
        Some(&dict),
        Grain::Fine,
        &[&data],
        &Misses::default(),
    );
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
    let pba = place::packed(9, slots[0].1, Grain::Fine);
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
