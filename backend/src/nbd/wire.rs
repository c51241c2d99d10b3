//! The NBD wire format: magics, option and command numbers, and the fixed-size headers of the
//! handshake and transmission phases, parsed from and encoded to bytes.
//!
//! Everything here is pure (no I/O), so the server, the client device and the fuzz targets share
//! one parser, and every length read off the wire is checked before it is trusted.

use thiserror::Error;

/// First 8 bytes a server sends: "NBDMAGIC".
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// Newstyle handshake marker, also the prefix of every client option: "IHAVEOPT".
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Server handshake flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags, the answer to the server's handshake flags.
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const CLIENT_NO_ZEROES: u32 = 1 << 1;

/// Option numbers (handshake phase).
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types; the error ones have the top bit set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) | 1;
    pub const ERR_POLICY: u32 = (1 << 31) | 2;
    pub const ERR_INVALID: u32 = (1 << 31) | 3;
    pub const ERR_UNKNOWN: u32 = (1 << 31) | 6;
    pub const ERR_TOO_BIG: u32 = (1 << 31) | 9;
}

/// Information types inside `rep::INFO`.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags, sent with the export's size.
pub mod tflag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command numbers (transmission phase).
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types and flags.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) | 1;
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;
}

/// Error values of replies (the protocol's own numbering, which matches Linux's errno).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;
}

/// The one metadata context Keel serves (and asks a server for): which ranges are allocated.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// `base:allocation` status bits of a block status descriptor.
pub mod allocation {
    /// Unallocated (the contents are only known with [`ZERO`] set too).
    pub const HOLE: u32 = 1 << 0;
    /// Reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// Bytes of a client option header (magic, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Bytes of a structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;

/// Why bytes off the wire are not a valid message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad magic {found:#x} (expected {expected:#x})")]
    BadMagic { expected: u64, found: u64 },
    #[error("message truncated: {needed} more bytes expected")]
    Truncated { needed: usize },
    #[error("{what} of {len} bytes is over the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} bytes left over after the option's fields")]
    TrailingBytes(usize),
}

/// Reads big-endian fields from a byte slice, failing (not panicking) when it runs out.
pub struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated {
                needed: n - self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A string prefixed by its u32 length, at most `max` bytes.
    pub fn string(&mut self, what: &'static str, max: usize) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::TooLong { what, len, max });
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::NotUtf8(what))
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    /// Fails if bytes are left.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }
}

/// A client's option header; `length` bytes of data follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

impl OptionHeader {
    pub fn parse(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<Self, WireError> {
        let mut f = Fields::new(bytes);
        let magic = f.u64()?;
        if magic != IHAVEOPT {
            return Err(WireError::BadMagic {
                expected: IHAVEOPT,
                found: magic,
            });
        }
        Ok(Self {
            option: f.u32()?,
            length: f.u32()?,
        })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0u8; OPTION_HEADER_LEN];
        out[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A server's reply to an option: header and data.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of `NBD_OPT_INFO` / `NBD_OPT_GO`: an export name and the information wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoRequest {
    pub name: String,
    pub info: Vec<u16>,
}

impl GoRequest {
    pub fn parse(data: &[u8]) -> Result<Self, WireError> {
        let mut f = Fields::new(data);
        let name = f.string("export name", MAX_NAME)?;
        let count = f.u16()? as usize;
        let mut info = Vec::with_capacity(count.min(f.remaining() / 2));
        for _ in 0..count {
            info.push(f.u16()?);
        }
        f.finish()?;
        Ok(Self { name, info })
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub name: String,
    pub queries: Vec<String>,
}

impl MetaContextRequest {
    pub fn parse(data: &[u8]) -> Result<Self, WireError> {
        let mut f = Fields::new(data);
        let name = f.string("export name", MAX_NAME)?;
        let count = f.u32()? as usize;
        if count > MAX_QUERIES {
            return Err(WireError::TooLong {
                what: "query list",
                len: count,
                max: MAX_QUERIES,
            });
        }
        let mut queries = Vec::with_capacity(count);
        for _ in 0..count {
            queries.push(f.string("context query", MAX_NAME)?);
        }
        f.finish()?;
        Ok(Self { name, queries })
    }
}

/// Longest export name or context query accepted (the protocol's own limit is 4096).
pub const MAX_NAME: usize = 4096;
/// Most metadata context queries accepted in one option.
pub const MAX_QUERIES: usize = 64;

/// A transmission request header; a WRITE's `length` bytes of data follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    pub fn parse(bytes: &[u8; REQUEST_LEN]) -> Result<Self, WireError> {
        let mut f = Fields::new(bytes);
        let magic = f.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(WireError::BadMagic {
                expected: REQUEST_MAGIC.into(),
                found: magic.into(),
            });
        }
        Ok(Self {
            flags: f.u16()?,
            command: f.u16()?,
            cookie: f.u64()?,
            offset: f.u64()?,
            length: f.u32()?,
        })
    }

    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A simple reply: the request's cookie and an error (0 = success).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// The header of one structured reply chunk; `length` bytes of payload follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub length: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut out = [0u8; CHUNK_HEADER_LEN];
        out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.kind.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// The start of a reply as a client reads it: simple or structured, told apart by the magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyHeader {
    Simple { cookie: u64, error: u32 },
    Chunk(ChunkHeader),
}

impl ReplyHeader {
    /// Parses a reply header from the start of `bytes`; returns it and the bytes it took.
    /// `max_payload` bounds a chunk's announced length (a hostile server cannot make the
    /// client allocate more).
    pub fn parse(bytes: &[u8], max_payload: u32) -> Result<(Self, usize), WireError> {
        let mut f = Fields::new(bytes);
        let magic = f.u32()?;
        match magic {
            SIMPLE_REPLY_MAGIC => {
                let error = f.u32()?;
                let cookie = f.u64()?;
                Ok((Self::Simple { cookie, error }, SIMPLE_REPLY_LEN))
            }
            STRUCTURED_REPLY_MAGIC => {
                let header = ChunkHeader {
                    flags: f.u16()?,
                    kind: f.u16()?,
                    cookie: f.u64()?,
                    length: f.u32()?,
                };
                if header.length > max_payload {
                    return Err(WireError::TooLong {
                        what: "reply chunk",
                        len: header.length as usize,
                        max: max_payload as usize,
                    });
                }
                Ok((Self::Chunk(header), CHUNK_HEADER_LEN))
            }
            other => Err(WireError::BadMagic {
                expected: SIMPLE_REPLY_MAGIC.into(),
                found: other.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
