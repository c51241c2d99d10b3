//! Walking a split-ring descriptor chain from its head index.
//!
//! A chain that was in flight when keeld died is known only by its head (the inflight area holds
//! no avail ring position, and the driver may have reused that slot since). virtio-queue builds
//! chains only while popping the available ring, so resubmission walks the descriptor table
//! itself, by the same rules (virtio 1.2, 2.7.5): `NEXT` links bounded by the table size, one
//! level of indirect table whose length is a multiple of 16, at most 2^32 bytes in all. A chain
//! that breaks a rule ends there, and the request parser refuses what is left, exactly as for a
//! popped chain. A property test checks both walkers agree on arbitrary tables.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use crate::engine::GuestMemory;

/// Bytes of one descriptor in a table.
const DESC_BYTES: u64 = 16;

/// The descriptors of one chain, in order.
#[derive(Clone)]
pub struct HeadChain<'a> {
    mem: &'a GuestMemory,
    table: GuestAddress,
    table_len: u16,
    next: u16,
    ttl: u16,
    indirect: bool,
    bytes: u32,
}

impl<'a> HeadChain<'a> {
    /// The chain starting at `head` in the ring's table at `table` of `ring_size` entries.
    pub fn new(mem: &'a GuestMemory, table: GuestAddress, ring_size: u16, head: u16) -> Self {
        Self {
            mem,
            table,
            table_len: ring_size,
            next: head,
            ttl: ring_size,
            indirect: false,
            bytes: 0,
        }
    }

    fn read(&self) -> Option<Descriptor> {
        let addr = self
            .table
            .0
            .checked_add(u64::from(self.next) * DESC_BYTES)?;
        self.mem.read_obj::<Descriptor>(GuestAddress(addr)).ok()
    }

    /// Continues in the indirect table `desc` points to, if it may be followed.
    fn enter_indirect(&mut self, desc: &Descriptor) -> Option<()> {
        let len = u64::from(desc.len());
        if self.indirect || !len.is_multiple_of(DESC_BYTES) {
            return None;
        }
        self.table = desc.addr();
        self.table_len = u16::try_from(len / DESC_BYTES).ok()?;
        self.next = 0;
        self.ttl = self.table_len;
        self.indirect = true;
        Some(())
    }
}

impl Iterator for HeadChain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.table_len {
                return None;
            }
            let desc = self.read()?;
            if desc.refers_to_indirect_table() {
                self.enter_indirect(&desc)?;
                continue;
            }
            self.bytes = self.bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{QueueOwnedT, QueueT};

    const RING: u16 = 16;
    /// Where the tests put indirect tables.
    const INDIRECT: u64 = 0x8000;

    fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn summary(d: &Descriptor) -> (u64, u32, u16, u16) {
        (d.addr().0, d.len(), d.flags(), d.next())
    }

    /// Descriptor fields from (addr choice, len, flag bits, next).
    fn descriptor(addr: u8, len: u32, flags: u8, next: u16) -> (u64, u32, u16) {
        let mut f = 0u16;
        if flags & 1 != 0 {
            f |= VRING_DESC_F_NEXT as u16;
        }
        if flags & 2 != 0 {
            f |= VRING_DESC_F_WRITE as u16;
        }
        if flags & 4 != 0 {
            f |= VRING_DESC_F_INDIRECT as u16;
        }
        // Indirect descriptors mostly point at the test's indirect table.
        let addr = if f & VRING_DESC_F_INDIRECT as u16 != 0 && !addr.is_multiple_of(4) {
            INDIRECT
        } else {
            u64::from(addr) * 0x100
        };
        (addr, len, f | (next << 8))
    }

    proptest! {
        /// Whatever the table holds, walking from a head gives the descriptors a pop gives.
        #[test]
        fn walking_from_the_head_matches_popping_the_ring(
            table in proptest::collection::vec((any::<u8>(), 0u32..0x300, 0u8..8, 0u16..20), 16),
            indirect in proptest::collection::vec((any::<u8>(), 0u32..0x300, 0u8..8, 0u16..6), 0..6),
            indirect_len in 0u32..0x70,
            head in 0u16..RING,
        ) {
            let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let q = MockSplitQueue::new(&mem, RING);
            let to_raw = |&(a, l, f, n): &(u8, u32, u8, u16)| {
                let (addr, len, bits) = descriptor(a, l, f, n);
                let len = if bits & VRING_DESC_F_INDIRECT as u16 != 0 { indirect_len } else { len };
                raw(addr, len, bits & 0xff, bits >> 8)
            };
            for (i, d) in table.iter().enumerate() {
                q.desc_table().store(i as u16, to_raw(d)).unwrap();
            }
            for (i, d) in indirect.iter().enumerate() {
                mem.write_obj(to_raw(d), GuestAddress(INDIRECT + 16 * i as u64)).unwrap();
            }
            q.avail().ring().ref_at(0).unwrap().store(u16::to_le(head));
            q.avail().idx().store(u16::to_le(1));
            let mut queue = q.create_queue::<virtio_queue::Queue>().unwrap();
            let popped: Vec<_> = queue
                .iter(&mem)
                .unwrap()
                .next()
                .unwrap()
                .map(|d| summary(&d))
                .collect();
            let walked: Vec<_> = HeadChain::new(&mem, q.desc_table_addr(), RING, head)
                .map(|d| summary(&d))
                .collect();
            prop_assert_eq!(walked, popped);
            prop_assert_eq!(queue.next_avail(), 1);
        }
    }

    #[test]
    fn a_chain_through_an_indirect_table_is_followed_once() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let q = MockSplitQueue::new(&mem, RING);
        let next = VRING_DESC_F_NEXT as u16;
        q.desc_table()
            .store(3, raw(INDIRECT, 48, VRING_DESC_F_INDIRECT as u16, 0))
            .unwrap();
        let entries = [
            raw(0x1000, 16, next, 1),
            raw(0x2000, 4096, next | VRING_DESC_F_WRITE as u16, 2),
            raw(0x3000, 1, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (i, d) in entries.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(INDIRECT + 16 * i as u64))
                .unwrap();
        }
        let lens: Vec<u32> = HeadChain::new(&mem, q.desc_table_addr(), RING, 3)
            .map(|d| d.len())
            .collect();
        assert_eq!(lens, [16, 4096, 1]);
        // A loop ends after a table's worth of descriptors.
        q.desc_table().store(5, raw(0x1000, 16, next, 5)).unwrap();
        assert_eq!(
            HeadChain::new(&mem, q.desc_table_addr(), RING, 5).count(),
            usize::from(RING)
        );
        // A head outside the ring yields nothing.
        assert_eq!(
            HeadChain::new(&mem, q.desc_table_addr(), RING, RING).count(),
            0
        );
    }
}
