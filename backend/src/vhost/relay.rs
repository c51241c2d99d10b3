//! The frontend's control channel, relayed through keeld.
//!
//! The vhost-user backend crate serves every control message but the two of the inflight-area
//! feature, GET_INFLIGHT_FD and SET_INFLIGHT_FD, which it refuses. So the crate's handler is
//! given one end of a private connection and a relay thread sits between it and the frontend:
//! messages pass through unchanged, file descriptors included, except those two, which the relay
//! answers itself ([`super::inflight`]), and SET_LOG_BASE, whose log Keel marks itself
//! ([`super::dirty_log`]). Only control messages take this hop; the virtqueues,
//! kicks and calls use the shared memory and eventfds that pass through it.
//!
//! The relay reads the frontend's messages with the same limits the crate applies (a 12-byte
//! header, at most 4 KiB of payload and 32 descriptors); anything else ends the connection.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

use log::{debug, info, warn};
use vhost::vhost_user::message::{MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE, VhostUserInflight};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::backend::{DiskContext, SessionState};
use super::dirty_log::DirtyLog;
use super::inflight::InflightRegion;
use crate::socket::bind_private;

const HEADER: usize = 12;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
const SET_BACKEND_REQ_FD: u32 = 21;
const SET_LOG_BASE: u32 = 6;
/// SET_LOG_BASE's payload: mmap_size, mmap_offset.
const LOG_PAYLOAD: usize = 16;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// The inflight message's payload as frontends send it (the struct with its tail padding).
const INFLIGHT_PAYLOAD: usize = std::mem::size_of::<VhostUserInflight>();

/// One control message.
struct Message {
    header: [u8; HEADER],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn code(&self) -> u32 {
        u32::from_le_bytes([
            self.header[0],
            self.header[1],
            self.header[2],
            self.header[3],
        ])
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes([
            self.header[4],
            self.header[5],
            self.header[6],
            self.header[7],
        ])
    }

    /// A reply to this message with `payload`.
    fn reply(&self, payload: Vec<u8>, fds: Vec<OwnedFd>) -> Message {
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&self.code().to_le_bytes());
        header[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
        header[8..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        Message {
            header,
            payload,
            fds,
        }
    }
}

/// Reads one message; `None` when the peer hung up between messages.
fn read_message(sock: &UnixStream) -> io::Result<Option<Message>> {
    let mut header = [0u8; HEADER];
    let mut raw_fds: [RawFd; MAX_ATTACHED_FD_ENTRIES] = [-1; MAX_ATTACHED_FD_ENTRIES];
    let mut iov = [libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: HEADER,
    }];
    // SAFETY: the iovec points at `header`, which lives across the call and may take any bytes.
    let (got, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw_fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let fds: Vec<OwnedFd> = raw_fds[..nfds]
        .iter()
        // SAFETY: recvmsg gave us these descriptors; nothing else owns them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Ok(None);
    }
    let mut reader = sock;
    reader.read_exact(&mut header[got..])?;
    let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if size > MAX_MSG_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {size}-byte payload (at most {MAX_MSG_SIZE})"),
        ));
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload)?;
    Ok(Some(Message {
        header,
        payload,
        fds,
    }))
}

fn write_message(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let fds: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let mut bytes = Vec::with_capacity(HEADER + msg.payload.len());
    bytes.extend_from_slice(&msg.header);
    bytes.extend_from_slice(&msg.payload);
    let sent = sock
        .send_with_fds(&[&bytes[..]], &fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let mut writer = sock;
    writer.write_all(&bytes[sent..])
}

/// A running relay; [`Relay::close`] ends it.
pub struct Relay {
    frontend: UnixStream,
    backend: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Hangs up both sides; the relay thread ends.
    pub fn close(&self) {
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.backend.shutdown(std::net::Shutdown::Both);
    }

    pub fn join(mut self) {
        self.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A private socket the crate's handler connects to, so the relay can hold the other end.
pub struct Rendezvous {
    listener: UnixListener,
    path: PathBuf,
}

impl Rendezvous {
    /// Binds a 0600 socket beside the disk's own socket (only this user can reach it).
    pub fn bind(disk_socket: &Path) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            ".keel-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = disk_socket.parent().unwrap_or(Path::new("."));
        let path = dir.join(&name);
        let listener = match bind_private(&path) {
            Ok(l) => l,
            // The disk's directory is near the socket path length limit: use the temp dir.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                let path = std::env::temp_dir().join(&name);
                let l = bind_private(&path)?;
                return Ok(Self { listener: l, path });
            }
            Err(e) => return Err(e),
        };
        Ok(Self { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The connection this process made; any other process's connection is closed.
    pub fn accept_own(self) -> io::Result<UnixStream> {
        let me = std::process::id();
        loop {
            let (conn, _) = self.listener.accept()?;
            match peer_pid(&conn) {
                Ok(pid) if pid == me => return Ok(conn),
                Ok(pid) => warn!("refused a connection from process {pid} on an internal socket"),
                Err(e) => warn!("internal socket: {e}"),
            }
        }
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn peer_pid(conn: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.pid as u32)
}

/// Starts relaying between the frontend and the crate's handler.
pub fn start(
    ctx: Arc<DiskContext>,
    session: Arc<SessionState>,
    frontend: UnixStream,
    backend: UnixStream,
) -> io::Result<Relay> {
    let state = RelayState {
        ctx: Arc::clone(&ctx),
        session,
        frontend: frontend.try_clone()?,
        backend: backend.try_clone()?,
    };
    let thread = thread::Builder::new()
        .name(format!("keel-{}-ctl", ctx.name))
        .spawn(move || state.run())?;
    Ok(Relay {
        frontend,
        backend,
        thread: Some(thread),
    })
}

struct RelayState {
    ctx: Arc<DiskContext>,
    session: Arc<SessionState>,
    frontend: UnixStream,
    backend: UnixStream,
}

const FRONTEND: usize = 0;
const BACKEND: usize = 1;

impl RelayState {
    fn run(self) {
        if let Err(e) = self.relay() {
            debug!("disk {}: control channel ended: {e}", self.ctx.name);
        }
        self.ctx.config_change.install(self.session.frontend, None);
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.backend.shutdown(std::net::Shutdown::Both);
    }

    fn relay(&self) -> io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: self.frontend.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.backend.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structures for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if fds[BACKEND].revents != 0 {
                // The handler's replies go back as they are.
                let Some(msg) = read_message(&self.backend)? else {
                    return Ok(());
                };
                write_message(&self.frontend, &msg)?;
            }
            if fds[FRONTEND].revents != 0 {
                let Some(msg) = read_message(&self.frontend)? else {
                    return Ok(());
                };
                self.handle_frontend(msg)?;
            }
        }
    }

    fn handle_frontend(&self, msg: Message) -> io::Result<()> {
        match msg.code() {
            GET_INFLIGHT_FD => self.get_inflight(&msg),
            SET_LOG_BASE => self.set_log_base(msg),
            SET_INFLIGHT_FD => self.set_inflight(msg),
            SET_BACKEND_REQ_FD => {
                // Keep a copy for config-change messages (the crate's handler gets its own).
                let channel = match msg.fds.as_slice() {
                    [fd] => fd
                        .try_clone()
                        .ok()
                        .map(UnixStream::from)
                        .filter(|s| s.peer_addr().is_ok()),
                    _ => None,
                };
                self.ctx
                    .config_change
                    .install(self.session.frontend, channel);
                write_message(&self.backend, &msg)
            }
            _ => write_message(&self.backend, &msg),
        }
    }

    /// Maps the dirty log the frontend gives before a live migration. A log keeld cannot map
    /// ends the connection: going on would let the migration copy guest memory without the
    /// pages keeld writes, and corrupt the guest on the destination.
    fn set_log_base(&self, mut msg: Message) -> io::Result<()> {
        let log = match (msg.payload.get(..LOG_PAYLOAD), msg.fds.len()) {
            (Some(p), 1) => {
                let size = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                let offset = u64::from_le_bytes(p[8..].try_into().unwrap_or_default());
                let file = File::from(msg.fds.remove(0));
                DirtyLog::open(file, size, offset).map_err(|e| e.to_string())
            }
            (None, _) => Err("a short payload".to_string()),
            (_, n) => Err(format!("{n} file descriptors, not 1")),
        };
        let log = log.map_err(|e| {
            warn!("disk {}: SET_LOG_BASE refused: {e}", self.ctx.name);
            io::Error::new(io::ErrorKind::InvalidData, e)
        })?;
        info!(
            "disk {}: frontend {}: dirty log of {} bytes (guest memory up to {} MiB)",
            self.ctx.name,
            self.session.frontend,
            log.covers() / (8 * 4096),
            log.covers() >> 20
        );
        self.session.dirty.set_base(log);
        // QEMU waits for a reply (with LOG_SHMFD) and reads no payload from it.
        write_message(&self.frontend, &msg.reply(Vec::new(), Vec::new()))
    }

    /// Allocates an area for the frontend. A request this disk cannot satisfy gets a zero-sized
    /// area, which frontends take as "the backend keeps none".
    fn get_inflight(&self, msg: &Message) -> io::Result<()> {
        let ask = parse_inflight(&msg.payload);
        let region = ask
            .ok_or_else(|| "a short payload".to_string())
            .and_then(|ask| {
                InflightRegion::create(
                    ask.num_queues,
                    ask.queue_size,
                    self.ctx.queues,
                    self.ctx.queue_size,
                )
                .map_err(|e| e.to_string())
            });
        let len = msg.payload.len().max(INFLIGHT_PAYLOAD);
        let (answer, fds) = match region {
            Ok(region) => {
                let fd = OwnedFd::from(region.file().try_clone()?);
                (region.message(), vec![fd])
            }
            Err(e) => {
                warn!("disk {}: GET_INFLIGHT_FD: {e}", self.ctx.name);
                (VhostUserInflight::default(), Vec::new())
            }
        };
        let mut payload = answer.as_slice().to_vec();
        payload.resize(len, 0);
        write_message(&self.frontend, &msg.reply(payload, fds))
    }

    /// Installs the area the frontend hands back; workers take it up at their next wakeup.
    fn set_inflight(&self, mut msg: Message) -> io::Result<()> {
        let result = match (parse_inflight(&msg.payload), msg.fds.len()) {
            (Some(area), 1) => {
                let file = File::from(msg.fds.remove(0));
                InflightRegion::open(file, &area, self.ctx.queues, self.ctx.queue_size)
                    .map_err(|e| e.to_string())
            }
            (None, _) => Err("a short payload".to_string()),
            (_, n) => Err(format!("{n} file descriptors, not 1")),
        };
        let ok = match result {
            Ok(region) => {
                info!(
                    "disk {}: the frontend keeps an inflight area for {} queues",
                    self.ctx.name,
                    region.queues()
                );
                self.session.inflight.install(region);
                true
            }
            Err(e) => {
                warn!("disk {}: SET_INFLIGHT_FD refused: {e}", self.ctx.name);
                false
            }
        };
        if msg.flags() & FLAG_NEED_REPLY != 0 {
            let status = u64::from(!ok).to_le_bytes().to_vec();
            write_message(&self.frontend, &msg.reply(status, Vec::new()))?;
        }
        Ok(())
    }
}

fn parse_inflight(payload: &[u8]) -> Option<VhostUserInflight> {
    let bytes = payload.get(..20)?;
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    Some(VhostUserInflight::new(
        u64_at(0),
        u64_at(8),
        u16_at(16),
        u16_at(18),
    ))
}
