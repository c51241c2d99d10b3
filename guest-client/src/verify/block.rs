//! Self-describing blocks: each says which block it is, which generation, which run (seed), and
//! carries a crc32c of itself, so a read alone tells what landed where.
//!
//! Layout (little endian):
//! `0..8` magic, `8..16` block number, `16..24` generation, `24..32` seed,
//! `32..36` crc32c of every byte except these four, `36..40` zero, `40..` payload generated from
//! (seed, block, generation).

/// Smallest block that can hold the header (and a sector, the unit of a virtio-blk write).
pub const MIN_BLOCK: usize = 512;
const MAGIC: [u8; 8] = *b"KEELVRFY";
const CRC_AT: usize = 32;
const PAYLOAD_AT: usize = 40;

/// Fills `buf` with block `block` at generation `generation` of run `seed`.
/// Generation 0 means "never written": all zeroes.
pub fn fill(buf: &mut [u8], seed: u64, block: u64, generation: u64) {
    if generation == 0 {
        buf.fill(0);
        return;
    }
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..16].copy_from_slice(&block.to_le_bytes());
    buf[16..24].copy_from_slice(&generation.to_le_bytes());
    buf[24..32].copy_from_slice(&seed.to_le_bytes());
    buf[CRC_AT..PAYLOAD_AT].fill(0);
    let mut rng = fastrand::Rng::with_seed(payload_key(seed, block, generation));
    rng.fill(&mut buf[PAYLOAD_AT..]);
    let crc = checksum(buf);
    buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The expected bytes of a block, for comparing sector by sector.
pub fn expected(len: usize, seed: u64, block: u64, generation: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(&mut v, seed, block, generation);
    v
}

fn payload_key(seed: u64, block: u64, generation: u64) -> u64 {
    // splitmix-style mixing so neighbouring blocks and generations get unrelated streams.
    let mut x = seed ^ block.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation.rotate_left(32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn checksum(buf: &[u8]) -> u32 {
    let c = crc32c::crc32c(&buf[..CRC_AT]);
    crc32c::crc32c_append(c, &buf[PAYLOAD_AT..])
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// All zeroes: never written (or discarded).
    Blank,
    /// An intact block stamp.
    Stamp {
        seed: u64,
        block: u64,
        generation: u64,
    },
    /// Has the magic but fails its checksum.
    BadChecksum,
    /// Neither zeroes nor a block stamp.
    Garbage,
}

/// Decodes a block read back from the disk.
pub fn inspect(buf: &[u8]) -> Content {
    if buf.len() < MIN_BLOCK {
        return Content::Garbage;
    }
    if buf[0..8] != MAGIC {
        return if buf.iter().all(|&b| b == 0) {
            Content::Blank
        } else {
            Content::Garbage
        };
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let stored = u32::from_le_bytes([buf[32], buf[33], buf[34], buf[35]]);
    if stored != checksum(buf) || buf[36..40] != [0; 4] {
        return Content::BadChecksum;
    }
    Content::Stamp {
        seed: u64_at(24),
        block: u64_at(8),
        generation: u64_at(16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_block_reads_back_as_its_stamp() {
        let b = expected(4096, 7, 42, 3);
        assert_eq!(
            inspect(&b),
            Content::Stamp {
                seed: 7,
                block: 42,
                generation: 3
            }
        );
        assert_ne!(
            expected(4096, 7, 42, 4)[100..],
            b[100..],
            "generations differ in payload"
        );
        assert_ne!(
            expected(4096, 7, 43, 3)[100..],
            b[100..],
            "blocks differ in payload"
        );
    }

    #[test]
    fn any_flipped_byte_breaks_the_checksum() {
        let good = expected(1024, 1, 2, 3);
        for at in [8, 20, 31, 33, 40, 600, 1023] {
            let mut b = good.clone();
            b[at] ^= 0x01;
            assert_eq!(inspect(&b), Content::BadChecksum, "flip at {at}");
        }
    }

    #[test]
    fn blank_and_garbage_are_told_apart() {
        assert_eq!(inspect(&[0u8; 512]), Content::Blank);
        assert_eq!(expected(512, 1, 1, 0), vec![0u8; 512]);
        let mut g = vec![0u8; 512];
        g[300] = 1;
        assert_eq!(inspect(&g), Content::Garbage);
    }
}
