//! The driver's memory: one memfd, mapped here and handed to the server, so rings, request
//! headers and I/O buffers are all visible to both sides without a copy.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    AtomicAccess, ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend,
    GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress,
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

/// Checked access to the driver's single memory region, without the region lookup of
/// `GuestMemoryMmap`: every access is one bounds check and one volatile copy or atomic
/// operation. This is the data path's view of the memory; cloning it is cheap.
#[derive(Clone)]
pub struct SharedRegion {
    region: Arc<GuestRegionMmap>,
    start: u64,
    len: u64,
}

impl SharedRegion {
    /// The view of `mem`, which must consist of exactly one region.
    pub fn new(mem: &GuestMemoryMmap) -> Result<Self> {
        let mut regions = mem.iter();
        let (Some(r), None) = (regions.next(), regions.next()) else {
            return Err(Error::Memory(
                "the driver needs exactly one memory region".into(),
            ));
        };
        let region = GuestRegionMmap::with_arc(r.get_mmap(), r.start_addr())
            .ok_or_else(|| Error::Memory("region address overflows".into()))?;
        Ok(Self {
            start: r.start_addr().0,
            len: r.len(),
            region: Arc::new(region),
        })
    }

    fn at(&self, addr: GuestAddress, len: usize) -> Result<MemoryRegionAddress> {
        let off = addr.0.checked_sub(self.start);
        match off {
            Some(off)
                if off
                    .checked_add(len as u64)
                    .is_some_and(|end| end <= self.len) =>
            {
                Ok(MemoryRegionAddress(off))
            }
            _ => Err(Error::GuestMemory(GuestMemoryError::InvalidGuestAddress(
                addr,
            ))),
        }
    }

    pub fn write_slice(&self, buf: &[u8], addr: GuestAddress) -> Result<()> {
        Ok(self.region.write_slice(buf, self.at(addr, buf.len())?)?)
    }

    pub fn read_slice(&self, buf: &mut [u8], addr: GuestAddress) -> Result<()> {
        Ok(self.region.read_slice(buf, self.at(addr, buf.len())?)?)
    }

    pub fn write_obj<T: ByteValued>(&self, val: T, addr: GuestAddress) -> Result<()> {
        self.write_slice(val.as_slice(), addr)
    }

    pub fn read_obj<T: ByteValued>(&self, addr: GuestAddress) -> Result<T> {
        let mut v = T::zeroed();
        self.read_slice(v.as_mut_slice(), addr)?;
        Ok(v)
    }

    pub fn store<T: AtomicAccess>(
        &self,
        val: T,
        addr: GuestAddress,
        order: Ordering,
    ) -> Result<()> {
        let at = self.at(addr, std::mem::size_of::<T>())?;
        Ok(self.region.store(val, at, order)?)
    }

    pub fn load<T: AtomicAccess>(&self, addr: GuestAddress, order: Ordering) -> Result<T> {
        let at = self.at(addr, std::mem::size_of::<T>())?;
        Ok(self.region.load(at, order)?)
    }

    /// Whether both views are of the same mapping.
    pub fn same_memory(&self, other: &SharedRegion) -> bool {
        // The host addresses of the mappings: cheap (no reference counting), and equal exactly
        // when both views are of one mapping.
        std::ptr::eq(self.region.as_ptr(), other.region.as_ptr()) && self.start == other.start
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
    fn shared_region_checks_every_access() {
        let shm = SharedMemory::new(PAGE).unwrap();
        let r = SharedRegion::new(shm.memory()).unwrap();
        r.store(7u16, GuestAddress(GUEST_BASE + 2), Ordering::Release)
            .unwrap();
        assert_eq!(
            shm.memory()
                .read_obj::<u16>(GuestAddress(GUEST_BASE + 2))
                .unwrap(),
            7
        );
        assert!(
            r.read_obj::<u64>(GuestAddress(GUEST_BASE + PAGE - 4))
                .is_err()
        );
        assert!(r.write_slice(&[1], GuestAddress(GUEST_BASE - 1)).is_err());
        assert!(
            r.load::<u32>(GuestAddress(u64::MAX - 1), Ordering::Acquire)
                .is_err()
        );
        let other = SharedMemory::new(PAGE).unwrap();
        assert!(!r.same_memory(&SharedRegion::new(other.memory()).unwrap()));
        assert!(r.same_memory(&r.clone()));
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
