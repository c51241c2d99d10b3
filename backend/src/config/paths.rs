//! The checks on the files and sockets a config names: everything that would make keeld's
//! start fail is found here, so `keeld --check` and a start refuse the same files.

use super::{Checker, ConfigError, RawDisk};
use crate::store::peek::{Peeked, peek};
use std::fs;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};
use toml::Spanned;

/// Longest unix socket path: `sun_path` holds 108 bytes including the final NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Granularity of a keel container's disk size.
pub const KEEL_BLOCK: u64 = 4096;

impl Checker<'_> {
    /// A socket keeld binds: a short enough path in a writable directory.
    pub(super) fn check_socket(
        &self,
        socket: &Path,
        span: Range<usize>,
        key: &str,
    ) -> Result<(), ConfigError> {
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(self.err(
                span,
                key,
                format!(
                    "{} is {len} bytes long; a unix socket path holds at most {MAX_SOCKET_PATH} \
                     (use a shorter directory)",
                    socket.display()
                ),
            ));
        }
        let dir = socket.parent().unwrap_or(Path::new("."));
        check_writable_dir(dir).map_err(|m| self.err(span, key, m))
    }

    /// A keel container either exists (its superblock gives its size, which may have grown
    /// past `size` through `keel resize`) or is created with `size`.
    pub(super) fn check_container_path(
        &self,
        path: &Path,
        span: Range<usize>,
        raw: &RawDisk,
        size: Option<u64>,
    ) -> Result<(), ConfigError> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() || meta.file_type().is_block_device() => {
                let peeked = peek(path).map_err(|e| {
                    self.err(span.clone(), "path", format!("{}: {e}", path.display()))
                })?;
                match peeked {
                    Peeked::NotAContainer => Err(self.err(
                        span,
                        "path",
                        format!(
                            "{} is not a Keel container (no Keel superblock); copy a raw image \
                             into a new one with `keel import`, or serve it with engine = \"raw\"",
                            path.display()
                        ),
                    )),
                    // Damage is that disk's failure at start (listed `failed`, the others
                    // served), not an error of the file: `keel fsck` says more.
                    Peeked::Damaged => Ok(()),
                    Peeked::Container { capacity } => match size {
                        Some(want) if want > capacity => {
                            let key_span = raw.size.as_ref().map_or(span, Spanned::span);
                            Err(self.err(
                                key_span,
                                "size",
                                format!(
                                    "{} holds a {capacity}-byte disk, less than {want}: grow it \
                                     with `keel resize {} {want}` while keeld is stopped, or set \
                                     size = {capacity}",
                                    path.display(),
                                    path.display()
                                ),
                            ))
                        }
                        _ => Ok(()),
                    },
                }
            }
            Ok(_) => Err(self.err(
                span,
                "path",
                format!(
                    "{} is neither a regular file nor a block device",
                    path.display()
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_creatable(path, span, size),
            Err(e) => Err(self.err(span, "path", format!("{}: {e}", path.display()))),
        }
    }

    /// A raw disk's file exists with at least `size` bytes (a larger file was grown, e.g. by
    /// `keel resize`, and is served whole), or `resize` grows it, or it can be created.
    /// Nothing here ever makes a file smaller.
    pub(super) fn check_raw_path(
        &self,
        path: &Path,
        span: Range<usize>,
        raw: &RawDisk,
        size: Option<u64>,
        resize: bool,
        logical_block_size: u32,
    ) -> Result<(), ConfigError> {
        let size_span = || raw.size.as_ref().map_or(span.clone(), Spanned::span);
        match fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                if raw.size.is_some() || resize {
                    return Err(self.err(
                        size_span(),
                        "size",
                        format!("{} is a block device: its size is its own", path.display()),
                    ));
                }
                Ok(())
            }
            Ok(meta) if meta.is_file() => {
                let actual = meta.len();
                match size {
                    Some(want) if want < actual && resize => Err(self.err(
                        size_span(),
                        "size",
                        format!(
                            "{} is {actual} bytes, more than {want}: `resize` only grows an \
                             image (shrinking would drop the guest's data past the new end); \
                             set size = {actual}",
                            path.display()
                        ),
                    )),
                    Some(want) if want > actual && !resize => Err(self.err(
                        size_span(),
                        "size",
                        format!(
                            "{} is {actual} bytes, less than {want}; set `resize = true` to grow \
                             it, or size = {actual}",
                            path.display()
                        ),
                    )),
                    _ if actual == 0 || actual % u64::from(logical_block_size) != 0 => Err(self
                        .err(
                            span,
                            "path",
                            format!(
                                "{} is {actual} bytes, not a positive multiple of the logical \
                                 block size ({logical_block_size})",
                                path.display()
                            ),
                        )),
                    _ => Ok(()),
                }
            }
            Ok(_) => Err(self.err(
                span,
                "path",
                format!(
                    "{} is neither a regular file nor a block device",
                    path.display()
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_creatable(path, span, size),
            Err(e) => Err(self.err(span, "path", format!("{}: {e}", path.display()))),
        }
    }

    /// A missing image is created with `size` in its (writable) directory.
    fn check_creatable(
        &self,
        path: &Path,
        span: Range<usize>,
        size: Option<u64>,
    ) -> Result<(), ConfigError> {
        if size.is_none() {
            return Err(self.err(
                span,
                "size",
                format!("{} does not exist and no `size` is given", path.display()),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        check_writable_dir(dir).map_err(|m| self.err(span, "path", m))
    }
}

/// `path` without `.` components and with `..` taken back lexically, so `run/a.sock` and
/// `./run/a.sock` are one path (and one socket) to every check.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// An existing path with its symlinks resolved now (a `/dev/disk/by-id/...` link names its
/// device), so the engine can open it without following links later.
pub fn canonical_if_exists(path: PathBuf) -> PathBuf {
    fs::canonicalize(&path).unwrap_or(path)
}

pub fn check_writable_dir(dir: &Path) -> Result<(), String> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("{} is not a directory", dir.display())),
        Err(e) => return Err(format!("directory {}: {e}", dir.display())),
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) };
    if rc != 0 {
        return Err(format!(
            "directory {} is not writable: {}",
            dir.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_drops_dots() {
        assert_eq!(
            normalize(Path::new("/a/./run/a.sock")),
            Path::new("/a/run/a.sock")
        );
        assert_eq!(normalize(Path::new("/a/b/../run/x")), Path::new("/a/run/x"));
        assert_eq!(
            normalize(Path::new("./run/a.sock")),
            Path::new("run/a.sock")
        );
    }
}
