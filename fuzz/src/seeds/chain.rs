//! Seed scenarios for the `desc_chain` target: one well-formed request of each kind, and the
//! classic hostile shapes (loops, indirect tables, straddling and out-of-range buffers, huge and
//! zero lengths, wrong directions, too many segments).

use keel_protocol::{DiscardSegment, RequestHeader, RequestType};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

use crate::chain::{Addr, DATA, Desc, RegionAt, Scenario, flag};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Where seeds put the header, the status byte and an indirect table in the ring region.
const HDR: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const TABLE: u64 = DATA + 0x1000;
/// The default data region (guest page 0x100, 16 pages).
const BUF: u64 = 0x100 * 4096;

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr: Addr::Raw(addr),
        len,
        flags,
        next,
    }
}

fn header(t: RequestType, sector: u64) -> (Addr, Vec<u8>) {
    let h = RequestHeader {
        request_type: t,
        sector,
    };
    (Addr::Raw(HDR), h.to_bytes().to_vec())
}

/// A scenario whose ring holds the chains starting at `heads`, built from `descs`.
fn ring(flags: u8, descs: Vec<Desc>, heads: Vec<u16>, blobs: Vec<(Addr, Vec<u8>)>) -> Scenario {
    let mut s = Scenario::new(flags, 4);
    s.descriptors = descs;
    s.heads = heads;
    s.avail_idx = s.heads.len() as u16;
    s.blobs = blobs;
    s
}

/// header -> data -> status, as a three-descriptor chain at index 0.
fn simple(flags: u8, t: RequestType, sector: u64, data: Desc) -> Scenario {
    let data = Desc {
        flags: data.flags | NEXT,
        next: 2,
        ..data
    };
    ring(
        flags,
        vec![d(HDR, 16, NEXT, 1), data, d(STATUS, 1, WRITE, 0)],
        vec![0],
        vec![header(t, sector)],
    )
}

fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..12].copy_from_slice(&len.to_le_bytes());
    b[12..14].copy_from_slice(&flags.to_le_bytes());
    b[14..16].copy_from_slice(&next.to_le_bytes());
    b
}

fn segments(t: RequestType, segs: &[DiscardSegment]) -> Scenario {
    let bytes: Vec<u8> = segs.iter().flat_map(|s| s.to_bytes()).collect();
    let len = bytes.len() as u32;
    let feats = flag::DISCARD | flag::WRITE_ZEROES;
    let mut s = simple(feats, t, 0, d(BUF, len, 0, 0));
    s.blobs.push((Addr::Raw(BUF), bytes));
    s
}

/// Every seed, by file name.
pub fn seeds() -> Vec<(&'static str, Scenario)> {
    let mut out = vec![
        (
            "read-4k",
            simple(0, RequestType::Read, 8, d(BUF, 4096, WRITE, 0)),
        ),
        (
            "write-4k-raw",
            simple(flag::RAW, RequestType::Write, 16, d(BUF, 4096, 0, 0)),
        ),
        (
            "write-through",
            simple(
                flag::WRITE_THROUGH,
                RequestType::Write,
                0,
                d(BUF, 512, 0, 0),
            ),
        ),
        (
            "write-read-only",
            simple(flag::READ_ONLY, RequestType::Write, 0, d(BUF, 512, 0, 0)),
        ),
        (
            "read-wrong-direction",
            simple(0, RequestType::Read, 0, d(BUF, 512, 0, 0)),
        ),
        (
            "read-beyond-capacity",
            simple(0, RequestType::Read, u64::MAX / 512, d(BUF, 4096, WRITE, 0)),
        ),
        (
            "read-huge-length",
            simple(0, RequestType::Read, 0, d(BUF, u32::MAX, WRITE, 0)),
        ),
        (
            "read-unaligned-length",
            simple(0, RequestType::Read, 0, d(BUF, 513, WRITE, 0)),
        ),
        (
            "get-id",
            simple(0, RequestType::GetId, 0, d(BUF, 20, WRITE, 0)),
        ),
        (
            "unknown-type",
            simple(0, RequestType::Unsupported(0x7777), 0, d(BUF, 512, 0, 0)),
        ),
        (
            "discard-2",
            segments(
                RequestType::Discard,
                &[
                    DiscardSegment {
                        sector: 0,
                        num_sectors: 8,
                        flags: 0,
                    },
                    DiscardSegment {
                        sector: 64,
                        num_sectors: 8,
                        flags: 0,
                    },
                ],
            ),
        ),
        (
            "write-zeroes-unmap",
            segments(
                RequestType::WriteZeroes,
                &[DiscardSegment {
                    sector: 8,
                    num_sectors: 16,
                    flags: 1,
                }],
            ),
        ),
    ];

    let mut flush = ring(
        flag::EVENT_IDX,
        vec![d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)],
        vec![0],
        vec![header(RequestType::Flush, 0)],
    );
    flush.used_event = 0;
    out.push(("flush-event-idx", flush));

    // The header and the status in one pair of descriptors, data folded into the header's.
    out.push((
        "write-header-and-data-in-one",
        ring(
            0,
            vec![d(HDR, 16 + 512, NEXT, 1), d(STATUS, 1, WRITE, 0)],
            vec![0],
            vec![header(RequestType::Write, 0)],
        ),
    ));

    // An indirect table with header, data and status.
    let table: Vec<u8> = [
        raw_desc(HDR, 16, NEXT, 1),
        raw_desc(BUF, 1024, NEXT | WRITE, 2),
        raw_desc(STATUS, 1, WRITE, 0),
    ]
    .concat();
    out.push((
        "indirect-read",
        ring(
            0,
            vec![d(TABLE, 48, INDIRECT, 0)],
            vec![0],
            vec![header(RequestType::Read, 0), (Addr::Raw(TABLE), table)],
        ),
    ));

    // A loop: 0 -> 1 -> 0 -> ...
    out.push((
        "loop",
        ring(
            0,
            vec![d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE | NEXT, 0)],
            vec![0],
            vec![header(RequestType::Flush, 0)],
        ),
    ));

    // A data buffer straddling two adjacent regions, another crossing the end of memory.
    let mut straddle = simple(
        flag::RAW,
        RequestType::Write,
        0,
        Desc {
            addr: Addr::RegionEnd(1, 0u64.wrapping_sub(2048)),
            len: 4096,
            flags: 0,
            next: 0,
        },
    );
    straddle.regions = vec![(RegionAt::Page(0x100), 3), (RegionAt::Adjacent, 3)];
    out.push(("straddle-adjacent-regions", straddle));
    let mut past_end = simple(
        0,
        RequestType::Read,
        0,
        Desc {
            addr: Addr::RegionEnd(2, 0u64.wrapping_sub(512)),
            len: 4096,
            flags: WRITE,
            next: 0,
        },
    );
    past_end.regions.push((RegionAt::Top(0), 0));
    out.push(("past-end-of-top-region", past_end));

    // Status byte outside guest memory; zero-length descriptors.
    let mut bad_status = simple(0, RequestType::Read, 0, d(BUF, 512, WRITE, 0));
    bad_status.descriptors[2].addr = Addr::Raw(0xdead_0000_0000);
    out.push(("status-outside-memory", bad_status));
    out.push((
        "zero-lengths",
        ring(
            0,
            vec![
                d(HDR, 0, NEXT, 1),
                d(HDR, 16, NEXT, 2),
                d(BUF, 0, WRITE | NEXT, 3),
                d(STATUS, 1, WRITE, 0),
            ],
            vec![0],
            vec![header(RequestType::Read, 0)],
        ),
    ));

    // More data descriptors than seg_max allows.
    let mut many = Scenario::new(0, 6);
    many.seg_max = 4;
    many.descriptors.push(d(HDR, 16, NEXT, 1));
    for i in 1..10u16 {
        many.descriptors
            .push(d(BUF + 512 * u64::from(i), 512, WRITE | NEXT, i + 1));
    }
    many.descriptors.push(d(STATUS, 1, WRITE, 0));
    many.heads = vec![0];
    many.avail_idx = 1;
    many.blobs = vec![header(RequestType::Read, 0)];
    out.push(("too-many-segments", many));

    // A full ring of mixed requests on the raw engine, starting near the index wrap.
    let mut full = Scenario::new(flag::RAW | flag::DISCARD, 5);
    full.next_avail = u16::MAX - 3;
    let types = [RequestType::Write, RequestType::Read, RequestType::Flush];
    for i in 0..8u16 {
        let t = types[usize::from(i) % types.len()];
        let hdr = HDR + 0x20 * u64::from(i);
        full.blobs.push((
            Addr::Raw(hdr),
            RequestHeader {
                request_type: t,
                sector: u64::from(i) * 8,
            }
            .to_bytes()
            .to_vec(),
        ));
        let base = 3 * i;
        full.descriptors.push(d(hdr, 16, NEXT, base + 1));
        let dir = if t == RequestType::Read { WRITE } else { 0 };
        let len = if t == RequestType::Flush { 0 } else { 4096 };
        full.descriptors
            .push(d(BUF + 4096 * u64::from(i), len, dir | NEXT, base + 2));
        full.descriptors.push(d(STATUS + u64::from(i), 1, WRITE, 0));
        full.heads.push(base);
    }
    full.avail_idx = full.next_avail.wrapping_add(8);
    out.push(("mixed-ring-raw", full));

    // Available index far ahead of the ring (a broken or hostile driver).
    let mut ahead = simple(flag::AVAIL_IDX, RequestType::Read, 0, d(BUF, 512, WRITE, 0));
    ahead.avail_idx = 0x8000;
    out.push(("avail-index-far-ahead", ahead));

    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Outcome, run};
    use keel_protocol::Status;

    /// The status each seed's chains end with, in completion order (`None`: nothing served).
    fn expected(name: &str) -> Option<Vec<Status>> {
        use Status::{IoErr, Ok, Unsupp};
        Some(match name {
            "read-4k"
            | "write-4k-raw"
            | "write-through"
            | "get-id"
            | "discard-2"
            | "write-zeroes-unmap"
            | "flush-event-idx"
            | "write-header-and-data-in-one"
            | "indirect-read"
            | "straddle-adjacent-regions"
            | "zero-lengths" => vec![Ok],
            "write-read-only"
            | "read-wrong-direction"
            | "read-beyond-capacity"
            | "read-unaligned-length"
            | "loop"
            | "past-end-of-top-region"
            | "too-many-segments" => vec![IoErr],
            "unknown-type" => vec![Unsupp],
            // virtio-queue ends a chain whose lengths add up past 4 GiB at the descriptor that
            // overflows, so the status byte falls past the huge buffer, outside memory.
            "status-outside-memory" | "read-huge-length" => vec![],
            "mixed-ring-raw" => vec![Ok; 8],
            "avail-index-far-ahead" => return None,
            other => panic!("no expectation for seed {other}"),
        })
    }

    #[test]
    fn every_seed_ends_as_intended() {
        for (name, scenario) in seeds() {
            let bytes = scenario.encode();
            let out: Outcome = run(&bytes);
            assert!(out.served, "{name}: queue not served");
            let statuses: Vec<Status> = out.statuses.iter().map(|&(_, s)| s).collect();
            match expected(name) {
                Some(want) => {
                    assert_eq!(statuses, want, "{name}: {out:?}");
                    assert_eq!(out.chains, want.len().max(1), "{name}");
                }
                None => assert_eq!(out.chains, 0, "{name}: {out:?}"),
            }
        }
    }

    #[test]
    fn encoding_round_trips() {
        for (name, scenario) in seeds() {
            let bytes = scenario.encode();
            assert_eq!(
                crate::chain::Scenario::decode(&bytes).encode(),
                bytes,
                "{name}"
            );
        }
    }
}
