//! I/O buffers carved from the shared memory, so the server reads and writes them in place.
//!
//! A [`Buffer`] is moved into a request on submit and handed back with its completion: while
//! the device may touch it, the caller cannot. Data goes in and out by checked copies; no
//! pointer into the shared region leaves this module.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use vm_memory::GuestAddress;

use crate::error::{Error, Result};
use crate::memory::{PAGE, SharedRegion, round_up};

/// A first-fit allocator over one area of the shared memory, page-granular so every buffer
/// is page-aligned (what a server doing O_DIRECT wants).
pub struct BufferPool {
    mem: SharedRegion,
    start: u64,
    len: u64,
    /// Free extents: start -> length, never adjacent (merged on release).
    free: Mutex<BTreeMap<u64, u64>>,
}

impl BufferPool {
    pub fn new(mem: SharedRegion, start: GuestAddress, len: u64) -> Arc<Self> {
        let len = len / PAGE * PAGE;
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(start.0, len);
        }
        Arc::new(Self {
            mem,
            start: start.0,
            len,
            free: Mutex::new(free),
        })
    }

    /// Total bytes the pool manages.
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Bytes currently free.
    pub fn available(&self) -> u64 {
        self.extents().values().sum()
    }

    fn extents(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is
        // one insert/remove pair), so a poisoned lock is still safe to use.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A zero-filled buffer of `len` bytes.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<Buffer> {
        let out_of_buffers = || Error::OutOfBuffers {
            wanted: len,
            pool: self.len as usize,
        };
        if len == 0 || len > u32::MAX as usize {
            return Err(Error::InvalidRequest(format!(
                "buffer of {len} bytes (must be 1..=4 GiB-1)"
            )));
        }
        let reserved = round_up(len as u64, PAGE);
        let addr = {
            let mut free = self.extents();
            let (&start, &extent) = free
                .iter()
                .find(|&(_, &l)| l >= reserved)
                .ok_or_else(out_of_buffers)?;
            free.remove(&start);
            if extent > reserved {
                free.insert(start + reserved, extent - reserved);
            }
            start
        };
        let buf = Buffer {
            pool: Arc::clone(self),
            addr,
            len,
            reserved,
        };
        buf.pool
            .mem
            .write_slice(&vec![0u8; len], GuestAddress(addr))?;
        Ok(buf)
    }

    fn release(&self, addr: u64, reserved: u64) {
        let mut free = self.extents();
        let mut start = addr;
        let mut len = reserved;
        if let Some((&prev, &plen)) = free.range(..addr).next_back()
            && prev + plen == addr
        {
            free.remove(&prev);
            start = prev;
            len += plen;
        }
        if let Some(&nlen) = free.get(&(addr + reserved)) {
            free.remove(&(addr + reserved));
            len += nlen;
        }
        free.insert(start, len);
    }

    fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.start && addr + len <= self.start + self.len
    }
}

/// A buffer in the shared memory. Dropping it gives its pages back to the pool.
pub struct Buffer {
    pool: Arc<BufferPool>,
    addr: u64,
    len: usize,
    reserved: u64,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish()
    }
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize) -> Result<GuestAddress> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(GuestAddress(self.addr + offset as u64)),
            _ => Err(Error::InvalidRequest(format!(
                "{len} bytes at offset {offset} overrun a buffer of {}",
                self.len
            ))),
        }
    }

    /// Copies `data` into the buffer at `offset`.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let at = self.check(offset, data.len())?;
        self.pool.mem.write_slice(data, at)?;
        Ok(())
    }

    /// Copies bytes from the buffer at `offset` into `out`.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let at = self.check(offset, out.len())?;
        self.pool.mem.read_slice(out, at)?;
        Ok(())
    }

    /// Sets every byte to `byte`.
    pub fn fill(&mut self, byte: u8) -> Result<()> {
        let at = self.check(0, self.len)?;
        self.pool.mem.write_slice(&vec![byte; self.len], at)?;
        Ok(())
    }

    /// A copy of the whole buffer.
    pub fn to_vec(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.len];
        self.read_at(0, &mut out)?;
        Ok(out)
    }

    /// Where the device finds this buffer.
    pub(crate) fn guest_addr(&self) -> GuestAddress {
        GuestAddress(self.addr)
    }

    /// Whether this buffer lives in `pool`'s memory (a request may only carry those).
    pub(crate) fn belongs_to(&self, mem: &SharedRegion) -> bool {
        self.pool.mem.same_memory(mem) && self.pool.contains(self.addr, self.reserved)
    }

    /// Gives up the buffer without returning its pages: used when the device may still write
    /// them (a queue dropped with requests in flight).
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.release(self.addr, self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{GUEST_BASE, SharedMemory, SharedRegion};

    fn pool(pages: u64) -> Arc<BufferPool> {
        let shm = SharedMemory::new(pages * PAGE).unwrap();
        let mem = SharedRegion::new(shm.memory()).unwrap();
        BufferPool::new(mem, GuestAddress(GUEST_BASE), pages * PAGE)
    }

    #[test]
    fn alloc_is_page_aligned_zeroed_and_bounded() {
        let p = pool(4);
        let mut a = p.alloc(100).unwrap();
        let b = p.alloc(PAGE as usize + 1).unwrap();
        assert_eq!(a.guest_addr().0 % PAGE, 0);
        assert_eq!(b.guest_addr().0 % PAGE, 0);
        assert_eq!(p.available(), PAGE);
        assert!(matches!(
            p.alloc(2 * PAGE as usize),
            Err(Error::OutOfBuffers { .. })
        ));
        a.write_at(98, &[7, 8]).unwrap();
        assert!(a.write_at(99, &[1, 2]).is_err());
        assert_eq!(&a.to_vec().unwrap()[97..100], &[0, 7, 8]);
    }

    #[test]
    fn release_merges_neighbours() {
        let p = pool(4);
        let a = p.alloc(PAGE as usize).unwrap();
        let b = p.alloc(PAGE as usize).unwrap();
        let c = p.alloc(PAGE as usize).unwrap();
        drop(a);
        drop(c);
        drop(b);
        assert_eq!(p.extents().len(), 1);
        assert!(p.alloc(4 * PAGE as usize).is_ok());
    }

    #[test]
    fn reused_pages_come_back_zeroed() {
        let p = pool(1);
        let mut a = p.alloc(16).unwrap();
        a.fill(0xff).unwrap();
        drop(a);
        let b = p.alloc(16).unwrap();
        assert_eq!(b.to_vec().unwrap(), vec![0u8; 16]);
    }
}
