//! A [`BlockDevice`] over a regular file or a block device.
//!
//! Opened with O_DIRECT, it also keeps a page-cache descriptor of the same file, the way the
//! raw engine does: a request whose buffer, offset or length is not sector-aligned, or that the
//! kernel refuses with EINVAL for alignment (a device with larger logical blocks), goes through
//! that descriptor instead of failing (Linux keeps the two coherent).

use super::{BlockDevice, check_range};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Memory, offset and length alignment O_DIRECT needs on common devices.
pub const DIRECT_ALIGN: usize = 512;

/// A file or block device used through positioned reads and writes.
pub struct FileDevice {
    /// O_DIRECT when asked for, else the page-cache descriptor.
    file: File,
    /// The page-cache descriptor beside an O_DIRECT `file`, for requests it refuses.
    buffered: Option<File>,
    /// Grows (never shrinks) when a container in a regular file adds segments.
    size: AtomicU64,
    /// The file's OFD lock, on a descriptor of its own (see [`super::lock`]).
    _lock: Option<File>,
}

/// Whether O_DIRECT accepts a transfer of `buf` at `offset`.
pub fn direct_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
        && buf.len().is_multiple_of(DIRECT_ALIGN)
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
}

impl FileDevice {
    /// Opens an existing file or block device; `direct` asks for O_DIRECT (and fails with
    /// EINVAL on a file system that refuses it).
    pub fn open(path: &Path, read_only: bool, direct: bool) -> io::Result<Self> {
        let open = |direct: bool| {
            let mut opts = OpenOptions::new();
            opts.read(true).write(!read_only);
            // Paths are resolved when a config is loaded; a symlink planted since is not
            // followed.
            opts.custom_flags(if direct {
                libc::O_DIRECT | libc::O_NOFOLLOW
            } else {
                libc::O_NOFOLLOW
            });
            opts.open(path)
        };
        let file = open(direct)?;
        let buffered = if direct { Some(open(false)?) } else { None };
        let size = AtomicU64::new(device_size(&file)?);
        Ok(Self {
            file,
            buffered,
            size,
            _lock: None,
        })
    }

    /// Whether reads and writes go around the page cache.
    pub fn is_direct(&self) -> bool {
        self.buffered.is_some()
    }

    /// The descriptor for a transfer of `buf` at `offset`, and whether it is the O_DIRECT one.
    fn fd_for(&self, buf: &[u8], offset: u64) -> (&File, bool) {
        match &self.buffered {
            Some(b) if !direct_aligned(buf, offset) => (b, false),
            Some(_) => (&self.file, true),
            None => (&self.file, false),
        }
    }

    /// Takes the OFD lock of the file at `path` (see [`super::lock`]), held until the device is
    /// dropped. The error names `path`.
    pub fn locked(mut self, path: &Path, mode: super::lock::LockMode) -> io::Result<Self> {
        self._lock = Some(super::lock::lock_path(path, mode)?);
        Ok(self)
    }

    /// Creates a sparse file of `size` bytes, readable by its owner only (it holds a guest's
    /// disk); fails if it exists.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self {
            file,
            buffered: None,
            size: AtomicU64::new(size),
            _lock: None,
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

    /// The open file, for engines that submit I/O on its descriptor directly.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
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
        match self.fd_for(buf, offset) {
            (f, true) => match f.read_exact_at(buf, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self
                    .buffered
                    .as_ref()
                    .unwrap_or(f)
                    .read_exact_at(buf, offset),
                other => other,
            },
            (f, false) => f.read_exact_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len() as u64)?;
        match self.fd_for(buf, offset) {
            (f, true) => match f.write_all_at(buf, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self
                    .buffered
                    .as_ref()
                    .unwrap_or(f)
                    .write_all_at(buf, offset),
                other => other,
            },
            (f, false) => f.write_all_at(buf, offset),
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
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

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
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
        let file = self.buffered.as_ref().unwrap_or(&self.file);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            file.write_all_at(&zeroes[..n], offset + done)?;
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
    fn direct_serves_aligned_and_unaligned_requests() {
        let p = temp_path("direct");
        drop(FileDevice::create(&p, 1 << 20).unwrap());
        let dev = match FileDevice::open(&p, false, true) {
            Ok(d) => d,
            // A file system without O_DIRECT (tmpfs): nothing to test here.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("{e}"),
        };
        assert!(dev.is_direct());
        let aligned = crate::store::buf::AlignedBuf::copy_of(&[5u8; 8192]);
        dev.write_at(&aligned, 8192).unwrap();
        // A Vec at an odd address, length and offset: O_DIRECT alone would refuse all three.
        let odd = vec![9u8; 1001];
        dev.write_at(&odd[1..], 8192 + 100).unwrap();
        let mut back = crate::store::buf::AlignedBuf::zeroed(8192);
        dev.read_at(&mut back, 8192).unwrap();
        assert!(back[..100].iter().all(|&b| b == 5));
        assert!(back[100..1100].iter().all(|&b| b == 9));
        assert!(back[1100..].iter().all(|&b| b == 5));
        let mut small = [0u8; 3];
        dev.read_at(&mut small, 8192 + 99).unwrap();
        assert_eq!(small, [5, 9, 9]);
        dev.flush().unwrap();
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
}
