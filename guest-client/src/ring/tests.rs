//! The driver ring against rust-vmm's device-side `virtio_queue::Queue`: what one writes, the
//! other must read.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::memory::SharedRegion;

const SIZE: u16 = 16;

struct Pair {
    mem: Arc<GuestMemoryMmap>,
    driver: SplitRing,
    device: Queue,
}

fn pair(size: u16, event_idx: bool) -> Pair {
    let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let layout = RingLayout::new(
        size,
        GuestAddress(0x1000),
        GuestAddress(0x2000),
        GuestAddress(0x3000),
    );
    let driver = SplitRing::new(SharedRegion::new(&mem).unwrap(), layout, event_idx).unwrap();
    let mut device = Queue::new(size).unwrap();
    device.set_size(size);
    device.set_desc_table_address(Some(0x1000), Some(0));
    device.set_avail_ring_address(Some(0x2000), Some(0));
    device.set_used_ring_address(Some(0x3000), Some(0));
    device.set_event_idx(event_idx);
    device.set_ready(true);
    assert!(device.is_valid(mem.as_ref()));
    Pair {
        mem,
        driver,
        device,
    }
}

fn seg(addr: u64, len: u32, device_writes: bool) -> Segment {
    Segment {
        addr: GuestAddress(addr),
        len,
        device_writes,
    }
}

/// A request shaped like a virtio-blk read: header, data, status.
fn blk_read(data: u64) -> [Segment; 3] {
    [
        seg(0x8000, 16, false),
        seg(data, 4096, true),
        seg(0x8010, 1, true),
    ]
}

impl Pair {
    /// Pops one chain on the device side: (head, descriptors).
    fn device_pop(&mut self) -> Option<(u16, Vec<Descriptor>)> {
        let chain = self.device.pop_descriptor_chain(self.mem.as_ref())?;
        let head = chain.head_index();
        Some((head, chain.collect()))
    }

    fn device_complete(&mut self, head: u16, len: u32) {
        self.device.add_used(self.mem.as_ref(), head, len).unwrap();
    }
}

fn assert_segments(descs: &[Descriptor], segs: &[Segment]) {
    assert_eq!(descs.len(), segs.len());
    for (d, s) in descs.iter().zip(segs) {
        assert_eq!(d.addr(), s.addr);
        assert_eq!(d.len(), s.len);
        assert_eq!(d.is_write_only(), s.device_writes);
    }
}

#[test]
fn direct_chain_reaches_the_device_and_comes_back() {
    let mut p = pair(SIZE, false);
    let segs = blk_read(0x10000);
    let head = p.driver.add_chain(&segs).unwrap().unwrap();
    assert_eq!(p.driver.free_descriptors(), usize::from(SIZE) - 3);
    assert!(p.device_pop().is_none(), "nothing visible before publish");
    assert!(p.driver.publish().unwrap(), "device did not suppress kicks");
    let (dev_head, descs) = p.device_pop().unwrap();
    assert_eq!(dev_head, head);
    assert_segments(&descs, &segs);
    assert_eq!(p.driver.pop_used().unwrap(), None);
    p.device_complete(head, 4097);
    assert_eq!(p.driver.pop_used().unwrap(), Some(Used { head, len: 4097 }));
    assert_eq!(p.driver.free_descriptors(), usize::from(SIZE));
    assert_eq!(p.driver.outstanding(), 0);
}

#[test]
fn indirect_table_holds_a_long_scatter_list_in_one_slot() {
    let mut p = pair(SIZE, false);
    let mut segs = vec![seg(0x8000, 16, false)];
    segs.extend((0..12).map(|i| seg(0x10000 + i * 0x1000, 512, true)));
    segs.push(seg(0x8010, 1, true));
    let head = p
        .driver
        .add_indirect(GuestAddress(0x9000), &segs)
        .unwrap()
        .unwrap();
    assert_eq!(p.driver.free_descriptors(), usize::from(SIZE) - 1);
    p.driver.publish().unwrap();
    let (dev_head, descs) = p.device_pop().unwrap();
    assert_eq!(dev_head, head);
    assert_segments(&descs, &segs);
    p.device_complete(head, 12 * 512 + 1);
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, head);
    assert_eq!(p.driver.free_descriptors(), usize::from(SIZE));
}

#[test]
fn a_full_table_refuses_and_out_of_order_completion_frees_the_right_chain() {
    let mut p = pair(8, false);
    let a = p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
    let b = p.driver.add_chain(&blk_read(0x11000)).unwrap().unwrap();
    assert_eq!(p.driver.add_chain(&blk_read(0x12000)).unwrap(), None);
    p.driver.publish().unwrap();
    let (da, _) = p.device_pop().unwrap();
    let (db, db_descs) = p.device_pop().unwrap();
    assert_eq!((da, db), (a, b));
    p.device_complete(b, 1);
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, b);
    // b's three descriptors are free again; a's are still held.
    let c_segs = blk_read(0x13000);
    let c = p.driver.add_chain(&c_segs).unwrap().unwrap();
    p.driver.publish().unwrap();
    let (dc, descs) = p.device_pop().unwrap();
    assert_eq!(dc, c);
    assert_segments(&descs, &c_segs);
    assert_segments(&db_descs, &blk_read(0x11000));
    p.device_complete(a, 1);
    p.device_complete(c, 1);
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, a);
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, c);
    assert_eq!(p.driver.free_descriptors(), 8);
}

#[test]
fn event_idx_kicks_only_when_the_device_asks() {
    let mut p = pair(SIZE, true);
    p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
    assert!(
        p.driver.publish().unwrap(),
        "first request crosses avail_event 0"
    );
    p.device_pop().unwrap();
    // The device has not re-armed (avail_event still 0): no kick for the next one.
    p.driver.add_chain(&blk_read(0x11000)).unwrap().unwrap();
    assert!(!p.driver.publish().unwrap());
    // The device drains and re-arms at its next avail index: the next publish kicks.
    p.device_pop().unwrap();
    assert!(!p.device.enable_notification(p.mem.as_ref()).unwrap());
    p.driver.add_chain(&blk_read(0x12000)).unwrap().unwrap();
    assert!(p.driver.publish().unwrap());
    // Publishing nothing new never kicks.
    assert!(!p.driver.publish().unwrap());
}

#[test]
fn without_event_idx_the_no_notify_flag_suppresses_kicks() {
    let mut p = pair(SIZE, false);
    p.device.disable_notification(p.mem.as_ref()).unwrap();
    p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
    assert!(!p.driver.publish().unwrap());
    p.device.enable_notification(p.mem.as_ref()).unwrap();
    p.driver.add_chain(&blk_read(0x11000)).unwrap().unwrap();
    assert!(p.driver.publish().unwrap());
}

#[test]
fn used_event_arms_and_suppresses_device_interrupts() {
    let mut p = pair(SIZE, true);
    for i in 0..3 {
        p.driver
            .add_chain(&blk_read(0x10000 + i * 0x1000))
            .unwrap()
            .unwrap();
    }
    p.driver.publish().unwrap();
    let heads: Vec<u16> = (0..3).map(|_| p.device_pop().unwrap().0).collect();

    // Polling: the device must not signal.
    p.driver.suppress_interrupts().unwrap();
    p.device_complete(heads[0], 1);
    assert!(!p.device.needs_notification(p.mem.as_ref()).unwrap());
    assert!(p.driver.pop_used().unwrap().is_some());

    // Armed with nothing pending: the next completion signals.
    assert!(!p.driver.enable_interrupts().unwrap());
    p.device_complete(heads[1], 1);
    assert!(p.device.needs_notification(p.mem.as_ref()).unwrap());
    // Arming while a completion is already there reports it instead of sleeping.
    p.device_complete(heads[2], 1);
    assert!(p.driver.enable_interrupts().unwrap());
}

#[test]
fn polling_suppresses_interrupts_even_when_the_device_batch_began_before_the_reap() {
    let mut p = pair(SIZE, true);
    for i in 0..3 {
        p.driver
            .add_chain(&blk_read(0x10000 + i * 0x1000))
            .unwrap()
            .unwrap();
    }
    p.driver.publish().unwrap();
    let heads: Vec<u16> = (0..3).map(|_| p.device_pop().unwrap().0).collect();
    p.driver.suppress_interrupts().unwrap();
    // The device adds one entry, the polling driver reaps it and re-suppresses, the device
    // adds the rest of its batch and only then checks whether to signal.
    p.device_complete(heads[0], 1);
    assert!(p.driver.pop_used().unwrap().is_some());
    p.driver.suppress_interrupts().unwrap();
    p.device_complete(heads[1], 1);
    p.device_complete(heads[2], 1);
    assert!(!p.device.needs_notification(p.mem.as_ref()).unwrap());
}

#[test]
fn exposed_chains_are_visible_before_publish_and_publish_still_kicks() {
    let mut p = pair(SIZE, true);
    let a = p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
    p.driver.expose().unwrap();
    // A device that looks finds the chain without a kick ...
    assert_eq!(p.device_pop().unwrap().0, a);
    // ... and the kick decision still covers it: the device asked (avail_event 0) to hear
    // about index 0.
    assert!(p.driver.publish().unwrap(), "the device asked to be kicked");
    assert!(!p.driver.publish().unwrap(), "nothing new since");
    // The device drains and re-arms at index 1: the next chain kicks, exposed first or not.
    assert!(!p.device.enable_notification(p.mem.as_ref()).unwrap());
    let b = p.driver.add_chain(&blk_read(0x11000)).unwrap().unwrap();
    p.driver.expose().unwrap();
    assert!(p.driver.publish().unwrap());
    assert_eq!(p.device_pop().unwrap().0, b);
    // A device busy with its batch (not re-armed) is not kicked for what it can see.
    p.driver.add_chain(&blk_read(0x12000)).unwrap().unwrap();
    p.driver.expose().unwrap();
    assert!(!p.driver.publish().unwrap());
    assert!(p.device_pop().is_some());
}

#[test]
fn used_ready_counts_what_the_device_had_returned_when_asked() {
    let mut p = pair(SIZE, true);
    for i in 0..3 {
        p.driver
            .add_chain(&blk_read(0x10000 + i * 0x1000))
            .unwrap()
            .unwrap();
    }
    p.driver.publish().unwrap();
    let heads: Vec<u16> = (0..3).map(|_| p.device_pop().unwrap().0).collect();
    p.device_complete(heads[0], 1);
    p.device_complete(heads[1], 1);
    assert_eq!(p.driver.used_ready().unwrap(), 2);
    p.device_complete(heads[2], 1);
    // Still the two seen, until they are popped.
    assert_eq!(p.driver.used_ready().unwrap(), 2);
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, heads[0]);
    assert_eq!(p.driver.used_ready().unwrap(), 1);
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, heads[1]);
    assert_eq!(
        p.driver.used_ready().unwrap(),
        1,
        "the third, on a fresh look"
    );
    assert_eq!(p.driver.pop_used().unwrap().unwrap().head, heads[2]);
    assert_eq!(p.driver.used_ready().unwrap(), 0);
}

#[test]
fn indices_wrap_around_without_losing_a_request() {
    let mut p = pair(4, true);
    let mut completed = 0u32;
    for round in 0..70_000u32 {
        let head = p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
        p.driver.publish().unwrap();
        let (dev_head, _) = p.device_pop().unwrap();
        assert_eq!(dev_head, head);
        p.device_complete(head, round);
        let used = p.driver.pop_used().unwrap().unwrap();
        assert_eq!(used, Used { head, len: round });
        completed += 1;
    }
    assert_eq!(completed, 70_000);
    assert_eq!(p.driver.free_descriptors(), 4);
}

#[test]
fn a_device_naming_an_idle_descriptor_is_caught() {
    let mut p = pair(SIZE, false);
    let head = p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
    p.driver.publish().unwrap();
    // Forge a used entry for a descriptor that is not a chain head in flight.
    let layout = *p.driver.layout();
    let bogus = (head + 5) as u32;
    let mut entry = [0u8; 8];
    entry[..4].copy_from_slice(&bogus.to_le_bytes());
    p.mem.write_slice(&entry, layout.used_entry(0)).unwrap();
    p.mem.write_obj(1u16.to_le(), layout.used_idx()).unwrap();
    assert!(matches!(p.driver.pop_used(), Err(Error::DeviceBroken(_))));
}

#[test]
fn a_used_index_running_ahead_is_caught() {
    let mut p = pair(SIZE, false);
    p.driver.add_chain(&blk_read(0x10000)).unwrap().unwrap();
    p.driver.publish().unwrap();
    let layout = *p.driver.layout();
    p.mem.write_obj(2u16.to_le(), layout.used_idx()).unwrap();
    assert!(matches!(p.driver.pop_used(), Err(Error::DeviceBroken(_))));
}

#[test]
fn need_event_matches_the_spec_formula() {
    // Crossing: event in [old, new).
    assert!(need_event(5, 6, 5));
    assert!(need_event(5, 10, 3));
    assert!(!need_event(10, 10, 3));
    assert!(!need_event(2, 10, 3));
    // Across the 16-bit wrap.
    assert!(need_event(65535, 1, 65534));
    assert!(!need_event(3, 1, 65534));
}
