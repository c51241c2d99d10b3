//! A disk's queue while its import copies: requests run to completion on the store, and blocks
//! not yet moved come from the source.
//!
//! A block is final when it lies below the import cursor or the running point maps it. Reads
//! of other blocks go to the source, which is not asked for the data of blocks it reports as
//! zeroes (a raw file's holes, NBD block status). Writes go to the container; a write that covers a block
//! only in part first brings that block from the source (write-if-absent, so a racing guest
//! write still wins). Discards and write-zeroes become writes of zero blocks, which map the
//! blocks: an unmapped block above a cursor that a crash may have moved back would otherwise
//! be read from the source again.

use std::sync::Arc;

use super::Import;
use crate::engine::keel::store_err;
use crate::engine::sync_queue::RunRequest;
use crate::engine::{ByteRange, EngineError, IoOp, IoRequest};
use crate::store::Op;
use crate::store::layout::BLOCK;

/// Zero bytes written per batch for a discard or write-zeroes (1024 blocks: one record).
const ZERO_CHUNK: usize = 4 << 20;

pub struct ImportQueue {
    import: Arc<Import>,
    writer: usize,
    zeroes: Vec<u8>,
}

fn source_err(op: &'static str, e: std::io::Error) -> EngineError {
    EngineError::Io { op, source: e }
}

impl ImportQueue {
    pub fn new(import: Arc<Import>, writer: usize) -> Self {
        Self {
            import,
            writer,
            zeroes: Vec::new(),
        }
    }

    /// Whether block `lba` is still to come from the source.
    fn unmoved(&self, lba: u64, cursor: Option<u64>) -> bool {
        cursor.is_some_and(|c| lba >= c) && !self.import.store.is_mapped(lba)
    }

    fn read(&self, offset: u64, req: &mut IoRequest) -> Result<(), EngineError> {
        let store = &self.import.store;
        let len = req.buffers.len() as u64;
        let first = offset / BLOCK;
        let last = (offset + len).div_ceil(BLOCK);
        // Which blocks the source serves is decided before the container is read: a block
        // written meanwhile then reads as before the write, never as zeroes.
        let cursor = store.import_cursor();
        let from_source: Vec<u64> = (first..last).filter(|l| self.unmoved(*l, cursor)).collect();
        let mut data = vec![0u8; ((last - first) * BLOCK) as usize];
        store
            .read(first * BLOCK, &mut data)
            .map_err(|e| store_err("read", e))?;
        if !from_source.is_empty() {
            match self.import.source() {
                Some(source) => {
                    // Runs of consecutive blocks, each one request (and one block status).
                    let mut i = 0;
                    while i < from_source.len() {
                        let start = from_source[i];
                        let run = from_source[i..]
                            .iter()
                            .enumerate()
                            .take_while(|(k, l)| **l == start + *k as u64)
                            .count();
                        let at = ((start - first) * BLOCK) as usize;
                        let bytes = &mut data[at..at + run * BLOCK as usize];
                        let read = source
                            .read_sparse(bytes, start * BLOCK)
                            .map_err(|e| source_err("read", e))?;
                        self.import.progress.note_source_read(read.read_bytes);
                        i += run;
                    }
                }
                // The copy finished meanwhile: every block is in the container now.
                None => store
                    .read(first * BLOCK, &mut data)
                    .map_err(|e| store_err("read", e))?,
            }
        }
        let skip = (offset - first * BLOCK) as usize;
        req.buffers.write_from(&data[skip..skip + len as usize]);
        Ok(())
    }

    /// Brings the blocks `[offset, offset + len)` covers only in part in from the source, so
    /// the store's read-modify-write merges into the source's bytes.
    fn bring_edges(&self, offset: u64, len: u64, op: &'static str) -> Result<(), EngineError> {
        let cursor = self.import.store.import_cursor();
        let end = offset + len;
        let mut edges = Vec::new();
        if !offset.is_multiple_of(BLOCK) || len < BLOCK {
            edges.push(offset / BLOCK);
        }
        if !end.is_multiple_of(BLOCK) {
            edges.push(end / BLOCK);
        }
        edges.dedup();
        for lba in edges {
            if !self.unmoved(lba, cursor) {
                continue;
            }
            let Some(source) = self.import.source() else {
                return Ok(());
            };
            let mut block = vec![0u8; BLOCK as usize];
            let read = source
                .read_sparse(&mut block, lba * BLOCK)
                .map_err(|e| source_err(op, e))?;
            self.import.progress.note_source_read(read.read_bytes);
            self.import
                .store
                .fill_absent(self.writer, &[(lba, &block)])
                .map_err(|e| store_err(op, e))?;
        }
        Ok(())
    }

    fn write(&self, offset: u64, durable: bool, req: &IoRequest) -> Result<(), EngineError> {
        let len = req.buffers.len() as u64;
        self.bring_edges(offset, len, "write")?;
        let mut data = vec![0u8; len as usize];
        req.buffers.read_into(&mut data);
        let store = &self.import.store;
        store
            .write_batch(
                self.writer,
                &[Op::Write {
                    offset,
                    data: &data,
                }],
            )
            .map_err(|e| store_err("write", e))?;
        if durable {
            store.flush().map_err(|e| store_err("write", e))?;
        }
        Ok(())
    }

    fn zero(&mut self, ranges: &[ByteRange], op: &'static str) -> Result<(), EngineError> {
        let store = Arc::clone(&self.import.store);
        if store.import_cursor().is_none() {
            let ops: Vec<Op<'_>> = ranges
                .iter()
                .map(|r| Op::WriteZeroes {
                    offset: r.offset,
                    len: r.len,
                })
                .collect();
            return store
                .write_batch(self.writer, &ops)
                .map_err(|e| store_err(op, e));
        }
        if self.zeroes.is_empty() {
            self.zeroes = vec![0u8; ZERO_CHUNK];
        }
        for r in ranges {
            self.bring_edges(r.offset, r.len, op)?;
            let mut at = r.offset;
            while at < r.offset + r.len {
                let n = (r.offset + r.len - at).min(ZERO_CHUNK as u64);
                store
                    .write_batch(
                        self.writer,
                        &[Op::Write {
                            offset: at,
                            data: &self.zeroes[..n as usize],
                        }],
                    )
                    .map_err(|e| store_err(op, e))?;
                at += n;
            }
        }
        Ok(())
    }
}

impl RunRequest for ImportQueue {
    fn run(&mut self, req: &mut IoRequest) -> Result<(), EngineError> {
        self.import.progress.note_guest_io();
        match req.op {
            IoOp::Read { offset } => self.read(offset, req),
            IoOp::Write { offset, durable } => self.write(offset, durable, req),
            IoOp::Flush => self.import.store.flush().map_err(|e| store_err("flush", e)),
            IoOp::Discard { ref ranges } => {
                let ranges = ranges.clone();
                self.zero(&ranges, "discard")
            }
            IoOp::WriteZeroes { ref ranges } => {
                let ranges: Vec<ByteRange> = ranges.iter().map(|z| z.range).collect();
                self.zero(&ranges, "write-zeroes")
            }
        }
    }
}
