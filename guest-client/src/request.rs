//! What a caller asks of the disk, and what comes back.

use keel_protocol::{RequestType, Status};

use crate::buffer::Buffer;
use crate::error::{Error, Result};

/// A byte range for DISCARD and WRITE_ZEROES. Offsets and lengths are multiples of 512.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

/// One virtio-blk request. Offsets are in bytes and must be multiples of 512; buffers come from
/// the disk's shared memory ([`crate::Disk::alloc`] or [`crate::Queue::alloc`]).
#[derive(Debug)]
pub enum Request {
    /// Reads into the buffers, in order (a scatter list).
    Read {
        offset: u64,
        buffers: Vec<Buffer>,
    },
    /// Writes the buffers, in order (a gather list).
    Write {
        offset: u64,
        buffers: Vec<Buffer>,
    },
    Flush,
    Discard {
        ranges: Vec<ByteRange>,
    },
    WriteZeroes {
        ranges: Vec<ByteRange>,
        unmap: bool,
    },
    /// Reads the device serial into a buffer of at least 20 bytes.
    GetId {
        buffer: Buffer,
    },
}

impl Request {
    pub fn request_type(&self) -> RequestType {
        match self {
            Self::Read { .. } => RequestType::Read,
            Self::Write { .. } => RequestType::Write,
            Self::Flush => RequestType::Flush,
            Self::Discard { .. } => RequestType::Discard,
            Self::WriteZeroes { .. } => RequestType::WriteZeroes,
            Self::GetId { .. } => RequestType::GetId,
        }
    }

    /// The byte offset the request starts at, for error messages.
    pub fn offset(&self) -> u64 {
        match self {
            Self::Read { offset, .. } | Self::Write { offset, .. } => *offset,
            Self::Discard { ranges } | Self::WriteZeroes { ranges, .. } => {
                ranges.first().map_or(0, |r| r.offset)
            }
            Self::Flush | Self::GetId { .. } => 0,
        }
    }

    /// Hands back the buffers the request carries.
    pub fn into_buffers(self) -> Vec<Buffer> {
        match self {
            Self::Read { buffers, .. } | Self::Write { buffers, .. } => buffers,
            Self::GetId { buffer } => vec![buffer],
            Self::Flush | Self::Discard { .. } | Self::WriteZeroes { .. } => Vec::new(),
        }
    }
}

/// The name of a request type, for messages and reports.
pub fn op_name(t: RequestType) -> &'static str {
    match t {
        RequestType::Read => "read",
        RequestType::Write => "write",
        RequestType::Flush => "flush",
        RequestType::GetId => "get-id",
        RequestType::Discard => "discard",
        RequestType::WriteZeroes => "write-zeroes",
        RequestType::Unsupported(_) => "unsupported request",
    }
}

/// A finished request: the caller's token, the device's status and the buffers back.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub request_type: RequestType,
    pub offset: u64,
    pub status: Status,
    /// Bytes the device reports writing into the request's device-writable buffers.
    pub written: u32,
    pub buffers: Vec<Buffer>,
}

impl Completion {
    /// `Ok` when the device reported success, otherwise an [`Error::Io`] naming the offset.
    pub fn result(&self) -> Result<()> {
        match self.status {
            Status::Ok => Ok(()),
            status => Err(Error::Io {
                op: op_name(self.request_type),
                offset: self.offset,
                status,
            }),
        }
    }
}
