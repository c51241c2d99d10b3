//! A `Queue` against a small virtio-blk device built on rust-vmm's device-side
//! `virtio_queue::Queue`, running on its own thread with real eventfds: every request type,
//! scatter lists, both descriptor layouts, both completion modes, with and without EVENT_IDX.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use keel_protocol::features::{self, bit};
use keel_protocol::{BlkConfig, RequestHeader, RequestType, Status};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue as DeviceQueue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::buffer::BufferPool;
use crate::memory::{Carver, SharedMemory, SharedRegion};

const DISK: usize = 1 << 20;
const SERIAL: &[u8] = b"fake-serial-0001";
/// Requests touching this sector fail with IOERR.
const BAD_SECTOR: u64 = 1000;

#[derive(Clone, Copy, Debug)]
struct Mode {
    indirect: bool,
    event_idx: bool,
    completions: Completions,
}

const MODES: [Mode; 4] = [
    Mode {
        indirect: true,
        event_idx: true,
        completions: Completions::Interrupt,
    },
    Mode {
        indirect: false,
        event_idx: false,
        completions: Completions::Interrupt,
    },
    Mode {
        indirect: true,
        event_idx: false,
        completions: Completions::Poll,
    },
    Mode {
        indirect: false,
        event_idx: true,
        completions: Completions::Poll,
    },
];

struct Rig {
    queue: Queue,
    disk: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    device: Option<JoinHandle<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.device.take() {
            d.join().unwrap();
        }
    }
}

fn rig(mode: Mode) -> Rig {
    let size = 64u16;
    let max_segments = 16;
    let area_bytes = QueueArea::bytes(size, max_segments);
    let shm = SharedMemory::new(area_bytes + (4 << 20)).unwrap();
    let mem = Arc::new(shm.memory().clone());
    let region = SharedRegion::new(&mem).unwrap();
    let mut carver = Carver::new(shm.size());
    let area = QueueArea::carve(&mut carver, size, max_segments).unwrap();
    let (start, len) = carver.rest();
    let pool = BufferPool::new(region.clone(), start, len);
    let config = BlkConfig {
        capacity: (DISK / 512) as u64,
        max_discard_sectors: 1 << 16,
        max_discard_seg: 4,
        max_write_zeroes_sectors: 1 << 16,
        max_write_zeroes_seg: 4,
        ..Default::default()
    };
    let negotiated = bit(features::FLUSH) | bit(features::DISCARD) | bit(features::WRITE_ZEROES);
    let setup = QueueSetup {
        index: 0,
        area,
        indirect: mode.indirect,
        event_idx: mode.event_idx,
        completions: mode.completions,
        max_segments,
        limits: DeviceLimits::new(negotiated, &config),
    };
    let doorbell = Doorbell::new(None).unwrap();
    let kick = doorbell.kick_fd().try_clone().unwrap();
    let call = doorbell.call_fd().try_clone().unwrap();
    let queue = Queue::new(setup, region, pool, doorbell, None).unwrap();

    let mut dq = DeviceQueue::new(size).unwrap();
    dq.set_size(size);
    let split = |a: vm_memory::GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
    let (l, h) = split(area.ring.desc_table());
    dq.set_desc_table_address(l, h);
    let (l, h) = split(area.ring.avail());
    dq.set_avail_ring_address(l, h);
    let (l, h) = split(area.ring.used());
    dq.set_used_ring_address(l, h);
    dq.set_event_idx(mode.event_idx);
    dq.set_ready(true);

    let disk = Arc::new(Mutex::new(vec![0u8; DISK]));
    let stop = Arc::new(AtomicBool::new(false));
    let device = {
        let disk = Arc::clone(&disk);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || serve(mem, dq, kick, call, disk, stop))
    };
    Rig {
        queue,
        disk,
        stop,
        device: Some(device),
    }
}

/// The device loop: wait for a kick, drain the avail ring, signal if the driver asked.
fn serve(
    mem: Arc<GuestMemoryMmap>,
    mut q: DeviceQueue,
    kick: EventFd,
    call: EventFd,
    disk: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
) {
    let m = mem.as_ref();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&kick),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack, 10 ms timeout.
        unsafe { libc::poll(&mut pfd, 1, 10) };
        let _ = kick.read();
        loop {
            q.disable_notification(m).unwrap();
            while let Some(chain) = q.pop_descriptor_chain(m) {
                let head = chain.head_index();
                let descs: Vec<Descriptor> = chain.collect();
                let written = handle(m, &descs, &disk);
                q.add_used(m, head, written).unwrap();
            }
            if !q.enable_notification(m).unwrap() {
                break;
            }
        }
        if q.needs_notification(m).unwrap() {
            call.write(1).unwrap();
        }
    }
}

/// Executes one virtio-blk request; returns the bytes written into device-writable buffers.
fn handle(m: &GuestMemoryMmap, descs: &[Descriptor], disk: &Mutex<Vec<u8>>) -> u32 {
    let mut raw = [0u8; 16];
    m.read_slice(&mut raw, descs[0].addr()).unwrap();
    let header = RequestHeader::from_bytes(&raw);
    let (status_desc, data) = descs[1..].split_last().unwrap();
    assert_eq!(status_desc.len(), 1);
    assert!(status_desc.is_write_only());
    let mut disk = disk.lock().unwrap();
    let mut pos = header.sector as usize * 512;
    let mut written = 1;
    let mut status = Status::Ok;
    let touches_bad =
        |start: u64, len: u64| start <= BAD_SECTOR * 512 && BAD_SECTOR * 512 < start + len;
    match header.request_type {
        RequestType::Read | RequestType::Write => {
            let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
            if touches_bad(pos as u64, total) {
                status = Status::IoErr;
            } else {
                for d in data {
                    let len = d.len() as usize;
                    if header.request_type == RequestType::Read {
                        assert!(d.is_write_only());
                        m.write_slice(&disk[pos..pos + len], d.addr()).unwrap();
                        written += d.len();
                    } else {
                        assert!(!d.is_write_only());
                        m.read_slice(&mut disk[pos..pos + len], d.addr()).unwrap();
                    }
                    pos += len;
                }
            }
        }
        RequestType::Flush => assert!(data.is_empty()),
        RequestType::GetId => {
            let mut id = [0u8; 20];
            id[..SERIAL.len()].copy_from_slice(SERIAL);
            m.write_slice(&id, data[0].addr()).unwrap();
            written += 20;
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            let mut segs = vec![0u8; data[0].len() as usize];
            m.read_slice(&mut segs, data[0].addr()).unwrap();
            for s in segs.chunks_exact(16) {
                let seg = keel_protocol::DiscardSegment::from_bytes(s.try_into().unwrap()).unwrap();
                let start = seg.sector as usize * 512;
                let end = start + seg.num_sectors as usize * 512;
                disk[start..end].fill(0);
            }
        }
        RequestType::Unsupported(_) => status = Status::Unsupp,
    }
    m.write_obj(status.to_raw(), status_desc.addr()).unwrap();
    written
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

#[test]
fn every_request_type_in_every_mode() {
    for mode in MODES {
        let mut r = rig(mode);
        let q = &mut r.queue;
        let data = pattern(1, 8192);
        q.write_slice(4096, &data).unwrap();
        assert_eq!(
            &r.disk.lock().unwrap()[4096..4096 + 8192],
            &data[..],
            "{mode:?}"
        );
        assert_eq!(q.read_vec(4096, 8192).unwrap(), data, "{mode:?}");
        q.flush().unwrap();
        assert_eq!(q.get_id().unwrap(), "fake-serial-0001");
        q.discard(4096, 4096).unwrap();
        q.write_zeroes(8192, 512, true).unwrap();
        let back = q.read_vec(4096, 8192).unwrap();
        assert!(back[..4096 + 512].iter().all(|&b| b == 0), "{mode:?}");
        assert_eq!(&back[4096 + 512..], &data[4096 + 512..], "{mode:?}");
    }
}

#[test]
fn scatter_lists_land_in_order() {
    for mode in MODES {
        let mut r = rig(mode);
        let q = &mut r.queue;
        let data = pattern(9, 16 * 512);
        let mut bufs = Vec::new();
        for chunk in data.chunks(512) {
            let mut b = q.alloc(512).unwrap();
            b.write_at(0, chunk).unwrap();
            bufs.push(b);
        }
        q.run(Request::Write {
            offset: 0,
            buffers: bufs,
        })
        .unwrap();
        let bufs = (0..4).map(|_| q.alloc(2048).unwrap()).collect();
        let done = q
            .run(Request::Read {
                offset: 0,
                buffers: bufs,
            })
            .unwrap();
        let back: Vec<u8> = done
            .buffers
            .iter()
            .flat_map(|b| b.to_vec().unwrap())
            .collect();
        assert_eq!(back, data, "{mode:?}");
        assert_eq!(done.written, 8192 + 1, "data plus status byte");
    }
}

#[test]
fn a_full_ring_of_requests_completes_with_the_right_tokens() {
    for mode in MODES {
        let mut r = rig(mode);
        let q = &mut r.queue;
        let depth = q.request_capacity(1);
        for i in 0..depth {
            q.write_slice(i as u64 * 512, &[i as u8; 512]).unwrap();
        }
        for token in 0..depth as u64 {
            let buffers = vec![q.alloc(512).unwrap()];
            let pushed = q
                .push(
                    Request::Read {
                        offset: token * 512,
                        buffers,
                    },
                    token,
                )
                .unwrap();
            assert!(matches!(pushed, Push::Queued), "{mode:?}");
        }
        let extra = Request::Flush;
        assert!(matches!(
            q.push(extra, 999).unwrap(),
            Push::Full(Request::Flush)
        ));
        q.kick().unwrap();
        let mut done = Vec::new();
        while done.len() < depth {
            q.wait(&mut done).unwrap();
        }
        assert_eq!(q.in_flight(), 0);
        for c in &done {
            c.result().unwrap();
            assert_eq!(
                c.buffers[0].to_vec().unwrap(),
                vec![c.token as u8; 512],
                "{mode:?}"
            );
        }
        let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
        tokens.sort_unstable();
        assert_eq!(tokens, (0..depth as u64).collect::<Vec<_>>());
    }
}

#[test]
fn device_errors_name_the_offset() {
    let mut r = rig(MODES[0]);
    let offset = BAD_SECTOR * 512;
    match r.queue.read_vec(offset, 512) {
        Err(Error::Io {
            op,
            offset: o,
            status,
        }) => {
            assert_eq!((op, o, status), ("read", offset, Status::IoErr));
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    // The queue keeps working after a failed request.
    assert_eq!(r.queue.read_vec(0, 512).unwrap(), vec![0; 512]);
}

#[test]
fn invalid_requests_never_reach_the_ring() {
    let mut r = rig(MODES[0]);
    let q = &mut r.queue;
    assert!(matches!(
        q.read_vec(DISK as u64, 512),
        Err(Error::InvalidRequest(_))
    ));
    assert!(matches!(
        q.write_slice(1, &[0; 512]),
        Err(Error::InvalidRequest(_))
    ));
    assert_eq!(q.in_flight(), 0);
    // A buffer from another disk's memory is refused.
    let other = SharedMemory::new(1 << 16).unwrap();
    let foreign = BufferPool::new(
        SharedRegion::new(other.memory()).unwrap(),
        vm_memory::GuestAddress(crate::memory::GUEST_BASE),
        1 << 16,
    );
    let req = Request::Write {
        offset: 0,
        buffers: vec![foreign.alloc(512).unwrap()],
    };
    assert!(matches!(q.push(req, 0), Err(Error::InvalidRequest(_))));
}

#[test]
fn completions_reaped_during_a_blocking_call_are_kept() {
    let mut r = rig(MODES[0]);
    let q = &mut r.queue;
    let buffers = vec![q.alloc(512).unwrap()];
    assert!(matches!(
        q.submit(Request::Read { offset: 0, buffers }, 42).unwrap(),
        Push::Queued
    ));
    q.flush().unwrap();
    let mut done = Vec::new();
    q.wait(&mut done).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].token, 42);
}
