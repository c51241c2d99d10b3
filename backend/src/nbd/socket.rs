//! A connected stream socket (unix or TCP) read and written with deadlines.
//!
//! Reads and writes use `MSG_DONTWAIT` and wait in `poll`, so a peer that stalls halfway through
//! a message costs a thread only until its deadline. [`Socket::shut_down`] from another thread
//! wakes any wait at once (the server uses it to stop).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

pub struct Socket {
    fd: OwnedFd,
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl Socket {
    pub fn new(fd: impl Into<OwnedFd>) -> Self {
        Self { fd: fd.into() }
    }

    /// Waits until the socket is readable (or writable with `POLLOUT`) or `deadline` passes.
    fn wait(&self, events: libc::c_short, deadline: Option<Instant>) -> io::Result<()> {
        loop {
            let timeout = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer did not keep up before the deadline",
                        ));
                    }
                    // Round up so a wait never ends just before the deadline and spins.
                    libc::c_int::try_from(left.as_millis() + 1).unwrap_or(libc::c_int::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, timeout) };
            if rc > 0 {
                return Ok(());
            }
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }

    /// Appends what is readable now (waiting for at least one byte until `deadline`) to `buf`,
    /// reading at most `max` bytes; returns the count, 0 at end of stream.
    pub fn read_some(
        &self,
        buf: &mut Vec<u8>,
        max: usize,
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        buf.reserve(max);
        loop {
            let spare = buf.spare_capacity_mut();
            let want = spare.len().min(max);
            // SAFETY: the kernel writes at most `want` bytes into the vector's spare capacity,
            // which is allocated and owned by `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    spare.as_mut_ptr().cast(),
                    want,
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                let n = n as usize;
                // SAFETY: recv initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => self.wait(libc::POLLIN, deadline)?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
    }

    /// Appends what is readable now, without waiting, to `buf` (at most `max` bytes): `None`
    /// when nothing is, `Some(0)` at end of stream.
    pub fn try_read(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<Option<usize>> {
        match self.read_some(buf, max, Some(Instant::now())) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads exactly `buf.len()` bytes before `deadline`.
    pub fn read_exact(&self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<()> {
        let mut got = Vec::with_capacity(buf.len());
        while got.len() < buf.len() {
            let missing = buf.len() - got.len();
            if self.read_some(&mut got, missing, deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.copy_from_slice(&got);
        Ok(())
    }

    /// Writes every byte of `bytes` before `deadline`.
    pub fn write_all(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a valid slice for the duration of the call.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                bytes = &bytes[n as usize..];
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => self.wait(libc::POLLOUT, Some(deadline))?,
                io::ErrorKind::Interrupted => {}
                _ => return Err(e),
            }
        }
        Ok(())
    }

    /// Ends both directions; a thread waiting on the socket wakes up and sees end of stream.
    pub fn shut_down(&self) {
        // SAFETY: shutdown on a descriptor this value owns; it does not close it.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}
