use super::*;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::Bytes;

/// Rings live in [0, 1 MiB); request buffers in [1 MiB, 2 MiB).
const DATA: u64 = 0x10_0000;
const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0xf_0000;

fn memory() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap())
}

fn limits() -> Limits {
    Limits {
        capacity: 1 << 20,
        seg_max: 4,
        max_discard_seg: 2,
        max_discard_sectors: 64,
        max_write_zeroes_seg: 2,
        max_write_zeroes_sectors: 64,
        read_only: false,
        discard: true,
        write_zeroes: true,
    }
}

fn r(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0))
}

fn w(addr: u64, len: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(
        addr,
        len,
        VRING_DESC_F_WRITE as u16,
        0,
    ))
}

fn header(mem: &GuestMemory, t: RequestType, sector: u64) {
    let h = RequestHeader {
        request_type: t,
        sector,
    };
    mem.write_slice(&h.to_bytes(), GuestAddress(HDR)).unwrap();
}

fn parse_with(
    mem: &Arc<GuestMemory>,
    descs: &[RawDescriptor],
    limits: &Limits,
) -> Result<Request, Rejected> {
    let q = MockSplitQueue::new(&**mem, 16);
    let chain = q.build_desc_chain(descs).unwrap();
    parse(chain.head_index(), chain, mem, limits, false)
}

/// Builds a request of type `t` at `sector` and parses it with the default limits.
fn parse_req(t: RequestType, sector: u64, descs: &[RawDescriptor]) -> Result<Request, Rejected> {
    let mem = memory();
    header(&mem, t, sector);
    parse_with(&mem, descs, &limits())
}

fn rejected(res: Result<Request, Rejected>) -> Rejected {
    match res {
        Ok(req) => panic!("accepted: {req:?}"),
        Err(rej) => rej,
    }
}

fn seg(sector: u64, num_sectors: u32, flags: u32) -> DiscardSegment {
    DiscardSegment {
        sector,
        num_sectors,
        flags,
    }
}

/// A discard or write-zeroes request of one segment, which the parser must refuse.
fn one_segment_rejected(kind: RequestType, s: DiscardSegment) -> Rejected {
    let mem = memory();
    header(&mem, kind, 0);
    let len = segments(&mem, &[s]);
    rejected(parse_with(
        &mem,
        &[r(HDR, 16), r(BUF, len), w(STATUS, 1)],
        &limits(),
    ))
}

fn segments(mem: &GuestMemory, segs: &[DiscardSegment]) -> u32 {
    for (i, s) in segs.iter().enumerate() {
        mem.write_slice(&s.to_bytes(), GuestAddress(BUF + 16 * i as u64))
            .unwrap();
    }
    16 * segs.len() as u32
}

// ---- well-formed requests -------------------------------------------------------------------

#[test]
fn read_in_separate_descriptors() {
    let req = parse_req(
        RequestType::Read,
        8,
        &[r(HDR, 16), w(BUF, 512), w(BUF + 4096, 1024), w(STATUS, 1)],
    )
    .unwrap();
    assert_eq!(req.status, GuestAddress(STATUS));
    assert_eq!(req.used_len, 1537);
    match req.kind {
        RequestKind::Io {
            op: IoOp::Read { offset: 4096 },
            buffers,
        } => assert_eq!(buffers.len(), 1536),
        other => panic!("{other:?}"),
    }
}

#[test]
fn write_with_header_and_data_in_one_descriptor() {
    // Framing is free: the header may share a descriptor with the data.
    let req = parse_req(RequestType::Write, 1, &[r(HDR, 16 + 1024), w(STATUS, 1)]).unwrap();
    assert_eq!(req.used_len, 1);
    match req.kind {
        RequestKind::Io {
            op:
                IoOp::Write {
                    offset: 512,
                    durable: false,
                },
            buffers,
        } => {
            assert_eq!(buffers.len(), 1024);
            assert_eq!(buffers.iovecs().len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn read_with_data_and_status_in_one_descriptor() {
    let req = parse_req(RequestType::Read, 0, &[r(HDR, 16), w(BUF, 513)]).unwrap();
    assert_eq!(req.status, GuestAddress(BUF + 512));
    assert_eq!(req.used_len, 513);
}

#[test]
fn write_through_marks_writes_durable() {
    let mem = memory();
    header(&mem, RequestType::Write, 0);
    let q = MockSplitQueue::new(&*mem, 16);
    let chain = q
        .build_desc_chain(&[r(HDR, 16), r(BUF, 512), w(STATUS, 1)])
        .unwrap();
    let req = parse(chain.head_index(), chain, &mem, &limits(), true).unwrap();
    assert!(matches!(
        req.kind,
        RequestKind::Io {
            op: IoOp::Write { durable: true, .. },
            ..
        }
    ));
}

#[test]
fn flush_and_get_id() {
    let req = parse_req(RequestType::Flush, 0, &[r(HDR, 16), w(STATUS, 1)]).unwrap();
    assert!(matches!(
        req.kind,
        RequestKind::Io {
            op: IoOp::Flush,
            ..
        }
    ));
    let req = parse_req(
        RequestType::GetId,
        0,
        &[r(HDR, 16), w(BUF, 20), w(STATUS, 1)],
    )
    .unwrap();
    assert_eq!(req.used_len, 21);
    assert!(matches!(req.kind, RequestKind::GetId { .. }));
}

#[test]
fn discard_and_write_zeroes() {
    let mem = memory();
    header(&mem, RequestType::Discard, 0);
    let len = segments(&mem, &[seg(0, 8, 0), seg(64, 16, 0)]);
    let req = parse_with(&mem, &[r(HDR, 16), r(BUF, len), w(STATUS, 1)], &limits()).unwrap();
    match req.kind {
        RequestKind::Io {
            op: IoOp::Discard { ranges },
            ..
        } => assert_eq!(
            ranges,
            vec![
                ByteRange {
                    offset: 0,
                    len: 4096
                },
                ByteRange {
                    offset: 32768,
                    len: 8192
                }
            ]
        ),
        other => panic!("{other:?}"),
    }
    header(&mem, RequestType::WriteZeroes, 0);
    let len = segments(&mem, &[seg(8, 8, 1)]);
    let req = parse_with(&mem, &[r(HDR, 16), r(BUF, len), w(STATUS, 1)], &limits()).unwrap();
    match req.kind {
        RequestKind::Io {
            op: IoOp::WriteZeroes { ranges },
            ..
        } => assert_eq!(
            ranges,
            vec![ZeroRange {
                range: ByteRange {
                    offset: 4096,
                    len: 4096
                },
                unmap: true
            }]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn read_up_to_the_last_sector() {
    let req = parse_req(
        RequestType::Read,
        2047,
        &[r(HDR, 16), w(BUF, 512), w(STATUS, 1)],
    );
    assert!(req.is_ok());
}

// ---- one test per rule ----------------------------------------------------------------------

#[test]
fn chain_too_short() {
    let rej = rejected(parse_req(RequestType::Read, 0, &[r(HDR, 8), w(STATUS, 1)]));
    assert_eq!(rej.error, RequestError::ChainTooShort { readable: 8 });
    assert_eq!(rej.status, Some(GuestAddress(STATUS)));
    assert_eq!(rej.error.status(), Status::IoErr);
}

#[test]
fn status_missing() {
    let rej = rejected(parse_req(RequestType::Write, 0, &[r(HDR, 16), r(BUF, 512)]));
    assert_eq!(rej.error, RequestError::StatusMissing);
    assert_eq!(rej.status, None);
}

#[test]
fn status_descriptor_of_zero_length() {
    let rej = rejected(parse_req(
        RequestType::Flush,
        0,
        &[r(HDR, 16), w(STATUS, 0)],
    ));
    assert_eq!(rej.error, RequestError::StatusMissing);
}

#[test]
fn readable_after_writable() {
    let rej = rejected(parse_req(
        RequestType::Read,
        0,
        &[r(HDR, 16), w(BUF, 512), r(BUF + 4096, 512), w(STATUS, 1)],
    ));
    assert_eq!(rej.error, RequestError::ReadableAfterWritable);
}

#[test]
fn read_with_device_readable_data() {
    let rej = rejected(parse_req(
        RequestType::Read,
        0,
        &[r(HDR, 16), r(BUF, 512), w(STATUS, 1)],
    ));
    assert_eq!(
        rej.error,
        RequestError::WrongDirection {
            request: "read",
            bytes: 512
        }
    );
}

#[test]
fn write_with_device_writable_data() {
    let rej = rejected(parse_req(
        RequestType::Write,
        0,
        &[r(HDR, 16), w(BUF, 512), w(STATUS, 1)],
    ));
    assert_eq!(
        rej.error,
        RequestError::WrongDirection {
            request: "write",
            bytes: 512
        }
    );
}

#[test]
fn flush_with_data() {
    let rej = rejected(parse_req(
        RequestType::Flush,
        0,
        &[r(HDR, 16), r(BUF, 512), w(STATUS, 1)],
    ));
    assert!(matches!(rej.error, RequestError::WrongDirection { .. }));
}

#[test]
fn length_not_a_sector_multiple() {
    let rej = rejected(parse_req(
        RequestType::Read,
        0,
        &[r(HDR, 16), w(BUF, 500), w(STATUS, 1)],
    ));
    assert_eq!(rej.error, RequestError::NotSectorMultiple { len: 500 });
}

#[test]
fn offset_overflow() {
    let rej = rejected(parse_req(
        RequestType::Read,
        u64::MAX,
        &[r(HDR, 16), w(BUF, 512), w(STATUS, 1)],
    ));
    assert!(matches!(rej.error, RequestError::OffsetOverflow { .. }));
    // The multiplication fits but the end does not.
    let rej = rejected(parse_req(
        RequestType::Read,
        u64::MAX >> 9,
        &[r(HDR, 16), w(BUF, 1024), w(STATUS, 1)],
    ));
    assert!(matches!(rej.error, RequestError::OffsetOverflow { .. }));
}

#[test]
fn beyond_capacity() {
    let rej = rejected(parse_req(
        RequestType::Write,
        2047,
        &[r(HDR, 16), r(BUF, 1024), w(STATUS, 1)],
    ));
    assert_eq!(
        rej.error,
        RequestError::BeyondCapacity {
            offset: 2047 * 512,
            end: 2047 * 512 + 1024,
            capacity: 1 << 20
        }
    );
}

#[test]
fn data_outside_guest_memory() {
    let rej = rejected(parse_req(
        RequestType::Read,
        0,
        &[r(HDR, 16), w(0x20_0000, 512), w(STATUS, 1)],
    ));
    assert_eq!(
        rej.error,
        RequestError::OutsideGuestMemory(BufferError::OutsideGuestMemory {
            addr: 0x20_0000,
            len: 512
        })
    );
    // A range that starts inside and runs off the end is refused too.
    let rej = rejected(parse_req(
        RequestType::Write,
        0,
        &[r(HDR, 16), r(0x1f_ff00, 512), w(STATUS, 1)],
    ));
    assert!(matches!(rej.error, RequestError::OutsideGuestMemory(_)));
}

#[test]
fn header_outside_guest_memory() {
    let rej = rejected(parse_req(
        RequestType::Read,
        0,
        &[r(u64::MAX - 7, 16), w(STATUS, 1)],
    ));
    assert!(matches!(rej.error, RequestError::OutsideGuestMemory(_)));
}

#[test]
fn status_outside_guest_memory() {
    let rej = rejected(parse_req(
        RequestType::Flush,
        0,
        &[r(HDR, 16), w(0x30_0000, 1)],
    ));
    assert!(matches!(rej.error, RequestError::OutsideGuestMemory(_)));
    assert_eq!(rej.status, None);
}

#[test]
fn too_many_segments() {
    let mut descs = vec![r(HDR, 16)];
    descs.extend((0..5).map(|i| w(BUF + 512 * i, 512)));
    descs.push(w(STATUS, 1));
    let rej = rejected(parse_req(RequestType::Read, 0, &descs));
    assert_eq!(
        rej.error,
        RequestError::TooManySegments { count: 7, max: 4 }
    );
}

#[test]
fn discard_segment_count() {
    let mem = memory();
    header(&mem, RequestType::Discard, 0);
    for (len, why) in [(0, "none"), (17, "partial"), (48, "three > max 2")] {
        let rej = rejected(parse_with(
            &mem,
            &[r(HDR, 16), r(BUF, len), w(STATUS, 1)],
            &limits(),
        ));
        assert!(
            matches!(rej.error, RequestError::BadSegmentCount { bytes, .. } if bytes == u64::from(len)),
            "{why}: {:?}",
            rej.error
        );
    }
}

#[test]
fn discard_segment_too_large() {
    let rej = one_segment_rejected(RequestType::WriteZeroes, seg(0, 65, 0));
    assert!(matches!(
        rej.error,
        RequestError::SegmentTooLarge { sectors: 65, .. }
    ));
}

#[test]
fn discard_segment_beyond_capacity() {
    let rej = one_segment_rejected(RequestType::Discard, seg(2040, 16, 0));
    assert!(matches!(rej.error, RequestError::BeyondCapacity { .. }));
}

#[test]
fn discard_reserved_flags_are_unsupported() {
    let rej = one_segment_rejected(RequestType::WriteZeroes, seg(0, 8, 4));
    assert_eq!(rej.error, RequestError::ReservedFlags(ReservedFlags(4)));
    assert_eq!(rej.error.status(), Status::Unsupp);
}

#[test]
fn unmap_on_discard_is_unsupported() {
    let rej = one_segment_rejected(RequestType::Discard, seg(0, 8, 1));
    assert_eq!(rej.error, RequestError::UnmapOnDiscard);
    assert_eq!(rej.error.status(), Status::Unsupp);
}

#[test]
fn get_id_without_buffer() {
    let rej = rejected(parse_req(
        RequestType::GetId,
        0,
        &[r(HDR, 16), w(STATUS, 1)],
    ));
    assert_eq!(rej.error, RequestError::NoIdBuffer);
}

#[test]
fn write_on_read_only_disk() {
    let mem = memory();
    header(&mem, RequestType::Write, 0);
    let ro = Limits {
        read_only: true,
        ..limits()
    };
    let rej = rejected(parse_with(
        &mem,
        &[r(HDR, 16), r(BUF, 512), w(STATUS, 1)],
        &ro,
    ));
    assert_eq!(rej.error, RequestError::ReadOnly { request: "write" });
    assert_eq!(rej.error.status(), Status::IoErr);
    header(&mem, RequestType::Read, 0);
    assert!(parse_with(&mem, &[r(HDR, 16), w(BUF, 512), w(STATUS, 1)], &ro).is_ok());
}

#[test]
fn unsupported_type() {
    let rej = rejected(parse_req(
        RequestType::Unsupported(99),
        0,
        &[r(HDR, 16), w(STATUS, 1)],
    ));
    assert_eq!(rej.error, RequestError::Unsupported(99));
    assert_eq!(rej.error.status(), Status::Unsupp);
}

#[test]
fn discard_without_the_capability_is_unsupported() {
    let mem = memory();
    header(&mem, RequestType::Discard, 0);
    let no_discard = Limits {
        discard: false,
        ..limits()
    };
    let len = segments(
        &mem,
        &[DiscardSegment {
            sector: 0,
            num_sectors: 8,
            flags: 0,
        }],
    );
    let rej = rejected(parse_with(
        &mem,
        &[r(HDR, 16), r(BUF, len), w(STATUS, 1)],
        &no_discard,
    ));
    assert_eq!(rej.error.status(), Status::Unsupp);
}

#[test]
fn arbitrary_chains_never_panic() {
    // Random descriptors anywhere in (and beyond) guest memory: parse answers, never panics.
    use proptest::prelude::*;
    let mem = memory();
    let strategy = proptest::collection::vec(
        (
            prop_oneof![0u64..0x30_0000, Just(u64::MAX - 3), any::<u64>()],
            prop_oneof![0u32..2048, any::<u32>()],
            any::<bool>(),
        ),
        1..8,
    );
    proptest!(ProptestConfig::with_cases(500), |(descs in strategy, t in 0u32..16, sector in any::<u64>())| {
        let h = RequestHeader { request_type: RequestType::from_raw(t), sector };
        mem.write_slice(&h.to_bytes(), GuestAddress(HDR)).unwrap();
        let mut raw = vec![r(HDR, 16)];
        raw.extend(descs.iter().map(|&(a, l, wr)| if wr { w(a, l) } else { r(a, l) }));
        let _ = parse_with(&mem, &raw, &limits());
    });
}
