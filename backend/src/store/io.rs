//! How the store issues the device writes of one batch.
//!
//! A batch's data runs and its journal record are independent writes: the record carries the
//! data's checksums, so recovery can tell a record whose data never landed (it is torn and
//! discarded). They are therefore issued together and the batch completes when all are done.
//! While they are in flight the batch applies its map changes (`meanwhile`), so the tree
//! updates overlap the device. [`DeviceIo`] does the writes one after another through any
//! [`BlockDevice`]; a queue with its own io_uring (engine `keel`) submits them in one system
//! call instead and runs `meanwhile` before it waits.

use crate::device::BlockDevice;
use std::io;

/// Issues a set of independent writes and returns when every one has finished.
pub trait BatchIo {
    /// Writes each `(byte offset, bytes)` (block-aligned buffers), calls `meanwhile` exactly
    /// once, whatever happens to the writes, and returns when every write has finished.
    fn write_all_while(
        &mut self,
        writes: &[(u64, &[u8])],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()>;

    /// Writes each `(byte offset, bytes)` and returns when every one has finished.
    fn write_all(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        self.write_all_while(writes, &mut || {})
    }
}

/// Writes through the [`BlockDevice`], one after another.
pub struct DeviceIo<'a>(pub &'a dyn BlockDevice);

impl BatchIo for DeviceIo<'_> {
    fn write_all_while(
        &mut self,
        writes: &[(u64, &[u8])],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let written = writes
            .iter()
            .try_for_each(|(offset, bytes)| self.0.write_at(bytes, *offset));
        meanwhile();
        written
    }
}
