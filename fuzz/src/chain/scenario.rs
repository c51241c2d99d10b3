//! The fuzz input of a descriptor-chain run: the guest's memory map, its queue and its
//! descriptors, decoded from bytes (and encoded back, for the seeds).

use vm_memory::GuestAddress;

use crate::bytes::{Reader, Writer};
use crate::guest::PAGE;

/// The ring region: guest [0, 64 KiB), always present.
pub const RING_REGION_SIZE: u64 = 0x1_0000;
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
/// Free space in the ring region for headers, data, tables.
pub const DATA: u64 = 0x3000;
/// Size of the raw engine's image file.
pub const RAW_CAPACITY: u64 = 1 << 20;
/// Largest queue: 2^MAX_QUEUE_LOG2 descriptors.
pub const MAX_QUEUE_LOG2: u8 = 8;
const MAX_EXTRA_REGIONS: u8 = 3;
const MAX_BLOBS: u8 = 8;
const MAX_BLOB_LEN: u16 = 4096;

/// Bits of the first input byte.
pub mod flag {
    pub const WRITE_THROUGH: u8 = 1 << 0;
    pub const READ_ONLY: u8 = 1 << 1;
    pub const DISCARD: u8 = 1 << 2;
    pub const WRITE_ZEROES: u8 = 1 << 3;
    pub const EVENT_IDX: u8 = 1 << 4;
    /// Serve with the raw engine on a 1 MiB temp file instead of the null engine.
    pub const RAW: u8 = 1 << 5;
    /// Ring addresses come from the input instead of the fixed layout.
    pub const RING_ADDRS: u8 = 1 << 6;
    /// The available index comes from the input instead of following the heads.
    pub const AVAIL_IDX: u8 = 1 << 7;
}

/// How an extra guest region is placed.
#[derive(Clone, Copy, Debug)]
pub enum RegionAt {
    /// Right after the previous region (a range may straddle the two).
    Adjacent,
    /// At guest page `n`.
    Page(u32),
    /// Near the top of the 64-bit guest address space, `n` pages below the highest page.
    Top(u32),
}

/// How a guest address is written in the input: relative forms let mutations stay near the
/// interesting places (region edges) instead of landing in the unmapped void.
#[derive(Clone, Copy, Debug)]
pub enum Addr {
    Raw(u64),
    /// `DATA + offset` in the ring region.
    Data(u64),
    /// Start of region `i` (sorted by address) plus a wrapping offset.
    RegionStart(u8, u64),
    /// End of region `i` plus a wrapping offset (use `0u64.wrapping_sub(n)` to go below it).
    RegionEnd(u8, u64),
}

/// One split-ring descriptor as the guest writes it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: Addr,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// Everything a fuzz input describes.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub flags: u8,
    pub queue_log2: u8,
    /// Null engine capacity (rounded down to a sector); the raw engine has [`RAW_CAPACITY`].
    pub capacity: u64,
    pub seg_max: u16,
    pub max_discard_seg: u8,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_seg: u8,
    pub max_write_zeroes_sectors: u32,
    pub regions: Vec<(RegionAt, u8)>,
    /// Descriptor table, available ring, used ring (with [`flag::RING_ADDRS`]).
    pub ring_addrs: [Addr; 3],
    pub descriptors: Vec<Desc>,
    pub next_avail: u16,
    pub avail_idx: u16,
    pub heads: Vec<u16>,
    pub used_event: u16,
    /// Bytes written into guest memory before the queue is served.
    pub blobs: Vec<(Addr, Vec<u8>)>,
}

impl Scenario {
    /// A scenario with the fixed layout, one 16-page data region at 1 MiB, no descriptors.
    pub fn new(flags: u8, queue_log2: u8) -> Self {
        Self {
            flags,
            queue_log2,
            capacity: 1 << 30,
            seg_max: 126,
            max_discard_seg: 32,
            max_discard_sectors: 1 << 21,
            max_write_zeroes_seg: 32,
            max_write_zeroes_sectors: 1 << 21,
            regions: vec![(RegionAt::Page(0x100), 15)],
            ring_addrs: [
                Addr::Raw(DESC_TABLE),
                Addr::Raw(AVAIL_RING),
                Addr::Raw(USED_RING),
            ],
            descriptors: Vec::new(),
            next_avail: 0,
            avail_idx: 0,
            heads: Vec::new(),
            used_event: 0,
            blobs: Vec::new(),
        }
    }

    pub fn queue_size(&self) -> u16 {
        1 << (self.queue_log2 % (MAX_QUEUE_LOG2 + 1))
    }

    pub fn decode(data: &[u8]) -> Self {
        let mut r = Reader::new(data);
        let flags = r.u8();
        let queue_log2 = r.u8();
        let capacity = r.u64();
        let seg_max = r.u16();
        let max_discard_seg = r.u8();
        let max_discard_sectors = r.u32();
        let max_write_zeroes_seg = r.u8();
        let max_write_zeroes_sectors = r.u32();
        let n_regions = r.u8() % (MAX_EXTRA_REGIONS + 1);
        let regions = (0..n_regions)
            .map(|_| {
                let kind = r.u8();
                let value = r.u32();
                let pages = r.u8();
                let at = match kind % 3 {
                    0 => RegionAt::Adjacent,
                    1 => RegionAt::Page(value),
                    _ => RegionAt::Top(value),
                };
                (at, pages)
            })
            .collect();
        let ring_addrs = if flags & flag::RING_ADDRS != 0 {
            [read_addr(&mut r), read_addr(&mut r), read_addr(&mut r)]
        } else {
            [
                Addr::Raw(DESC_TABLE),
                Addr::Raw(AVAIL_RING),
                Addr::Raw(USED_RING),
            ]
        };
        let mut s = Self {
            flags,
            queue_log2,
            capacity,
            seg_max,
            max_discard_seg,
            max_discard_sectors,
            max_write_zeroes_seg,
            max_write_zeroes_sectors,
            regions,
            ring_addrs,
            descriptors: Vec::new(),
            next_avail: 0,
            avail_idx: 0,
            heads: Vec::new(),
            used_event: 0,
            blobs: Vec::new(),
        };
        let n_desc = usize::from(r.u8()).min(usize::from(s.queue_size()));
        s.descriptors = (0..n_desc)
            .map(|_| Desc {
                addr: read_addr(&mut r),
                len: r.u32(),
                flags: r.u16(),
                next: r.u16(),
            })
            .collect();
        s.next_avail = r.u16();
        let n_heads = r.u8();
        s.heads = (0..n_heads).map(|_| r.u16()).collect();
        s.avail_idx = if flags & flag::AVAIL_IDX != 0 {
            r.u16()
        } else {
            s.next_avail.wrapping_add(u16::from(n_heads))
        };
        s.used_event = r.u16();
        let n_blobs = r.u8() % (MAX_BLOBS + 1);
        for _ in 0..n_blobs {
            let addr = read_addr(&mut r);
            let len = r.u16() % (MAX_BLOB_LEN + 1);
            s.blobs.push((addr, r.bytes(usize::from(len)).to_vec()));
        }
        s
    }

    /// The bytes [`decode`](Self::decode) turns back into `self` (for seed inputs).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(self.flags)
            .u8(self.queue_log2)
            .u64(self.capacity)
            .u16(self.seg_max)
            .u8(self.max_discard_seg)
            .u32(self.max_discard_sectors)
            .u8(self.max_write_zeroes_seg)
            .u32(self.max_write_zeroes_sectors)
            .u8(self.regions.len() as u8);
        for &(at, pages) in &self.regions {
            let (kind, value) = match at {
                RegionAt::Adjacent => (0, 0),
                RegionAt::Page(n) => (1, n),
                RegionAt::Top(n) => (2, n),
            };
            w.u8(kind).u32(value).u8(pages);
        }
        if self.flags & flag::RING_ADDRS != 0 {
            for a in self.ring_addrs {
                write_addr(&mut w, a);
            }
        }
        w.u8(self.descriptors.len() as u8);
        for d in &self.descriptors {
            write_addr(&mut w, d.addr);
            w.u32(d.len).u16(d.flags).u16(d.next);
        }
        w.u16(self.next_avail).u8(self.heads.len() as u8);
        for &h in &self.heads {
            w.u16(h);
        }
        if self.flags & flag::AVAIL_IDX != 0 {
            w.u16(self.avail_idx);
        }
        w.u16(self.used_event).u8(self.blobs.len() as u8);
        for (addr, bytes) in &self.blobs {
            write_addr(&mut w, *addr);
            w.u16(bytes.len() as u16).bytes(bytes);
        }
        w.out
    }

    /// Guest ranges: the ring region, then the extra regions as placed.
    pub fn guest_ranges(&self) -> Vec<(GuestAddress, usize)> {
        let mut ranges = vec![(GuestAddress(0), RING_REGION_SIZE as usize)];
        let mut prev_end = RING_REGION_SIZE;
        for &(at, pages) in &self.regions {
            let size = (u64::from(pages % 16) + 1) * PAGE;
            let top_page = !(PAGE - 1);
            let start = match at {
                RegionAt::Adjacent => prev_end,
                RegionAt::Page(n) => u64::from(n) * PAGE,
                RegionAt::Top(n) => top_page - size - u64::from(n % 64) * PAGE,
            };
            ranges.push((GuestAddress(start), size as usize));
            prev_end = start.saturating_add(size);
        }
        ranges
    }
}

fn read_addr(r: &mut Reader<'_>) -> Addr {
    let kind = r.u8();
    let value = r.u64();
    let region = kind >> 2;
    match kind & 3 {
        0 => Addr::Raw(value),
        1 => Addr::Data(value),
        2 => Addr::RegionStart(region, value),
        _ => Addr::RegionEnd(region, value),
    }
}

fn write_addr(w: &mut Writer, a: Addr) {
    let (kind, value) = match a {
        Addr::Raw(v) => (0, v),
        Addr::Data(v) => (1, v),
        Addr::RegionStart(i, v) => (2 | (i << 2), v),
        Addr::RegionEnd(i, v) => (3 | (i << 2), v),
    };
    w.u8(kind).u64(value);
}

/// Resolves an [`Addr`] against the guest's regions (sorted by address).
pub(super) fn resolve(a: Addr, regions: &[(u64, u64)]) -> u64 {
    let region = |i: u8| regions[usize::from(i) % regions.len()];
    match a {
        Addr::Raw(v) => v,
        Addr::Data(v) => DATA + v % (RING_REGION_SIZE - DATA),
        Addr::RegionStart(i, v) => region(i).0.wrapping_add(v),
        Addr::RegionEnd(i, v) => {
            let (start, len) = region(i);
            start.wrapping_add(len).wrapping_add(v)
        }
    }
}
