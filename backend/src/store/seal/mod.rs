//! Encryption at rest: every block of a container but the two superblocks is stored encrypted.
//!
//! The cipher sits at the two places where stored bytes are made and read back: the
//! [`SealedDevice`] under the store (metadata, checkpoints, the journal, the cleaner, every
//! store-issued data write and read) and a keel queue's own ring (guest data), which seals
//! into buffers of its own and opens what it read before the checksums are checked. Nothing
//! above them sees ciphertext, so the maps, journal and checksums are the same whether a
//! container is encrypted or not.
//!
//! Each 4096-byte block is one AES-XTS data unit. Metadata blocks, packed (compressed) data
//! blocks and every block of a container without `VBA_TWEAK` have their physical block number
//! as the tweak; a data block stored as it is on a container with `VBA_TWEAK` has its VBA
//! (bit 64 set, see [`vba_tweak`]). A VBA names one version of one guest block and is never
//! reused, so such a block's tweak is never used for other contents, and its ciphertext does
//! not depend on its place: the cleaner moves it as it is (see docs/security.md for what that
//! does and does not protect).
//!
//! The superblock stays plaintext and holds the [`SealFields`]: which cipher, a reserved
//! compression field, and a key check value (an HMAC of a fixed label under the key, never the
//! key), so the wrong key is refused at open instead of serving garbage.

mod device;
mod key;
mod seal_batch;
mod shares;
mod stored;
mod xts;

pub use device::SealedDevice;
pub use key::{Key, KeySource};
pub(crate) use seal_batch::{SealedRuns, seal_for_store};
pub use shares::SPLIT_MIN_BLOCKS;
pub(crate) use stored::DataView;

use super::error::{Result, StoreError};
use super::layout::{BLOCK, BLOCK_SIZE};
use crate::device::BlockDevice;
use aes::Aes256;
use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// Cipher number of AES-256-XTS in the superblock's `cipher` field (0: not encrypted).
pub const CIPHER_AES_XTS_256: u32 = 1;
/// The name users give the cipher (`--encryption`, the `encryption` config key).
pub const AES_XTS_256: &str = "aes-xts-256";
/// Bytes below this offset (superblocks A and B) are never encrypted.
pub const PLAIN_BYTES: u64 = 2 * BLOCK;
/// Label the key check value is computed over (with the container's salt).
const KEY_CHECK_LABEL: &[u8] = b"keel key check, aes-xts-256, v1";

/// The cipher fields of a superblock (bytes 112 .. 168), all zero in a plaintext container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealFields {
    /// 0 (none) or [`CIPHER_AES_XTS_256`].
    pub cipher: u32,
    /// The codec of a compressed container, applied before the cipher (see
    /// [`compress::Codec`](super::compress::Codec)); 0 (none) otherwise.
    pub compression: u32,
    /// Random per container, so equal keys give different check values.
    pub salt: [u8; 16],
    /// HMAC-SHA-256 of a fixed label and `salt` under the key.
    pub key_check: [u8; 32],
}

impl SealFields {
    /// Fields for a new container encrypted with `key`.
    pub fn new(key: &Key, salt: [u8; 16]) -> Self {
        Self {
            cipher: CIPHER_AES_XTS_256,
            compression: 0,
            salt,
            key_check: key_check(key, &salt),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.cipher != 0
    }

    /// Checks that the fields describe something this Keel can open (`encrypted`,
    /// `compressed`: the superblock's ENCRYPTED and COMPRESSED feature bits).
    pub fn validate(&self, encrypted: bool, compressed: bool) -> Result<()> {
        let bad = |d: &str| {
            Err(StoreError::corrupt(
                "superblock cipher fields",
                d.to_string(),
            ))
        };
        match (compressed, self.compression) {
            (false, 0) => {}
            (false, _) => return bad("compression is set but the COMPRESSED feature is not"),
            (true, 0) => return bad("the COMPRESSED feature is set but no codec is named"),
            (true, n) if super::compress::Codec::from_number(n).is_none() => {
                return Err(StoreError::Unsupported(format!(
                    "compression {n} is not supported"
                )));
            }
            (true, _) => {}
        }
        let cipher_part = Self {
            compression: 0,
            ..*self
        };
        match (encrypted, self.cipher) {
            (false, 0) if cipher_part == Self::default() => Ok(()),
            (false, _) => bad("cipher fields are set but the ENCRYPTED feature is not"),
            (true, 0) => bad("the ENCRYPTED feature is set but no cipher is named"),
            (true, CIPHER_AES_XTS_256) if self.key_check == [0; 32] => bad("no key check value"),
            (true, CIPHER_AES_XTS_256) => Ok(()),
            (true, other) => Err(StoreError::Unsupported(format!(
                "cipher {other} is not supported"
            ))),
        }
    }

    /// The cipher for these fields, once `key` has passed the key check.
    pub fn unlock(&self, key: Option<&Key>) -> Result<Sealer> {
        let key = key.ok_or(StoreError::KeyRequired)?;
        let mut mac = key_check_mac(key, &self.salt);
        mac.update(KEY_CHECK_LABEL);
        mac.verify_slice(&self.key_check)
            .map_err(|_| StoreError::WrongKey)?;
        Ok(Sealer::new(key))
    }
}

fn key_check_mac(key: &Key, salt: &[u8; 16]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key.bytes())
        .expect("HMAC takes any key length");
    mac.update(salt);
    mac
}

fn key_check(key: &Key, salt: &[u8; 16]) -> [u8; 32] {
    let mut mac = key_check_mac(key, salt);
    mac.update(KEY_CHECK_LABEL);
    mac.finalize().into_bytes().into()
}

/// AES-256-XTS (IEEE 1619) over whole blocks, the tweak being each block's physical block
/// number ([`seal`](Self::seal), [`open`](Self::open)) or one given per block
/// ([`seal_each_from`](Self::seal_each_from), [`open_each`](Self::open_each)). A run is
/// ciphered [`CHUNK`] blocks at a time: their tweaks are encrypted in one call, then the
/// chunk's blocks go through the data key's backend in one call ([`xts`]: each block whitened,
/// encrypted in the backend's parallel batches and whitened again while it is in the L1
/// cache). A pass over [`SPLIT_MIN_BLOCKS`] blocks or more is shared with helper threads
/// ([`shares`]). The tests check the output against the `xts-mode` crate's and pin known
/// blocks.
pub struct Sealer {
    data: Aes256,
    tweak: Aes256,
    shares: shares::Shares,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(aes-xts-256)")
    }
}

/// Container blocks ciphered per call into the AES backend: a guest batch of 4 KiB writes
/// is often one run of up to a few dozen blocks.
const CHUNK: usize = 32;

/// Which way a pass ciphers.
#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

impl Sealer {
    fn new(key: &Key) -> Self {
        let (k1, k2) = key.bytes().split_at(32);
        Self {
            data: Aes256::new_from_slice(k1).expect("32-byte AES-256 key"),
            tweak: Aes256::new_from_slice(k2).expect("32-byte AES-256 key"),
            shares: shares::Shares::from(SPLIT_MIN_BLOCKS),
        }
    }

    /// This sealer with its passes shared between threads from `blocks` blocks on
    /// (`usize::MAX`: never), instead of [`SPLIT_MIN_BLOCKS`]: for benchmarks and tests of
    /// both paths. The output is the same either way.
    pub fn split_from(self, blocks: usize) -> Self {
        Self {
            shares: shares::Shares::from(blocks),
            ..self
        }
    }

    /// Encrypts `buf`, stored at byte `offset`, in place. Both must be whole blocks; blocks
    /// below [`PLAIN_BYTES`] are left as they are.
    pub fn seal(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.each_chunk(buf, offset, Direction::Encrypt)
    }

    /// Decrypts `buf`, read from byte `offset`, in place (the inverse of [`seal`](Self::seal)).
    pub fn open(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.each_chunk(buf, offset, Direction::Decrypt)
    }

    /// Encrypts `src` (whole blocks, one slice or more) into `dst` (as long), to be stored
    /// from byte `offset` on: [`seal`](Self::seal) of a copy, with the copy folded into the
    /// cipher's first pass over the bytes.
    pub fn seal_from(&self, src: &[&[u8]], dst: &mut [u8], offset: u64) -> std::io::Result<()> {
        check_whole_blocks(dst.len(), offset)?;
        if offset < PLAIN_BYTES {
            // The superblocks are never sealed: copy, then seal the rest in place.
            check_source(src, dst.len())?;
            let blocks = src.iter().flat_map(|s| s.chunks(BLOCK_SIZE));
            for (d, s) in dst.chunks_mut(BLOCK_SIZE).zip(blocks) {
                d.copy_from_slice(s);
            }
            return self.seal(dst, offset);
        }
        let first = offset / BLOCK;
        self.seal_each_from(src, dst, |i| pba_tweak(first + i as u64))
    }

    /// Encrypts `src` (whole blocks, one slice or more) into `dst` (as long), block `i` under
    /// the tweak `tweak(i)`: [`seal_from`](Self::seal_from) for blocks whose tweak is not
    /// their place (data blocks tweaked by their VBA), batched the same way.
    pub fn seal_each_from(
        &self,
        src: &[&[u8]],
        dst: &mut [u8],
        tweak: impl Fn(usize) -> u128 + Sync,
    ) -> std::io::Result<()> {
        check_source(src, dst.len())?;
        let blocks: Vec<&[u8]> = src.iter().flat_map(|s| s.chunks(BLOCK_SIZE)).collect();
        self.shares.run(dst, |first, share| {
            let from = Some(&blocks[first..]);
            self.cipher_run(share, from, |i| tweak(first + i), Direction::Encrypt);
            Ok(())
        })
    }

    /// Decrypts `buf` (whole blocks) in place, block `i` under the tweak `tweak(i)`: the
    /// inverse of [`seal_each_from`](Self::seal_each_from).
    pub fn open_each(
        &self,
        buf: &mut [u8],
        tweak: impl Fn(usize) -> u128 + Sync,
    ) -> std::io::Result<()> {
        check_whole_blocks(buf.len(), 0)?;
        self.cipher_chunks(buf, tweak, Direction::Decrypt)
    }

    /// XTS in place on `buf` (whole blocks, block `i` under `tweak(i)`), shared between
    /// threads when it is large.
    fn cipher_chunks(
        &self,
        buf: &mut [u8],
        tweak: impl Fn(usize) -> u128 + Sync,
        dir: Direction,
    ) -> std::io::Result<()> {
        self.shares.run(buf, |first, share| {
            self.cipher_run(share, None, |i| tweak(first + i), dir);
            Ok(())
        })
    }

    /// XTS on one thread over `run` (whole blocks, block `i` under `tweak(i)`), in place or
    /// from `from` (its blocks), [`CHUNK`] blocks per call into the backend.
    fn cipher_run(
        &self,
        run: &mut [u8],
        from: Option<&[&[u8]]>,
        tweak: impl Fn(usize) -> u128,
        dir: Direction,
    ) {
        let mut tweaks = [0u128; CHUNK];
        for (c, chunk) in run.chunks_mut(CHUNK * BLOCK_SIZE).enumerate() {
            let tweaks = &mut tweaks[..chunk.len() / BLOCK_SIZE];
            for (i, t) in tweaks.iter_mut().enumerate() {
                *t = tweak(c * CHUNK + i);
            }
            let from = from.map(|f| &f[c * CHUNK..]);
            self.cipher_chunk(chunk, from, tweaks, dir);
        }
    }

    /// XTS on one chunk (at most [`CHUNK`] blocks, block `i` under `tweaks[i]`), in place or
    /// from `from` (its blocks, when encrypting a copy): the tweaks encrypted in one call,
    /// the blocks ciphered in another. Not generic, so the cipher's pass is compiled once.
    fn cipher_chunk(
        &self,
        chunk: &mut [u8],
        from: Option<&[&[u8]]>,
        tweaks: &[u128],
        dir: Direction,
    ) {
        let mut blocks = [Array([0u8; 16]); CHUNK];
        let blocks = &mut blocks[..tweaks.len()];
        for (b, t) in blocks.iter_mut().zip(tweaks) {
            *b = Array(t.to_le_bytes());
        }
        self.tweak.encrypt_blocks(blocks);
        let mut starts = [0u128; CHUNK];
        let starts = &mut starts[..tweaks.len()];
        for (s, b) in starts.iter_mut().zip(blocks.iter()) {
            *s = u128::from_le_bytes(b.0);
        }
        match dir {
            Direction::Encrypt => self.data.encrypt_with_backend(xts::EncryptUnits {
                units: chunk,
                from,
                starts,
            }),
            Direction::Decrypt => self.data.decrypt_with_backend(xts::DecryptUnits {
                units: chunk,
                starts,
            }),
        }
    }

    /// XTS on the blocks of `buf`, stored at byte `offset`, under their location tweaks;
    /// superblocks are left as they are.
    fn each_chunk(&self, buf: &mut [u8], offset: u64, dir: Direction) -> std::io::Result<()> {
        check_whole_blocks(buf.len(), offset)?;
        // Superblocks stay plaintext.
        let plain = (PLAIN_BYTES.saturating_sub(offset) / BLOCK) as usize;
        let skip = plain.min(buf.len() / BLOCK_SIZE) * BLOCK_SIZE;
        let first = offset / BLOCK + (skip / BLOCK_SIZE) as u64;
        self.cipher_chunks(&mut buf[skip..], |i| pba_tweak(first + i as u64), dir)
    }
}

/// The XTS tweak of the block stored at physical block `pba`: metadata, packed data blocks,
/// and every block of a container without `VBA_TWEAK`.
pub(crate) fn pba_tweak(pba: u64) -> u128 {
    u128::from(pba)
}

/// The XTS tweak of a raw data block holding VBA `vba` (a container with `VBA_TWEAK`): the VBA
/// with bit 64 set, so it never equals a location tweak under the same key.
pub(crate) fn vba_tweak(vba: u64) -> u128 {
    (1 << 64) | u128::from(vba)
}

/// How far past the recovered `next_vba` an open of a container with VBA tweaks starts giving
/// out VBAs. A batch whose journal record a crash lost may have stored its data, sealed under
/// its VBAs, and recovery gives those VBAs out again: skipping this many keeps a VBA tweak
/// from ever sealing two contents. The lost batches wrote to blocks free at the last
/// checkpoint, at most every block of the container, each holding at most 64 VBAs (a packed
/// block's one-granule slots, see `compress::place`); the first record after the open takes a
/// checkpoint, which makes the new `next_vba` durable before any data is sealed under it.
pub(crate) fn lost_vbas(geo: &super::layout::Geometry) -> u64 {
    (geo.segments * geo.seg_blocks)
        .saturating_mul(u64::from(crate::store::compress::place::GRANULES))
}

/// `src` is whole blocks, `len` bytes in all.
fn check_source(src: &[&[u8]], len: usize) -> std::io::Result<()> {
    let total: usize = src.iter().map(|s| s.len()).sum();
    if total != len || src.iter().any(|s| !s.len().is_multiple_of(BLOCK_SIZE)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "seal: the source is not whole blocks as long as the destination",
        ));
    }
    Ok(())
}

/// The device a store reads and writes, the cipher of an encrypted container, and how its
/// data blocks are checked.
pub(crate) struct Unsealed {
    pub dev: Arc<dyn BlockDevice>,
    pub sealer: Option<Arc<Sealer>>,
    pub data: DataView,
}

/// `dev` itself for a plaintext container, or, for an encrypted one whose key passes the key
/// check, a [`SealedDevice`] over it. A key given for a plaintext container is refused:
/// encryption is never turned on in place.
pub(crate) fn unseal(dev: Arc<dyn BlockDevice>, key: Option<&Key>) -> Result<Unsealed> {
    let sb = super::log::recovery::pick_superblock(dev.as_ref())?.superblock;
    let fields = sb.seal;
    if fields.is_encrypted() {
        let sealer = Arc::new(fields.unlock(key)?);
        let over_ciphertext = sb.incompat & super::log::superblock::INCOMPAT_CIPHERTEXT_CRC != 0;
        let by_vba = sb.incompat & super::log::superblock::INCOMPAT_VBA_TWEAK != 0;
        return Ok(Unsealed {
            data: DataView::new(Arc::clone(&dev), Some(Arc::clone(&sealer)), over_ciphertext)
                .tweaked_by_vba(by_vba)
                .with_slots_of(sb.incompat),
            dev: Arc::new(SealedDevice::new(dev, Arc::clone(&sealer))),
            sealer: Some(sealer),
        });
    }
    if key.is_some() {
        return Err(StoreError::NotEncrypted);
    }
    Ok(Unsealed {
        data: DataView::new(Arc::clone(&dev), None, false).with_slots_of(sb.incompat),
        dev,
        sealer: None,
    })
}

/// An encrypted container is read and written in whole blocks only.
fn check_whole_blocks(len: usize, offset: u64) -> std::io::Result<()> {
    if offset.is_multiple_of(BLOCK) && len.is_multiple_of(BLOCK_SIZE) {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("encrypted container: access {offset}+{len} is not whole 4096-byte blocks"),
        ))
    }
}

#[cfg(test)]
mod tests;
