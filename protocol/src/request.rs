//! The virtio-blk request: a 16-byte header, data buffers, a 1-byte status.

use thiserror::Error;
use virtio_bindings::bindings::virtio_blk as blk;

/// Size of [`RequestHeader`] on the wire.
pub const HEADER_SIZE: usize = 16;
/// Size of one [`DiscardSegment`] on the wire.
pub const DISCARD_SEGMENT_SIZE: usize = 16;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    /// A type this protocol version does not know; answered with UNSUPP.
    Unsupported(u32),
}

impl RequestType {
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            blk::VIRTIO_BLK_T_IN => Self::Read,
            blk::VIRTIO_BLK_T_OUT => Self::Write,
            blk::VIRTIO_BLK_T_FLUSH => Self::Flush,
            blk::VIRTIO_BLK_T_GET_ID => Self::GetId,
            blk::VIRTIO_BLK_T_DISCARD => Self::Discard,
            blk::VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }

    pub fn to_raw(self) -> u32 {
        match self {
            Self::Read => blk::VIRTIO_BLK_T_IN,
            Self::Write => blk::VIRTIO_BLK_T_OUT,
            Self::Flush => blk::VIRTIO_BLK_T_FLUSH,
            Self::GetId => blk::VIRTIO_BLK_T_GET_ID,
            Self::Discard => blk::VIRTIO_BLK_T_DISCARD,
            Self::WriteZeroes => blk::VIRTIO_BLK_T_WRITE_ZEROES,
            Self::Unsupported(raw) => raw,
        }
    }
}

/// The request header the driver puts in the first descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub request_type: RequestType,
    /// Offset in 512-byte sectors (reads and writes only).
    pub sector: u64,
}

impl RequestHeader {
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let raw_type = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let sector = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        Self {
            request_type: RequestType::from_raw(raw_type),
            sector,
        }
    }

    pub fn to_bytes(self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.request_type.to_raw().to_le_bytes());
        b[8..16].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// The status byte the device writes in the last descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    IoErr,
    Unsupp,
}

impl Status {
    pub fn to_raw(self) -> u8 {
        match self {
            Self::Ok => blk::VIRTIO_BLK_S_OK as u8,
            Self::IoErr => blk::VIRTIO_BLK_S_IOERR as u8,
            Self::Unsupp => blk::VIRTIO_BLK_S_UNSUPP as u8,
        }
    }

    /// Decodes a status byte; unknown values are errors from the driver's view.
    pub fn from_raw(raw: u8) -> Self {
        match raw as u32 {
            blk::VIRTIO_BLK_S_OK => Self::Ok,
            blk::VIRTIO_BLK_S_UNSUPP => Self::Unsupp,
            _ => Self::IoErr,
        }
    }
}

/// Flag of a write-zeroes segment: the device may unmap instead of writing zeroes.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = blk::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// One range of a DISCARD or WRITE_ZEROES request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardSegment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

/// A discard segment whose reserved flag bits are set.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("discard segment has reserved flag bits set: {0:#x}")]
pub struct ReservedFlags(pub u32);

impl DiscardSegment {
    pub fn from_bytes(b: &[u8; DISCARD_SEGMENT_SIZE]) -> Result<Self, ReservedFlags> {
        let sector = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let num_sectors = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        let flags = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if flags & !WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(ReservedFlags(flags));
        }
        Ok(Self {
            sector,
            num_sectors,
            flags,
        })
    }

    pub fn to_bytes(self) -> [u8; DISCARD_SEGMENT_SIZE] {
        let mut b = [0u8; DISCARD_SEGMENT_SIZE];
        b[0..8].copy_from_slice(&self.sector.to_le_bytes());
        b[8..12].copy_from_slice(&self.num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    pub fn unmap(&self) -> bool {
        self.flags & WRITE_ZEROES_FLAG_UNMAP != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = RequestHeader {
            request_type: RequestType::Write,
            sector: 0x0102_0304_0506_0708,
        };
        assert_eq!(RequestHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[0], 1);
    }

    #[test]
    fn unknown_type_is_kept() {
        assert_eq!(RequestType::from_raw(99), RequestType::Unsupported(99));
        assert_eq!(RequestType::Unsupported(99).to_raw(), 99);
    }

    #[test]
    fn discard_segment_rejects_reserved_flags() {
        let seg = DiscardSegment {
            sector: 8,
            num_sectors: 16,
            flags: 0x2,
        };
        assert_eq!(
            DiscardSegment::from_bytes(&seg.to_bytes()),
            Err(ReservedFlags(2))
        );
        let ok = DiscardSegment { flags: 1, ..seg };
        assert!(DiscardSegment::from_bytes(&ok.to_bytes()).unwrap().unmap());
    }

    #[test]
    fn status_codes() {
        assert_eq!(Status::Ok.to_raw(), 0);
        assert_eq!(Status::from_raw(2), Status::Unsupp);
        assert_eq!(Status::from_raw(7), Status::IoErr);
    }
}
