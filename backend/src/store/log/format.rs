//! Creating a container: geometry from the requested size, then an empty checkpoint.

use crate::device::BlockDevice;
use crate::store::State;
use crate::store::compress::Codec;
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, Geometry};
use crate::store::log::alloc::SegmentWriter;
use crate::store::log::persist;
use crate::store::log::superblock::{
    FORMAT_VERSION, INCOMPAT_CIPHERTEXT_CRC, INCOMPAT_COMPRESSED, INCOMPAT_ENCRYPTED,
    INCOMPAT_FINE_SLOTS, INCOMPAT_NEW, INCOMPAT_VBA_TWEAK, INCOMPAT_ZSTD_DICT, Superblock,
};
use crate::store::map::maps::Maps;
use crate::store::map::sut::Sut;
use crate::store::seal::{Key, SealFields, SealedDevice};
use std::hash::{BuildHasher, Hasher};

/// What `keel create` asks for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Guest-visible size in bytes (rounded up to 4 KiB).
    pub capacity: u64,
    /// Segment size in bytes: a power of two, at least 64 KiB.
    pub segment_bytes: u64,
    /// Journal size in bytes; by default 1/64 of the capacity, between 2 and 16 segments.
    pub journal_bytes: Option<u64>,
    /// Extra data space beyond the capacity, in percent, so the cleaner has room to work
    /// (`spare`; see [`Spare`](crate::store::Spare)).
    pub overprovision_percent: u64,
    /// Encrypt the container (AES-256-XTS) with this key; see [`seal`](crate::store::seal).
    pub encryption: Option<Key>,
    /// Compress guest blocks with this codec (see [`compress`](super::compress)).
    pub compression: Option<Codec>,
}

impl CreateOptions {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            segment_bytes: 4 << 20,
            journal_bytes: None,
            overprovision_percent: crate::store::log::spare::DEFAULT_SPARE_PERCENT,
            encryption: None,
            compression: None,
        }
    }

    /// The layout these options produce.
    pub fn geometry(&self) -> Result<Geometry> {
        let bad = |m: String| Err(StoreError::Invalid(m));
        if !self.segment_bytes.is_power_of_two() || self.segment_bytes < 64 * 1024 {
            return bad(format!(
                "segment size {} must be a power of two >= 64 KiB",
                self.segment_bytes
            ));
        }
        if self.capacity == 0 || self.capacity > 1 << 50 {
            return bad(format!(
                "capacity {} must be between 4 KiB and 1 PiB",
                self.capacity
            ));
        }
        let seg_blocks = self.segment_bytes / BLOCK;
        let capacity = self.capacity.div_ceil(BLOCK) * BLOCK;
        let journal_segments = match self.journal_bytes {
            Some(b) => b.div_ceil(self.segment_bytes).max(2),
            None => (capacity / 64 / self.segment_bytes).clamp(2, 16),
        };
        let cap_blocks = capacity / BLOCK;
        let data_blocks = cap_blocks + cap_blocks * self.overprovision_percent / 100;
        let mut geo = Geometry {
            seg_blocks,
            segments: 0,
            journal_segments,
            capacity,
        };
        let data_segments = data_blocks.div_ceil(seg_blocks) + geo.reserved_segments() + 4;
        geo.segments = 1 + journal_segments + data_segments;
        if Sut::encoded_blocks(&geo) + 1 > seg_blocks {
            return bad("segments are too small for this capacity; use larger segments".into());
        }
        Ok(geo)
    }
}

fn random_uuid() -> [u8; 16] {
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// 16 bytes from the kernel's random source.
fn random_salt() -> Result<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut got = 0;
    while got < out.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `out`, which lives
        // for the whole call.
        let n = unsafe { libc::getrandom(out[got..].as_mut_ptr().cast(), out.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
            continue;
        }
        got += n as usize;
    }
    Ok(out)
}

/// Writes an empty container onto `dev`: an empty checkpoint and both superblocks.
pub fn format(dev: &dyn BlockDevice, opts: &CreateOptions) -> Result<Geometry> {
    let geo = opts.geometry()?;
    if dev.len() < geo.container_bytes() {
        return Err(StoreError::Invalid(format!(
            "the device has {} bytes, the container needs {}",
            dev.len(),
            geo.container_bytes()
        )));
    }
    let mut st = State {
        maps: Maps::empty(geo.segments * geo.seg_blocks),
        sut: Sut::new(geo),
        ckpt_blocks: Vec::new(),
    };
    let mut seal = match &opts.encryption {
        Some(key) => SealFields::new(key, random_salt()?),
        None => SealFields::default(),
    };
    seal.compression = opts.compression.map_or(0, Codec::number);
    let sealed;
    let raw = dev;
    let dev: &dyn BlockDevice = if seal.is_encrypted() {
        sealed = SealedDevice::new(
            raw,
            std::sync::Arc::new(seal.unlock(opts.encryption.as_ref())?),
        );
        &sealed
    } else {
        raw
    };
    let mut meta = SegmentWriter::new(geo.seg_blocks);
    // A device that held another container may hold intact records anywhere in the journal:
    // recovery takes an intact record past the chain's end for damage, so none may remain.
    crate::store::log::tail::erase_all_records(dev, &geo)?;
    // A zstd container's dictionary header says it has none yet (whatever the device held).
    if opts.compression == Some(Codec::Zstd) {
        crate::store::compress::dict::write_empty(dev)?;
    }
    let generation = 1;
    let prepared = persist::prepare(&mut st, &mut meta, &geo, generation, 0, None)?;
    persist::write_runs(dev, &mut crate::store::io::DeviceIo(dev), &prepared.runs)?;
    let sb = Superblock {
        version: FORMAT_VERSION,
        // Every feature but the one an import sets for its duration, and encryption if asked.
        incompat: INCOMPAT_NEW
            | if seal.is_encrypted() {
                INCOMPAT_ENCRYPTED | INCOMPAT_CIPHERTEXT_CRC | INCOMPAT_VBA_TWEAK
            } else {
                0
            }
            | match opts.compression {
                Some(Codec::Zstd) => INCOMPAT_COMPRESSED | INCOMPAT_ZSTD_DICT | INCOMPAT_FINE_SLOTS,
                Some(Codec::Lz4) => INCOMPAT_COMPRESSED | INCOMPAT_FINE_SLOTS,
                None => 0,
            },
        compat: 0,
        generation,
        uuid: random_uuid(),
        geometry: geo,
        checkpoint_pba: prepared.root_pba,
        import_cursor: 0,
        import_source_bytes: 0,
        import_source_id: 0,
        seal,
        journal_head: 0,
    };
    // Both slots get it.
    persist::write_superblock(dev, &sb)?;
    Ok(geo)
}
