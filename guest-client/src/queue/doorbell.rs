//! The two eventfds of a queue (kick: driver -> device, call: device -> driver) and the
//! connection socket, watched so a dead server ends a wait instead of hanging it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::error::{Error, Result};

/// Something whose file descriptor becomes readable or hung up when the server goes away.
pub trait Hangup: Send + Sync {
    fn hangup_fd(&self) -> RawFd;
}

pub struct Doorbell {
    kick: EventFd,
    call: EventFd,
    hangup: Option<Arc<dyn Hangup>>,
}

/// What ended a wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    Called,
    TimedOut,
}

impl Doorbell {
    pub fn new(hangup: Option<Arc<dyn Hangup>>) -> Result<Self> {
        Ok(Self {
            kick: EventFd::new(EFD_NONBLOCK).map_err(Error::Event)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(Error::Event)?,
            hangup,
        })
    }

    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    pub fn kick(&self) -> Result<()> {
        self.kick.write(1).map_err(Error::Event)
    }

    /// Blocks until the device signals the call eventfd (clearing it), the timeout passes
    /// (`None` waits forever), or the server hangs up.
    pub fn wait_call(&self, timeout_ms: Option<i32>) -> Result<Wake> {
        let mut fds = [
            libc::pollfd {
                fd: self.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.hangup.as_ref().map_or(-1, |h| h.hangup_fd()),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call; a
            // negative fd is ignored by poll(2).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms.unwrap_or(-1)) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Event(err));
            }
            if fds[1].revents != 0 {
                return Err(Error::Disconnected);
            }
            if fds[0].revents != 0 {
                self.clear_call()?;
                return Ok(Wake::Called);
            }
            return Ok(Wake::TimedOut);
        }
    }

    /// Checks, without blocking, whether the server has hung up.
    pub fn check_hangup(&self) -> Result<()> {
        let Some(h) = &self.hangup else {
            return Ok(());
        };
        let mut fd = libc::pollfd {
            fd: h.hangup_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd on the stack; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        if n > 0 && fd.revents != 0 {
            return Err(Error::Disconnected);
        }
        Ok(())
    }

    fn clear_call(&self) -> Result<()> {
        match self.call.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(Error::Event(e)),
        }
    }
}
