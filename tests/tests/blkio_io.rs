//! Data-path tests: a blkio client against keeld running in-process.

use std::time::Duration;

use keel_tests::client::{Client, Options};
use keel_tests::keeld::{InProcess, null_disk, raw_disk};

const MIB: usize = 1 << 20;

use keel_tests::pattern;

#[test]
fn raw_round_trips_many_sizes_and_offsets() {
    let keeld = InProcess::start(&raw_disk("d", "64M", ""));
    let mut c = Client::connect(&keeld.socket("d"), 1, 2 * MIB).unwrap();
    assert_eq!(c.capacity(), 64 << 20);
    let cases: &[(u64, usize)] = &[
        (0, 512),
        (512, 512),
        (4096, 4096),
        (7 * 512, 3 * 512),
        (1 << 20, 128 << 10),
        ((64 << 20) - 4096, 4096),
        (12345 * 512, MIB),
        (3 * 512, 2 * MIB),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        c.write(0, off, &data).unwrap();
        assert_eq!(c.read(0, off, len).unwrap(), data, "offset {off} len {len}");
    }
    // Earlier writes that later ones did not cover are intact, and the file holds them too.
    let first = pattern(0, 512);
    assert_eq!(c.read(0, 0, 512).unwrap(), first);
    c.flush(0).unwrap();
    drop(c);
    let dir = keeld.stop();
    let img = std::fs::read(dir.path().join("d.img")).unwrap();
    assert_eq!(&img[..512], &first[..]);
    let (off, len) = cases[5];
    assert_eq!(&img[off as usize..off as usize + len], &pattern(5, len)[..]);
}

#[test]
fn null_reads_zeroes_and_accepts_writes() {
    let keeld = InProcess::start(&null_disk("n", "1G", ""));
    let mut c = Client::connect(&keeld.socket("n"), 1, MIB).unwrap();
    assert_eq!(c.capacity(), 1 << 30);
    c.write(0, 4096, &pattern(1, 8192)).unwrap();
    c.buffer(0)[..8192].fill(0xee);
    assert_eq!(c.read(0, 4096, 8192).unwrap(), vec![0; 8192]);
    c.flush(0).unwrap();
    c.discard(0, 0, 1 << 20).unwrap();
    c.write_zeroes(0, 0, 1 << 20, true).unwrap();
}

#[test]
fn discard_and_write_zeroes_read_back_zero() {
    let keeld = InProcess::start(&raw_disk("d", "16M", ""));
    let mut c = Client::connect(&keeld.socket("d"), 1, MIB).unwrap();
    let data = pattern(9, MIB);
    for i in 0..4u64 {
        c.write(0, i * MIB as u64, &data).unwrap();
    }
    c.discard(0, 0, 64 << 10).unwrap();
    c.write_zeroes(0, MIB as u64, 64 << 10, false).unwrap();
    c.write_zeroes(0, 2 * MIB as u64, 4096, true).unwrap();
    c.flush(0).unwrap();
    let zero = |c: &mut Client, off: u64, len: usize| {
        assert_eq!(c.read(0, off, len).unwrap(), vec![0; len], "at {off}");
    };
    zero(&mut c, 0, 64 << 10);
    zero(&mut c, MIB as u64, 64 << 10);
    zero(&mut c, 2 * MIB as u64, 4096);
    // Neighbours keep their data.
    assert_eq!(
        c.read(0, 64 << 10, 4096).unwrap(),
        data[64 << 10..(64 << 10) + 4096]
    );
    assert_eq!(
        c.read(0, 2 * MIB as u64 + 4096, 4096).unwrap(),
        data[4096..8192]
    );
    assert_eq!(c.read(0, 3 * MIB as u64, MIB).unwrap(), data);
}

#[test]
fn out_of_range_requests_fail_and_the_daemon_keeps_serving() {
    let keeld = InProcess::start(&raw_disk("d", "1M", ""));
    let mut c = Client::connect(&keeld.socket("d"), 1, MIB).unwrap();
    assert!(c.read(0, 1 << 20, 512).is_err());
    assert!(c.write(0, (1 << 20) - 512, &[1; 1024]).is_err());
    assert!(c.discard(0, 1 << 20, 4096).is_err());
    // Still serving, on the same connection and on a new one.
    c.write(0, 0, &[7; 512]).unwrap();
    assert_eq!(c.read(0, 0, 512).unwrap(), vec![7; 512]);
    drop(c);
    let mut c = Client::connect(&keeld.socket("d"), 1, MIB).unwrap();
    assert_eq!(c.read(0, 0, 512).unwrap(), vec![7; 512]);
    let stats = &keeld.daemon().stats()[0].1;
    assert!(stats.snapshot().invalid_requests >= 3);
}

#[test]
fn read_only_disk_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.img"), pattern(3, MIB)).unwrap();
    let toml = raw_disk("d", "1M", "read_only = true");
    let keeld = InProcess::start_in(dir, &toml);
    // The device says it is read-only: a client asking for write access is turned away.
    let e = Client::connect(&keeld.socket("d"), 1, MIB)
        .err()
        .expect("refused");
    assert_eq!(e.errno(), blkio::Errno::ROFS);
    let opts = Options {
        read_only: true,
        ..Options::default()
    };
    let mut c = Client::connect_with(&keeld.socket("d"), &opts).unwrap();
    assert!(c.read_only());
    assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(3, MIB)[..4096]);
    assert!(c.write(0, 0, &[0; 512]).is_err());
    assert!(c.discard(0, 0, 4096).is_err());
    drop(c);
    let dir = keeld.stop();
    assert_eq!(
        std::fs::read(dir.path().join("d.img")).unwrap(),
        pattern(3, MIB)
    );
}

#[test]
fn two_queues_at_once() {
    let keeld = InProcess::start(&raw_disk("d", "16M", "queues = 2"));
    let mut c = Client::connect(&keeld.socket("d"), 2, MIB).unwrap();
    assert_eq!(c.num_queues(), 2);
    // Many requests in flight on both queues, each writing its own region.
    for q in 0..2 {
        let data = pattern(q as u64 + 10, MIB);
        c.buffer(q)[..MIB].copy_from_slice(&data);
        for i in 0..16 {
            let off = (q * 8 * MIB + i * 64 * 1024) as u64;
            c.enqueue_write(q, off, i * 64 * 1024, 64 * 1024, i);
        }
        c.submit(q);
    }
    for q in 0..2 {
        let results = c.wait(q, 16);
        assert!(results.iter().all(|&(_, r)| r == 0), "{results:?}");
    }
    for q in 0..2 {
        let back = c.read(q, (q * 8 * MIB) as u64, MIB).unwrap();
        assert_eq!(back, pattern(q as u64 + 10, MIB));
    }
    let s = keeld.daemon().stats()[0].1.snapshot();
    assert!(s.writes >= 32 && s.reads >= 2, "{s:?}");
}

#[test]
fn deep_queue_batches_requests() {
    let keeld = InProcess::start(&null_disk("n", "1G", "queue_size = 128"));
    let opts = Options {
        queue_size: Some(128),
        ..Options::default()
    };
    let mut c = Client::connect_with(&keeld.socket("n"), &opts).unwrap();
    for round in 0..20 {
        for i in 0..64 {
            c.enqueue_read(0, (i * 4096) as u64, i * 4096, 4096, round * 100 + i);
        }
        c.submit(0);
        let done = c.wait(0, 64);
        assert_eq!(done.len(), 64);
        assert!(done.iter().all(|&(_, r)| r == 0));
    }
    let s = keeld.daemon().stats()[0].1.snapshot();
    assert_eq!(s.reads, 20 * 64);
    assert!(s.batches <= s.reads, "{s:?}");
}

#[test]
fn polling_disk_serves_requests() {
    let keeld = InProcess::start(&raw_disk("d", "4M", "poll_us = 200"));
    let mut c = Client::connect(&keeld.socket("d"), 1, MIB).unwrap();
    for i in 0..50u64 {
        let data = pattern(i, 4096);
        c.write(0, i * 4096, &data).unwrap();
        assert_eq!(c.read(0, i * 4096, 4096).unwrap(), data);
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
