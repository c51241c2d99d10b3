//! Guest memory for fuzzing: every region sits between inaccessible guard pages.
//!
//! With plain anonymous mappings an access a few bytes past a region may land in another
//! mapping and go unnoticed. Here each region is carved out of a larger `PROT_NONE` reservation,
//! so any host access outside the guest's regions faults at once and libFuzzer reports it.

use std::sync::Arc;

use keel_backend::engine::GuestMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion};

/// Host page size assumed for guards and region sizes.
pub const PAGE: u64 = 4096;

/// One reservation: guard page, region, guard page.
struct Reservation {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Reservation {
    /// Reserves `size` accessible bytes between two guard pages.
    fn new(size: usize) -> Option<Self> {
        let page = PAGE as usize;
        let len = size.checked_add(2 * page)?;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; no existing
        // memory is affected. The result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let res = Self { ptr, len };
        // SAFETY: `ptr + page .. ptr + page + size` lies inside the reservation just made.
        let rc = unsafe {
            libc::mprotect(
                res.region_ptr().cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        (rc == 0).then_some(res)
    }

    fn region_ptr(&self) -> *mut u8 {
        // In bounds: the reservation is at least two pages long.
        self.ptr.cast::<u8>().wrapping_add(PAGE as usize)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the reservation made in `new`; `GuardedMemory` drops its guest
        // memory (the only user of these addresses) before its reservations.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// Guest memory whose regions are fenced by guard pages.
pub struct GuardedMemory {
    // Declared first so it is dropped before the reservations it points into.
    memory: Arc<GuestMemory>,
    reservations: Vec<Reservation>,
}

impl GuardedMemory {
    /// Maps `ranges` (guest address, bytes; sizes multiples of [`PAGE`]). `None` if they overlap,
    /// overflow the address space or cannot be mapped.
    pub fn new(ranges: &[(GuestAddress, usize)]) -> Option<Self> {
        let mut sorted = ranges.to_vec();
        sorted.sort_by_key(|r| r.0);
        let mut reservations = Vec::with_capacity(sorted.len());
        let mut regions = Vec::with_capacity(sorted.len());
        for &(addr, size) in &sorted {
            if size == 0 || !(size as u64).is_multiple_of(PAGE) {
                return None;
            }
            let res = Reservation::new(size)?;
            // SAFETY: `region_ptr()..+size` is a readable and writable private mapping that
            // stays mapped until `res` is dropped, which happens only after the guest memory
            // built here is gone (field order of `GuardedMemory`, and the check in `Drop`).
            let mapping = unsafe {
                MmapRegion::<()>::build_raw(
                    res.region_ptr(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                )
            }
            .ok()?;
            reservations.push(res);
            regions.push(GuestRegionMmap::new(mapping, addr)?);
        }
        let memory = Arc::new(GuestMemory::from_regions(regions).ok()?);
        Some(Self {
            memory,
            reservations,
        })
    }

    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// Host address ranges (start, length) of the guest's regions.
    pub fn host_ranges(&self) -> Vec<(usize, usize)> {
        self.memory
            .iter()
            .map(|r| (r.as_ptr() as usize, r.len() as usize))
            .collect()
    }

    /// Whether every iovec lies inside one of the guest's regions.
    pub fn contains_iovecs(&self, iovecs: &[libc::iovec]) -> bool {
        let host = self.host_ranges();
        iovecs.iter().all(|v| {
            let start = v.iov_base as usize;
            host.iter().any(|&(base, len)| {
                start >= base
                    && start
                        .checked_add(v.iov_len)
                        .is_some_and(|e| e <= base + len)
            })
        })
    }
}

impl Drop for GuardedMemory {
    fn drop(&mut self) {
        if Arc::strong_count(&self.memory) > 1 {
            // Someone still holds buffers into these regions: leaking the mappings is the only
            // sound choice (the harness asserts this never happens).
            std::mem::forget(std::mem::take(&mut self.reservations));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn regions_are_usable_and_fenced() {
        let g = GuardedMemory::new(&[(GuestAddress(0x10000), 0x2000), (GuestAddress(0x0), 0x1000)])
            .unwrap();
        let mem = g.memory();
        mem.write_obj(0xabu8, GuestAddress(0x11fff)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x11fff)).unwrap(), 0xab);
        assert!(mem.write_obj(0u8, GuestAddress(0x12000)).is_err());
        let host = g.host_ranges();
        assert_eq!(host.len(), 2);
        let (base, len) = host[1];
        let inside = libc::iovec {
            iov_base: base as *mut _,
            iov_len: len,
        };
        let past = libc::iovec {
            iov_base: (base + 1) as *mut _,
            iov_len: len,
        };
        assert!(g.contains_iovecs(&[inside]));
        assert!(!g.contains_iovecs(&[past]));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        assert!(
            GuardedMemory::new(&[(GuestAddress(0), 0x2000), (GuestAddress(0x1000), 0x1000)])
                .is_none()
        );
    }
}
