//! [`SharedReadView`]: a look at a container another process has open (`keel info -U`).

use super::{BlockDevice, FileDevice};
use std::io;
use std::path::Path;

/// A container file opened read-only, without its lock, for reading while keeld serves it.
///
/// Opening a store may tidy up what recovery found (rewrite a stale superblock copy, erase
/// dropped journal records) before anything new is written. On a container another process
/// is writing, that tidying is its owner's to do: here writes are dropped, and the file is
/// open read-only besides, so nothing can reach it. Reads see what is on disk now.
pub struct SharedReadView {
    file: FileDevice,
}

impl SharedReadView {
    /// Opens `path` read-only (O_DIRECT where the file system allows it, so that reads see
    /// the device and not an old page cache).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file =
            FileDevice::open(path, true, true).or_else(|_| FileDevice::open(path, true, false))?;
        Ok(Self { file })
    }
}

impl BlockDevice for SharedReadView {
    fn len(&self) -> u64 {
        self.file.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }

    /// Dropped: this view never changes the container.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        super::check_range(self.len(), offset, buf.len() as u64)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Dropped, as writes are.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        super::check_range(self.len(), offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_is_there_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let v = SharedReadView::open(&p).unwrap();
        v.write_at(&[1u8; 4096], 0).unwrap();
        v.discard(4096, 4096).unwrap();
        // O_DIRECT reads want an aligned buffer, as the store's are.
        let mut b = crate::store::AlignedBuf::blocks(1);
        v.read_at(&mut b, 4096).unwrap();
        assert!(b.iter().all(|x| *x == 7));
        assert_eq!(std::fs::read(&p).unwrap(), vec![7u8; 8192]);
        assert!(v.write_at(&[1u8; 4096], 8192).is_err(), "out of range");
    }
}
