//! How the store issues the device writes of one batch.
//!
//! A batch's data runs and its journal record are independent writes: the record carries the
//! data's checksums, so recovery can tell a record whose data never landed (it is torn and
//! discarded). They are therefore issued together and the batch completes when all are done.
//! [`DeviceIo`] does that one write after another through any [`BlockDevice`]; a queue with
//! its own io_uring (engine `keel`) submits them in one system call instead.

use crate::device::BlockDevice;
use std::io;

/// Issues a set of independent writes and returns when every one has finished.
pub trait BatchIo {
    /// Writes each `(byte offset, bytes)`; the buffers are block-aligned.
    fn write_all(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()>;
}

/// Writes through the [`BlockDevice`], one after another.
pub struct DeviceIo<'a>(pub &'a dyn BlockDevice);

impl BatchIo for DeviceIo<'_> {
    fn write_all(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        for (offset, bytes) in writes {
            self.0.write_at(bytes, *offset)?;
        }
        Ok(())
    }
}
