//! What the device accepts, from its config space and the negotiated features, and the check
//! that keeps malformed requests from ever reaching the ring.

use keel_protocol::features::{self, has};
use keel_protocol::{BlkConfig, SECTOR_SIZE};

use super::MAX_RANGES;
use crate::error::{Error, Result};
use crate::request::{ByteRange, Request};

/// Limits of DISCARD or WRITE_ZEROES.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangeLimits {
    /// Sectors one range may cover (0: no limit stated).
    pub max_sectors: u32,
    /// Ranges one request may carry.
    pub max_ranges: usize,
}

/// The rules requests are checked against before they are queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Disk size in bytes.
    pub capacity: u64,
    pub read_only: bool,
    /// FLUSH is supported (the device has a volatile write cache to flush).
    pub flush: bool,
    /// Bytes one data buffer may hold, when the device states it.
    pub size_max: Option<u32>,
    pub discard: Option<RangeLimits>,
    pub write_zeroes: Option<RangeLimits>,
}

impl DeviceLimits {
    pub fn new(negotiated: u64, config: &BlkConfig) -> Self {
        let ranges = |on: bool, max_sectors: u32, max_seg: u32| {
            on.then(|| RangeLimits {
                max_sectors,
                max_ranges: (max_seg.max(1) as usize).min(MAX_RANGES),
            })
        };
        Self {
            capacity: config.capacity.saturating_mul(SECTOR_SIZE),
            read_only: has(negotiated, features::RO),
            flush: has(negotiated, features::FLUSH),
            size_max: (has(negotiated, features::SIZE_MAX) && config.size_max > 0)
                .then_some(config.size_max),
            discard: ranges(
                has(negotiated, features::DISCARD),
                config.max_discard_sectors,
                config.max_discard_seg,
            ),
            write_zeroes: ranges(
                has(negotiated, features::WRITE_ZEROES),
                config.max_write_zeroes_sectors,
                config.max_write_zeroes_seg,
            ),
        }
    }

    /// Rejects what the device would refuse or the spec forbids, with the reason.
    pub fn check(&self, request: &Request, max_segments: usize) -> Result<()> {
        match request {
            Request::Read { offset, buffers } | Request::Write { offset, buffers } => {
                if matches!(request, Request::Write { .. }) && self.read_only {
                    return Err(Error::Unsupported("writes (the device is read-only)"));
                }
                if buffers.is_empty() || buffers.len() > max_segments {
                    return Err(invalid(format!(
                        "{} buffers (1..={max_segments} allowed)",
                        buffers.len()
                    )));
                }
                let mut total = 0u64;
                for b in buffers {
                    let len = b.len() as u64;
                    if !len.is_multiple_of(SECTOR_SIZE) {
                        return Err(invalid(format!(
                            "buffer of {len} bytes is not whole sectors"
                        )));
                    }
                    if let Some(max) = self.size_max
                        && len > u64::from(max)
                    {
                        return Err(invalid(format!(
                            "buffer of {len} bytes exceeds size_max {max}"
                        )));
                    }
                    total += len;
                }
                self.check_extent(*offset, total)
            }
            Request::Flush => {
                if self.flush {
                    Ok(())
                } else {
                    Err(Error::Unsupported("FLUSH"))
                }
            }
            Request::Discard { ranges } => {
                let limits = self.discard.ok_or(Error::Unsupported("DISCARD"))?;
                self.check_ranges(ranges, limits)
            }
            Request::WriteZeroes { ranges, .. } => {
                if self.read_only {
                    return Err(Error::Unsupported("WRITE_ZEROES (the device is read-only)"));
                }
                let limits = self
                    .write_zeroes
                    .ok_or(Error::Unsupported("WRITE_ZEROES"))?;
                self.check_ranges(ranges, limits)
            }
            Request::GetId { buffer } => {
                if buffer.len() < keel_protocol::ID_BYTES {
                    return Err(invalid(format!(
                        "GET_ID needs {} bytes, buffer has {}",
                        keel_protocol::ID_BYTES,
                        buffer.len()
                    )));
                }
                Ok(())
            }
        }
    }

    fn check_ranges(&self, ranges: &[ByteRange], limits: RangeLimits) -> Result<()> {
        if ranges.is_empty() || ranges.len() > limits.max_ranges {
            return Err(invalid(format!(
                "{} ranges (1..={} allowed)",
                ranges.len(),
                limits.max_ranges
            )));
        }
        for r in ranges {
            let sectors = r.len / SECTOR_SIZE;
            if r.len == 0 || sectors > u64::from(u32::MAX) {
                return Err(invalid(format!("range of {} bytes", r.len)));
            }
            if limits.max_sectors > 0 && sectors > u64::from(limits.max_sectors) {
                return Err(invalid(format!(
                    "range of {sectors} sectors exceeds the device limit {}",
                    limits.max_sectors
                )));
            }
            if !r.len.is_multiple_of(SECTOR_SIZE) {
                return Err(invalid(format!(
                    "range of {} bytes is not whole sectors",
                    r.len
                )));
            }
            self.check_extent(r.offset, r.len)?;
        }
        Ok(())
    }

    fn check_extent(&self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(SECTOR_SIZE) {
            return Err(invalid(format!("offset {offset} is not sector-aligned")));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(invalid(format!(
                "{len} bytes at offset {offset} pass the end of the disk ({} bytes)",
                self.capacity
            ))),
        }
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidRequest(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufferPool;
    use crate::memory::{GUEST_BASE, SharedMemory, SharedRegion};
    use keel_protocol::features::bit;
    use vm_memory::GuestAddress;

    fn limits() -> DeviceLimits {
        let config = BlkConfig {
            capacity: 16,
            size_max: 4096,
            max_discard_sectors: 8,
            max_discard_seg: 2,
            ..Default::default()
        };
        DeviceLimits::new(
            bit(features::FLUSH) | bit(features::DISCARD) | bit(features::SIZE_MAX),
            &config,
        )
    }

    fn pool() -> std::sync::Arc<BufferPool> {
        let shm = SharedMemory::new(1 << 16).unwrap();
        BufferPool::new(
            SharedRegion::new(shm.memory()).unwrap(),
            GuestAddress(GUEST_BASE),
            1 << 16,
        )
    }

    #[test]
    fn reads_must_be_whole_sectors_inside_the_disk() {
        let l = limits();
        let p = pool();
        let read = |offset, len| Request::Read {
            offset,
            buffers: vec![p.alloc(len).unwrap()],
        };
        assert!(l.check(&read(0, 4096), 4).is_ok());
        assert!(l.check(&read(4096, 4096), 4).is_ok());
        assert!(l.check(&read(4608, 4096), 4).is_err(), "passes the end");
        assert!(l.check(&read(1, 512), 4).is_err(), "unaligned offset");
        assert!(l.check(&read(0, 100), 4).is_err(), "partial sector");
        assert!(l.check(&read(0, 8192), 4).is_err(), "beyond size_max");
        assert!(l.check(&read(u64::MAX - 511, 512), 4).is_err(), "overflow");
        let many = Request::Read {
            offset: 0,
            buffers: (0..5).map(|_| p.alloc(512).unwrap()).collect(),
        };
        assert!(l.check(&many, 4).is_err(), "too many segments");
    }

    #[test]
    fn ranges_follow_device_limits_and_features() {
        let l = limits();
        let r = |offset, len| ByteRange { offset, len };
        assert!(
            l.check(
                &Request::Discard {
                    ranges: vec![r(0, 4096)]
                },
                1
            )
            .is_ok()
        );
        assert!(
            l.check(
                &Request::Discard {
                    ranges: vec![r(0, 8192)]
                },
                1
            )
            .is_err()
        );
        let three = vec![r(0, 512), r(512, 512), r(1024, 512)];
        assert!(l.check(&Request::Discard { ranges: three }, 1).is_err());
        let wz = Request::WriteZeroes {
            ranges: vec![r(0, 512)],
            unmap: false,
        };
        assert!(matches!(l.check(&wz, 1), Err(Error::Unsupported(_))));
        assert!(l.check(&Request::Flush, 1).is_ok());
        let ro = DeviceLimits {
            read_only: true,
            flush: false,
            ..l
        };
        assert!(matches!(
            ro.check(&Request::Flush, 1),
            Err(Error::Unsupported(_))
        ));
        let w = Request::Write {
            offset: 0,
            buffers: vec![pool().alloc(512).unwrap()],
        };
        assert!(matches!(ro.check(&w, 1), Err(Error::Unsupported(_))));
    }
}
