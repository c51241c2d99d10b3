//! The shape of a set of device writes, and how the store itself issues them.
//!
//! A batch's data runs and its journal record are independent writes: the record carries the
//! data's checksums, so recovery can tell a record whose data never landed (it is torn and
//! discarded). They are therefore issued together and the batch completes when all are done.
//! A guest batch only names its writes ([`Gather`]s of a
//! [`WritePlan`](crate::store::log::write_plan::WritePlan)): whoever holds the device issues
//! them, a keel queue on its own ring for instance. A data run is gathered from the
//! guest's own (block-aligned) copies of its blocks, in block order, so the data is copied
//! once on its way to the device. [`DeviceIo`] is how the store writes through its own
//! [`BlockDevice`], one write after another: a guest batch's in [`Store::write_batch`], and
//! its own metadata (checkpoints, flush marks, snapshots). The cleaner's copies, megabytes a
//! step, go with several writes in flight ([`RingIo`](crate::store::ring_io::RingIo)).
//!
//! [`Store::write_batch`]: crate::store::Store::write_batch

use crate::device::BlockDevice;
use crate::store::AlignedBuf;
use std::io;

/// One device write: `parts` (block-aligned buffers) written in order to consecutive bytes
/// from byte `offset`.
pub type Gather<'a> = (u64, Vec<&'a [u8]>);

/// Issues a set of independent writes and returns when every one has finished.
pub(in crate::store) trait BatchIo {
    /// Issues every write, calls `meanwhile` exactly once, whatever happens to the writes,
    /// and returns when every write has finished.
    fn write_all_while(
        &mut self,
        writes: &[Gather<'_>],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()>;

    /// Writes each `(byte offset, bytes)` and returns when every one has finished.
    fn write_all(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        let gathers: Vec<Gather<'_>> = writes.iter().map(|(o, b)| (*o, vec![*b])).collect();
        self.write_all_while(&gathers, &mut || {})
    }
}

/// Writes through the [`BlockDevice`], one after another (a gathered write is assembled in
/// one buffer first: one device write per run).
///
/// Its writes are synchronous, so `meanwhile` (a record's map changes, applied in LSN order)
/// runs before them, not after: the batches reserved behind the record wait for it to be
/// applied, and would otherwise wait for its writes too. A cleaner's copy of a victim is
/// megabytes: the guest's queue, its own batch in flight, stood still until they landed.
/// Applying first is what a ring's batch does anyway (it applies while its writes are in
/// flight); readers of the blocks wait for the writes (`map::unwritten`).
pub(in crate::store) struct DeviceIo<'a>(pub &'a dyn BlockDevice);

impl BatchIo for DeviceIo<'_> {
    fn write_all_while(
        &mut self,
        writes: &[Gather<'_>],
        meanwhile: &mut dyn FnMut(),
    ) -> io::Result<()> {
        meanwhile();
        writes
            .iter()
            .try_for_each(|(offset, parts)| match &parts[..] {
                [one] => self.0.write_at(one, *offset),
                parts => {
                    let len: usize = parts.iter().map(|p| p.len()).sum();
                    let mut buf =
                        AlignedBuf::scratch(len.div_ceil(crate::store::layout::BLOCK_SIZE));
                    let mut at = 0;
                    for p in parts {
                        buf[at..at + p.len()].copy_from_slice(p);
                        at += p.len();
                    }
                    self.0.write_at(&buf[..len], *offset)
                }
            })
    }
}
