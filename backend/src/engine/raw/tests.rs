use super::*;
use crate::engine::buffers::tests::two_region_memory;
use crate::engine::{ByteRange, Completion, GuestBuffers, ZeroRange, drain};
use vm_memory::{Bytes, GuestAddress};

fn options(dir: &Path, direct: bool) -> RawOptions {
    RawOptions {
        path: dir.join("disk.img"),
        size: Some(1 << 20),
        resize: false,
        read_only: false,
        direct,
        queue_depth: 32,
    }
}

/// Runs one batch to completion on a fresh queue and returns the completions by token.
fn run(engine: &RawEngine, batch: Vec<IoRequest>) -> Vec<Completion> {
    let mut q = engine.queue(0).unwrap();
    let mut batch = batch;
    q.submit(&mut batch);
    let mut done = Vec::new();
    drain(q.as_mut(), &mut done);
    done.sort_by_key(|c| c.token);
    done
}

fn req(
    mem: &Arc<crate::engine::GuestMemory>,
    token: u64,
    op: IoOp,
    addr: u64,
    len: u32,
) -> IoRequest {
    IoRequest {
        token,
        op,
        buffers: GuestBuffers::from_guest(mem, [(GuestAddress(addr), len)]).unwrap(),
    }
}

fn round_trip(direct: bool, guest_addr: u64) {
    let dir = tempfile::tempdir().unwrap();
    let engine = RawEngine::open(&options(dir.path(), direct)).unwrap();
    assert_eq!(engine.capacity(), 1 << 20);
    let mem = two_region_memory();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(guest_addr)).unwrap();
    let write = IoOp::Write {
        offset: 4096,
        durable: false,
    };
    let done = run(&engine, vec![req(&mem, 1, write, guest_addr, 8192)]);
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    let done = run(&engine, vec![req(&mem, 2, IoOp::Flush, 0x10000, 0)]);
    assert!(done[0].result.is_ok());
    let read_at = 0x50000;
    let done = run(
        &engine,
        vec![req(&mem, 3, IoOp::Read { offset: 4096 }, read_at, 8192)],
    );
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    let mut back = vec![0u8; 8192];
    mem.read_slice(&mut back, GuestAddress(read_at)).unwrap();
    assert_eq!(back, pattern);
    let on_disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert_eq!(&on_disk[4096..12288], &pattern[..]);
}

#[test]
fn creates_sparse_file_and_round_trips_direct() {
    round_trip(true, 0x10000);
}

#[test]
fn unaligned_guest_buffers_fall_back_to_the_page_cache() {
    round_trip(true, 0x10003);
}

#[test]
fn round_trips_buffered() {
    round_trip(false, 0x10000);
}

#[test]
fn discard_and_write_zeroes_read_back_zero() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RawEngine::open(&options(dir.path(), true)).unwrap();
    let mem = two_region_memory();
    mem.write_slice(&[0x5a; 65536], GuestAddress(0x10000))
        .unwrap();
    let w = IoOp::Write {
        offset: 0,
        durable: true,
    };
    assert!(
        run(&engine, vec![req(&mem, 1, w, 0x10000, 65536)])[0]
            .result
            .is_ok()
    );
    let ops = vec![
        IoRequest {
            token: 1,
            op: IoOp::Discard {
                ranges: vec![
                    ByteRange {
                        offset: 0,
                        len: 4096,
                    },
                    ByteRange {
                        offset: 8192,
                        len: 4096,
                    },
                ],
            },
            buffers: GuestBuffers::empty(),
        },
        IoRequest {
            token: 2,
            op: IoOp::WriteZeroes {
                ranges: vec![
                    ZeroRange {
                        range: ByteRange {
                            offset: 16384,
                            len: 4096,
                        },
                        unmap: false,
                    },
                    ZeroRange {
                        range: ByteRange {
                            offset: 24576,
                            len: 512,
                        },
                        unmap: true,
                    },
                ],
            },
            buffers: GuestBuffers::empty(),
        },
    ];
    let done = run(&engine, ops);
    assert!(done.iter().all(|c| c.result.is_ok()), "{done:?}");
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    let zero = |r: std::ops::Range<usize>| disk[r].iter().all(|&b| b == 0);
    let kept = |r: std::ops::Range<usize>| disk[r].iter().all(|&b| b == 0x5a);
    assert!(zero(0..4096) && kept(4096..8192) && zero(8192..12288) && kept(12288..16384));
    assert!(zero(16384..20480) && kept(20480..24576) && zero(24576..25088) && kept(25088..65536));
}

#[test]
fn read_only_refuses_writes_and_existing_size_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    drop(RawEngine::open(&options(dir.path(), true)).unwrap());
    let mut opts = options(dir.path(), true);
    opts.read_only = true;
    opts.size = None;
    let engine = RawEngine::open(&opts).unwrap();
    assert_eq!(engine.capacity(), 1 << 20);
    assert!(engine.capabilities().read_only);
    let mem = two_region_memory();
    let w = IoOp::Write {
        offset: 0,
        durable: false,
    };
    let done = run(&engine, vec![req(&mem, 1, w, 0x10000, 512)]);
    assert!(matches!(done[0].result, Err(EngineError::ReadOnly { .. })));
    let done = run(
        &engine,
        vec![req(&mem, 2, IoOp::Read { offset: 0 }, 0x10000, 512)],
    );
    assert!(done[0].result.is_ok());
}

#[test]
fn resize_changes_the_file_and_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(RawEngine::open(&options(dir.path(), false)).unwrap());
    let mut opts = options(dir.path(), false);
    opts.size = Some(2 << 20);
    assert!(matches!(
        RawEngine::open(&opts),
        Err(EngineError::Setup { .. })
    ));
    opts.resize = true;
    assert_eq!(RawEngine::open(&opts).unwrap().capacity(), 2 << 20);
}

#[test]
fn a_file_larger_than_size_is_served_whole_and_never_shrunk() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), false);
    opts.size = Some(2 << 20);
    drop(RawEngine::open(&opts).unwrap());
    // As after `keel resize`: the file grew, the config still names the old size.
    for resize in [false, true] {
        opts.size = Some(1 << 20);
        opts.resize = resize;
        assert_eq!(RawEngine::open(&opts).unwrap().capacity(), 2 << 20);
        assert_eq!(std::fs::metadata(&opts.path).unwrap().len(), 2 << 20);
    }
}

#[test]
fn io_error_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let engine = RawEngine::open(&options(dir.path(), false)).unwrap();
    let mem = two_region_memory();
    // Past the end of the file: the vhost layer never sends this, the engine must still cope.
    let done = run(
        &engine,
        vec![req(&mem, 1, IoOp::Read { offset: 2 << 20 }, 0x10000, 512)],
    );
    assert!(done[0].result.is_err());
}

#[test]
fn a_batch_larger_than_the_ring_lands_intact() {
    // More requests than ring entries and slab capacity: in-flight tables grow and entries wait
    // in the backlog, and every request must still carry its own data.
    let dir = tempfile::tempdir().unwrap();
    let engine = RawEngine::open(&options(dir.path(), true)).unwrap();
    let mem = two_region_memory();
    let n = 250u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let addr = 0x10000 + i * 512;
        mem.write_slice(&[(i % 251) as u8 + 1; 512], GuestAddress(addr))
            .unwrap();
        let op = IoOp::Write {
            offset: i * 1024,
            durable: false,
        };
        batch.push(req(&mem, i, op, addr, 512));
    }
    let done = run(&engine, batch);
    assert_eq!(done.len(), n as usize);
    assert!(done.iter().all(|c| c.result.is_ok()));
    let disk = std::fs::read(dir.path().join("disk.img")).unwrap();
    for i in 0..n as usize {
        let at = i * 1024;
        assert!(
            disk[at..at + 512].iter().all(|&b| b == (i % 251) as u8 + 1),
            "request {i}"
        );
        assert!(
            disk[at + 512..at + 1024].iter().all(|&b| b == 0),
            "gap after {i}"
        );
    }
}
