//! Block-aligned buffers, so the container can be opened with O_DIRECT.

use super::layout::BLOCK_SIZE;
use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A zero-initialised heap buffer aligned to [`BLOCK_SIZE`] whose length is a whole number of blocks.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like a Vec<u8>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `blocks` blocks (at least one block is allocated).
    pub fn blocks(blocks: usize) -> Self {
        let len = blocks.max(1) * BLOCK_SIZE;
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        Self {
            ptr,
            len: blocks * BLOCK_SIZE,
        }
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
        // SAFETY: ptr points at an allocation of at least len initialised bytes owned by self.
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
        let alloc_len = self.len.max(BLOCK_SIZE);
        // SAFETY: ptr was allocated in `blocks` with exactly this layout.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(alloc_len)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
