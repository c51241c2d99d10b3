//! keel-client's library against qemu-storage-daemon: every request type, several queues, both
//! completion modes, both descriptor layouts, scatter lists, errors.

mod client_support;

use std::os::unix::fs::FileExt;

use client_support::Qsd;
use keel_client::queue::Completions;
use keel_client::{Disk, DiskOptions, Error, Push, Request};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn image_bytes(qsd: &Qsd, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(qsd.image.as_ref().unwrap()).unwrap();
    let mut out = vec![0u8; len];
    f.read_exact_at(&mut out, offset).unwrap();
    out
}

#[test]
fn write_read_flush_round_trip_through_the_image() {
    let qsd = Qsd::file(64 * MIB, 2);
    let mut disk = Disk::connect(&qsd.socket, &DiskOptions::default()).unwrap();
    assert_eq!(disk.info().capacity(), 64 * MIB);
    assert_eq!(disk.info().queues, 2);
    let mut q = disk.take_queue(0).unwrap();
    let data = pattern(7, 8192);
    q.write_slice(MIB, &data).unwrap();
    q.flush().unwrap();
    assert_eq!(q.read_vec(MIB, 8192).unwrap(), data);
    assert_eq!(image_bytes(&qsd, MIB, 8192), data);
}

#[test]
fn every_request_type_against_a_file() {
    let qsd = Qsd::file(16 * MIB, 1);
    let mut disk = Disk::connect(&qsd.socket, &DiskOptions::default()).unwrap();
    let mut q = disk.take_queue(0).unwrap();
    let data = pattern(3, 64 * 1024);
    q.write_slice(0, &data).unwrap();
    q.flush().unwrap();
    assert!(!q.get_id().unwrap().is_empty(), "GET_ID returns a serial");

    q.discard(0, 4096).unwrap();
    q.write_zeroes(8192, 8192, false).unwrap();
    q.write_zeroes(32768, 4096, true).unwrap();
    q.flush().unwrap();
    let back = q.read_vec(0, data.len()).unwrap();
    // Discarded data is unspecified; zeroed ranges must read as zeroes; the rest is untouched.
    assert!(back[8192..16384].iter().all(|&b| b == 0));
    assert!(back[32768..36864].iter().all(|&b| b == 0));
    assert_eq!(&back[4096..8192], &data[4096..8192]);
    assert_eq!(&back[16384..32768], &data[16384..32768]);
    assert_eq!(&back[36864..], &data[36864..]);
    assert_eq!(image_bytes(&qsd, 8192, 8192), vec![0u8; 8192]);
}

#[test]
fn queues_work_in_parallel_threads() {
    let qsd = Qsd::file(32 * MIB, 2);
    let mut disk = Disk::connect(&qsd.socket, &DiskOptions::default()).unwrap();
    let queues = disk.take_queues();
    assert_eq!(queues.len(), 2);
    std::thread::scope(|s| {
        for mut q in queues {
            s.spawn(move || {
                let region = u64::from(q.index()) * 8 * MIB;
                // 64 writes in flight at once, then read back.
                for i in 0..64u64 {
                    let mut b = q.alloc(4096).unwrap();
                    b.write_at(0, &pattern(i as u8 + q.index() as u8, 4096))
                        .unwrap();
                    let r = Request::Write {
                        offset: region + i * 4096,
                        buffers: vec![b],
                    };
                    assert!(matches!(q.push(r, i).unwrap(), Push::Queued));
                }
                q.kick().unwrap();
                let mut done = Vec::new();
                while done.len() < 64 {
                    q.wait(&mut done).unwrap();
                }
                done.iter().for_each(|c| c.result().unwrap());
                q.flush().unwrap();
                for i in 0..64u64 {
                    let want = pattern(i as u8 + q.index() as u8, 4096);
                    assert_eq!(q.read_vec(region + i * 4096, 4096).unwrap(), want);
                }
            });
        }
    });
    for (index, i) in [(0u64, 5u64), (1, 63)] {
        let want = pattern(i as u8 + index as u8, 4096);
        assert_eq!(image_bytes(&qsd, index * 8 * MIB + i * 4096, 4096), want);
    }
}

#[test]
fn poll_mode_and_plain_rings_move_the_same_data() {
    let qsd = Qsd::file(16 * MIB, 1);
    let variants = [
        (Completions::Poll, true, true),
        (Completions::Interrupt, false, false),
        (Completions::Poll, false, true),
        (Completions::Interrupt, true, false),
    ];
    for (n, (completions, indirect, event_idx)) in variants.into_iter().enumerate() {
        let options = DiskOptions {
            completions,
            indirect,
            event_idx,
            ..DiskOptions::default()
        };
        let mut disk = Disk::connect(&qsd.socket, &options).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        let offset = n as u64 * MIB;
        // A scatter list of 32 buffers of 512 bytes, in flight with 40 more requests.
        let data = pattern(n as u8, 32 * 512);
        let buffers = data
            .chunks(512)
            .map(|c| {
                let mut b = q.alloc(512).unwrap();
                b.write_at(0, c).unwrap();
                b
            })
            .collect();
        q.run(Request::Write { offset, buffers }).unwrap();
        for t in 0..40u64 {
            let buffers = vec![q.alloc(512).unwrap()];
            let r = Request::Read {
                offset: offset + (t % 32) * 512,
                buffers,
            };
            assert!(matches!(q.push(r, t).unwrap(), Push::Queued));
        }
        q.kick().unwrap();
        let mut done = Vec::new();
        while done.len() < 40 {
            q.wait(&mut done).unwrap();
        }
        for c in &done {
            c.result().unwrap();
            let at = (c.token % 32) as usize * 512;
            assert_eq!(c.buffers[0].to_vec().unwrap(), &data[at..at + 512]);
        }
        assert_eq!(
            image_bytes(&qsd, offset, data.len()),
            data,
            "{completions:?}"
        );
    }
}

#[test]
fn connection_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    assert!(matches!(
        Disk::connect(&missing, &DiskOptions::default()),
        Err(Error::NoSocket(_))
    ));
    let qsd = Qsd::null(MIB, 2);
    let too_many = DiskOptions {
        queues: Some(3),
        ..DiskOptions::default()
    };
    assert!(matches!(
        Disk::connect(&qsd.socket, &too_many),
        Err(Error::TooFewQueues {
            offered: 2,
            wanted: 3
        })
    ));
    let mut disk = Disk::connect(&qsd.socket, &DiskOptions::default()).unwrap();
    let mut q = disk.take_queue(1).unwrap();
    assert!(matches!(
        q.read_vec(MIB, 512),
        Err(Error::InvalidRequest(_))
    ));
    assert_eq!(q.read_vec(MIB - 512, 512).unwrap(), vec![0u8; 512]);
}

#[test]
fn a_dead_server_ends_waits_with_an_error() {
    for completions in [Completions::Interrupt, Completions::Poll] {
        let mut qsd = Qsd::file(4 * MIB, 1);
        let options = DiskOptions {
            completions,
            ..DiskOptions::default()
        };
        let mut disk = Disk::connect(&qsd.socket, &options).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        q.write_slice(0, &[1u8; 4096]).unwrap();
        qsd.kill();
        // Whatever happens to requests after the kill, the client must not hang.
        let mut result = Ok(());
        for _ in 0..1000 {
            if let Err(e) = q.write_slice(0, &[2u8; 4096]) {
                result = Err(e);
                break;
            }
        }
        assert!(
            matches!(result, Err(Error::Disconnected)),
            "{completions:?}: {result:?}"
        );
    }
}
