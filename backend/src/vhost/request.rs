//! Parsing a virtio-blk request: one total function from a descriptor chain to a typed request or
//! a precise reason for refusing it.
//!
//! The chain is read as the spec asks (no assumption about framing): the device-readable bytes
//! are the 16-byte header followed by any data the device reads; the device-writable bytes are
//! any data the device writes followed by the 1-byte status. Every guest address becomes a
//! checked [`GuestBuffers`]; every length and offset is checked against the disk's limits.
//! Nothing here can panic or reach outside guest memory, whatever the guest writes.

use std::sync::Arc;

use keel_protocol::request::{DISCARD_SEGMENT_SIZE, HEADER_SIZE, ReservedFlags};
use keel_protocol::{
    DiscardSegment, RequestHeader, RequestType, SECTOR_SHIFT, SECTOR_SIZE, Status,
};
use smallvec::SmallVec;
use thiserror::Error;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::engine::{BufferError, ByteRange, GuestBuffers, GuestMemory, IoOp, ZeroRange};

/// What the device accepts, from its config space and engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Capacity in bytes.
    pub capacity: u64,
    /// Most data descriptors one request may use.
    pub seg_max: u32,
    pub max_discard_seg: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub read_only: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

/// Why a request is refused. Each variant is one rule of the virtio-blk spec or of guest memory.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("chain has {readable} device-readable bytes, fewer than the {HEADER_SIZE}-byte header")]
    ChainTooShort { readable: u64 },
    #[error("chain has no device-writable byte for the status")]
    StatusMissing,
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("{request} request carries {bytes} bytes in the wrong direction")]
    WrongDirection { request: &'static str, bytes: u64 },
    #[error("data length {len} is not a multiple of {SECTOR_SIZE}")]
    NotSectorMultiple { len: u64 },
    #[error("sector {sector} plus {len} bytes overflows")]
    OffsetOverflow { sector: u64, len: u64 },
    #[error("bytes {offset}..{end} lie beyond the capacity of {capacity}")]
    BeyondCapacity {
        offset: u64,
        end: u64,
        capacity: u64,
    },
    #[error(transparent)]
    OutsideGuestMemory(#[from] BufferError),
    #[error("{count} descriptors exceed the limit of {max}")]
    TooManySegments { count: usize, max: u32 },
    #[error("{what}: {bytes} bytes is not 1..={max} segments of {DISCARD_SEGMENT_SIZE} bytes")]
    BadSegmentCount {
        what: &'static str,
        bytes: u64,
        max: u32,
    },
    #[error("{what} segment of {sectors} sectors exceeds the limit of {max}")]
    SegmentTooLarge {
        what: &'static str,
        sectors: u32,
        max: u32,
    },
    #[error(transparent)]
    ReservedFlags(#[from] ReservedFlags),
    #[error("discard segment asks to unmap, which only write-zeroes may")]
    UnmapOnDiscard,
    #[error("get-id request has no buffer for the id")]
    NoIdBuffer,
    #[error("{request} on a read-only disk")]
    ReadOnly { request: &'static str },
    #[error("request type {0} is not supported")]
    Unsupported(u32),
}

impl RequestError {
    /// The status byte the guest gets.
    pub fn status(&self) -> Status {
        match self {
            Self::Unsupported(_) | Self::ReservedFlags(_) | Self::UnmapOnDiscard => Status::Unsupp,
            _ => Status::IoErr,
        }
    }
}

/// What a well-formed request asks for.
#[derive(Debug)]
pub enum RequestKind {
    /// Goes to the engine.
    Io { op: IoOp, buffers: GuestBuffers },
    /// Answered by the vhost layer: the serial into `buffers`.
    GetId { buffers: GuestBuffers },
}

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    pub head: u16,
    /// Where the status byte goes.
    pub status: GuestAddress,
    pub kind: RequestKind,
    /// Bytes the device writes on success (read data or id, plus the status byte).
    pub used_len: u32,
    /// The device-writable data ranges (read data, the id), which live migration's dirty log
    /// must mark once written.
    pub writes: Ranges,
}

/// A refused request, with the status location if the chain had one.
#[derive(Debug)]
pub struct Rejected {
    pub head: u16,
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// Guest ranges as (address, length) pairs, in chain order (inline for typical chains).
pub type Ranges = SmallVec<[(GuestAddress, u32); 4]>;

/// Parses one descriptor chain: the descriptors of the chain whose head is `head`, as a popped
/// chain or [`HeadChain`](super::inflight::HeadChain) yields them. `write_through` marks writes
/// durable (the guest cleared WCE).
pub fn parse(
    head: u16,
    chain: impl IntoIterator<Item = Descriptor>,
    memory: &Arc<GuestMemory>,
    limits: &Limits,
    write_through: bool,
) -> Result<Request, Rejected> {
    let mut readable = Ranges::new();
    let mut writable = Ranges::new();
    let mut count = 0usize;
    let mut order_error = None;
    for desc in chain {
        count += 1;
        if desc.is_write_only() {
            writable.push((desc.addr(), desc.len()));
        } else if !writable.is_empty() {
            order_error = Some(RequestError::ReadableAfterWritable);
        } else {
            readable.push((desc.addr(), desc.len()));
        }
    }
    let status = take_back_byte(&mut writable);
    let status = match status {
        Some(addr) if memory.check_range(addr, 1) => addr,
        Some(addr) => {
            return Err(Rejected {
                head,
                status: None,
                error: BufferError::OutsideGuestMemory {
                    addr: addr.raw_value(),
                    len: 1,
                }
                .into(),
            });
        }
        None => {
            return Err(Rejected {
                head,
                status: None,
                error: RequestError::StatusMissing,
            });
        }
    };
    let reject = |error| Rejected {
        head,
        status: Some(status),
        error,
    };
    if let Some(e) = order_error {
        return Err(reject(e));
    }
    if count > limits.seg_max as usize + 2 {
        return Err(reject(RequestError::TooManySegments {
            count,
            max: limits.seg_max,
        }));
    }
    let writes = writable.clone();
    parse_body(memory, limits, write_through, readable, writable)
        .map(|(kind, used_len)| Request {
            head,
            status,
            kind,
            used_len,
            writes,
        })
        .map_err(reject)
}

fn parse_body(
    memory: &Arc<GuestMemory>,
    limits: &Limits,
    write_through: bool,
    mut readable: Ranges,
    writable: Ranges,
) -> Result<(RequestKind, u32), RequestError> {
    let readable_len = total(&readable);
    let header_ranges = take_front(&mut readable, HEADER_SIZE as u64);
    if readable_len < HEADER_SIZE as u64 {
        return Err(RequestError::ChainTooShort {
            readable: readable_len,
        });
    }
    let mut raw = [0u8; HEADER_SIZE];
    let mut pos = 0;
    for (addr, len) in header_ranges {
        let dst = &mut raw[pos..pos + len as usize];
        memory
            .read_slice(dst, addr)
            .map_err(|_| BufferError::OutsideGuestMemory {
                addr: addr.raw_value(),
                len,
            })?;
        pos += len as usize;
    }
    let header = RequestHeader::from_bytes(&raw);
    let in_len = total(&readable);
    let out_len = total(&writable);
    match header.request_type {
        RequestType::Read => {
            expect_empty("read", in_len)?;
            let op = IoOp::Read {
                offset: check_rw(limits, header.sector, out_len)?,
            };
            let buffers = GuestBuffers::from_guest(memory, writable)?;
            Ok((RequestKind::Io { op, buffers }, used_len(out_len)))
        }
        RequestType::Write => {
            expect_empty("write", out_len)?;
            if limits.read_only {
                return Err(RequestError::ReadOnly { request: "write" });
            }
            let op = IoOp::Write {
                offset: check_rw(limits, header.sector, in_len)?,
                durable: write_through,
            };
            let buffers = GuestBuffers::from_guest(memory, readable)?;
            Ok((RequestKind::Io { op, buffers }, 1))
        }
        RequestType::Flush => {
            expect_empty("flush", in_len + out_len)?;
            let buffers = GuestBuffers::empty();
            Ok((
                RequestKind::Io {
                    op: IoOp::Flush,
                    buffers,
                },
                1,
            ))
        }
        RequestType::GetId => {
            expect_empty("get-id", in_len)?;
            if out_len == 0 {
                return Err(RequestError::NoIdBuffer);
            }
            let buffers = GuestBuffers::from_guest(memory, writable)?;
            let written = out_len.min(keel_protocol::ID_BYTES as u64);
            Ok((RequestKind::GetId { buffers }, used_len(written)))
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            let zeroes = header.request_type == RequestType::WriteZeroes;
            let (what, supported, max_seg, max_sectors) = if zeroes {
                let l = limits;
                (
                    "write-zeroes",
                    l.write_zeroes,
                    l.max_write_zeroes_seg,
                    l.max_write_zeroes_sectors,
                )
            } else {
                (
                    "discard",
                    limits.discard,
                    limits.max_discard_seg,
                    limits.max_discard_sectors,
                )
            };
            if !supported {
                return Err(RequestError::Unsupported(header.request_type.to_raw()));
            }
            if limits.read_only {
                return Err(RequestError::ReadOnly { request: what });
            }
            expect_empty(what, out_len)?;
            let segments = read_segments(memory, readable, in_len, what, max_seg)?;
            let mut ranges = Vec::with_capacity(segments.len());
            for seg in segments {
                if seg.num_sectors > max_sectors {
                    return Err(RequestError::SegmentTooLarge {
                        what,
                        sectors: seg.num_sectors,
                        max: max_sectors,
                    });
                }
                if !zeroes && seg.unmap() {
                    return Err(RequestError::UnmapOnDiscard);
                }
                let len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
                let offset = check_rw(limits, seg.sector, len)?;
                ranges.push(ZeroRange {
                    range: ByteRange { offset, len },
                    unmap: seg.unmap(),
                });
            }
            let op = if zeroes {
                IoOp::WriteZeroes { ranges }
            } else {
                IoOp::Discard {
                    ranges: ranges.into_iter().map(|z| z.range).collect(),
                }
            };
            let buffers = GuestBuffers::empty();
            Ok((RequestKind::Io { op, buffers }, 1))
        }
        RequestType::Unsupported(raw) => Err(RequestError::Unsupported(raw)),
    }
}

fn expect_empty(request: &'static str, bytes: u64) -> Result<(), RequestError> {
    if bytes == 0 {
        Ok(())
    } else {
        Err(RequestError::WrongDirection { request, bytes })
    }
}

/// Checks a transfer of `len` bytes at `sector` and returns its byte offset.
fn check_rw(limits: &Limits, sector: u64, len: u64) -> Result<u64, RequestError> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RequestError::NotSectorMultiple { len });
    }
    let overflow = RequestError::OffsetOverflow { sector, len };
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(overflow)?;
    let end = offset
        .checked_add(len)
        .ok_or(RequestError::OffsetOverflow { sector, len })?;
    if end > limits.capacity {
        return Err(RequestError::BeyondCapacity {
            offset,
            end,
            capacity: limits.capacity,
        });
    }
    Ok(offset)
}

fn read_segments(
    memory: &Arc<GuestMemory>,
    readable: Ranges,
    len: u64,
    what: &'static str,
    max: u32,
) -> Result<Vec<DiscardSegment>, RequestError> {
    let n = len / DISCARD_SEGMENT_SIZE as u64;
    if len == 0 || !len.is_multiple_of(DISCARD_SEGMENT_SIZE as u64) || n > u64::from(max) {
        return Err(RequestError::BadSegmentCount {
            what,
            bytes: len,
            max,
        });
    }
    let mut bytes = vec![0u8; len as usize];
    GuestBuffers::from_guest(memory, readable)?.read_into(&mut bytes);
    bytes
        .chunks_exact(DISCARD_SEGMENT_SIZE)
        .map(|c| {
            let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
            raw.copy_from_slice(c);
            DiscardSegment::from_bytes(&raw).map_err(RequestError::from)
        })
        .collect()
}

/// The used length of a request that wrote `data` bytes before its status byte.
fn used_len(data: u64) -> u32 {
    u32::try_from(data.saturating_add(1)).unwrap_or(u32::MAX)
}

fn total(ranges: &Ranges) -> u64 {
    ranges.iter().map(|&(_, len)| u64::from(len)).sum()
}

/// Removes the first `n` bytes from `ranges` and returns them as ranges.
fn take_front(ranges: &mut Ranges, n: u64) -> Ranges {
    let mut out = Ranges::new();
    let mut need = n;
    let mut consumed = 0;
    for r in ranges.iter_mut() {
        if need == 0 {
            break;
        }
        let take = u64::from(r.1).min(need) as u32;
        out.push((r.0, take));
        need -= u64::from(take);
        if take == r.1 {
            consumed += 1;
        } else {
            // Saturating: an address that would wrap is outside guest memory and refused later.
            *r = (
                GuestAddress(r.0.0.saturating_add(u64::from(take))),
                r.1 - take,
            );
        }
    }
    ranges.drain(..consumed);
    ranges.retain(|r| r.1 > 0);
    out
}

/// Removes the last byte of `ranges` and returns its address.
fn take_back_byte(ranges: &mut Ranges) -> Option<GuestAddress> {
    while let Some(last) = ranges.last_mut() {
        if last.1 == 0 {
            ranges.pop();
            continue;
        }
        last.1 -= 1;
        let addr = last.0.checked_add(u64::from(last.1));
        if last.1 == 0 {
            ranges.pop();
        }
        return addr;
    }
    None
}

#[cfg(test)]
mod tests;
