//! The sd_notify protocol: state lines (`READY=1`, `STOPPING=1`, `STATUS=...`,
//! `WATCHDOG=1`) sent as datagrams to the unix socket `NOTIFY_SOCKET` names.
//!
//! Written here rather than taken from a crate: it is one datagram per state, and the tests
//! read it back from a socket of their own.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names, if keeld runs under a manager that wants notifications.
    pub fn from_env() -> Option<io::Result<Self>> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        Some(Self::new(&path.to_string_lossy()))
    }

    /// `path` is a filesystem path, or an abstract socket name after `@`.
    pub fn new(path: &str) -> io::Result<Self> {
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET {path:?} is neither absolute nor abstract"),
                ));
            }
        };
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            addr,
        })
    }

    /// Sends newline-separated `VAR=value` assignments in one datagram.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
            addr: self.addr.clone(),
        })
    }
}

/// The watchdog interval the manager asked for (`WATCHDOG_USEC`), when it is meant for this
/// process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` at half the manager's interval until dropped.
pub struct Watchdog {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(notifier: &Notifier, interval: Duration) -> io::Result<Self> {
        let notifier = notifier.try_clone()?;
        let (stop, stopped) = mpsc::channel::<()>();
        let period = interval / 2;
        let thread = std::thread::Builder::new()
            .name("keel-watchdog".into())
            .spawn(move || {
                loop {
                    if let Err(e) = notifier.notify("WATCHDOG=1") {
                        log::warn!("watchdog notification: {e}");
                    }
                    match stopped.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        _ => break,
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.notify("READY=1\nSTATUS=serving 2 disks").unwrap();
        let mut buf = [0u8; 256];
        let len = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving 2 disks");
    }

    #[test]
    fn abstract_names_are_reached() {
        let name = format!("keel-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .notify("STOPPING=1")
            .unwrap();
        let mut buf = [0u8; 64];
        let len = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn relative_paths_are_refused() {
        assert!(Notifier::new("run/notify").is_err());
    }

    #[test]
    fn the_watchdog_interval_is_only_ours() {
        let us = Some(Duration::from_secs(3));
        assert_eq!(interval_from(Some("3000000"), None, 7), us);
        assert_eq!(interval_from(Some("3000000"), Some("7"), 7), us);
        assert_eq!(interval_from(Some("3000000"), Some("8"), 7), None);
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("x"), None, 7), None);
        assert_eq!(interval_from(None, None, 7), None);
    }
}
