//! Wire types shared by Keel's server (`keeld`) and its clients (`keel-client`).
//!
//! Everything here is plain data with explicit little-endian encodings, so the
//! server and the client agree byte for byte and neither needs `unsafe` to read it.

pub mod blk_config;
pub mod control;
pub mod features;
pub mod request;
pub mod size;

pub use blk_config::BlkConfig;
pub use request::{DiscardSegment, RequestHeader, RequestType, Status};
pub use size::{format_size, parse_size};

/// The virtio-blk sector: request offsets are always in 512-byte units.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Bytes a GET_ID reply carries (the serial, NUL-padded).
pub const ID_BYTES: usize = 20;
