//! keel-client's library against qemu-storage-daemon: every request type, several queues, both
//! completion modes, scatter lists.

mod client_support;

use client_support::Qsd;
use keel_client::queue::Completions;
use keel_client::{ByteRange, Disk, DiskOptions, Push, Request};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn write_read_flush_round_trip_through_the_image() {
    let qsd = Qsd::file(64 * MIB, 2);
    let mut disk = Disk::connect(&qsd.socket, &DiskOptions::default()).unwrap();
    assert_eq!(disk.info().capacity(), 64 * MIB);
    let mut q = disk.take_queue(0).unwrap();
    let data = pattern(7, 8192);
    q.write_slice(MIB, &data).unwrap();
    q.flush().unwrap();
    assert_eq!(q.read_vec(MIB, 8192).unwrap(), data);
    let on_disk = std::fs::read(qsd.image.as_ref().unwrap()).unwrap();
    assert_eq!(&on_disk[MIB as usize..MIB as usize + 8192], &data[..]);
}
