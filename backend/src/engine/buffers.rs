//! A request's data buffers in guest memory, checked once and then handed to an engine.
//!
//! The vhost layer builds a [`GuestBuffers`] from descriptor addresses that it has checked
//! against the guest's memory map. An engine can then either copy bytes in and out through the
//! safe accessors, or pass [`GuestBuffers::iovecs`] to the kernel for zero-copy I/O. The
//! buffers hold a reference to the memory map, so the guest's regions stay mapped for as long as
//! the request is in flight even if the frontend replaces its memory table meanwhile.

use std::sync::Arc;

use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// The guest memory map Keel works with (no dirty-page bitmap: no live migration logging).
pub type GuestMemory = GuestMemoryMmap<()>;

/// Why a guest range could not become a buffer.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum BufferError {
    #[error("guest range {addr:#x}+{len} is outside guest memory")]
    OutsideGuestMemory { addr: u64, len: u32 },
}

/// One contiguous piece of host-mapped guest memory.
#[derive(Clone, Copy, Debug)]
struct Segment {
    ptr: *mut u8,
    len: usize,
}

/// Data buffers of one request, as host iovecs into guest memory.
#[derive(Debug)]
pub struct GuestBuffers {
    /// On the heap on purpose: the array keeps its address when the request moves (into an
    /// engine's in-flight table, say), so iovec pointers handed to the kernel stay valid.
    iovecs: Vec<libc::iovec>,
    len: usize,
    /// Keeps every region the iovecs point into mapped.
    _memory: Option<Arc<GuestMemory>>,
}

// SAFETY: the iovecs point into mappings owned by `_memory` (kept alive by the Arc); nothing in
// this type is tied to the creating thread, and shared access only reads the pointer values.
unsafe impl Send for GuestBuffers {}
// SAFETY: `&GuestBuffers` only exposes reads of guest memory and the iovec values.
unsafe impl Sync for GuestBuffers {}

impl GuestBuffers {
    /// No data (flush, get-id without room, discard ranges carried elsewhere).
    pub fn empty() -> Self {
        Self {
            iovecs: Vec::new(),
            len: 0,
            _memory: None,
        }
    }

    /// Maps guest ranges to host memory, checking that each lies inside `memory`.
    ///
    /// A range that crosses from one guest region into the next becomes several iovecs.
    pub fn from_guest(
        memory: &Arc<GuestMemory>,
        ranges: impl IntoIterator<Item = (GuestAddress, u32)>,
    ) -> Result<Self, BufferError> {
        let mut iovecs = Vec::with_capacity(2);
        let mut total = 0usize;
        for (addr, len) in ranges {
            if len == 0 {
                continue;
            }
            let outside = BufferError::OutsideGuestMemory { addr: addr.0, len };
            let mut covered = 0usize;
            for slice in memory.get_slices(addr, len as usize) {
                let slice = slice.map_err(|_| outside.clone())?;
                let seg = Segment {
                    ptr: slice.ptr_guard_mut().as_ptr(),
                    len: slice.len(),
                };
                covered += seg.len;
                iovecs.push(libc::iovec {
                    iov_base: seg.ptr.cast(),
                    iov_len: seg.len,
                });
            }
            if covered != len as usize {
                return Err(outside);
            }
            total += covered;
        }
        Ok(Self {
            iovecs,
            len: total,
            _memory: Some(Arc::clone(memory)),
        })
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The iovecs for vectored system calls or io_uring. The memory they describe, and the
    /// array itself, stay valid and in place while `self` lives, even if `self` is moved; the
    /// caller must not keep them past that.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iovecs
    }

    /// Copies the buffers' bytes into `dst` (e.g. to checksum or store them); returns bytes copied.
    pub fn read_into(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for iov in &self.iovecs {
            let n = iov.iov_len.min(dst.len() - done);
            if n == 0 {
                break;
            }
            // SAFETY: `iov` lies inside a mapping kept alive by `_memory` (checked at
            // construction); `dst[done..done + n]` is in bounds; guest memory never overlaps a
            // Rust-owned slice.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    iov.iov_base.cast::<u8>(),
                    dst.as_mut_ptr().add(done),
                    n,
                )
            };
            done += n;
        }
        done
    }

    /// Copies `src` into the buffers (e.g. read data coming back from storage); returns bytes copied.
    pub fn write_from(&mut self, src: &[u8]) -> usize {
        let mut done = 0;
        for iov in &self.iovecs {
            let n = iov.iov_len.min(src.len() - done);
            if n == 0 {
                break;
            }
            // SAFETY: as in `read_into`, with source and destination swapped.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr().add(done), iov.iov_base.cast::<u8>(), n)
            };
            done += n;
        }
        done
    }

    /// Zeroes every byte (a read of unwritten storage).
    pub fn fill_zero(&mut self) {
        for iov in &self.iovecs {
            // SAFETY: `iov` lies inside a live mapping (see `read_into`).
            unsafe { std::ptr::write_bytes(iov.iov_base.cast::<u8>(), 0, iov.iov_len) };
        }
    }

    /// Whether every iovec's address and length are multiples of `align` (O_DIRECT's rule).
    pub fn is_aligned(&self, align: usize) -> bool {
        self.iovecs
            .iter()
            .all(|v| (v.iov_base as usize).is_multiple_of(align) && v.iov_len % align == 0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// Guest regions [0x10000, 0x30000) (two adjacent mappings) and [0x50000, 0x60000).
    pub(crate) fn two_region_memory() -> Arc<GuestMemory> {
        Arc::new(
            GuestMemory::from_ranges(&[
                (GuestAddress(0x10000), 0x10000),
                (GuestAddress(0x20000), 0x10000),
                (GuestAddress(0x50000), 0x10000),
            ])
            .unwrap(),
        )
    }

    #[test]
    fn copies_across_ranges_and_regions() {
        let mem = two_region_memory();
        // The second range crosses from the first region into the adjacent second one.
        let ranges = [(GuestAddress(0x10000), 4), (GuestAddress(0x1fffe), 4)];
        let mut b = GuestBuffers::from_guest(&mem, ranges).unwrap();
        assert_eq!(b.len(), 8);
        assert_eq!(b.iovecs().len(), 3);
        assert_eq!(b.write_from(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), 8);
        let mut back = [0u8; 8];
        assert_eq!(b.read_into(&mut back), 8);
        assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut raw = [0u8; 4];
        mem.read_slice(&mut raw, GuestAddress(0x1fffe)).unwrap();
        assert_eq!(raw, [5, 6, 7, 8]);
        b.fill_zero();
        b.read_into(&mut back);
        assert_eq!(back, [0; 8]);
    }

    #[test]
    fn short_destination_copies_what_fits() {
        let mem = two_region_memory();
        let b = GuestBuffers::from_guest(&mem, [(GuestAddress(0x10000), 16)]).unwrap();
        let mut small = [0xffu8; 3];
        assert_eq!(b.read_into(&mut small), 3);
    }

    #[test]
    fn refuses_ranges_outside_memory() {
        let mem = two_region_memory();
        for (addr, len) in [(0x0, 1), (0x2fff0, 0x20), (0x40000, 1), (u64::MAX - 1, 4)] {
            let r = GuestBuffers::from_guest(&mem, [(GuestAddress(addr), len)]);
            assert_eq!(
                r.unwrap_err(),
                BufferError::OutsideGuestMemory { addr, len },
                "{addr:#x}+{len}"
            );
        }
    }

    #[test]
    fn alignment_check() {
        let mem = two_region_memory();
        let a = GuestBuffers::from_guest(&mem, [(GuestAddress(0x10000), 512)]).unwrap();
        assert!(a.is_aligned(512));
        let b = GuestBuffers::from_guest(&mem, [(GuestAddress(0x10001), 512)]).unwrap();
        assert!(!b.is_aligned(512));
    }
}
