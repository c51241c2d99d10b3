//! A [`BlockDevice`] over a regular file or a block device.

use super::{BlockDevice, check_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A file or block device used through positioned reads and writes.
pub struct FileDevice {
    file: File,
    /// Grows (never shrinks) when a container in a regular file adds segments.
    size: AtomicU64,
}

impl FileDevice {
    /// Opens an existing file or block device; `direct` asks for O_DIRECT.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        // Paths are resolved when a config is loaded; a symlink planted since is not followed.
        opts.custom_flags(if direct {
            libc::O_DIRECT | libc::O_NOFOLLOW
        } else {
            libc::O_NOFOLLOW
        });
        let file = opts.open(path)?;
        let size = AtomicU64::new(device_size(&file)?);
        Ok(Self { file, size })
    }

    /// Creates a sparse file of `size` bytes; fails if it exists.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self {
            file,
            size: AtomicU64::new(size),
        })
    }

    /// Creates a file of `size` bytes with its space reserved (`fallocate`), so the first
    /// write to each block does not have to allocate it; falls back to a sparse file where
    /// the file system cannot reserve space. Fails if the file exists.
    pub fn create_allocated(path: &Path, size: u64) -> io::Result<Self> {
        let dev = Self::create(path, size)?;
        if size > 0 {
            // SAFETY: fallocate only reads its integer arguments; the descriptor is open.
            let rc = unsafe { libc::fallocate(dev.file.as_raw_fd(), 0, 0, size as libc::off_t) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EOPNOTSUPP) => log::info!(
                        "{}: the file system cannot reserve space; the file stays sparse",
                        path.display()
                    ),
                    _ => {
                        let _ = std::fs::remove_file(path);
                        return Err(e);
                    }
                }
            }
        }
        Ok(dev)
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// The open file, for engines that submit I/O on its descriptor directly.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Size of a regular file or a block device in bytes.
pub fn device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// `_IOR(0x12, 114, size_t)` from linux/fs.h.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl BlockDevice for FileDevice {
    fn len(&self) -> u64 {
        self.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn grow_to(&self, len: u64) -> io::Result<()> {
        let now = self.size();
        if len <= now {
            return Ok(());
        }
        if !self.file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only a container in a regular file can grow",
            ));
        }
        let (off, add) = (now as libc::off_t, (len - now) as libc::off_t);
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by self.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, off, add) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
            // A file system that cannot reserve space: the new part stays sparse.
            self.file.set_len(len)?;
        }
        self.file.sync_all()?;
        self.size.store(len, Ordering::Release);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size(), offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let (off, l) = (offset as libc::off_t, len as libc::off_t);
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by self.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // Filesystems without hole punching: write zeroes so the range still reads as zero.
        let zeroes = vec![0u8; 1 << 20];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("keel-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn write_read_discard() {
        let p = temp_path("wrd");
        let dev = FileDevice::create(&p, 1 << 20).unwrap();
        dev.write_at(&[7u8; 8192], 4096).unwrap();
        let mut buf = [0u8; 8192];
        dev.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        dev.discard(4096, 4096).unwrap();
        dev.read_at(&mut buf, 4096).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 7));
        dev.flush().unwrap();
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_file_grows_and_its_new_end_is_writable() {
        let p = temp_path("grow");
        let dev = FileDevice::create(&p, 8192).unwrap();
        assert!(dev.write_at(&[3u8; 4096], 8192).is_err());
        dev.grow_to(16384).unwrap();
        assert_eq!(dev.len(), 16384);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 16384);
        dev.write_at(&[3u8; 4096], 12288).unwrap();
        dev.grow_to(4096).unwrap();
        assert_eq!(dev.len(), 16384, "never shrinks");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn refuses_out_of_range() {
        let p = temp_path("oor");
        let dev = FileDevice::create(&p, 4096).unwrap();
        assert!(dev.write_at(&[1u8; 512], 4096 - 256).is_err());
        let mut b = [0u8; 1];
        assert!(dev.read_at(&mut b, u64::MAX).is_err());
        assert!(dev.discard(u64::MAX, 2).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
