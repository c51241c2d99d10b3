//! Block-aligned buffers, so files can be opened with O_DIRECT: the container, mirror
//! components and their metadata, and the bounce buffers of engines that serve a device.

use super::layout::BLOCK_SIZE;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A heap buffer aligned to [`BLOCK_SIZE`] whose length is a whole number of blocks.
///
/// Buffers come from, and go back to, a small per-thread pool of power-of-two sizes: the
/// data path allocates one per batch and per read, and fresh allocations of that size cost
/// page faults and zeroing on every use.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Allocated bytes: a power-of-two number of blocks, at least one block.
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

/// Size classes kept: 4 KiB .. 16 MiB.
const CLASSES: usize = 13;
/// Buffers kept per class, and bytes kept per thread in all.
const PER_CLASS: usize = 64;
const POOL_BYTES: usize = 64 << 20;

struct Pool {
    free: [Vec<NonNull<u8>>; CLASSES],
    bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (class, list) in self.free.iter_mut().enumerate() {
            let layout = AlignedBuf::layout(BLOCK_SIZE << class);
            for ptr in list.drain(..) {
                // SAFETY: every pooled pointer was allocated in `scratch` with this class's
                // layout and is owned by the pool alone.
                unsafe { dealloc(ptr.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { free: [const { Vec::new() }; CLASSES], bytes: 0 })
    };
}

fn class_of(cap: usize) -> usize {
    (cap / BLOCK_SIZE).trailing_zeros() as usize
}

impl AlignedBuf {
    /// A zeroed buffer of `blocks` blocks.
    pub fn blocks(blocks: usize) -> Self {
        let mut b = Self::scratch(blocks);
        b.fill(0);
        b
    }

    /// A buffer of `blocks` blocks whose contents are left over from an earlier use (or
    /// zero): for callers that overwrite all of it, such as device reads and data copies.
    pub fn scratch(blocks: usize) -> Self {
        let len = blocks * BLOCK_SIZE;
        let cap = blocks.max(1).next_power_of_two() * BLOCK_SIZE;
        let class = class_of(cap);
        let pooled = if class < CLASSES {
            POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                let got = p.free[class].pop();
                if got.is_some() {
                    p.bytes -= cap;
                }
                got
            })
            .ok()
            .flatten()
        } else {
            None
        };
        let ptr = pooled.unwrap_or_else(|| {
            let layout = Self::layout(cap);
            // SAFETY: layout has a non-zero size.
            let raw = unsafe { alloc_zeroed(layout) };
            NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
        });
        Self { ptr, len, cap }
    }

    /// A zeroed buffer of exactly `len` bytes, starting on a block boundary: for I/O whose
    /// length is set by the caller (a chunk, a request) rather than counted in blocks.
    pub fn zeroed(len: usize) -> Self {
        let mut b = Self::scratch_len(len);
        b.fill(0);
        b
    }

    /// Like [`zeroed`](Self::zeroed), with leftover contents, for callers that overwrite it all.
    pub fn scratch_len(len: usize) -> Self {
        let mut b = Self::scratch(len.div_ceil(BLOCK_SIZE));
        b.len = len;
        b
    }

    /// An aligned copy of `data`.
    pub fn copy_of(data: &[u8]) -> Self {
        let mut b = Self::scratch_len(data.len());
        b.copy_from_slice(data);
        b
    }

    fn layout(len: usize) -> Layout {
        match Layout::from_size_align(len, BLOCK_SIZE) {
            Ok(l) => l,
            // Only reachable for lengths near isize::MAX, which no caller asks for.
            Err(_) => std::alloc::handle_alloc_error(Layout::new::<u8>()),
        }
    }

    /// Block `i` of the buffer.
    pub fn block(&self, i: usize) -> &[u8] {
        &self[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]
    }

    /// Block `i` of the buffer, writable.
    pub fn block_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points at an allocation of `cap >= len` initialised bytes (zeroed when
        // allocated, written only through this type since) owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let (ptr, cap) = (self.ptr, self.cap);
        let class = class_of(cap);
        let kept = class < CLASSES
            && POOL
                .try_with(|p| {
                    let mut p = p.borrow_mut();
                    if p.free[class].len() < PER_CLASS && p.bytes + cap <= POOL_BYTES {
                        p.free[class].push(ptr);
                        p.bytes += cap;
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
        if !kept {
            // SAFETY: ptr was allocated in `scratch` with exactly this layout.
            unsafe { dealloc(ptr.as_ptr(), Self::layout(cap)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reused_buffers_are_zeroed_by_blocks_and_kept_by_scratch() {
        let mut a = AlignedBuf::scratch(3);
        a.fill(7);
        let p = a.as_ptr();
        drop(a);
        let b = AlignedBuf::scratch(4);
        assert_eq!(b.as_ptr(), p, "same class, same thread: reused");
        assert_eq!(b.len(), 4 * BLOCK_SIZE);
        assert_eq!(b[0], 7);
        drop(b);
        let c = AlignedBuf::blocks(4);
        assert!(c.iter().all(|&x| x == 0));
    }

    #[test]
    fn byte_lengths_keep_the_alignment() {
        for len in [0usize, 1, 512, 4097, 65536] {
            let z = AlignedBuf::zeroed(len);
            assert_eq!(z.len(), len);
            assert_eq!(z.as_ptr() as usize % BLOCK_SIZE, 0);
            assert!(z.iter().all(|&x| x == 0));
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let c = AlignedBuf::copy_of(&data);
            assert_eq!((&c[..], c.as_ptr() as usize % BLOCK_SIZE), (&data[..], 0));
        }
    }

    #[test]
    fn aligned_and_zeroed() {
        for n in [0usize, 1, 3] {
            let mut b = AlignedBuf::blocks(n);
            assert_eq!(b.len(), n * BLOCK_SIZE);
            assert_eq!(b.as_ptr() as usize % BLOCK_SIZE, 0);
            assert!(b.iter().all(|&x| x == 0));
            if n > 0 {
                b.block_mut(n - 1)[0] = 9;
                assert_eq!(b.block(n - 1)[0], 9);
            }
        }
    }
}
