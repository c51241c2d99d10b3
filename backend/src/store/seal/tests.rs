use super::*;

fn key(b: u8) -> Key {
    let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ b).collect();
    Key::from_bytes(&raw).unwrap()
}

fn block(fill: &str) -> Vec<u8> {
    fill.bytes().cycle().take(2 * BLOCK_SIZE).collect()
}

#[test]
fn round_trip_and_plaintext_gone() {
    let s = SealFields::new(&key(1), [9; 16])
        .unlock(Some(&key(1)))
        .unwrap();
    let plain = block("keel plaintext ");
    let mut b = plain.clone();
    s.seal(&mut b, 10 * BLOCK).unwrap();
    assert_ne!(b, plain);
    assert!(!b.windows(15).any(|w| w == b"keel plaintext "));
    s.open(&mut b, 10 * BLOCK).unwrap();
    assert_eq!(b, plain);
}

#[test]
fn the_tweak_is_the_block_address() {
    let s = SealFields::new(&key(1), [9; 16])
        .unlock(Some(&key(1)))
        .unwrap();
    let plain = block("same");
    let mut at = plain.clone();
    s.seal(&mut at, 10 * BLOCK).unwrap();
    // Two equal blocks in one run differ, and so does the same block one address on.
    assert_ne!(at[..BLOCK_SIZE], at[BLOCK_SIZE..]);
    let mut moved = plain.clone();
    s.seal(&mut moved, 11 * BLOCK).unwrap();
    assert_eq!(at[BLOCK_SIZE..], moved[..BLOCK_SIZE]);
    assert_ne!(at[..BLOCK_SIZE], moved[..BLOCK_SIZE]);
    // Opened at the wrong address, a block is garbage, not the plaintext.
    s.open(&mut moved, 10 * BLOCK).unwrap();
    assert_ne!(moved, plain);
}

#[test]
fn superblocks_stay_plain_and_partial_blocks_are_refused() {
    let s = SealFields::new(&key(1), [9; 16])
        .unlock(Some(&key(1)))
        .unwrap();
    let plain = block("sb");
    let mut b = plain.clone();
    s.seal(&mut b, 0).unwrap();
    assert_eq!(b, plain);
    let mut three = block("x");
    three.extend(block("x"));
    s.seal(&mut three[..3 * BLOCK_SIZE], BLOCK).unwrap();
    assert_eq!(three[..BLOCK_SIZE], plain_of("x")[..]);
    assert_ne!(three[BLOCK_SIZE..2 * BLOCK_SIZE], plain_of("x")[..]);
    assert!(s.seal(&mut b[..100], 8192).is_err());
    assert!(s.open(&mut b[..BLOCK_SIZE], 8192 + 512).is_err());
}

fn plain_of(fill: &str) -> Vec<u8> {
    fill.bytes().cycle().take(BLOCK_SIZE).collect()
}

#[test]
fn wrong_or_missing_key_is_refused() {
    let fields = SealFields::new(&key(1), [9; 16]);
    assert!(matches!(
        fields.unlock(Some(&key(2))),
        Err(StoreError::WrongKey)
    ));
    assert!(matches!(fields.unlock(None), Err(StoreError::KeyRequired)));
    // Another salt, another check value: equal keys do not show.
    assert_ne!(
        fields.key_check,
        SealFields::new(&key(1), [8; 16]).key_check
    );
    // The check value is not the key, nor any half of it.
    assert!(
        !key(1)
            .bytes()
            .windows(16)
            .any(|w| fields.key_check.windows(16).any(|c| c == w))
    );
}

#[test]
fn fields_are_validated() {
    let good = SealFields::new(&key(1), [9; 16]);
    good.validate(true, false).unwrap();
    SealFields::default().validate(false, false).unwrap();
    assert!(good.validate(false, false).is_err());
    assert!(SealFields::default().validate(true, false).is_err());
    let unknown = SealFields { cipher: 7, ..good };
    assert!(matches!(
        unknown.validate(true, false),
        Err(StoreError::Unsupported(_))
    ));
    let compressed = SealFields {
        compression: 2,
        ..good
    };
    compressed.validate(true, true).unwrap();
    assert!(compressed.validate(true, false).is_err());
    let plain_lz4 = SealFields {
        compression: 1,
        ..SealFields::default()
    };
    plain_lz4.validate(false, true).unwrap();
    assert!(SealFields::default().validate(false, true).is_err());
    let unknown_codec = SealFields {
        compression: 9,
        ..good
    };
    assert!(matches!(
        unknown_codec.validate(true, true),
        Err(StoreError::Unsupported(_))
    ));
    let no_check = SealFields {
        key_check: [0; 32],
        ..good
    };
    assert!(no_check.validate(true, false).is_err());
}

#[test]
fn key_lengths_and_sources() {
    let raw64: Vec<u8> = (0..64u8).collect();
    let k64 = Key::from_bytes(&raw64).unwrap();
    assert_eq!(&k64.bytes()[..], &raw64[..]);
    // 32 bytes are expanded, to two different halves.
    let k32 = Key::from_bytes(&raw64[..32]).unwrap();
    assert_ne!(k32.bytes()[..32], k32.bytes()[32..]);
    assert_ne!(&k32.bytes()[..32], &raw64[..32]);
    for bad in [0usize, 16, 31, 33, 63, 65, 128] {
        let v = vec![7u8; bad];
        assert!(Key::from_bytes(&v).is_err(), "{bad} bytes");
    }
    let mut newline = raw64.clone();
    newline.push(b'\n');
    let m = Key::from_bytes(&newline).unwrap_err().to_string();
    assert!(m.contains("newline"), "{m}");
    let mut halves = raw64[..32].to_vec();
    halves.extend_from_slice(&raw64[..32]);
    assert!(Key::from_bytes(&halves).is_err());

    assert_eq!(
        KeySource::parse("env:KEEL_KEY").unwrap(),
        KeySource::Env("KEEL_KEY".into())
    );
    assert_eq!(
        KeySource::parse("credential:disk.key").unwrap(),
        KeySource::Credential("disk.key".into())
    );
    assert!(KeySource::parse("credential:../x").is_err());
    assert!(KeySource::parse("env:").is_err());
    assert!(KeySource::parse("").is_err());

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    std::fs::write(&p, &raw64[..40]).unwrap();
    let m = KeySource::File(p.clone()).load().unwrap_err().to_string();
    assert!(
        m.contains("40 bytes") && m.contains(&p.display().to_string()),
        "{m}"
    );
    std::fs::write(&p, &raw64).unwrap();
    assert_eq!(KeySource::File(p).load().unwrap().bytes(), k64.bytes());
    assert!(KeySource::File(dir.path().join("missing")).load().is_err());
}

/// The multi-block XTS here gives what the `xts-mode` crate gives (IEEE 1619, one data unit
/// per 4096-byte block, the tweak the block number, little-endian).
#[test]
fn the_same_ciphertext_as_the_xts_mode_crate() {
    use aes::cipher::KeyInit;
    let k = key(5);
    let s = SealFields::new(&k, [1; 16]).unlock(Some(&k)).unwrap();
    let (k1, k2) = k.bytes().split_at(32);
    let reference = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(k1).unwrap(),
        aes::Aes256::new_from_slice(k2).unwrap(),
    );
    let plain: Vec<u8> = (0..3 * BLOCK_SIZE).map(|i| (i * 7 % 253) as u8).collect();
    let mut ours = plain.clone();
    s.seal(&mut ours, 1000 * BLOCK).unwrap();
    let mut theirs = plain.clone();
    reference.encrypt_area(&mut theirs, BLOCK_SIZE, 1000, xts_mode::get_tweak_default);
    assert!(ours == theirs);
    // Another place, far into a large device.
    let far = (1u64 << 50) + 3;
    let mut ours = plain.clone();
    s.seal(&mut ours, far * BLOCK).unwrap();
    let mut theirs = plain.clone();
    reference.encrypt_area(
        &mut theirs,
        BLOCK_SIZE,
        u128::from(far),
        xts_mode::get_tweak_default,
    );
    assert!(ours == theirs);
    s.open(&mut ours, far * BLOCK).unwrap();
    assert!(ours == plain);
}

/// Sealing from separate source blocks into another buffer gives what sealing a copy in place
/// gives, at any offset (the superblocks' included: left plaintext) and across chunks.
#[test]
fn sealing_from_a_source_matches_sealing_in_place() {
    let sealer = SealFields::new(&key(3), [9; 16])
        .unlock(Some(&key(3)))
        .unwrap();
    let data: Vec<u8> = (0..70 * 4096u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    for (offset, blocks) in [(0u64, 3usize), (4096, 2), (2 * 4096, 1), (77 * 4096, 70)] {
        let bytes = &data[..blocks * 4096];
        let mut want = bytes.to_vec();
        sealer.seal(&mut want, offset).unwrap();
        // The source in uneven parts: one block, then the rest.
        let parts: Vec<&[u8]> = vec![&bytes[..4096], &bytes[4096..]];
        let mut got = vec![0u8; bytes.len()];
        sealer.seal_from(&parts, &mut got, offset).unwrap();
        assert!(got == want, "offset {offset}, {blocks} blocks");
    }
    let mut short = vec![0u8; 4096];
    assert!(sealer.seal_from(&[&data[..100]], &mut short, 8192).is_err());
}

/// Sealing with a tweak per block (VBA tweaks: not consecutive, bit 64 set) gives, block by
/// block, what the `xts-mode` crate gives under the same tweak, across more than one chunk;
/// opening undoes it, and a VBA tweak never gives a location tweak's ciphertext.
#[test]
fn per_block_tweaks_match_the_xts_mode_crate() {
    use aes::cipher::KeyInit;
    let k = key(6);
    let s = SealFields::new(&k, [2; 16]).unlock(Some(&k)).unwrap();
    let (k1, k2) = k.bytes().split_at(32);
    let reference = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(k1).unwrap(),
        aes::Aes256::new_from_slice(k2).unwrap(),
    );
    let blocks = CHUNK + 5;
    let plain: Vec<u8> = (0..blocks * BLOCK_SIZE)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    // Scattered VBAs, as a batch of random overwrites has.
    let vbas: Vec<u64> = (0..blocks as u64)
        .map(|i| i * 7919 % 1000 + 5 + (i << 40))
        .collect();
    let tweak = |i: usize| vba_tweak(vbas[i]);
    let parts: Vec<&[u8]> = vec![&plain[..BLOCK_SIZE], &plain[BLOCK_SIZE..]];
    let mut ours = vec![0u8; plain.len()];
    s.seal_each_from(&parts, &mut ours, tweak).unwrap();
    for (i, (got, plain)) in ours
        .chunks(BLOCK_SIZE)
        .zip(plain.chunks(BLOCK_SIZE))
        .enumerate()
    {
        let mut theirs = plain.to_vec();
        reference.encrypt_sector(&mut theirs, Array(tweak(i).to_le_bytes()));
        assert!(got == theirs, "block {i}");
        // The same bytes sealed at the block whose number is the VBA differ: the two kinds
        // of tweak never meet.
        let mut at_place = plain.to_vec();
        s.seal(&mut at_place, vbas[i] * BLOCK).unwrap();
        assert!(got != at_place);
    }
    s.open_each(&mut ours, tweak).unwrap();
    assert!(ours == plain);
    assert!(s.open_each(&mut ours[..100], tweak).is_err());
    let mut short = vec![0u8; BLOCK_SIZE];
    assert!(
        s.seal_each_from(&[&plain[..100]], &mut short, tweak)
            .is_err()
    );
}

/// IEEE 1619 XTS-AES-256 on one 4096-byte data unit, one 16-byte AES block at a time, written
/// from the standard's steps and sharing no code with [`Sealer`]: the tweak encrypted under
/// the second key, each block whitened, encrypted under the first, whitened again, the tweak
/// multiplied by x (little-endian, reduced by x^128 + x^7 + x^2 + x + 1) between blocks.
fn reference_xts(key: &[u8], plain: &[u8], tweak: u128) -> Vec<u8> {
    use aes::cipher::KeyInit;
    let data = aes::Aes256::new_from_slice(&key[..32]).unwrap();
    let tweak_key = aes::Aes256::new_from_slice(&key[32..]).unwrap();
    let mut t = Array(tweak.to_le_bytes());
    tweak_key.encrypt_block(&mut t);
    let mut out = Vec::with_capacity(plain.len());
    for chunk in plain.chunks(16) {
        let mut b: Array<u8, aes::cipher::consts::U16> = Array([0u8; 16]);
        for ((b, p), t) in b.0.iter_mut().zip(chunk).zip(&t.0) {
            *b = p ^ t;
        }
        data.encrypt_block(&mut b);
        out.extend(b.0.iter().zip(&t.0).map(|(b, t)| b ^ t));
        // t = t * x: shift the 128-bit little-endian value left by one bit.
        let carry = t.0[15] >> 7;
        for i in (1..16).rev() {
            t.0[i] = (t.0[i] << 1) | (t.0[i - 1] >> 7);
        }
        t.0[0] = (t.0[0] << 1) ^ (carry * 0x87);
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The stored bytes of one known block under a known key, pinned for both kinds of tweak (the
/// format: any change to how blocks are sealed shows here), through every sealing path, and
/// checked against [`reference_xts`]. The digests were computed apart from Keel, with
/// OpenSSL's AES-256-XTS (key bytes 0..63, the tweak as 16 little-endian bytes).
#[test]
fn known_blocks_keep_their_ciphertext() {
    let raw: Vec<u8> = (0..64u8).collect();
    let k = Key::from_bytes(&raw).unwrap();
    let s = SealFields::new(&k, [0; 16]).unlock(Some(&k)).unwrap();
    let plain: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i % 251) as u8).collect();

    // PBA 1000: a metadata block, a packed block, any block without VBA tweaks.
    let pba = 1000u64;
    let mut in_place = plain.clone();
    s.seal(&mut in_place, pba * BLOCK).unwrap();
    let mut copied = vec![0u8; BLOCK_SIZE];
    s.seal_from(&[&plain], &mut copied, pba * BLOCK).unwrap();
    let mut each = vec![0u8; BLOCK_SIZE];
    s.seal_each_from(&[&plain], &mut each, |_| pba_tweak(pba))
        .unwrap();
    let want = reference_xts(&raw, &plain, u128::from(pba));
    assert!(in_place == want && copied == want && each == want);
    assert_eq!(
        sha256_hex(&want),
        "f01e40e67e60e9fb513618de9bb4c3a4c0d02f9639c1f9f8ec8be3a2844a0ab7"
    );

    // VBA 77 (bit 64 set): a raw data block on a container with VBA tweaks.
    let mut by_vba = vec![0u8; BLOCK_SIZE];
    s.seal_each_from(&[&plain], &mut by_vba, |_| vba_tweak(77))
        .unwrap();
    let want = reference_xts(&raw, &plain, (1 << 64) | 77);
    assert!(by_vba == want);
    assert_eq!(
        sha256_hex(&want),
        "1724c99c6b6281e71ad208600c3eebf1acf1cb56c70972e104cc98cb93fde495"
    );
    s.open_each(&mut by_vba, |_| vba_tweak(77)).unwrap();
    assert!(by_vba == plain);
    s.open(&mut in_place, pba * BLOCK).unwrap();
    assert!(in_place == plain);
}

/// The tweak table (eight chains of x^8 steps) is the serial doubling IEEE 1619 describes,
/// for tweaks with and without the top bits that fold back.
#[test]
fn tweak_sequence_is_repeated_doubling() {
    let mut table = [0u128; BLOCK_SIZE / 16];
    for start in [
        1u128,
        u128::MAX,
        0x87 << 120,
        (1 << 127) | 5,
        0x0123_4567_89ab_cdef << 61,
    ] {
        xts::tweak_sequence(start, &mut table);
        let mut t = start;
        for (j, got) in table.iter().enumerate() {
            assert_eq!(*got, t, "start {start:#x}, AES block {j}");
            t = xts::times_x(t);
        }
    }
}

/// A pass large enough to be shared between threads gives, byte for byte, what the same pass
/// on one thread gives and what the `xts-mode` crate gives, for every sealing and opening
/// path, at sizes below, at and above the threshold (and not a multiple of a chunk).
#[test]
fn shared_passes_give_the_one_thread_ciphertext() {
    use aes::cipher::KeyInit;
    let k = key(8);
    let fields = SealFields::new(&k, [3; 16]);
    let shared = fields
        .unlock(Some(&k))
        .unwrap()
        .split_from(SPLIT_MIN_BLOCKS);
    let single = fields.unlock(Some(&k)).unwrap().split_from(usize::MAX);
    let (k1, k2) = k.bytes().split_at(32);
    let reference = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(k1).unwrap(),
        aes::Aes256::new_from_slice(k2).unwrap(),
    );
    for blocks in [
        SPLIT_MIN_BLOCKS - 1,
        SPLIT_MIN_BLOCKS,
        3 * SPLIT_MIN_BLOCKS + CHUNK / 2 + 1,
        1024,
    ] {
        let plain: Vec<u8> = (0..blocks * BLOCK_SIZE)
            .map(|i| (i * 11 % 241 + i / BLOCK_SIZE) as u8)
            .collect();
        // The source in uneven parts, as a batch's requests are.
        let parts: Vec<&[u8]> = vec![&plain[..BLOCK_SIZE], &plain[BLOCK_SIZE..]];
        let tweak = |i: usize| vba_tweak(i as u64 * 7919 % 100_003 + (i as u64 >> 3 << 32));
        let mut by_vba = vec![0u8; plain.len()];
        shared.seal_each_from(&parts, &mut by_vba, tweak).unwrap();
        let mut one_thread = vec![0u8; plain.len()];
        single
            .seal_each_from(&parts, &mut one_thread, tweak)
            .unwrap();
        assert!(by_vba == one_thread, "seal_each_from, {blocks} blocks");
        for (i, (got, plain)) in by_vba
            .chunks(BLOCK_SIZE)
            .zip(plain.chunks(BLOCK_SIZE))
            .enumerate()
        {
            let mut theirs = plain.to_vec();
            reference.encrypt_sector(&mut theirs, Array(tweak(i).to_le_bytes()));
            assert!(got == theirs, "{blocks} blocks, block {i}");
        }
        shared.open_each(&mut by_vba, tweak).unwrap();
        assert!(by_vba == plain, "open_each, {blocks} blocks");

        // Location tweaks: sealed from a source, in place, and opened.
        let at = 5000 * BLOCK;
        let mut from = vec![0u8; plain.len()];
        shared.seal_from(&parts, &mut from, at).unwrap();
        let mut theirs = plain.clone();
        reference.encrypt_area(&mut theirs, BLOCK_SIZE, 5000, xts_mode::get_tweak_default);
        assert!(from == theirs, "seal_from, {blocks} blocks");
        let mut in_place = plain.clone();
        shared.seal(&mut in_place, at).unwrap();
        assert!(in_place == theirs, "seal, {blocks} blocks");
        shared.open(&mut in_place, at).unwrap();
        assert!(in_place == plain, "open, {blocks} blocks");
    }
}

/// A bad pass is refused before it is shared: an error, not a panic in a helper.
#[test]
fn a_bad_shared_pass_is_an_error() {
    let s = SealFields::new(&key(8), [3; 16])
        .unlock(Some(&key(8)))
        .unwrap()
        .split_from(1);
    let plain = vec![7u8; 4 * SPLIT_MIN_BLOCKS * BLOCK_SIZE];
    let mut dst = vec![0u8; plain.len()];
    // A source a block short, or with a part not whole blocks.
    let short = [&plain[..plain.len() - BLOCK_SIZE]];
    assert!(s.seal_each_from(&short, &mut dst, |_| 1).is_err());
    let ragged = [&plain[..100], &plain[100..]];
    assert!(s.seal_each_from(&ragged, &mut dst, |_| 1).is_err());
    assert!(s.open_each(&mut dst[..plain.len() - 1], |_| 1).is_err());
    assert!(s.seal(&mut dst, 3 * BLOCK + 512).is_err());
}
