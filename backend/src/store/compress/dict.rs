//! A zstd container's dictionary: trained once from the container's own first blocks that
//! compressed, stored in segment 0 (blocks 2 and up, which nothing else uses), and used by
//! every zstd slot written after it. Small blocks compressed on their own find little to
//! refer back to; a dictionary of what the container's data looks like gives them that.
//!
//! The header (block 2) names the dictionary's length and crc; the dictionary follows from
//! block 3. It is written body first, flushed, then header, flushed: a crash in between leaves
//! the header of a new container (no dictionary), and no slot uses a dictionary before both
//! flushes returned. The header's fields lie in its first 512-byte sector, so a write torn at
//! sector granularity leaves the old header or the new one.

use crate::device::BlockDevice;
use crate::store::buf::AlignedBuf;
use crate::store::codec::{Get, Put, block_crc};
use crate::store::error::{Result, StoreError};
use crate::store::layout::{BLOCK, BLOCK_SIZE};
use zstd::zstd_safe::{CDict, DDict};

/// The dictionary's header block.
pub const HEADER_PBA: u64 = 2;
/// The dictionary's first block.
pub const BODY_PBA: u64 = 3;
/// The largest dictionary: header and body fit segment 0 of the smallest segments (16 blocks).
pub const MAX_DICT_BYTES: usize = 32 * 1024;
/// The bit of a slot's length that says it was compressed with the dictionary (lengths
/// never exceed 3070).
pub const DICT_SLOT: u16 = 1 << 15;
const MAGIC: [u8; 8] = *b"KEELDIC\x01";
/// Bytes of the header the crc covers (magic, length, body crc, uuid).
const HEADER_BYTES: usize = 32;

/// A container's dictionary, prepared for compressing and decompressing.
pub struct Dictionary {
    bytes: Vec<u8>,
    cdict: CDict<'static>,
    ddict: DDict<'static>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dictionary({} bytes)", self.bytes.len())
    }
}

impl Dictionary {
    /// Prepares `bytes` (a trained dictionary, or any bytes as raw content).
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > MAX_DICT_BYTES {
            return Err(StoreError::corrupt(
                "dictionary",
                format!("{} bytes, not 1 ..= {MAX_DICT_BYTES}", bytes.len()),
            ));
        }
        let refused = || StoreError::corrupt("dictionary", "zstd refuses it".to_string());
        Ok(Self {
            cdict: CDict::try_create(&bytes, super::codec::DICT_LEVEL).ok_or_else(refused)?,
            ddict: DDict::try_create(&bytes).ok_or_else(refused)?,
            bytes,
        })
    }

    /// The dictionary as stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(super) fn cdict(&self) -> &CDict<'static> {
        &self.cdict
    }

    pub(super) fn ddict(&self) -> &DDict<'static> {
        &self.ddict
    }
}

fn body_blocks(len: usize) -> usize {
    len.div_ceil(BLOCK_SIZE)
}

/// Writes the header of a container without a dictionary yet (zeroes), at create.
pub fn write_empty(dev: &dyn BlockDevice) -> Result<()> {
    let mut zero = AlignedBuf::scratch(1);
    zero.fill(0);
    dev.write_at(&zero, HEADER_PBA * BLOCK)?;
    Ok(())
}

/// Writes `bytes` as the dictionary of the container `uuid` names, durably: when this
/// returns, slots may use it.
pub fn write(dev: &dyn BlockDevice, uuid: &[u8; 16], bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() || bytes.len() > MAX_DICT_BYTES {
        return Err(StoreError::Invalid(format!(
            "a dictionary of {} bytes (1 ..= {MAX_DICT_BYTES})",
            bytes.len()
        )));
    }
    let mut body = AlignedBuf::scratch(body_blocks(bytes.len()));
    body.fill(0);
    body[..bytes.len()].copy_from_slice(bytes);
    dev.write_at(&body, BODY_PBA * BLOCK)?;
    dev.flush()?;
    let mut header = AlignedBuf::scratch(1);
    header.fill(0);
    let mut p = Put::new(&mut header[..HEADER_BYTES]);
    p.bytes(&MAGIC)
        .u32(bytes.len() as u32)
        .u32(block_crc(BODY_PBA, bytes))
        .bytes(uuid);
    let crc = block_crc(HEADER_PBA, &header[..HEADER_BYTES]);
    header[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&crc.to_le_bytes());
    dev.write_at(&header, HEADER_PBA * BLOCK)?;
    dev.flush()?;
    Ok(())
}

/// Reads the dictionary of the container `uuid` names: `None` while it has none. A header
/// or body that fails its checks is corrupt: slots may depend on it.
pub fn read(dev: &dyn BlockDevice, uuid: &[u8; 16]) -> Result<Option<Dictionary>> {
    let mut header = AlignedBuf::scratch(1);
    dev.read_at(&mut header, HEADER_PBA * BLOCK)?;
    if header.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let bad = |why: String| StoreError::corrupt("dictionary header", why);
    let stored_crc = u32::from_le_bytes(
        header[HEADER_BYTES..HEADER_BYTES + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if header[..8] != MAGIC {
        return Err(bad("no dictionary magic".into()));
    }
    if block_crc(HEADER_PBA, &header[..HEADER_BYTES]) != stored_crc {
        return Err(bad("crc mismatch".into()));
    }
    let mut g = Get::new(&header[8..HEADER_BYTES]);
    let short = || bad("short".into());
    let len = g.u32().ok_or_else(short)? as usize;
    let body_crc = g.u32().ok_or_else(short)?;
    if g.bytes(16).ok_or_else(short)? != uuid {
        return Err(bad("written for another container (uuid)".into()));
    }
    if len == 0 || len > MAX_DICT_BYTES {
        return Err(bad(format!("length {len}, not 1 ..= {MAX_DICT_BYTES}")));
    }
    let mut body = AlignedBuf::scratch(body_blocks(len));
    dev.read_at(&mut body, BODY_PBA * BLOCK)?;
    let bytes = &body[..len];
    if block_crc(BODY_PBA, bytes) != body_crc {
        return Err(StoreError::corrupt(
            "dictionary",
            "crc mismatch".to_string(),
        ));
    }
    Dictionary::new(bytes.to_vec()).map(Some)
}
