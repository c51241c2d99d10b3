//! The memory one queue needs: the ring itself and one request slot per ring entry.
//!
//! A slot holds what the driver, not the caller, puts in a request: the 16-byte header, the
//! status byte the device writes, DISCARD/WRITE_ZEROES ranges, and the indirect descriptor
//! table. Slots are indexed independently of descriptors, so a request can be laid out before
//! the ring picks its head.

use vm_memory::GuestAddress;

use crate::error::Result;
use crate::memory::Carver;
use crate::ring::{DESC_SIZE, RingLayout};

/// Ranges a single DISCARD or WRITE_ZEROES request may carry.
pub const MAX_RANGES: usize = 16;

const HEADER_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = 16;
const RANGES_OFFSET: u64 = 32;
const TABLE_OFFSET: u64 = RANGES_OFFSET + MAX_RANGES as u64 * 16;

/// The addresses of one queue's ring and slots.
#[derive(Clone, Copy, Debug)]
pub struct QueueArea {
    pub ring: RingLayout,
    slots: GuestAddress,
    stride: u64,
}

impl QueueArea {
    /// Descriptors in the longest chain: header, `max_segments` data buffers, status.
    pub fn max_chain(max_segments: usize) -> usize {
        max_segments + 2
    }

    fn stride(max_segments: usize) -> u64 {
        let table = Self::max_chain(max_segments) as u64 * DESC_SIZE;
        (TABLE_OFFSET + table).div_ceil(64) * 64
    }

    /// Bytes `carve` takes for a queue of `size` entries.
    pub fn bytes(size: u16, max_segments: usize) -> u64 {
        Carver::pages(RingLayout::desc_table_bytes(size))
            + Carver::pages(RingLayout::avail_ring_bytes(size))
            + Carver::pages(RingLayout::used_ring_bytes(size))
            + Carver::pages(u64::from(size) * Self::stride(max_segments))
    }

    pub fn carve(carver: &mut Carver, size: u16, max_segments: usize) -> Result<Self> {
        let desc = carver.take(RingLayout::desc_table_bytes(size))?;
        let avail = carver.take(RingLayout::avail_ring_bytes(size))?;
        let used = carver.take(RingLayout::used_ring_bytes(size))?;
        let stride = Self::stride(max_segments);
        let slots = carver.take(u64::from(size) * stride)?;
        Ok(Self {
            ring: RingLayout::new(size, desc, avail, used),
            slots,
            stride,
        })
    }

    fn slot(&self, slot: u16) -> u64 {
        self.slots.0 + u64::from(slot) * self.stride
    }

    pub fn header(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.slot(slot) + HEADER_OFFSET)
    }

    pub fn status(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.slot(slot) + STATUS_OFFSET)
    }

    pub fn ranges(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.slot(slot) + RANGES_OFFSET)
    }

    pub fn table(&self, slot: u16) -> GuestAddress {
        GuestAddress(self.slot(slot) + TABLE_OFFSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::GUEST_BASE;

    #[test]
    fn slots_do_not_overlap_and_fit_the_carved_area() {
        let size = 8;
        let segs = 4;
        let bytes = QueueArea::bytes(size, segs);
        let mut c = Carver::new(bytes);
        let area = QueueArea::carve(&mut c, size, segs).unwrap();
        assert_eq!(c.rest().1, 0);
        let last_table_end = area.table(size - 1).0 + QueueArea::max_chain(segs) as u64 * 16;
        assert!(last_table_end <= GUEST_BASE + bytes);
        assert!(area.table(0).0 + 6 * 16 <= area.header(1).0);
        assert_eq!(area.table(0).0 % 16, 0);
    }
}
