//! Where component devices come from: files with sidecar metadata in production, in-memory
//! fault-injecting devices in simulation.

use crate::device::lock::LockMode;
use crate::device::{BlockDevice, FileDevice};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A component's data and its mirror metadata.
#[derive(Clone)]
pub struct ComponentDevices {
    pub data: Arc<dyn BlockDevice>,
    pub meta: Arc<dyn BlockDevice>,
}

/// Opens, creates and removes component devices by path.
pub trait DeviceProvider: Send + Sync {
    /// Opens the data device at `path`, creating it sparse with `create_len` bytes if absent
    /// and `create_len` is given.
    fn open_data(&self, path: &Path, create_len: Option<u64>) -> io::Result<Arc<dyn BlockDevice>>;

    /// Opens the metadata device belonging to `path`, creating it with `len` zero bytes if absent.
    fn open_meta(&self, path: &Path, len: u64) -> io::Result<Arc<dyn BlockDevice>>;

    /// Deletes a component (a finished delta) and its metadata.
    fn remove(&self, path: &Path) -> io::Result<()>;

    fn open(
        &self,
        path: &Path,
        create_len: Option<u64>,
        meta_len: u64,
    ) -> io::Result<ComponentDevices> {
        Ok(ComponentDevices {
            data: self.open_data(path, create_len)?,
            meta: self.open_meta(path, meta_len)?,
        })
    }
}

/// Files (or block devices) with metadata in a `<path>.keelmirror` sidecar file.
pub struct FileProvider {
    /// O_DIRECT on data and sidecars (where the file system allows it).
    pub direct: bool,
}

impl FileProvider {
    /// Opens `path`, with O_DIRECT if asked and the file system allows it.
    fn open_file(&self, path: &Path) -> io::Result<FileDevice> {
        match FileDevice::open(path, false, self.direct) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: the file system refuses O_DIRECT; using the page cache",
                    path.display()
                );
                FileDevice::open(path, false, false)
            }
            other => other,
        }
    }

    /// Opens `path`, creating it sparse with `len` bytes first if it does not exist.
    fn open_or_create(&self, path: &Path, len: Option<u64>) -> io::Result<Arc<dyn BlockDevice>> {
        if let (false, Some(len)) = (path.exists(), len) {
            // Created, then opened again as every later open will (with O_DIRECT).
            drop(FileDevice::create(path, len)?);
        }
        Ok(Arc::new(
            self.open_file(path)?.locked(path, LockMode::Exclusive)?,
        ))
    }
}

/// The sidecar metadata path of a component.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(".keelmirror");
    PathBuf::from(s)
}

impl DeviceProvider for FileProvider {
    fn open_data(&self, path: &Path, create_len: Option<u64>) -> io::Result<Arc<dyn BlockDevice>> {
        self.open_or_create(path, create_len)
    }

    fn open_meta(&self, path: &Path, len: u64) -> io::Result<Arc<dyn BlockDevice>> {
        self.open_or_create(&sidecar_path(path), Some(len))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)?;
        match std::fs::remove_file(sidecar_path(path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_sidecars_are_created_then_removed() {
        let dir = std::env::temp_dir().join(format!("keel-provider-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c0.img");
        let dev = FileProvider { direct: false }
            .open(&p, Some(1 << 20), 8192)
            .unwrap();
        assert_eq!((dev.data.len(), dev.meta.len()), (1 << 20, 8192));
        assert!(sidecar_path(&p).ends_with("c0.img.keelmirror"));
        let held = FileProvider { direct: false }.open(&p, None, 1);
        let e = held.err().expect("a component in use is refused");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        drop(dev);
        let again = FileProvider { direct: false }.open(&p, None, 1).unwrap();
        assert_eq!(again.meta.len(), 8192, "an existing sidecar keeps its size");
        FileProvider { direct: false }.remove(&p).unwrap();
        assert!(!p.exists() && !sidecar_path(&p).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
