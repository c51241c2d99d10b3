//! Creating a disk's listening socket: private (mode 0600) from the first moment it accepts, and
//! never stealing the path from a live server.

use std::fs;
use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Binds a listening unix socket at `path` with mode 0600.
///
/// A leftover socket file whose server is gone is removed first; a socket another process still
/// listens on is an error (`AddrInUse`), as is any other kind of file at `path`.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another server is listening on {}", path.display()),
            ));
        }
        fs::remove_file(path)?;
    }

    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} is longer than {} bytes",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }

    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; UnixListener takes ownership and closes it on drop,
    // including on the error paths below.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let rc = unsafe { libc::bind(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // Before listen(), connections are refused, so nobody can slip in before the chmod.
    if let Err(e) = fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    // SAFETY: plain system call on a bound socket we own.
    if unsafe { libc::listen(fd, 16) } != 0 {
        let e = io::Error::last_os_error();
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_private_socket_and_replaces_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let l = bind_private(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        UnixStream::connect(&path).unwrap();
        // Live server: refused.
        let e = bind_private(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(l);
        // Stale socket file: replaced.
        let _l2 = bind_private(&path).unwrap();
        UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn refuses_to_replace_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        fs::write(&path, b"keep me").unwrap();
        assert!(bind_private(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn refuses_overlong_paths() {
        let long = format!("/tmp/{}", "x".repeat(200));
        let e = bind_private(Path::new(&long)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
