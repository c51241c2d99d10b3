//! One disk's socket: accepts a frontend, and a second one beside it for a live migration.
//!
//! A listener thread per disk waits (epoll) on the socket, a stop event and a "session ended"
//! event. Every accepted connection starts a session: a fresh vhost-user backend with its worker
//! threads, set up by its frontend until the frontend hangs up. Two may be attached at once (a
//! migration's source and destination on the same socket); the disk's
//! [`FrontendGate`](super::frontends::FrontendGate) serves one of them. A third connection is
//! accepted and closed at once, so it cannot disturb either.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use thiserror::Error;
use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::{BlkBackend, DiskContext, SessionState};
use super::frontends::Wake;
use super::relay::{self, Relay, Rendezvous};
use super::sigbus;
use crate::engine::GuestMemory;
use crate::socket::bind_private;

/// Errors of starting or running a disk's socket.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("disk {disk}: socket {path}: {source}")]
    Socket {
        disk: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("disk {disk}: {message}")]
    Session { disk: String, message: String },
}

const EV_LISTENER: u64 = 1;
const EV_STOP: u64 = 2;
const EV_ENDED: u64 = 3;
/// How long a new connection waits for an attached frontend to finish disconnecting before it
/// is refused as a third frontend.
const RECONNECT_GRACE: Duration = Duration::from_millis(500);
/// Frontends attached at once: the one served and, during a live migration, the other side.
const MAX_FRONTENDS: usize = 2;

/// A running disk server; [`DiskServer::stop`] ends it.
pub struct DiskServer {
    ctx: Arc<DiskContext>,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl DiskServer {
    /// Binds the disk's socket and starts its listener thread.
    pub fn start(ctx: Arc<DiskContext>, socket: PathBuf) -> Result<Self, ServerError> {
        Self::start_on(ctx, socket, None)
    }

    /// Starts the listener thread on `inherited`, a listening socket for `socket` another
    /// process made (systemd socket activation), or else binds `socket`. An inherited socket
    /// is left in place at stop: its owner keeps it for the next keeld.
    pub fn start_on(
        ctx: Arc<DiskContext>,
        socket: PathBuf,
        inherited: Option<UnixListener>,
    ) -> Result<Self, ServerError> {
        let sock_err = |source| ServerError::Socket {
            disk: ctx.name.clone(),
            path: socket.clone(),
            source,
        };
        if let Err(e) = sigbus::install() {
            warn!(
                "cannot install the SIGBUS handler (a frontend truncating guest memory would end \
                 keeld): {e}"
            );
        }
        let owns_socket = inherited.is_none();
        let listener = match inherited {
            Some(l) => l,
            None => bind_private(&socket).map_err(sock_err)?,
        };
        listener.set_nonblocking(true).map_err(sock_err)?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(sock_err)?;
        let ended = EventFd::new(EFD_NONBLOCK).map_err(sock_err)?;
        let epoll = Epoll::new().map_err(sock_err)?;
        for (fd, id) in [
            (listener.as_raw_fd(), EV_LISTENER),
            (stop.as_raw_fd(), EV_STOP),
            (ended.as_raw_fd(), EV_ENDED),
        ] {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, id))
                .map_err(sock_err)?;
        }
        let mut acceptor = Acceptor {
            ctx: Arc::clone(&ctx),
            socket: socket.clone(),
            owns_socket,
            listener,
            epoll,
            ended,
            sessions: Vec::new(),
        };
        let thread = thread::Builder::new()
            .name(format!("keel-{}", ctx.name))
            .spawn(move || acceptor.run())
            .map_err(sock_err)?;
        info!("disk {}: serving on {}", ctx.name, socket.display());
        Ok(Self {
            ctx,
            stop,
            thread: Some(thread),
        })
    }

    pub fn context(&self) -> &Arc<DiskContext> {
        &self.ctx
    }

    /// Stops accepting, ends the attached session (finishing its in-flight I/O), removes the
    /// socket and makes completed writes durable.
    pub fn stop(mut self) -> Result<(), crate::engine::EngineError> {
        self.halt();
        self.ctx.engine.flush()
    }

    fn halt(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("disk {}: listener thread panicked", self.ctx.name);
        }
    }
}

impl Drop for DiskServer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// An attached frontend.
struct Session {
    /// The frontend's id in the disk's gate (for the log).
    id: u64,
    /// What its workers read (the guest's write-cache setting).
    state: Arc<SessionState>,
    /// Set by the waiter once the session is torn down.
    ended: Arc<AtomicBool>,
    shutdown: Option<ShutdownHandle>,
    /// Taken (and joined) by the waiter when the connection ends.
    relay: Arc<Mutex<Option<Relay>>>,
    waiter: JoinHandle<()>,
}

/// The listener thread's state.
struct Acceptor {
    ctx: Arc<DiskContext>,
    socket: PathBuf,
    /// False for an inherited socket, whose file is not ours to remove.
    owns_socket: bool,
    listener: UnixListener,
    epoll: Epoll,
    ended: EventFd,
    sessions: Vec<Session>,
}

impl Acceptor {
    fn run(&mut self) {
        let mut events = [EpollEvent::default(); 4];
        // Set while a connection waits for the attached frontend to finish leaving.
        let mut grace: Option<Instant> = None;
        'serve: loop {
            let timeout = grace.map_or(-1, |deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            });
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("disk {}: epoll: {e}", self.ctx.name);
                    break;
                }
            };
            if n == 0 && grace.is_some_and(|d| Instant::now() >= d) {
                // The attached frontends stayed: the newcomer is a third one.
                grace = None;
                self.refuse(
                    "two frontends are attached already (at most a migration's source and \
                     destination may be)",
                );
                self.watch_listener(true);
            }
            for ev in &events[..n] {
                match ev.data() {
                    EV_STOP => break 'serve,
                    EV_ENDED => {
                        let _ = self.ended.read();
                        self.reap_sessions();
                        if grace.take().is_some() {
                            self.watch_listener(true);
                        }
                    }
                    EV_LISTENER if self.sessions.len() >= MAX_FRONTENDS => {
                        // Often an attached frontend is just leaving (a reconnect): give it a
                        // moment before calling the newcomer a third frontend.
                        grace = Some(Instant::now() + RECONNECT_GRACE);
                        self.watch_listener(false);
                    }
                    EV_LISTENER => {
                        if let Err(e) = self.attach() {
                            error!("{e}");
                            // Do not leave the connection pending (the epoll would report it
                            // again at once): close it; the frontend may retry.
                            self.refuse("its session could not start");
                        }
                    }
                    _ => {}
                }
            }
        }
        for s in &self.sessions {
            if let Some(h) = &s.shutdown {
                h.shutdown();
            }
            if let Some(r) = s.relay.lock().ok().as_ref().and_then(|r| r.as_ref()) {
                r.close();
            }
        }
        for s in self.sessions.drain(..) {
            let _ = s.waiter.join();
        }
        self.ctx.stats.attached.store(false, Ordering::Release);
        if self.owns_socket {
            let _ = std::fs::remove_file(&self.socket);
        }
        info!("disk {}: stopped", self.ctx.name);
    }

    /// Joins the sessions whose frontend left.
    fn reap_sessions(&mut self) {
        let (ended, attached): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sessions)
            .into_iter()
            .partition(|s| s.ended.load(Ordering::Acquire));
        self.sessions = attached;
        for s in ended {
            let _ = s.waiter.join();
            info!("disk {}: frontend {} detached", self.ctx.name, s.id);
        }
        self.ctx
            .stats
            .attached
            .store(!self.sessions.is_empty(), Ordering::Release);
    }

    /// Adds the listening socket to (or removes it from) the epoll set.
    fn watch_listener(&self, watch: bool) {
        let op = if watch {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        let ev = EpollEvent::new(EventSet::IN, EV_LISTENER);
        if let Err(e) = self.epoll.ctl(op, self.listener.as_raw_fd(), ev) {
            error!("disk {}: epoll: {e}", self.ctx.name);
        }
    }

    /// Accepts and closes every pending connection, logging `why`.
    fn refuse(&self, why: &str) {
        while let Ok((conn, _)) = self.listener.accept() {
            drop(conn);
            self.ctx
                .stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            warn!("disk {}: refused a frontend: {why}", self.ctx.name);
        }
    }

    /// Accepts a frontend and starts serving it on a fresh backend.
    fn attach(&mut self) -> Result<(), ServerError> {
        let disk = self.ctx.name.clone();
        let fail = |message: String| ServerError::Session {
            disk: disk.clone(),
            message,
        };
        let memory = GuestMemoryAtomic::new(GuestMemory::default());
        let backend = Arc::new(BlkBackend::new(Arc::clone(&self.ctx), memory.clone()));
        let id = backend.session().frontend;
        if let Some(first) = self.sessions.first() {
            // A migration's destination continues the source's guest: its write cache is as
            // that guest left it (QEMU reads the config space from keeld, it does not migrate it).
            let write_through = first.state.write_through.load(Ordering::Relaxed);
            backend
                .session()
                .write_through
                .store(write_through, Ordering::Relaxed);
        }
        let mut daemon = VhostUserDaemon::new(self.ctx.name.clone(), Arc::clone(&backend), memory)
            .map_err(|e| fail(format!("cannot create the vhost-user device: {e}")))?;
        backend
            .install_workers(&daemon.get_epoll_handlers())
            .map_err(|e| fail(e.to_string()))?;

        // The epoll said a connection is pending and only this thread accepts, so this accept
        // finds it. The crate's handler gets the inner end of a private connection; the relay
        // joins it to the frontend (see relay.rs).
        let (frontend, _) = self
            .listener
            .accept()
            .map_err(|e| fail(format!("cannot accept the frontend: {e}")))?;
        frontend
            .set_nonblocking(false)
            .map_err(|e| fail(format!("frontend socket: {e}")))?;
        let rendezvous = Rendezvous::bind(&self.socket)
            .map_err(|e| fail(format!("cannot create the internal socket: {e}")))?;
        let path = rendezvous.path().to_string_lossy().into_owned();
        daemon
            .start_client(&path)
            .map_err(|e| fail(format!("cannot start the vhost-user handler: {e}")))?;
        let inner = rendezvous
            .accept_own()
            .map_err(|e| fail(format!("internal socket: {e}")))?;
        // Before its messages flow (and its rings can start): the gate may have to wake them.
        let waker: std::sync::Weak<dyn Wake> = Arc::downgrade(&backend) as _;
        self.ctx.frontends.set_waker(id, waker);
        let relay = relay::start(
            Arc::clone(&self.ctx),
            Arc::clone(backend.session()),
            frontend,
            inner,
        )
        .map_err(|e| {
            self.ctx.frontends.detach(&self.ctx.name, id);
            fail(format!("cannot start the control relay: {e}"))
        })?;
        let relay = Arc::new(Mutex::new(Some(relay)));

        self.ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.ctx.stats.attached.store(true, Ordering::Release);
        if self.sessions.is_empty() {
            info!("disk {}: frontend {id} attached", self.ctx.name);
        } else {
            info!(
                "disk {}: frontend {id} attached beside another one (a migration's other \
                 side): its rings are served once the other's have stopped",
                self.ctx.name
            );
        }
        let shutdown = daemon.shutdown_handle();
        let ended = self
            .ended
            .try_clone()
            .map_err(|e| fail(format!("eventfd: {e}")))?;
        let name = self.ctx.name.clone();
        let state = Arc::clone(backend.session());
        let ctx = Arc::clone(&self.ctx);
        let stats = Arc::clone(&self.ctx.stats);
        let done = Arc::new(AtomicBool::new(false));
        let waiter_done = Arc::clone(&done);
        let waiter_relay = Arc::clone(&relay);
        let waiter = thread::Builder::new()
            .name(format!("keel-{}-conn", self.ctx.name))
            .spawn(move || {
                match daemon.wait() {
                    Ok(())
                    | Err(vhost_user_backend::Error::HandleRequest(
                        VhostUserError::Disconnected | VhostUserError::PartialMessage,
                    )) => {}
                    Err(e) => warn!("disk {name}: connection ended: {e}"),
                }
                let s = stats.snapshot();
                info!(
                    "disk {name}: totals: {} reads, {} writes, {} flushes, {} refused, {} I/O \
                     errors, {} batches (mean {:.1} requests), {} notifications",
                    s.reads,
                    s.writes,
                    s.flushes,
                    s.invalid_requests,
                    s.errors,
                    s.batches,
                    s.batched_requests as f64 / s.batches.max(1) as f64,
                    s.notifications
                );
                // Dropping the daemon stops and joins its worker threads; then finish the I/O
                // they left in flight before the guest memory goes away.
                drop(daemon);
                if let Some(r) = waiter_relay.lock().ok().and_then(|mut r| r.take()) {
                    r.join();
                }
                backend.shutdown();
                // Its requests are done: the other frontend, if one waits, may have the disk.
                ctx.frontends.detach(&name, id);
                // A handover disk no frontend runs is free for the other keeld.
                ctx.release_if_idle();
                waiter_done.store(true, Ordering::Release);
                let _ = ended.write(1);
            })
            .map_err(|e| fail(format!("cannot start the connection thread: {e}")))?;
        self.sessions.push(Session {
            id,
            state,
            ended: done,
            shutdown,
            relay,
            waiter,
        });
        Ok(())
    }
}
