//! [`MirrorDevice`]: a [`BlockDevice`] over N component devices.
//!
//! Writes go to every component that receives writes (and to a delta component during
//! maintenance) and are acknowledged once all of them have them; a component that fails while
//! another one succeeds is taken out, and the survivors start a tracking bitmap for it, made
//! durable before the writes it covers. Reads go to the lowest-numbered component that holds
//! current data for the range, falling over to the next on error.
//!
//! The state behind it and its locks are in `shared`; the paths in `open`, `write`, `read`.

use super::chunk_bitmap::ChunkBitmap;
use super::error::MirrorError;
use super::shared::Shared;
use crate::device::{BlockDevice, check_range};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A mirrored block device. Cheap to share: clone the `Arc` it usually lives in.
pub struct MirrorDevice {
    pub(super) shared: Arc<Shared>,
}

impl MirrorDevice {
    /// The disk's name, as logs and events give it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Sets the resync byte rate (0: unlimited); a resync running now uses it from its next
    /// chunk.
    pub fn set_resync_rate(&self, bytes_per_sec: u64) {
        self.shared.options.resync_rate.set(bytes_per_sec);
    }

    /// LSN of the last write handed out.
    pub fn lsn(&self) -> u64 {
        self.shared.clock.last()
    }

    /// Chunk (tracking-bitmap) size in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.shared.chunk_size
    }

    /// Components waiting for or in a resync.
    pub fn pending_resyncs(&self) -> Vec<usize> {
        let st = self.shared.lock_state();
        st.view
            .components
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state.is_catching_up())
            .map(|(i, _)| i)
            .collect()
    }

    /// Shuts the mirror down cleanly: flushes, and clears the write-intent bitmap so the next
    /// open has nothing to reconcile. Without it (a crash), the next open resyncs the chunks
    /// that had writes in flight.
    pub fn close(self) -> Result<(), MirrorError> {
        self.shut_down()
    }

    /// What [`close`](Self::close) does, for an owner that holds the device in an `Arc` and
    /// stops using it (an engine being dropped). Writes after it set intent bits again.
    pub fn shut_down(&self) -> Result<(), MirrorError> {
        let s = &self.shared;
        s.flush_all()
            .map_err(|e| MirrorError::io("flushing at close", e))?;
        let _gate = s.write_gate();
        let mut st = s.lock_state();
        if !st.view.intent.is_clear() {
            let chunks = st.view.chunks();
            st.view.intent = ChunkBitmap::new(chunks);
            s.persist(&mut st)?;
        }
        Ok(())
    }

    /// Component `n`'s data path, as the set records it.
    pub fn component_path(&self, n: usize) -> Option<PathBuf> {
        let st = self.shared.lock_state();
        st.view.components.get(n).map(|c| PathBuf::from(&c.path))
    }
}

impl BlockDevice for MirrorDevice {
    fn len(&self) -> u64 {
        self.shared.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.shared.len, offset, buf.len() as u64)?;
        self.shared.check_healthy()?;
        if buf.is_empty() {
            return Ok(());
        }
        let _req = self.shared.guest.begin();
        let _gate = self.shared.read_gate();
        self.shared.read_range(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.shared.check_healthy()?;
        self.shared.write_like(Some(buf), offset, buf.len() as u64)
    }

    fn flush(&self) -> io::Result<()> {
        self.shared.check_healthy()?;
        self.shared.flush_all()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.shared.check_healthy()?;
        self.shared.write_like(None, offset, len)
    }
}
