//! The two superblocks (A at byte 0, B at byte 4096): the only fixed-place metadata.
//!
//! Generation `g` is written to slot `g % 2` first and, once that is durable, to the other
//! slot too. A torn write of the first copy leaves the other slot, one generation older,
//! intact (the checkpoint has not taken effect: nothing newer depends on it); once both are
//! written, damage to either copy loses nothing. Open picks the valid copy with the highest
//! generation, whichever slot holds it.

use crate::store::codec::{Get, Put};
use crate::store::compress::Codec;
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK_SIZE, Geometry};
use crate::store::seal::SealFields;

pub const SUPERBLOCK_MAGIC: &[u8; 8] = b"KEELSB\0\x01";
/// On-disk format version written by this code.
pub const FORMAT_VERSION: u32 = 1;
/// Incompatible feature: journal records may hold snapshot entries (snapshot creation is one
/// record, not a checkpoint). A Keel without it would take such a record for a torn one and
/// drop the journal tail behind it, so it must refuse the container.
pub const INCOMPAT_JOURNAL_SNAPSHOTS: u64 = 1 << 0;
/// Incompatible feature: the checkpoint root may span several blocks (more snapshots than one
/// block holds). A Keel without it would find such a root's checksum wrong.
pub const INCOMPAT_LONG_ROOT: u64 = 1 << 1;
/// Incompatible feature: journal records may delete a snapshot (a delete is one record, not a
/// checkpoint; recovery replays it).
pub const INCOMPAT_JOURNAL_DELETES: u64 = 1 << 2;
/// Incompatible feature: a deleted snapshot gives its blocks back in the background. The
/// checkpoint root may list snapshots being deleted (flagged), and journal records may hold
/// Release entries (tag 6). A Keel without it would take such a snapshot for a live one whose
/// blocks are partly gone.
pub const INCOMPAT_BACKGROUND_DELETES: u64 = 1 << 3;
/// Incompatible feature: journal records may hold Flushed entries (tag 7), and the journal
/// past the replayed tail holds no intact record a recovery discarded (they are erased), so an
/// intact later record means damage, not a torn tail. A Keel without it would take a record
/// holding a Flushed entry for a torn one and drop it and everything after it.
pub const INCOMPAT_FLUSH_MARKS: u64 = 1 << 4;
/// Incompatible feature: a live import is copying a source into the container
/// (`import_cursor` holds its progress). Blocks at or past the cursor that the maps lack are
/// still on the source: a Keel without it would serve them as zeroes.
pub const INCOMPAT_IMPORTING: u64 = 1 << 5;
/// Incompatible feature: every block but the superblocks is encrypted with the cipher the
/// superblock's cipher fields name. A Keel without it would read ciphertext as metadata.
pub const INCOMPAT_ENCRYPTED: u64 = 1 << 6;
/// Incompatible feature: guest blocks may be compressed and packed several to a block (the
/// `compression` field names the codec; see `compress`).
pub const INCOMPAT_COMPRESSED: u64 = 1 << 7;
/// Incompatible feature: a live import is building a backing chain's views in a staging tree
/// apart from the running point (the checkpoint root's last record, flagged; journal records
/// may hold StageMap, StageUnmap and Adopt entries, tags 8 to 10). A Keel without it would take
/// the staging record for a snapshot and such records for torn ones.
pub const INCOMPAT_STAGING: u64 = 1 << 8;
/// Incompatible feature: the journal region is a ring. Replay starts at `journal_head`, not at
/// block 0, and wraps to block 0 when the next record did not fit before the region's end;
/// the chain of records runs on across checkpoints (a checkpoint no longer restarts it). A
/// Keel without it would replay from block 0 and miss or misread the records.
pub const INCOMPAT_CIRCULAR_JOURNAL: u64 = 1 << 9;
/// Incompatible feature (with `INCOMPAT_ENCRYPTED`): data checksums cover the ciphertext as
/// stored, so data blocks are checked without being decrypted, and the cleaner's moves carry
/// the moved block's new checksum (journal Move entries with a crc, tag 11). A Keel without it
/// would check those checksums against the plaintext and find every data block corrupt.
pub const INCOMPAT_CIPHERTEXT_CRC: u64 = 1 << 10;
/// Incompatible feature (with `INCOMPAT_FLUSH_MARKS`): replay does not check the data of the
/// records a Flushed mark in the replayed chain covers, so an emptied data segment may be
/// reused once a durable mark covers the record that emptied it, before any checkpoint. A Keel
/// without it would check those records' blocks, find the reused segment's new data there and
/// drop flushed records.
pub const INCOMPAT_MARKED_REPLAY: u64 = 1 << 11;
/// Incompatible feature (with `INCOMPAT_ENCRYPTED` and `INCOMPAT_CIPHERTEXT_CRC`): a data
/// block stored as it is (not packed) is encrypted under its VBA as the XTS tweak, not its
/// place, so the cleaner moves its ciphertext unchanged (a Move entry without a crc). Packed
/// blocks and metadata keep their place as the tweak. A Keel without it would decrypt those
/// data blocks under the wrong tweak and serve garbage.
pub const INCOMPAT_VBA_TWEAK: u64 = 1 << 12;
/// Incompatible feature (with `INCOMPAT_COMPRESSED` and zstd): segment 0 holds the
/// container's zstd dictionary from block 2 (a zero header until it is trained), and packed
/// slots whose length has its top bit set were compressed with it. A Keel without it would
/// take those lengths for slots running past their sectors.
pub const INCOMPAT_ZSTD_DICT: u64 = 1 << 13;
/// Incompatible feature (with `INCOMPAT_COMPRESSED`): packed slots start and end on 64-byte
/// granules, and their addresses use the granule encoding (bit 62 set). A Keel without it
/// would take those addresses for slots outside their block.
pub const INCOMPAT_FINE_SLOTS: u64 = 1 << 14;
/// Incompatible features this code understands; a container with any other bit set is refused.
pub const INCOMPAT_SUPPORTED: u64 = INCOMPAT_STAGING
    | INCOMPAT_MARKED_REPLAY
    | INCOMPAT_CIPHERTEXT_CRC
    | INCOMPAT_VBA_TWEAK
    | INCOMPAT_CIRCULAR_JOURNAL
    | INCOMPAT_JOURNAL_SNAPSHOTS
    | INCOMPAT_LONG_ROOT
    | INCOMPAT_JOURNAL_DELETES
    | INCOMPAT_BACKGROUND_DELETES
    | INCOMPAT_FLUSH_MARKS
    | INCOMPAT_IMPORTING
    | INCOMPAT_ENCRYPTED
    | INCOMPAT_COMPRESSED
    | INCOMPAT_ZSTD_DICT
    | INCOMPAT_FINE_SLOTS;
/// Features a new container gets whatever it is made with.
pub const INCOMPAT_NEW: u64 = INCOMPAT_SUPPORTED
    & !INCOMPAT_IMPORTING
    & !INCOMPAT_ENCRYPTED
    & !INCOMPAT_CIPHERTEXT_CRC
    & !INCOMPAT_VBA_TWEAK
    & !INCOMPAT_COMPRESSED
    & !INCOMPAT_ZSTD_DICT
    & !INCOMPAT_FINE_SLOTS
    & !INCOMPAT_STAGING;
/// Compatible feature: the container was filled by an import that finished; it no longer
/// refers to the source.
pub const COMPAT_IMPORTED: u64 = 1 << 0;
/// Compatible feature: with `INCOMPAT_IMPORTING`, `import_source_id` identifies the source the
/// import began with (a Keel without it resumes without checking it).
pub const COMPAT_IMPORT_SOURCE_ID: u64 = 1 << 1;

/// Byte offset of `journal_head`.
const JOURNAL_HEAD_OFFSET: usize = 240;

/// Byte offset of `import_source_id`, the last 8 bytes before the CRC.
const SOURCE_ID_OFFSET: usize = 248;

/// Byte offset of the CRC field; the CRC covers bytes `[0, CRC_OFFSET)`.
const CRC_OFFSET: usize = 256;

/// Decoded superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub incompat: u64,
    pub compat: u64,
    pub generation: u64,
    pub uuid: [u8; 16],
    pub geometry: Geometry,
    /// Block of the current checkpoint's root block.
    pub checkpoint_pba: u64,
    /// With [`INCOMPAT_IMPORTING`]: every block below this LBA is final (copied, written by
    /// the guest, or a hole of the source); 0 otherwise.
    pub import_cursor: u64,
    /// With [`INCOMPAT_IMPORTING`]: the source's size when the import began, so a source that
    /// changed is refused when the import resumes; 0 otherwise.
    pub import_source_bytes: u64,
    /// With [`COMPAT_IMPORT_SOURCE_ID`]: a checksum of the source's files' sizes and
    /// modification times when the import began; 0 otherwise.
    pub import_source_id: u64,
    /// The cipher and key check (with [`INCOMPAT_ENCRYPTED`]); zero otherwise.
    pub seal: SealFields,
    /// With [`INCOMPAT_CIRCULAR_JOURNAL`]: the journal block (offset inside the region) where
    /// replay starts, the place of the first record the checkpoint does not hold; 0 otherwise.
    pub journal_head: u64,
}

impl Superblock {
    /// Slot (0 = A, 1 = B) this generation is written to first.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }

    pub fn encode(&self) -> [u8; BLOCK_SIZE] {
        let mut b = [0u8; BLOCK_SIZE];
        let g = &self.geometry;
        let mut p = Put::new(&mut b);
        p.bytes(SUPERBLOCK_MAGIC)
            .u32(self.version)
            .u32(BLOCK_SIZE as u32)
            .u64(self.incompat)
            .u64(self.compat)
            .u64(self.generation)
            .bytes(&self.uuid)
            .u64(g.seg_blocks)
            .u64(g.segments)
            .u64(g.journal_segments)
            .u64(g.capacity)
            .u64(self.checkpoint_pba)
            .u64(self.import_cursor)
            .u64(self.import_source_bytes)
            .u32(self.seal.cipher)
            .u32(self.seal.compression)
            .bytes(&self.seal.salt)
            .bytes(&self.seal.key_check);
        debug_assert!(p.ok() && p.pos() <= JOURNAL_HEAD_OFFSET);
        Put::at(&mut b, JOURNAL_HEAD_OFFSET).u64(self.journal_head);
        Put::at(&mut b, SOURCE_ID_OFFSET).u64(self.import_source_id);
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        Put::at(&mut b, CRC_OFFSET).u32(crc);
        b
    }

    /// Decodes and validates one superblock slot; `dev_len` is the container's byte size.
    pub fn decode(b: &[u8], dev_len: u64) -> Result<Self> {
        let bad = |d: &str| StoreError::corrupt("superblock", d.to_string());
        if b.len() < BLOCK_SIZE {
            return Err(bad("short block"));
        }
        let mut g = Get::new(b);
        if g.bytes(8) != Some(SUPERBLOCK_MAGIC.as_slice()) {
            return Err(bad("bad magic (not a Keel container?)"));
        }
        let stored = Get::at(b, CRC_OFFSET).u32().ok_or_else(|| bad("short"))?;
        if crc32c::crc32c(&b[..CRC_OFFSET]) != stored {
            return Err(bad("checksum mismatch"));
        }
        let short = || bad("truncated fields");
        let version = g.u32().ok_or_else(short)?;
        let block_size = g.u32().ok_or_else(short)?;
        let incompat = g.u64().ok_or_else(short)?;
        let compat = g.u64().ok_or_else(short)?;
        let generation = g.u64().ok_or_else(short)?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(g.bytes(16).ok_or_else(short)?);
        let geometry = Geometry {
            seg_blocks: g.u64().ok_or_else(short)?,
            segments: g.u64().ok_or_else(short)?,
            journal_segments: g.u64().ok_or_else(short)?,
            capacity: g.u64().ok_or_else(short)?,
        };
        let checkpoint_pba = g.u64().ok_or_else(short)?;
        // Reserved (zero) in containers that never imported.
        let import_cursor = g.u64().ok_or_else(short)?;
        let import_source_bytes = g.u64().ok_or_else(short)?;
        // Reserved (zero) in containers that are not encrypted.
        let mut seal = SealFields {
            cipher: g.u32().ok_or_else(short)?,
            compression: g.u32().ok_or_else(short)?,
            ..SealFields::default()
        };
        seal.salt.copy_from_slice(g.bytes(16).ok_or_else(short)?);
        seal.key_check
            .copy_from_slice(g.bytes(32).ok_or_else(short)?);
        let import_source_id = Get::at(b, SOURCE_ID_OFFSET).u64().ok_or_else(short)?;
        // Reserved (zero) in containers from before the ring journal.
        let journal_head = Get::at(b, JOURNAL_HEAD_OFFSET).u64().ok_or_else(short)?;
        if version > FORMAT_VERSION {
            return Err(StoreError::Unsupported(format!(
                "format version {version} is newer than this Keel ({FORMAT_VERSION})"
            )));
        }
        if incompat & !INCOMPAT_SUPPORTED != 0 {
            return Err(StoreError::Unsupported(format!(
                "incompatible features {:#x} are not supported",
                incompat & !INCOMPAT_SUPPORTED
            )));
        }
        if incompat & INCOMPAT_MARKED_REPLAY != 0 && incompat & INCOMPAT_FLUSH_MARKS == 0 {
            return Err(bad("MARKED_REPLAY is set but FLUSH_MARKS is not"));
        }
        if incompat & INCOMPAT_CIPHERTEXT_CRC != 0 && incompat & INCOMPAT_ENCRYPTED == 0 {
            return Err(bad("CIPHERTEXT_CRC is set but ENCRYPTED is not"));
        }
        if incompat & INCOMPAT_VBA_TWEAK != 0 && incompat & INCOMPAT_CIPHERTEXT_CRC == 0 {
            return Err(bad("VBA_TWEAK is set but CIPHERTEXT_CRC is not"));
        }
        seal.validate(
            incompat & INCOMPAT_ENCRYPTED != 0,
            incompat & INCOMPAT_COMPRESSED != 0,
        )?;
        if incompat & INCOMPAT_ZSTD_DICT != 0 && seal.compression != Codec::Zstd.number() {
            return Err(bad("ZSTD_DICT is set but the codec is not zstd"));
        }
        if incompat & INCOMPAT_FINE_SLOTS != 0 && incompat & INCOMPAT_COMPRESSED == 0 {
            return Err(bad("FINE_SLOTS is set but COMPRESSED is not"));
        }
        if block_size as usize != BLOCK_SIZE {
            return Err(bad("block size is not 4096"));
        }
        let sane = geometry.seg_blocks >= 16
            && geometry.seg_blocks.is_power_of_two()
            && geometry.journal_segments >= 1
            && geometry.segments > geometry.first_data_segment()
            && geometry
                .capacity
                .is_multiple_of(crate::store::layout::BLOCK)
            && geometry
                .segments
                .checked_mul(geometry.seg_blocks)
                .and_then(|b| b.checked_mul(crate::store::layout::BLOCK))
                .is_some_and(|bytes| bytes <= dev_len)
            && geometry.is_data_block(checkpoint_pba)
            && journal_head < geometry.journal_blocks();
        if !sane {
            return Err(bad("geometry does not fit the device"));
        }
        Ok(Self {
            version,
            incompat,
            compat,
            generation,
            uuid,
            geometry,
            checkpoint_pba,
            import_cursor,
            import_source_bytes,
            import_source_id,
            seal,
            journal_head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            version: FORMAT_VERSION,
            incompat: 0,
            compat: 0,
            generation: 7,
            uuid: [3; 16],
            geometry: Geometry {
                seg_blocks: 256,
                segments: 40,
                journal_segments: 2,
                capacity: 16 << 20,
            },
            checkpoint_pba: 3 * 256 + 5,
            import_cursor: 0,
            import_source_bytes: 0,
            import_source_id: 0,
            seal: SealFields::default(),
            journal_head: 0,
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let b = s.encode();
        assert_eq!(Superblock::decode(&b, 40 * 256 * 4096).unwrap(), s);
        assert_eq!(s.slot(), 1);
        let s = Superblock {
            compat: COMPAT_IMPORT_SOURCE_ID,
            incompat: INCOMPAT_IMPORTING,
            import_source_id: 0x1234_5678_9abc,
            ..sample()
        };
        let b = s.encode();
        assert_eq!(
            b[SOURCE_ID_OFFSET..SOURCE_ID_OFFSET + 8],
            0x1234_5678_9abc_u64.to_le_bytes()
        );
        assert_eq!(Superblock::decode(&b, 40 * 256 * 4096).unwrap(), s);
        let s = Superblock {
            incompat: INCOMPAT_CIRCULAR_JOURNAL,
            journal_head: 2 * 256 - 1,
            ..sample()
        };
        assert_eq!(Superblock::decode(&s.encode(), 40 * 256 * 4096).unwrap(), s);
        let past = Superblock {
            journal_head: 2 * 256,
            ..s
        };
        assert!(
            Superblock::decode(&past.encode(), 40 * 256 * 4096).is_err(),
            "a head past the journal region"
        );
    }

    #[test]
    fn every_flipped_bit_in_the_covered_area_is_detected() {
        let b = sample().encode();
        for byte in (0..CRC_OFFSET + 4).step_by(3) {
            let mut c = b;
            c[byte] ^= 0x10;
            assert!(
                Superblock::decode(&c, 40 * 256 * 4096).is_err(),
                "byte {byte}"
            );
        }
    }

    #[test]
    fn refuses_unknown_incompat_and_small_device() {
        let mut s = sample();
        s.incompat = 1 << 63;
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(r, Err(StoreError::Unsupported(_))));
        let s = sample();
        assert!(Superblock::decode(&s.encode(), 1 << 20).is_err());
    }

    /// Checksums over the ciphertext only mean something on an encrypted container.
    #[test]
    fn ciphertext_crc_without_encryption_is_corrupt() {
        let mut s = sample();
        s.incompat |= INCOMPAT_CIPHERTEXT_CRC;
        assert_eq!(s.incompat & INCOMPAT_ENCRYPTED, 0);
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(&r, Err(StoreError::Corrupt { .. })), "{r:?}");
    }

    /// VBA tweaks need the checksums over the ciphertext (the cleaner copies it without the
    /// key) and so encryption: either missing is corruption.
    #[test]
    fn vba_tweak_without_ciphertext_crc_is_corrupt() {
        let mut s = sample();
        s.incompat |= INCOMPAT_VBA_TWEAK;
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(&r, Err(StoreError::Corrupt { .. })), "{r:?}");
        s.incompat |= INCOMPAT_CIPHERTEXT_CRC;
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(&r, Err(StoreError::Corrupt { .. })), "{r:?}");
    }

    /// Fine slots are packed slots: the bit without compression is corruption.
    #[test]
    fn fine_slots_need_compression() {
        let mut s = sample();
        s.incompat |= INCOMPAT_FINE_SLOTS;
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(&r, Err(StoreError::Corrupt { .. })), "{r:?}");
        s.incompat |= INCOMPAT_COMPRESSED;
        s.seal.compression = Codec::Lz4.number();
        Superblock::decode(&s.encode(), 40 * 256 * 4096).unwrap();
    }

    /// A dictionary is a zstd one: the bit on another container is corruption.
    #[test]
    fn zstd_dict_needs_zstd() {
        let mut s = sample();
        s.incompat |= INCOMPAT_ZSTD_DICT;
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(&r, Err(StoreError::Corrupt { .. })), "{r:?}");
        s.incompat |= INCOMPAT_COMPRESSED;
        s.seal.compression = Codec::Lz4.number();
        let r = Superblock::decode(&s.encode(), 40 * 256 * 4096);
        assert!(matches!(&r, Err(StoreError::Corrupt { .. })), "{r:?}");
        s.seal.compression = Codec::Zstd.number();
        Superblock::decode(&s.encode(), 40 * 256 * 4096).unwrap();
    }
}
