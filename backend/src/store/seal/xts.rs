//! The XTS passes over whole 4096-byte data units, handed to the AES backend as one closure
//! (so its round keys are prepared once per call, not once per unit).
//!
//! Per unit: the 256 tweaks are computed once into a table (eight independent chains, each
//! step a multiplication by x^8, instead of one serial doubling per AES block redone for
//! each whitening), the unit is whitened from its source (a copy folded into the XOR), run
//! through the backend's parallel blocks, and whitened again, all while the unit, its source
//! and the table (12 KiB) stay in the L1 cache.

use super::BLOCK_SIZE;
use aes::cipher::consts::U16;
use aes::cipher::typenum::Unsigned;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockSizeUser, ParBlocks,
};

/// AES blocks in one data unit.
const AES_BLOCKS: usize = BLOCK_SIZE / 16;

type AesBlock = Array<u8, U16>;

/// The tweaks of one data unit, AES block `j`'s at `j`.
type Tweaks = [u128; AES_BLOCKS];

/// Multiplication by x in GF(2^128) as IEEE 1619 has it: little-endian, reduced by
/// x^128 + x^7 + x^2 + x + 1.
pub(super) fn times_x(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// For each top byte `h` of a tweak, what multiplying the tweak by x^8 folds back into its
/// low bits: `h * x^128` reduced, `h` times x^7 + x^2 + x + 1 without carries (15 bits).
const FOLD_X8: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut h = 0;
    while h < 256 {
        let b = h as u16;
        table[h] = b ^ (b << 1) ^ (b << 2) ^ (b << 7);
        h += 1;
    }
    table
};

/// Multiplication by x^8: the byte shifted out at the top comes back in at the bottom.
fn times_x8(t: u128) -> u128 {
    (t << 8) ^ u128::from(FOLD_X8[(t >> 120) as usize])
}

/// The tweaks of a unit whose encrypted start tweak is `start`: `start * x^j` for AES block
/// `j`. The first eight by doubling, every later one from the one eight places back (eight
/// independent chains instead of one serial doubling per AES block).
pub(super) fn tweak_sequence(start: u128, out: &mut Tweaks) {
    let mut t = start;
    for slot in &mut out[..8] {
        *slot = t;
        t = times_x(t);
    }
    for j in 8..AES_BLOCKS {
        out[j] = times_x8(out[j - 8]);
    }
}

/// XORs every AES block of `unit` with its tweak, reading the plaintext from `from` (a
/// unit as long) or, without it, from `unit` itself.
fn whiten(unit: &mut [u8], from: Option<&[u8]>, tweaks: &Tweaks) {
    let (dst, _) = unit.as_chunks_mut::<16>();
    match from {
        Some(src) => {
            let (src, _) = src.as_chunks::<16>();
            for ((d, s), t) in dst.iter_mut().zip(src).zip(tweaks) {
                *d = (u128::from_le_bytes(*s) ^ t).to_le_bytes();
            }
        }
        None => {
            for (d, t) in dst.iter_mut().zip(tweaks) {
                *d = (u128::from_le_bytes(*d) ^ t).to_le_bytes();
            }
        }
    }
}

/// The AES blocks of a unit, as the backend takes them.
fn aes_blocks(unit: &mut [u8]) -> &mut [AesBlock] {
    Array::cast_slice_from_core_mut(unit.as_chunks_mut::<16>().0)
}

/// Encrypts data units in place or from a source: the closure the data key's backend runs.
pub(super) struct EncryptUnits<'a> {
    /// Whole units; the ciphertext is left here.
    pub units: &'a mut [u8],
    /// Per unit, its plaintext when it is not in `units` already.
    pub from: Option<&'a [&'a [u8]]>,
    /// Per unit, its encrypted start tweak.
    pub starts: &'a [u128],
}

impl BlockSizeUser for EncryptUnits<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for EncryptUnits<'_> {
    fn call<B: BlockCipherEncBackend<BlockSize = U16>>(self, backend: &B) {
        let mut tweaks = [0u128; AES_BLOCKS];
        let units = self.units.chunks_exact_mut(BLOCK_SIZE).zip(self.starts);
        for (i, (unit, &start)) in units.enumerate() {
            tweak_sequence(start, &mut tweaks);
            whiten(unit, self.from.map(|f| f[i]), &tweaks);
            let blocks = aes_blocks(unit);
            let mut par = blocks.chunks_exact_mut(B::ParBlocksSize::USIZE);
            for p in &mut par {
                let p: &mut ParBlocks<B> = p.try_into().expect("a chunk of ParBlocksSize");
                backend.encrypt_par_blocks_inplace(p);
            }
            backend.encrypt_tail_blocks_inplace(par.into_remainder());
            whiten(unit, None, &tweaks);
        }
    }
}

/// Decrypts data units in place: the closure the data key's backend runs.
pub(super) struct DecryptUnits<'a> {
    pub units: &'a mut [u8],
    /// Per unit, its encrypted start tweak.
    pub starts: &'a [u128],
}

impl BlockSizeUser for DecryptUnits<'_> {
    type BlockSize = U16;
}

impl BlockCipherDecClosure for DecryptUnits<'_> {
    fn call<B: BlockCipherDecBackend<BlockSize = U16>>(self, backend: &B) {
        let mut tweaks = [0u128; AES_BLOCKS];
        for (unit, &start) in self.units.chunks_exact_mut(BLOCK_SIZE).zip(self.starts) {
            tweak_sequence(start, &mut tweaks);
            whiten(unit, None, &tweaks);
            let blocks = aes_blocks(unit);
            let mut par = blocks.chunks_exact_mut(B::ParBlocksSize::USIZE);
            for p in &mut par {
                let p: &mut ParBlocks<B> = p.try_into().expect("a chunk of ParBlocksSize");
                backend.decrypt_par_blocks_inplace(p);
            }
            backend.decrypt_tail_blocks_inplace(par.into_remainder());
            whiten(unit, None, &tweaks);
        }
    }
}
