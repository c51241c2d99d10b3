//! The driver's memory: one memfd, mapped here and handed to the server, so rings, request
//! headers and I/O buffers are all visible to both sides without a copy.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

use crate::error::{Error, Result};

/// The guest-physical address the memfd starts at. Not zero, so that a zero address in a
/// descriptor is always a bug rather than the first byte of the region.
pub const GUEST_BASE: u64 = 0x10_0000;

/// Alignment of every carved area: a page, so rings and buffers never share one.
pub const PAGE: u64 = 4096;

/// The shared memory of one disk connection.
pub struct SharedMemory {
    mem: GuestMemoryMmap,
}

impl SharedMemory {
    /// Creates a memfd of `size` bytes (rounded up to a page) and maps it shared.
    pub fn new(size: u64) -> Result<Self> {
        let size = round_up(size.max(PAGE), PAGE);
        let file = create_memfd(c"keel-client")?;
        file.set_len(size)
            .map_err(|e| Error::Memory(format!("sizing memfd to {size} bytes: {e}")))?;
        let len = usize::try_from(size)
            .map_err(|_| Error::Memory(format!("{size} bytes do not fit in memory")))?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(GUEST_BASE),
            len,
            Some(FileOffset::new(file, 0)),
        )
        .map_err(|e| Error::Memory(format!("mapping memfd: {e}")))?;
        let mem = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| Error::Memory(format!("building guest memory: {e}")))?;
        Ok(Self { mem })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Bytes mapped.
    pub fn size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }

    /// The regions as vhost-user describes them (fd, guest address, our own virtual address).
    pub fn region_infos(&self) -> Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|e| Error::Memory(format!("describing region: {e}")))
            })
            .collect()
    }

    /// Our own virtual address of a guest address: vhost-user ring addresses are given this way.
    pub fn host_address(&self, addr: GuestAddress) -> Result<u64> {
        self.mem
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|e| Error::Memory(format!("address {:#x}: {e}", addr.0)))
    }
}

/// Hands out consecutive page-aligned areas of the shared memory while the layout is built.
pub struct Carver {
    next: u64,
    end: u64,
}

impl Carver {
    pub fn new(size: u64) -> Self {
        Self {
            next: GUEST_BASE,
            end: GUEST_BASE + size,
        }
    }

    /// Bytes `take` would need for these lengths (each rounded to a page).
    pub fn pages(len: u64) -> u64 {
        round_up(len, PAGE)
    }

    pub fn take(&mut self, len: u64) -> Result<GuestAddress> {
        let start = self.next;
        let next = start
            .checked_add(round_up(len, PAGE))
            .filter(|&n| n <= self.end)
            .ok_or_else(|| Error::Memory(format!("layout overflows: {len} bytes at {start:#x}")))?;
        self.next = next;
        Ok(GuestAddress(start))
    }

    /// The rest of the memory, as (start, length).
    pub fn rest(&self) -> (GuestAddress, u64) {
        (GuestAddress(self.next), self.end - self.next)
    }
}

pub const fn round_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

fn create_memfd(name: &CStr) -> Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string and the flags are constants; the call has
    // no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memory(format!(
            "memfd_create: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just returned by memfd_create, is valid and owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memfd_region_is_shared_and_described() {
        let shm = SharedMemory::new(3 * PAGE + 1).unwrap();
        assert_eq!(shm.size(), 4 * PAGE);
        shm.memory()
            .write_obj(0xabcdu16, GuestAddress(GUEST_BASE + 10))
            .unwrap();
        let infos = shm.region_infos().unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].guest_phys_addr, GUEST_BASE);
        assert_eq!(infos[0].memory_size, 4 * PAGE);
        assert!(infos[0].mmap_handle >= 0);
        let host = shm.host_address(GuestAddress(GUEST_BASE + 10)).unwrap();
        assert_eq!(host, infos[0].userspace_addr + 10);
    }

    #[test]
    fn carver_aligns_and_refuses_overflow() {
        let mut c = Carver::new(3 * PAGE);
        assert_eq!(c.take(10).unwrap(), GuestAddress(GUEST_BASE));
        assert_eq!(c.take(PAGE + 1).unwrap(), GuestAddress(GUEST_BASE + PAGE));
        assert!(c.take(1).is_err());
        assert_eq!(c.rest().1, 0);
    }
}
