//! systemd socket activation: listening sockets passed as descriptors 3, 4, ... with
//! `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`. keeld matches them to disks by name
//! (`FileDescriptorName=` in the socket unit = the disk's `name`), so the socket a QEMU
//! reconnects to outlives keeld's restarts.

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use thiserror::Error;

/// The first descriptor the manager passes.
const LISTEN_FDS_START: RawFd = 3;
/// More than any config needs; a larger count is a corrupt environment.
const MAX_FDS: usize = 4096;

#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS {0:?} is not a count")]
    BadCount(String),
    #[error("LISTEN_FDNAMES names {names} sockets but LISTEN_FDS passes {fds}")]
    NameCount { names: usize, fds: usize },
    #[error("the sockets passed by the service manager were taken already")]
    Taken,
    #[error("passed descriptor {fd} ({name}): {message}")]
    NotAListener {
        fd: RawFd,
        name: String,
        message: String,
    },
}

/// The listening sockets the service manager passed, by name.
#[derive(Debug, Default)]
pub struct Activation {
    sockets: HashMap<String, UnixListener>,
}

/// Descriptors are owned once: a second `from_env` must not wrap them again.
static TAKEN: AtomicBool = AtomicBool::new(false);

impl Activation {
    /// Takes the sockets passed to this process, if any (none when `LISTEN_PID` is not ours).
    pub fn from_env() -> Result<Self, ActivationError> {
        let var = |k| std::env::var(k).ok();
        let (Some(pid), Some(fds)) = (var("LISTEN_PID"), var("LISTEN_FDS")) else {
            return Ok(Self::default());
        };
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(Self::default());
        }
        let count: usize = fds
            .parse()
            .ok()
            .filter(|&n| n <= MAX_FDS)
            .ok_or_else(|| ActivationError::BadCount(fds.clone()))?;
        let names = names_of(var("LISTEN_FDNAMES").as_deref(), count)?;
        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(ActivationError::Taken);
        }
        let mut sockets = HashMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let fd = LISTEN_FDS_START + i as RawFd;
            check_listener(fd).map_err(|e| ActivationError::NotAListener {
                fd,
                name: name.clone(),
                message: e.to_string(),
            })?;
            // SAFETY: the manager handed descriptor `fd` to this process (LISTEN_PID is ours),
            // nothing else in keeld opens or wraps descriptors 3.. before this runs (TAKEN
            // makes this the only time), and check_listener showed it is an open listening
            // unix stream socket; the UnixListener becomes its only owner.
            let listener = unsafe { UnixListener::from_raw_fd(fd) };
            sockets.insert(name, listener);
        }
        Ok(Self { sockets })
    }

    /// The socket passed under `name`, taken out.
    pub fn take(&mut self, name: &str) -> Option<UnixListener> {
        self.sockets.remove(name)
    }

    /// Names of the sockets not taken (yet).
    pub fn remaining(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sockets.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// The name of each passed descriptor: `LISTEN_FDNAMES` split at `:`, or "unknown" (what
/// systemd uses) for each when it is unset.
fn names_of(names: Option<&str>, count: usize) -> Result<Vec<String>, ActivationError> {
    let Some(names) = names else {
        return Ok(vec!["unknown".to_string(); count]);
    };
    let names: Vec<String> = if count == 0 && names.is_empty() {
        Vec::new()
    } else {
        names.split(':').map(str::to_string).collect()
    };
    if names.len() != count {
        return Err(ActivationError::NameCount {
            names: names.len(),
            fds: count,
        });
    }
    Ok(names)
}

/// Checks that `fd` is a listening unix stream socket, and marks it close-on-exec.
fn check_listener(fd: RawFd) -> io::Result<()> {
    let int_opt = |opt| -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which we own.
        let rc =
            unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v)
    };
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(invalid("not a unix socket"));
    }
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(invalid("not a stream socket (ListenStream=)"));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(invalid("not listening"));
    }
    // SAFETY: fcntl on a descriptor we just checked is open; F_SETFD takes an int flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_listen_fdnames() {
        assert_eq!(names_of(Some("vm1:vm2"), 2).unwrap(), ["vm1", "vm2"]);
        assert_eq!(names_of(None, 2).unwrap(), ["unknown", "unknown"]);
        assert!(names_of(Some(""), 0).unwrap().is_empty());
        assert!(matches!(
            names_of(Some("vm1"), 2),
            Err(ActivationError::NameCount { names: 1, fds: 2 })
        ));
    }

    #[test]
    fn only_listening_unix_stream_sockets_are_accepted() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(check_listener(listener.as_raw_fd()).is_ok());
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(check_listener(a.as_raw_fd()).is_err());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(check_listener(file.as_raw_fd()).is_err());
    }
}
