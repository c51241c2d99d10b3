//! keeld's NBD listeners: a unix socket (mode 0600) and, if configured, a TCP address. One
//! thread accepts; each connection has a thread of its own, up to a fixed number of them.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::exports::Exports;
use super::handshake;
use super::socket::Socket;
use super::transmission;
use crate::socket::bind_private;

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Time from accept to the end of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long accepting pauses after an error such as running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where keeld listens for NBD clients.
#[derive(Clone, Debug, Default)]
pub struct NbdListen {
    pub socket: Option<PathBuf>,
    pub tcp: Option<std::net::SocketAddr>,
}

/// The connections being served, so that stopping can wake them.
#[derive(Default)]
struct Live {
    sockets: Mutex<Vec<(u64, Arc<Socket>)>>,
    count: AtomicUsize,
}

impl Live {
    /// Shuts every open connection down, so its thread sees the end and exits.
    fn shut_down_all(&self) {
        for (_, s) in self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            s.shut_down();
        }
    }
}

/// A running NBD server; dropping it closes the listeners and ends every connection (after
/// the requests in flight finish).
pub struct NbdServer {
    waker: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
    live: Arc<Live>,
}

impl NbdServer {
    pub fn start(listen: &NbdListen, exports: Arc<Exports>) -> io::Result<Self> {
        let mut listeners: Vec<OwnedFd> = Vec::new();
        if let Some(path) = &listen.socket {
            let l: UnixListener = bind_private(path)?;
            l.set_nonblocking(true)?;
            info!("NBD exports on unix socket {}", path.display());
            listeners.push(l.into());
        }
        if let Some(addr) = &listen.tcp {
            let l = TcpListener::bind(*addr)?;
            l.set_nonblocking(true)?;
            warn!(
                "NBD exports on TCP {} without authentication: anyone who can reach it can read \
                 and write the disks",
                l.local_addr()?
            );
            listeners.push(l.into());
        }
        let (waker, wake) = UnixStream::pair()?;
        let live = Arc::new(Live::default());
        let acceptor = Acceptor {
            listeners,
            wake,
            exports,
            live: Arc::clone(&live),
            threads: Vec::new(),
            next_id: 0,
        };
        let thread = std::thread::Builder::new()
            .name("keel-nbd".into())
            .spawn(move || acceptor.run())?;
        Ok(Self {
            waker: Some(waker),
            thread: Some(thread),
            path: listen.socket.clone(),
            live,
        })
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        drop(self.waker.take());
        self.live.shut_down_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Acceptor {
    listeners: Vec<OwnedFd>,
    /// Readable (end of stream) when the server is dropped.
    wake: UnixStream,
    exports: Arc<Exports>,
    live: Arc<Live>,
    threads: Vec<JoinHandle<()>>,
    next_id: u64,
}

impl Acceptor {
    fn run(mut self) {
        loop {
            let mut fds: Vec<libc::pollfd> = std::iter::once(self.wake.as_raw_fd())
                .chain(self.listeners.iter().map(|l| l.as_raw_fd()))
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid array of pollfd owned by this frame.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                continue;
            }
            if fds[0].revents != 0 {
                break;
            }
            for (i, pfd) in fds.iter().enumerate().skip(1) {
                if pfd.revents != 0 {
                    self.accept(i - 1);
                }
            }
            self.threads.retain(|t| !t.is_finished());
        }
        self.live.shut_down_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    fn accept(&mut self, index: usize) {
        let fd = self.listeners[index].as_raw_fd();
        // SAFETY: accept4 on a listening socket we own; no address is asked for.
        let conn = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                warn!("NBD accept failed: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            return;
        }
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn) };
        if self.live.count.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            warn!("NBD: {MAX_CONNECTIONS} connections already open; a new one is closed");
            return;
        }
        let socket = Arc::new(Socket::new(owned));
        let id = self.next_id;
        self.next_id += 1;
        self.live.count.fetch_add(1, Ordering::AcqRel);
        self.live
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, Arc::clone(&socket)));
        let exports = Arc::clone(&self.exports);
        let live = Arc::clone(&self.live);
        let spawned = std::thread::Builder::new()
            .name("keel-nbd-conn".into())
            .spawn(move || {
                serve_connection(&socket, &exports, id as usize);
                live.sockets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(i, _)| *i != id);
                live.count.fetch_sub(1, Ordering::AcqRel);
            });
        match spawned {
            Ok(t) => self.threads.push(t),
            Err(e) => {
                warn!("NBD: cannot start a connection thread: {e}");
                self.live
                    .sockets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(i, _)| *i != id);
                self.live.count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One connection, handshake to end; errors are logged, never passed on.
pub fn serve_connection(socket: &Socket, exports: &Exports, id: usize) {
    let negotiated = match handshake::negotiate(socket, exports, Instant::now() + HANDSHAKE_TIMEOUT)
    {
        Ok(Some(n)) => n,
        Ok(None) => return,
        Err(e) => {
            warn!("NBD connection {id}: handshake failed: {e}");
            return;
        }
    };
    let name = negotiated.export.name.clone();
    log::debug!("NBD connection {id}: serving export {name}");
    if let Err(e) = transmission::serve(socket, &negotiated, id) {
        warn!("NBD connection {id} (export {name}): {e}; connection closed");
    }
}
