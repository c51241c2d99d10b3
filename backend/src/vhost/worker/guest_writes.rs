//! The worker's own writes into guest memory (status bytes, used-ring entries) and the dirty-log
//! marks that follow every write keeld makes there while a live migration logs them: these, the
//! read data engines put in guest buffers (marked when the request completes), and the used
//! ring's flags and event index the notification calls write.

use keel_protocol::Status;
use log::warn;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::super::dirty_log::LogView;
use super::super::inflight::QueueInflight;
use crate::engine::GuestMemory;

/// Bytes of a split ring's used ring: flags, index, `size` entries, the avail event.
fn used_ring_bytes(size: u16) -> u64 {
    4 + 8 * u64::from(size) + 2
}

/// Marks the used ring (after keeld wrote it: an entry, the index, flags or the avail event).
pub(super) fn mark_used_ring(queue: &Queue, log: &mut LogView) {
    if let Some(log) = log.current() {
        log.mark(queue.used_ring(), used_ring_bytes(queue.size()));
    }
}

/// Marks guest ranges keeld (or the kernel for it) has written.
pub(super) fn mark_ranges(ranges: &[(GuestAddress, u32)], log: &mut LogView) {
    if let Some(log) = log.current() {
        for &(addr, len) in ranges {
            log.mark(addr.0, u64::from(len));
        }
    }
}

/// Puts a chain on the used ring, keeping the inflight area (if any) in step.
pub(super) fn put_used(
    inflight: Option<&QueueInflight>,
    queue: &mut Queue,
    mem: &GuestMemory,
    head: u16,
    len: u32,
    (disk, index): (&str, usize),
    log: &mut LogView,
) {
    if let Some(track) = inflight {
        track.before_used(head);
    }
    if let Err(e) = queue.add_used(mem, head, len) {
        warn!("{disk} q{index}: add_used: {e}");
    }
    mark_used_ring(queue, log);
    if let Some(track) = inflight {
        track.after_used(head, queue.next_used());
    }
}

/// Writes a request's status byte and marks it.
pub(super) fn write_status(
    mem: &GuestMemory,
    addr: GuestAddress,
    status: Status,
    log: &mut LogView,
) {
    // The parser checked the address; a failure here means the map changed, and the guest that
    // changed it gets no status, which is all it could expect.
    let _ = mem.write_obj(status.to_raw(), addr);
    mark_ranges(&[(addr, 1)], log);
}
