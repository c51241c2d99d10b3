//! A [`BlockDevice`] that encrypts what is written to the device under it and decrypts what
//! is read: the store's one path to an encrypted container.

use super::Sealer;
use crate::device::BlockDevice;
use crate::store::AlignedBuf;
use crate::store::layout::BLOCK_SIZE;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

/// An encrypted view of `inner` (an `Arc` or a reference to a device). Reads and writes must
/// be whole blocks at block offsets.
pub struct SealedDevice<D> {
    inner: D,
    sealer: Arc<Sealer>,
}

impl<D> SealedDevice<D> {
    pub fn new(inner: D, sealer: Arc<Sealer>) -> Self {
        Self { inner, sealer }
    }
}

impl<'d, D> BlockDevice for SealedDevice<D>
where
    D: Deref<Target = dyn BlockDevice + 'd> + Send + Sync,
{
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)?;
        self.sealer.open(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // The caller's buffer stays as it is: the ciphertext goes into one of our own,
        // block-aligned for a device opened with O_DIRECT.
        let mut sealed = AlignedBuf::scratch(buf.len().div_ceil(BLOCK_SIZE));
        let sealed = &mut sealed[..buf.len()];
        sealed.copy_from_slice(buf);
        self.sealer.seal(sealed, offset)?;
        self.inner.write_at(sealed, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    /// Discarded blocks read back as the decryption of zeroes, not as zeroes: the store never
    /// reads a block it has not written since.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    // No descriptor of its own (the trait's default): bytes at an offset of the one beneath
    // are ciphertext, not this device's bytes (a queue that issues its own I/O takes the
    // device beneath, `Store::raw_device`, and the cipher).

    fn grow_to(&self, len: u64) -> io::Result<()> {
        self.inner.grow_to(len)
    }
}
