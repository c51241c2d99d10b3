//! `keel diff --export` on an rbd disk: the diff between two RBD snapshots as a Keel export
//! file, the format `keel diff --export` writes for keel disks (`store/diff_file.rs`), so
//! `keel apply` takes either.
//!
//! The extents are those `keel diff` reports (`diff.rs`), widened to the file's 4 KiB blocks:
//! a block holding any changed byte, or only partly inside a zeroed extent, goes as data, read
//! from snapshot `TO` through a read-only handle of its own; blocks wholly zeroed go as zero
//! records. The file is produced as the control API sends it, one record at a time.

use std::io::{self, Read};

use super::image::Image;
use crate::engine::{AdminError, DiffExport};
use crate::store::diff::{Extent, ExtentKind, RUNNING};
use crate::store::diff_file::{Header, MAX_DATA_RECORD, RecordEncoder, records_len};

/// The export file's block: every extent is whole blocks of it.
pub(super) const BLOCK: u64 = 4096;
/// Tag, records, data bytes, zero bytes, crc32c.
const END_LEN: u64 = 1 + 8 + 8 + 8 + 4;

/// The export of `image` from `from` to snapshot `to`.
pub fn export(
    image: &Image,
    from: &str,
    to: &str,
    capacity: u64,
) -> Result<DiffExport, AdminError> {
    if to == RUNNING {
        return Err(AdminError::Invalid(
            "an export of an rbd disk ends at a snapshot (the head changes while it is read): \
             create one and export to it"
                .into(),
        ));
    }
    let report = super::diff::diff(image, from, to, capacity)?;
    let at = image.open_snapshot(to).map_err(super::admin_err)?;
    let disk_size = at.size().map_err(super::admin_err)?;
    if !disk_size.is_multiple_of(BLOCK) {
        return Err(AdminError::Invalid(format!(
            "snapshot {to} is {disk_size} bytes, not whole 4 KiB blocks: an export file holds \
             whole blocks"
        )));
    }
    let header = Header {
        disk_size,
        created: crate::store::now_secs(),
        from: from.to_string(),
        to: to.to_string(),
    };
    let runs = blocks(&report.extents, disk_size);
    let (encoder, head) = RecordEncoder::start(&header);
    let records: u64 = runs.iter().map(|r| records_len(r.kind, r.length)).sum();
    Ok(DiffExport {
        len: head.len() as u64 + END_LEN + records,
        reader: Box::new(Exporter {
            image: at,
            runs,
            next: 0,
            pending: head,
            sent: 0,
            encoder,
            done: false,
        }),
    })
}

/// The extents (sorted, not overlapping, in bytes) as runs of whole blocks inside `size`:
/// data wherever a block holds a data byte or is only partly zeroed, zero where a block is
/// zeroed whole. Touching runs of one kind are joined.
pub(super) fn blocks(extents: &[Extent], size: u64) -> Vec<Extent> {
    let mut runs: Vec<Extent> = Vec::new();
    let mut push = |offset: u64, end: u64, kind: ExtentKind| {
        let end = end.min(size);
        if end > offset {
            runs.push(Extent {
                offset,
                length: end - offset,
                kind,
            });
        }
    };
    for e in extents {
        let (start, end) = (e.offset, e.offset.saturating_add(e.length));
        let (down, up) = (start / BLOCK * BLOCK, end.div_ceil(BLOCK) * BLOCK);
        match e.kind {
            ExtentKind::Data => push(down, up, ExtentKind::Data),
            ExtentKind::Zero => {
                let (inner_start, inner_end) = (start.div_ceil(BLOCK) * BLOCK, end / BLOCK * BLOCK);
                if inner_start >= inner_end {
                    push(down, up, ExtentKind::Data);
                    continue;
                }
                push(down, inner_start, ExtentKind::Data);
                push(inner_start, inner_end, ExtentKind::Zero);
                push(inner_end, up, ExtentKind::Data);
            }
        }
    }
    runs.sort_by_key(|r| r.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(runs.len());
    for r in runs {
        match out.last_mut() {
            // Only data blocks can be shared by two extents (a zero run is whole blocks of one
            // zeroed extent), so an overlap is data on both sides.
            Some(last) if last.kind == r.kind && last.offset + last.length >= r.offset => {
                last.length = last.length.max(r.offset + r.length - last.offset);
            }
            _ => out.push(r),
        }
    }
    out
}

/// The file's bytes after the header: one record at a time, data read from the snapshot.
struct Exporter {
    image: Image,
    runs: Vec<Extent>,
    next: usize,
    pending: Vec<u8>,
    sent: usize,
    encoder: RecordEncoder,
    done: bool,
}

impl Exporter {
    /// Fills `pending` with the next record; false once the end record was produced.
    fn produce(&mut self) -> io::Result<bool> {
        if self.done {
            return Ok(false);
        }
        self.pending = match self.runs.get(self.next).copied() {
            None => {
                self.done = true;
                self.encoder.end()
            }
            Some(run) if run.kind == ExtentKind::Zero => {
                self.next += 1;
                self.encoder.zero(run.offset, run.length)
            }
            Some(run) => {
                // One record of at most MAX_DATA_RECORD; the rest of the run stays for later.
                let len = run.length.min(MAX_DATA_RECORD);
                let mut data = vec![0u8; len as usize];
                self.image.read_at(run.offset, &mut data)?;
                let rest = &mut self.runs[self.next];
                rest.offset += len;
                rest.length -= len;
                if rest.length == 0 {
                    self.next += 1;
                }
                self.encoder.data(run.offset, &data)
            }
        };
        self.sent = 0;
        Ok(true)
    }
}

impl Read for Exporter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.sent == self.pending.len() {
            if !self.produce()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.pending.len() - self.sent);
        buf[..n].copy_from_slice(&self.pending[self.sent..self.sent + n]);
        self.sent += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ExtentKind::{Data, Zero};

    fn ext(offset: u64, length: u64, kind: ExtentKind) -> Extent {
        Extent {
            offset,
            length,
            kind,
        }
    }

    #[test]
    fn extents_widen_to_blocks_and_partly_zeroed_blocks_go_as_data() {
        let runs = blocks(
            &[
                ext(512, 512, Data),          // inside block 0
                ext(4096 + 100, 12000, Zero), // partial block 1, whole 2, partial 3
                ext(40960, 8192, Zero),       // whole blocks 10 and 11
                ext(49152, 10, Data),         // block 12, touching the zero run
                ext(1 << 20, 4096, Zero),     // beyond the size: dropped
            ],
            60 * 1024,
        );
        assert_eq!(
            runs,
            vec![
                ext(0, 8192, Data),
                ext(8192, 4096, Zero),
                ext(12288, 4096, Data),
                ext(40960, 8192, Zero),
                ext(49152, 4096, Data),
            ]
        );
    }

    #[test]
    fn a_zeroed_extent_inside_one_block_is_that_block_as_data() {
        assert_eq!(
            blocks(&[ext(4096 + 8, 100, Zero)], 1 << 20),
            vec![ext(4096, 4096, Data)]
        );
    }

    #[test]
    fn the_header_reads_back_with_the_store_reader() {
        let header = Header {
            disk_size: 1 << 20,
            created: 7,
            from: "a".into(),
            to: "b".into(),
        };
        let (mut enc, mut file) = RecordEncoder::start(&header);
        file.extend_from_slice(&enc.end());
        let (read, totals) = crate::store::diff_file::verify(&file[..]).unwrap();
        assert_eq!((read, totals.records), (header, 0));
    }
}
