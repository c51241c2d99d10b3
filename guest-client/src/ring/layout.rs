//! Where the three parts of a split ring sit in memory, and where each field is.

use vm_memory::GuestAddress;

use super::DESC_SIZE;

/// The guest addresses of a split ring's descriptor table, available ring and used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
}

impl RingLayout {
    /// `size` must be a power of two (so free-running 16-bit indices wrap onto ring slots).
    pub fn new(size: u16, desc: GuestAddress, avail: GuestAddress, used: GuestAddress) -> Self {
        debug_assert!(size.is_power_of_two());
        Self {
            size,
            desc,
            avail,
            used,
        }
    }

    /// Whether `size` is a queue size this driver accepts.
    pub fn valid_size(size: u16) -> bool {
        size.is_power_of_two() && (2..=32768).contains(&size)
    }

    pub fn desc_table_bytes(size: u16) -> u64 {
        u64::from(size) * DESC_SIZE
    }

    /// flags, idx, ring[size], used_event.
    pub fn avail_ring_bytes(size: u16) -> u64 {
        6 + 2 * u64::from(size)
    }

    /// flags, idx, ring[size] of {id, len}, avail_event.
    pub fn used_ring_bytes(size: u16) -> u64 {
        6 + 8 * u64::from(size)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn desc_table(&self) -> GuestAddress {
        self.desc
    }

    pub fn avail(&self) -> GuestAddress {
        self.avail
    }

    pub fn used(&self) -> GuestAddress {
        self.used
    }

    pub fn avail_bytes(&self) -> u64 {
        Self::avail_ring_bytes(self.size)
    }

    pub fn used_bytes(&self) -> u64 {
        Self::used_ring_bytes(self.size)
    }

    pub fn desc(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + u64::from(index) * DESC_SIZE)
    }

    pub fn avail_flags(&self) -> GuestAddress {
        self.avail
    }

    pub fn avail_idx(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 2)
    }

    /// The avail ring slot a free-running index maps to.
    pub fn avail_entry(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(idx % self.size))
    }

    /// `used_event`, written by the driver: "signal me when used.idx passes this".
    pub fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size))
    }

    pub fn used_flags(&self) -> GuestAddress {
        self.used
    }

    pub fn used_idx(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 2)
    }

    pub fn used_entry(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + 8 * u64::from(idx % self.size))
    }

    /// `avail_event`, written by the device: "kick me when avail.idx passes this".
    pub fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + 8 * u64::from(self.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_addresses_follow_the_spec() {
        let l = RingLayout::new(
            8,
            GuestAddress(0x1000),
            GuestAddress(0x2000),
            GuestAddress(0x3000),
        );
        assert_eq!(l.desc(3), GuestAddress(0x1030));
        assert_eq!(l.avail_entry(9), GuestAddress(0x2000 + 4 + 2));
        assert_eq!(l.used_event(), GuestAddress(0x2000 + 4 + 16));
        assert_eq!(l.used_entry(10), GuestAddress(0x3000 + 4 + 16));
        assert_eq!(l.avail_event(), GuestAddress(0x3000 + 4 + 64));
        assert_eq!(RingLayout::avail_ring_bytes(8), 22);
        assert_eq!(RingLayout::used_ring_bytes(8), 70);
        assert!(RingLayout::valid_size(256));
        assert!(!RingLayout::valid_size(100));
        assert!(!RingLayout::valid_size(1));
    }
}
