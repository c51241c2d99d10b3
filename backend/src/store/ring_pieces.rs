//! The one loop the store's rings share: pieces of I/O pushed as many at once as the ring
//! and a byte budget allow, each checked whole when it completes. The cleaner's victim reads
//! (`log::victim_read`) and the store's own writes (`ring_io`) differ only in the entry they
//! build for a piece.

use io_uring::{IoUring, squeue};
use std::io;

/// Runs pieces `0..count` on `ring`: `entry(i)` builds piece `i`'s entry and says its length
/// in bytes. At most the ring's depth, and `max_bytes` (the first piece whatever its size),
/// are in flight at once. `once` runs after the first pieces were submitted, before any is
/// waited for. Returns the pieces that did not transfer whole (in no particular order):
/// those that failed, came back short, or that the ring refused; the caller does them again
/// one by one. Returns only once nothing it pushed is in flight.
///
/// # Safety
/// Every buffer an entry names must stay valid (and, for a read, not otherwise touched)
/// until this returns, and the file descriptor open.
pub(in crate::store) unsafe fn run_pieces(
    ring: &mut IoUring,
    count: usize,
    max_bytes: usize,
    entry: &mut dyn FnMut(usize) -> (squeue::Entry, usize),
    once: &mut Option<&mut dyn FnMut()>,
    what: &str,
) -> Vec<usize> {
    let depth = ring.params().sq_entries() as usize;
    let mut lens = vec![0usize; count];
    let mut failed = Vec::new();
    let (mut next, mut in_flight, mut queued) = (0, 0usize, 0usize);
    while next < count || in_flight > 0 {
        while next < count && in_flight < depth {
            let (e, len) = entry(next);
            if in_flight > 0 && queued + len > max_bytes {
                break;
            }
            // SAFETY: the caller keeps every buffer an entry names valid until this returns,
            // which it does only once nothing pushed here is in flight.
            if unsafe { ring.submission().push(&e.user_data(next as u64)) }.is_err() {
                break;
            }
            lens[next] = len;
            next += 1;
            in_flight += 1;
            queued += len;
        }
        if in_flight == 0 {
            // Nothing went in (the ring refused an entry into an empty queue): the rest go
            // one by one rather than wait for nothing.
            failed.extend(next..count);
            break;
        }
        if let Some(f) = once.take() {
            if let Err(e) = ring.submit()
                && e.kind() != io::ErrorKind::Interrupted
            {
                log::debug!("submitting {what}: {e}");
            }
            f();
        }
        if let Err(e) = ring.submit_and_wait(1) {
            // Pieces in flight still use their buffers: wait for them whatever the error.
            if e.kind() != io::ErrorKind::Interrupted {
                log::debug!("waiting for {what}: {e}");
            }
            continue;
        }
        for cqe in ring.completion() {
            in_flight -= 1;
            let i = cqe.user_data() as usize;
            queued -= lens[i];
            if cqe.result() < 0 || cqe.result() as usize != lens[i] {
                failed.push(i);
            }
        }
    }
    failed
}
