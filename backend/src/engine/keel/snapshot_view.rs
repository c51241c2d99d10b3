//! A snapshot of a keel disk served read-only as a disk of its own (NBD's `DISK@SNAPSHOT`).
//!
//! The snapshot's blocks are listed once, when the view opens (a diff of the snapshot against
//! the empty tree), and read by VBA: a snapshot's blocks stay where they are while it exists,
//! whatever the running disk does. A read after the snapshot was deleted fails (`EIO`), it
//! never returns other data.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::sync_queue::{RunRequest, SyncQueue};
use crate::engine::{
    ByteRange, Capabilities, Engine, EngineError, Extent, IoOp, IoRequest, QueueEngine,
};
use crate::store::diff::TreeRef;
use crate::store::layout::BLOCK;
use crate::store::{Store, StoreError};

pub struct SnapshotView {
    store: Arc<Store>,
    name: String,
    /// LBA -> VBA of every block the snapshot holds; the others read as zeroes.
    blocks: Arc<BTreeMap<u64, u64>>,
    capacity: u64,
}

fn err(op: &'static str, e: StoreError) -> EngineError {
    EngineError::Io {
        op,
        source: std::io::Error::other(e.to_string()),
    }
}

impl SnapshotView {
    pub fn open(store: Arc<Store>, name: &str) -> Result<Self, EngineError> {
        let snapshot = match store.tree_ref(name) {
            Ok(t @ TreeRef::Snapshot(_)) => t,
            Ok(_) => return Err(EngineError::Refused(format!("{name:?} is not a snapshot"))),
            Err(e) => return Err(EngineError::Refused(e.to_string())),
        };
        let diff = store
            .diff(TreeRef::Empty, snapshot)
            .map_err(|e| err("snapshot listing", e))?;
        let blocks = diff
            .blocks
            .iter()
            .filter_map(|b| b.vba.map(|v| (b.lba, v)))
            .collect();
        let capacity = store.capacity();
        Ok(Self {
            store,
            name: name.to_string(),
            blocks: Arc::new(blocks),
            capacity,
        })
    }
}

impl Engine for SnapshotView {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all_unless(true)
    }

    fn describe(&self) -> String {
        format!("snapshot {} of a keel disk (read-only)", self.name)
    }

    fn queue(&self, _index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        Ok(Box::new(SyncQueue::new(SnapshotQueue {
            store: Arc::clone(&self.store),
            blocks: Arc::clone(&self.blocks),
        })))
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn allocation(&self, range: ByteRange) -> Option<Vec<Extent>> {
        let end = range.offset.saturating_add(range.len);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = range.offset;
        while pos < end && out.len() < 1024 {
            let lba = pos / BLOCK;
            let next = ((lba + 1) * BLOCK).min(end);
            let hole = !self.blocks.contains_key(&lba);
            match out.last_mut() {
                Some(e) if e.hole == hole => e.len += next - pos,
                _ => out.push(Extent {
                    len: next - pos,
                    hole,
                }),
            }
            pos = next;
        }
        Some(out)
    }
}

/// Reads run to completion inside `submit` (a [`SyncQueue`]).
struct SnapshotQueue {
    store: Arc<Store>,
    blocks: Arc<BTreeMap<u64, u64>>,
}

impl SnapshotQueue {
    fn read(&self, offset: u64, req: &mut IoRequest) -> Result<(), EngineError> {
        let len = req.buffers.len() as u64;
        let first = offset / BLOCK;
        let last = (offset + len).div_ceil(BLOCK);
        let mut data = vec![0u8; ((last - first) * BLOCK) as usize];
        for (lba, vba) in self.blocks.range(first..last) {
            let at = ((lba - first) * BLOCK) as usize;
            self.store
                .read_vbas(&[*vba], &mut data[at..at + BLOCK as usize])
                .map_err(|e| err("snapshot read", e))?;
        }
        let skip = (offset - first * BLOCK) as usize;
        req.buffers.write_from(&data[skip..skip + len as usize]);
        Ok(())
    }
}

impl RunRequest for SnapshotQueue {
    fn run(&mut self, req: &mut IoRequest) -> Result<(), EngineError> {
        match req.op {
            IoOp::Read { offset } => self.read(offset, req),
            IoOp::Flush => Ok(()),
            ref op => Err(EngineError::ReadOnly { op: op.name() }),
        }
    }
}
