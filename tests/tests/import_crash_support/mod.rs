//! The import crash campaign's sources (a sparse raw file, a qcow2 chain of two layers, each
//! block's content known) and its model of what each block may read after a kill.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use keel_tests::{pattern, qcow2};

pub const BLOCK: usize = 4096;
pub const SECTOR: usize = 512;
pub const MIB: u64 = 1 << 20;
/// 48 MiB: checked whole in a few milliseconds, copied in six seconds at 8 MiB/s.
pub const SIZE: u64 = 48 * MIB;
pub const BLOCKS: u64 = SIZE / BLOCK as u64;
/// The source is laid out in extents of this many blocks: data, written zeroes or a hole.
const EXTENT_BLOCKS: u64 = 64;

/// What an extent of a generated source holds.
fn extent_kind(rng: &mut fastrand::Rng) -> u8 {
    match rng.u8(0..10) {
        0..=4 => b'd',
        5 => b'z',
        _ => b'h',
    }
}

/// A sparse raw image of `SIZE` bytes at `path`: extents of per-block patterns, of written
/// zeroes, and holes.
fn write_sparse_image(path: &Path, rng: &mut fastrand::Rng, salt: u64) {
    let file = std::fs::File::create(path).expect("create image");
    file.set_len(SIZE).expect("size image");
    for extent in 0..BLOCKS / EXTENT_BLOCKS {
        let first = extent * EXTENT_BLOCKS;
        match extent_kind(rng) {
            b'd' => {
                let data: Vec<u8> = (first..first + EXTENT_BLOCKS)
                    .flat_map(|b| pattern(salt ^ (b << 20) ^ 0x5eed, BLOCK))
                    .collect();
                file.write_all_at(&data, first * BLOCK as u64).unwrap();
            }
            b'z' => {
                let zeroes = vec![0u8; (EXTENT_BLOCKS as usize) * BLOCK];
                file.write_all_at(&zeroes, first * BLOCK as u64).unwrap();
            }
            _ => {}
        }
    }
}

/// The source of one point, made in `dir`; returns the path `import_from` names and what a
/// reader of it sees.
pub fn make_source(dir: &Path, qcow2: bool, rng: &mut fastrand::Rng) -> (&'static str, Vec<u8>) {
    let salt = rng.u64(..);
    if !qcow2 {
        write_sparse_image(&dir.join("source.img"), rng, salt);
        return ("source.img", std::fs::read(dir.join("source.img")).unwrap());
    }
    // base.qcow2 holds per-block patterns (converted from a sparse raw image); top.qcow2
    // writes over parts of it with byte patterns, zeroes a few ranges and writes a few
    // sectors less than a cluster.
    write_sparse_image(&dir.join("base.raw"), rng, salt);
    qcow2::from_raw(dir, "base.raw", "base.qcow2");
    std::fs::remove_file(dir.join("base.raw")).unwrap();
    qcow2::create_over(dir, "top.qcow2", "base.qcow2");
    let mut commands = Vec::new();
    for i in 0..10u64 {
        let blocks = rng.u64(1..=128);
        let at = rng.u64(0..BLOCKS - blocks) * BLOCK as u64;
        let len = blocks * BLOCK as u64;
        commands.push(match i % 5 {
            4 => format!("write -q -z {at} {len}"),
            _ => format!("write -q -P {} {at} {len}", 0x40 + i),
        });
    }
    for i in 0..4u64 {
        let at = rng.u64(0..SIZE / SECTOR as u64) * SECTOR as u64;
        commands.push(format!("write -q -P {} {at} {SECTOR}", 0x60 + i));
    }
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    qcow2::qemu_io(dir, "top.qcow2", &commands);
    qcow2::to_raw(dir, "top.qcow2", None, "view.raw");
    let view = std::fs::read(dir.join("view.raw")).unwrap();
    std::fs::remove_file(dir.join("view.raw")).unwrap();
    ("top.qcow2", view)
}

/// What every block may read: its durable content (the source's, or the guest's last write
/// acknowledged before a completed FLUSH) and, for blocks written since that FLUSH, the
/// content after each of those writes in order (any of them may be what survives a kill).
pub struct Model {
    pub source: Vec<u8>,
    pub durable: Vec<u8>,
    pub pending: HashMap<u64, Vec<Vec<u8>>>,
}

impl Model {
    pub fn new(source: Vec<u8>) -> Self {
        assert_eq!(source.len() as u64, SIZE);
        Self {
            durable: source.clone(),
            source,
            pending: HashMap::new(),
        }
    }

    pub fn range(block: u64) -> std::ops::Range<usize> {
        let at = block as usize * BLOCK;
        at..at + BLOCK
    }

    /// What the block holds after every write acknowledged so far.
    pub fn latest(&self, block: u64) -> Vec<u8> {
        match self.pending.get(&block).and_then(|p| p.last()) {
            Some(last) => last.clone(),
            None => self.durable[Self::range(block)].to_vec(),
        }
    }

    /// Records `data` written at `offset` within `block` (before the write is sent: once
    /// sent, it may land).
    pub fn write(&mut self, block: u64, offset: usize, data: &[u8]) {
        let mut content = self.latest(block);
        content[offset..offset + data.len()].copy_from_slice(data);
        self.pending.entry(block).or_default().push(content);
    }

    /// A completed FLUSH: every acknowledged write is durable.
    pub fn flushed(&mut self) {
        for (block, states) in std::mem::take(&mut self.pending) {
            let last = states.last().expect("a pending block has a write");
            self.durable[Self::range(block)].copy_from_slice(last);
        }
    }

    pub fn allowed(&self, block: u64, got: &[u8]) -> bool {
        got == &self.durable[Self::range(block)]
            || self
                .pending
                .get(&block)
                .is_some_and(|p| p.iter().any(|c| c == got))
    }

    /// Why `got` is wrong for `block`, in words.
    pub fn describe(&self, block: u64, got: &[u8]) -> String {
        let source = &self.source[Self::range(block)];
        let what = if got == source {
            "the source's content (stale)"
        } else if got.iter().all(|b| *b == 0) {
            "zeroes"
        } else {
            "something else"
        };
        let durable_is_source = self.durable[Self::range(block)] == *source;
        format!(
            "block {block}: reads {what}; durable content is {}, {} writes since the last FLUSH",
            if durable_is_source {
                "the source's"
            } else {
                "a guest write"
            },
            self.pending.get(&block).map_or(0, Vec::len)
        )
    }
}
