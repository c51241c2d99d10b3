//! The export file of `keel diff --export` and its replay by `keel apply`: the changed
//! extents between two trees with their data, for incremental backup and restore.
//!
//! Format, version 1, all integers little-endian:
//!
//! ```text
//! header  magic "KEELDIFF" (8) | version u32 = 1 | block size u32 = 4096 | disk size u64
//!         | created u64 (seconds since the Unix epoch) | from-name length u16
//!         | to-name length u16 | reserved (24, zero) | header crc32c u32 (over the 60
//!         bytes before it and the two names)           -- 64 bytes, then the two names
//! records, each behind a one-byte tag, offsets in bytes, increasing, never overlapping:
//!   'D'   offset u64 | length u32 (whole blocks, at most 1 MiB) | crc32c u32 of the data
//!         | the data
//!   'Z'   offset u64 | length u64 (whole blocks): reads as zeroes
//!   'E'   records u64 | data bytes u64 | zero bytes u64 | crc32c u32 of every byte of the
//!         file before this field; nothing may follow
//! ```
//!
//! A reader refuses anything else: bad magic, unknown version, a wrong checksum, an extent
//! beyond the disk or out of order, a missing end record, bytes after it.

use crate::store::admin::diff::{ExtentKind, TreeDiff};
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK;
use crate::store::{Op, Store};
use std::io::{self, Read};
use std::ops::Deref;

pub const MAGIC: &[u8; 8] = b"KEELDIFF";
pub const VERSION: u32 = 1;
/// The fixed part of the header.
pub const HEADER_LEN: usize = 64;
/// Largest data record: bigger extents are split.
pub const MAX_DATA_RECORD: u64 = 1 << 20;
const TAG_DATA: u8 = b'D';
const TAG_ZERO: u8 = b'Z';
const TAG_END: u8 = b'E';
const DATA_HEAD: u64 = 1 + 8 + 4 + 4;
const ZERO_LEN: u64 = 1 + 8 + 8;
const END_LEN: u64 = 1 + 8 + 8 + 8 + 4;
/// Names are stored as given, up to this many bytes.
const MAX_NAME: usize = 255;

fn bad(detail: impl Into<String>) -> StoreError {
    StoreError::corrupt("diff file", detail)
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub disk_size: u64,
    pub created: u64,
    pub from: String,
    pub to: String,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let from = clamp(&self.from);
        let to = clamp(&self.to);
        let mut h = Vec::with_capacity(HEADER_LEN + from.len() + to.len());
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        h.extend_from_slice(&self.disk_size.to_le_bytes());
        h.extend_from_slice(&self.created.to_le_bytes());
        h.extend_from_slice(&(from.len() as u16).to_le_bytes());
        h.extend_from_slice(&(to.len() as u16).to_le_bytes());
        h.extend_from_slice(&[0u8; 24]);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h), from);
        let crc = crc32c::crc32c_append(crc, to);
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(from);
        h.extend_from_slice(to);
        h
    }

    /// Bytes the encoded header takes.
    pub fn encoded_len(&self) -> u64 {
        (HEADER_LEN + clamp(&self.from).len() + clamp(&self.to).len()) as u64
    }
}

/// Bytes the records of one extent of `kind` and `length` take (data split into records of
/// at most [`MAX_DATA_RECORD`]).
pub fn records_len(kind: ExtentKind, length: u64) -> u64 {
    match kind {
        ExtentKind::Data => length.div_ceil(MAX_DATA_RECORD) * DATA_HEAD + length,
        ExtentKind::Zero => ZERO_LEN,
    }
}

/// Encodes an export file record by record, keeping the crc of every byte so far and the
/// totals the end record carries: the one encoder of the format, for keel containers and for
/// the exports of other engines.
pub struct RecordEncoder {
    crc: u32,
    records: u64,
    data_bytes: u64,
    zero_bytes: u64,
}

impl RecordEncoder {
    /// The encoder and the header's bytes, which the file starts with.
    pub fn start(header: &Header) -> (Self, Vec<u8>) {
        let head = header.encode();
        let enc = Self {
            crc: crc32c::crc32c(&head),
            records: 0,
            data_bytes: 0,
            zero_bytes: 0,
        };
        (enc, head)
    }

    /// A data record: `data` (at most [`MAX_DATA_RECORD`] bytes) at byte `offset`.
    pub fn data(&mut self, offset: u64, data: &[u8]) -> Vec<u8> {
        debug_assert!(data.len() as u64 <= MAX_DATA_RECORD);
        let mut r = Vec::with_capacity(DATA_HEAD as usize + data.len());
        r.push(TAG_DATA);
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        r.extend_from_slice(data);
        self.data_bytes += data.len() as u64;
        self.record(r)
    }

    /// A zero record: `len` bytes at byte `offset` read as zeroes.
    pub fn zero(&mut self, offset: u64, len: u64) -> Vec<u8> {
        let mut r = Vec::with_capacity(ZERO_LEN as usize);
        r.push(TAG_ZERO);
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&len.to_le_bytes());
        self.zero_bytes += len;
        self.record(r)
    }

    /// The end record: the totals and the crc of the whole file before its own crc.
    pub fn end(&mut self) -> Vec<u8> {
        let mut r = vec![TAG_END];
        r.extend_from_slice(&self.records.to_le_bytes());
        r.extend_from_slice(&self.data_bytes.to_le_bytes());
        r.extend_from_slice(&self.zero_bytes.to_le_bytes());
        let crc = crc32c::crc32c_append(self.crc, &r);
        r.extend_from_slice(&crc.to_le_bytes());
        r
    }

    fn record(&mut self, r: Vec<u8>) -> Vec<u8> {
        self.records += 1;
        self.crc = crc32c::crc32c_append(self.crc, &r);
        r
    }
}

fn clamp(s: &str) -> &[u8] {
    let mut end = s.len().min(MAX_NAME);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4]))
}

/// Exact size of the export of `diff` under `header`: the control API sends it as the
/// Content-Length, so a cut-off transfer is noticed.
pub fn export_len(header: &Header, diff: &TreeDiff) -> u64 {
    let records: u64 = (diff.extents().iter())
        .map(|e| records_len(e.kind, e.length))
        .sum();
    header.encoded_len() + END_LEN + records
}

/// The export of a diff as a byte stream, reading each block's data from the store as it
/// goes (checked against its checksum). Works over `&Store` and `Arc<Store>`.
pub struct Exporter<S: Deref<Target = Store>> {
    store: S,
    diff: TreeDiff,
    /// Index of the next changed block to encode.
    next: usize,
    pending: Vec<u8>,
    sent: usize,
    encoder: RecordEncoder,
    done: bool,
}

impl<S: Deref<Target = Store>> Exporter<S> {
    pub fn new(store: S, header: &Header, diff: TreeDiff) -> Self {
        let (encoder, pending) = RecordEncoder::start(header);
        Self {
            store,
            diff,
            next: 0,
            pending,
            sent: 0,
            encoder,
            done: false,
        }
    }

    /// Fills `pending` with the next record; false when the end record has been produced.
    fn produce(&mut self) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        self.pending.clear();
        self.sent = 0;
        let blocks = &self.diff.blocks;
        let Some(first) = blocks.get(self.next).copied() else {
            self.pending = self.encoder.end();
            self.done = true;
            return Ok(true);
        };
        // The run of neighbours of the same kind, data runs capped at one record.
        let cap = (MAX_DATA_RECORD / BLOCK) as usize;
        let mut n = 1;
        while let Some(b) = blocks.get(self.next + n) {
            let same_kind = b.vba.is_some() == first.vba.is_some();
            if b.lba != first.lba + n as u64 || !same_kind || (first.vba.is_some() && n >= cap) {
                break;
            }
            n += 1;
        }
        let run = &blocks[self.next..self.next + n];
        let len = n as u64 * BLOCK;
        self.pending = if first.vba.is_some() {
            let vbas: Vec<u64> = run.iter().filter_map(|b| b.vba).collect();
            let mut data = vec![0u8; len as usize];
            self.store.read_vbas(&vbas, &mut data)?;
            self.encoder.data(first.lba * BLOCK, &data)
        } else {
            self.encoder.zero(first.lba * BLOCK, len)
        };
        self.next += n;
        Ok(true)
    }
}

impl<S: Deref<Target = Store>> Read for Exporter<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.sent == self.pending.len() {
            if !self.produce().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len() - self.sent);
        buf[..n].copy_from_slice(&self.pending[self.sent..self.sent + n]);
        self.sent += n;
        Ok(n)
    }
}

/// One record of an export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Data { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
}

/// What the end record confirmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
}

/// Reads and checks an export file record by record.
pub struct DiffReader<R: Read> {
    r: R,
    pub header: Header,
    crc: u32,
    /// End of the last extent: the next must start at or after it.
    pos: u64,
    seen: Totals,
    finished: bool,
}

impl<R: Read> DiffReader<R> {
    /// Reads and checks the header.
    pub fn new(mut r: R) -> Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut r, &mut h, "the header")?;
        if &h[..8] != MAGIC {
            return Err(bad("not a keel diff export (bad magic)"));
        }
        let version = le32(&h[8..]);
        if version != VERSION {
            return Err(StoreError::Unsupported(format!(
                "diff file version {version} (this keel reads version {VERSION})"
            )));
        }
        if le32(&h[12..]) as u64 != BLOCK {
            return Err(bad(format!("block size {} is not {BLOCK}", le32(&h[12..]))));
        }
        let (from_len, to_len) = (
            u16::from_le_bytes([h[32], h[33]]) as usize,
            u16::from_le_bytes([h[34], h[35]]) as usize,
        );
        if from_len > MAX_NAME || to_len > MAX_NAME {
            return Err(bad("header names are too long"));
        }
        let mut names = vec![0u8; from_len + to_len];
        read_full(&mut r, &mut names, "the header")?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..60]), &names);
        if crc != le32(&h[60..]) {
            return Err(bad("header checksum mismatch"));
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let header = Header {
            disk_size: le64(&h[16..]),
            created: le64(&h[24..]),
            from: text(&names[..from_len]),
            to: text(&names[from_len..]),
        };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h), &names);
        Ok(Self {
            r,
            header,
            crc,
            pos: 0,
            seen: Totals::default(),
            finished: false,
        })
    }

    fn take(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        read_full(&mut self.r, buf, what)?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    /// Checks that `[offset, offset + len)` is whole blocks, in order, inside the disk.
    fn check_extent(&mut self, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len);
        if len == 0 || !offset.is_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
            return Err(bad(format!("extent {offset}+{len} is not whole blocks")));
        }
        if offset < self.pos {
            return Err(bad(format!("extent at {offset} is out of order")));
        }
        match end {
            Some(e) if e <= self.header.disk_size => {
                self.pos = e;
                Ok(())
            }
            _ => Err(bad(format!(
                "extent {offset}+{len} is beyond the disk's {} bytes",
                self.header.disk_size
            ))),
        }
    }

    /// The next record, or `None` after a valid end record (then the file has ended too).
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.finished {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag, "a record (no end record)")?;
        match tag[0] {
            TAG_DATA => {
                let mut h = [0u8; 16];
                self.take(&mut h, "a data record")?;
                let (offset, len, crc) = (le64(&h), le32(&h[8..]) as u64, le32(&h[12..]));
                if len > MAX_DATA_RECORD {
                    return Err(bad(format!("data record of {len} bytes at {offset}")));
                }
                self.check_extent(offset, len)?;
                let mut data = vec![0u8; len as usize];
                self.take(&mut data, "a data record")?;
                if crc32c::crc32c(&data) != crc {
                    return Err(bad(format!("data at {offset} fails its checksum")));
                }
                self.seen.records += 1;
                self.seen.data_bytes += len;
                Ok(Some(Record::Data { offset, data }))
            }
            TAG_ZERO => {
                let mut h = [0u8; 16];
                self.take(&mut h, "a zero record")?;
                let (offset, len) = (le64(&h), le64(&h[8..]));
                self.check_extent(offset, len)?;
                self.seen.records += 1;
                self.seen.zero_bytes += len;
                Ok(Some(Record::Zero { offset, len }))
            }
            TAG_END => {
                let mut h = [0u8; 24];
                self.take(&mut h, "the end record")?;
                let want = self.crc;
                let mut c = [0u8; 4];
                read_full(&mut self.r, &mut c, "the end record")?;
                let said = Totals {
                    records: le64(&h),
                    data_bytes: le64(&h[8..]),
                    zero_bytes: le64(&h[16..]),
                };
                if u32::from_le_bytes(c) != want {
                    return Err(bad("total checksum mismatch"));
                }
                if said != self.seen {
                    return Err(bad(format!(
                        "the end record counts {said:?}, the file holds {:?}",
                        self.seen
                    )));
                }
                let mut extra = [0u8; 1];
                if self.r.read(&mut extra)? != 0 {
                    return Err(bad("bytes after the end record"));
                }
                self.finished = true;
                Ok(None)
            }
            t => Err(bad(format!("unknown record tag {t:#04x}"))),
        }
    }

    /// Totals of the records read so far (all of them once `next_record` gave `None`).
    pub fn totals(&self) -> Totals {
        self.seen
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad(format!("truncated in {what}"))
        } else {
            StoreError::Io(e)
        }
    })
}

/// True when `start` (the first 8 KiB of a file) holds a keel superblock in either slot:
/// `keel apply` then treats the file as a container, never as a raw image.
pub fn is_container_start(start: &[u8]) -> bool {
    let magic = crate::store::log::superblock::SUPERBLOCK_MAGIC;
    [0, BLOCK as usize]
        .iter()
        .any(|&at| start.get(at..at + magic.len()) == Some(magic.as_slice()))
}

/// Reads a whole export file and checks it, without applying anything.
pub fn verify<R: Read>(r: R) -> Result<(Header, Totals)> {
    let mut d = DiffReader::new(r)?;
    while d.next_record()?.is_some() {}
    Ok((d.header.clone(), d.totals()))
}

/// Where `keel apply` writes: a raw image or a keel container.
pub trait ApplyTarget {
    /// The disk size the export must be meant for.
    fn size(&self) -> u64;
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()>;
    /// Makes `[offset, offset + len)` read as zeroes.
    fn zero(&mut self, offset: u64, len: u64) -> Result<()>;
    /// Makes everything written durable.
    fn finish(&mut self) -> Result<()>;
}

/// Replays an export onto `target`. Call [`verify`] on the file first: records are applied
/// as they are read, so a file corrupt half-way would otherwise be half applied.
pub fn apply<R: Read>(r: R, target: &mut dyn ApplyTarget) -> Result<Totals> {
    let mut d = DiffReader::new(r)?;
    if d.header.disk_size != target.size() {
        return Err(StoreError::Invalid(format!(
            "the export is of a {}-byte disk, the target holds {} bytes",
            d.header.disk_size,
            target.size()
        )));
    }
    while let Some(rec) = d.next_record()? {
        match rec {
            Record::Data { offset, data } => target.write(offset, &data)?,
            Record::Zero { offset, len } => target.zero(offset, len)?,
        }
    }
    target.finish()?;
    Ok(d.totals())
}

/// Applying onto an (offline) keel container: zero extents are discards, so they take no
/// space; one batch per record.
impl ApplyTarget for Store {
    fn size(&self) -> u64 {
        self.capacity()
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_batch(0, &[Op::Write { offset, data }])
    }

    fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        // Split so one batch's unmap entries stay well inside the journal.
        let mut off = offset;
        while off < offset + len {
            let n = (offset + len - off).min(64 << 20);
            self.write_batch(
                0,
                &[Op::Discard {
                    offset: off,
                    len: n,
                }],
            )?;
            off += n;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        self.checkpoint()
    }
}

#[cfg(test)]
mod tests;
