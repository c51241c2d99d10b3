//! The control socket's server: one thread that polls the listener and every open connection.
//!
//! Reading is non-blocking, so a client that sends half a request, or nothing, holds only its
//! buffer and its descriptor; the number of open connections is capped and each has a deadline,
//! so the daemon's descriptors stay available for vhost-user frontends whatever a client does.
//! Calls run one at a time on this thread, which keeps the daemon's state changes (snapshots,
//! mirror ops) serialised; exports and large answers are sent on threads of their own.

use super::http::{self, Progress, Request};
use super::{ApiCall, ApiError, ControlHandler, Download, metrics, route};
use crate::socket::bind_private;
use keel_protocol::control::ErrorBody;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much a client may take of the control server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most; when a new one arrives at the cap, the one that has waited
    /// longest without completing its request is closed (with a 503) to make room.
    pub connections: usize,
    /// Time from accept to a complete request head.
    pub head_timeout: Duration,
    /// Time from accept to a complete request (head and body).
    pub request_timeout: Duration,
    /// Time an answer may take to be written to a client that does not read.
    pub write_timeout: Duration,
    /// Threads sending exports or answers over [`INLINE_ANSWER`] bytes at once.
    pub senders: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 64,
            head_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            senders: 4,
        }
    }
}

impl Limits {
    /// The defaults, with the connection cap lowered to an eighth of the descriptor limit
    /// (RLIMIT_NOFILE) where that is lower: the rest stays for the disks and their frontends.
    pub fn for_this_process() -> Self {
        let mut rlim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) };
        let mut limits = Self::default();
        if rc == 0 {
            let share = usize::try_from(rlim.rlim_cur / 8).unwrap_or(usize::MAX);
            limits.connections = limits.connections.min(share).max(MIN_CONNECTIONS);
        }
        limits
    }
}

/// Connections allowed however low the descriptor limit.
const MIN_CONNECTIONS: usize = 4;
/// Answers up to this size are written on the loop thread: they fit in the socket's send
/// buffer, so writing them never waits for the client. Larger ones go to a sender thread.
pub const INLINE_ANSWER: usize = 64 << 10;
/// How long accepting pauses after the process ran out of descriptors (EMFILE and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per wake-up, so reading the ones already open is not starved.
const ACCEPT_BATCH: usize = 16;
/// How often running out of descriptors is logged while it lasts.
const EMFILE_LOG_EVERY: Duration = Duration::from_secs(10);

/// A running control socket; dropping it stops the thread and removes the socket file.
pub struct ControlServer {
    /// Closing this end wakes the loop and stops it.
    waker: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (mode 0600) and serves calls with `handler` on a thread of its own, with
    /// [`Limits::for_this_process`].
    pub fn start(path: &Path, handler: Arc<dyn ControlHandler>) -> io::Result<Self> {
        Self::start_with(path, handler, Limits::for_this_process())
    }

    /// [`start`](Self::start) with other limits than the defaults.
    pub fn start_with(
        path: &Path,
        handler: Arc<dyn ControlHandler>,
        limits: Limits,
    ) -> io::Result<Self> {
        let listener = bind_private(path)?;
        listener.set_nonblocking(true)?;
        let (waker, wake) = UnixStream::pair()?;
        let mut server = Loop {
            listener,
            wake,
            handler,
            limits,
            conns: VecDeque::new(),
            paused_until: None,
            last_emfile_log: None,
            senders: Arc::default(),
        };
        let thread = std::thread::Builder::new()
            .name("keel-control".into())
            .spawn(move || server.run())?;
        log::info!("control API listening on {}", path.display());
        Ok(Self {
            waker: Some(waker),
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        drop(self.waker.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connection whose request is not complete yet.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    accepted: Instant,
    head_done: bool,
}

impl Conn {
    fn deadline(&self, limits: &Limits) -> Instant {
        let allowed = if self.head_done {
            limits.request_timeout
        } else {
            limits.head_timeout
        };
        self.accepted + allowed
    }
}

/// What reading a connection's new bytes came to.
enum Received {
    Waiting,
    Gone,
    Request(Request),
    Refused(u16, String),
}

struct Loop {
    listener: UnixListener,
    wake: UnixStream,
    handler: Arc<dyn ControlHandler>,
    limits: Limits,
    /// Oldest first.
    conns: VecDeque<Conn>,
    /// Accepting is paused until then, after running out of descriptors.
    paused_until: Option<Instant>,
    last_emfile_log: Option<Instant>,
    /// Sender threads running now.
    senders: Arc<AtomicUsize>,
}

impl Loop {
    /// Runs until the waker is closed. Nothing a client does ends it.
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.expire(now);
            if self.paused_until.is_some_and(|t| now >= t) {
                self.paused_until = None;
            }
            let mut fds = Vec::with_capacity(2 + self.conns.len());
            fds.push(poll_fd(self.wake.as_raw_fd(), libc::POLLIN));
            let listen = if self.paused_until.is_none() {
                libc::POLLIN
            } else {
                0
            };
            fds.push(poll_fd(self.listener.as_raw_fd(), listen));
            for c in &self.conns {
                fds.push(poll_fd(c.stream.as_raw_fd(), libc::POLLIN));
            }
            // Now again: serving an expired connection's late request may have taken a while.
            let timeout = self.poll_timeout(Instant::now());
            // SAFETY: `fds` is a live array of `fds.len()` pollfd structs that poll fills in.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("control API: poll failed: {e}");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            if fds[0].revents != 0 {
                return;
            }
            // From the newest down, so taking one out leaves the indices below it valid.
            for i in (0..self.conns.len()).rev() {
                if fds[i + 2].revents != 0 {
                    self.read_conn(i);
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.accept_some();
            }
        }
    }

    /// Milliseconds until the next deadline or the end of an accept pause; -1 for none.
    fn poll_timeout(&self, now: Instant) -> libc::c_int {
        let next = self
            .conns
            .iter()
            .map(|c| c.deadline(&self.limits))
            .chain(self.paused_until)
            .min();
        match next {
            None => -1,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_micros().div_ceil(1000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        }
    }

    /// Answers 408 to, and closes, the connections past their deadline. Each is read once more
    /// first: a request that arrived while a long call held this thread is still served.
    fn expire(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.conns.len() {
            if now < self.conns[i].deadline(&self.limits) {
                i += 1;
                continue;
            }
            let Some(mut c) = self.conns.remove(i) else {
                break;
            };
            match read_available(&mut c) {
                Received::Waiting => {
                    let what = if c.head_done { "body" } else { "head" };
                    log::debug!("control API: request {what} not received in time");
                    let _ = answer_error(&mut c.stream, 408, "the request took too long to arrive");
                }
                other => self.settle(c, other),
            }
        }
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("control API: dropping a connection: {e}");
                        continue;
                    }
                    if self.conns.len() >= self.limits.connections
                        && let Some(mut oldest) = self.conns.pop_front()
                    {
                        let _ = answer_error(
                            &mut oldest.stream,
                            503,
                            "too many control connections; this one waited longest",
                        );
                    }
                    self.conns.push_back(Conn {
                        stream,
                        buf: Vec::new(),
                        accepted: Instant::now(),
                        head_done: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE, ENFILE) or memory: the connection stays in
                    // the backlog; pause accepting and try again, never give up.
                    let now = Instant::now();
                    if self
                        .last_emfile_log
                        .is_none_or(|t| now.duration_since(t) >= EMFILE_LOG_EVERY)
                    {
                        log::warn!(
                            "control API: cannot accept a connection: {e}; retrying every {} ms",
                            ACCEPT_BACKOFF.as_millis()
                        );
                        self.last_emfile_log = Some(now);
                    }
                    self.paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Reads what connection `i` sent; serves or refuses it once its request is complete.
    fn read_conn(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        let outcome = read_available(c);
        if matches!(outcome, Received::Waiting) {
            return;
        }
        if let Some(c) = self.conns.remove(i) {
            self.settle(c, outcome);
        }
    }

    /// Ends a connection taken out of the table according to what was read from it.
    fn settle(&self, mut c: Conn, outcome: Received) {
        match outcome {
            Received::Waiting | Received::Gone => {}
            Received::Refused(status, message) => {
                log::debug!("control API: refused a request ({status}): {message}");
                let _ = prepare_answer(&c.stream, &self.limits)
                    .and_then(|()| answer_error(&mut c.stream, status, &message));
            }
            Received::Request(request) => self.serve(c.stream, request),
        }
    }

    /// Carries out one call and answers it.
    fn serve(&self, mut stream: UnixStream, req: Request) {
        if let Err(e) = prepare_answer(&stream, &self.limits) {
            log::debug!("control API: client went away: {e}");
            return;
        }
        if metrics::is_metrics_request(&req.method, &req.url) {
            let handler = self.handler.as_ref();
            let Ok(body) = std::panic::catch_unwind(AssertUnwindSafe(|| metrics::render(handler)))
            else {
                let _ = answer_error(&mut stream, 500, "the metrics could not be gathered");
                return;
            };
            if let Err(e) = self.answer(stream, body, metrics::CONTENT_TYPE) {
                log::debug!("control client went away: {e}");
            }
            return;
        }
        let call = route(&req.method, &req.url, &req.body);
        if let Ok(ApiCall::Export { disk, from, to }) = &call {
            self.export(stream, &req, disk, from, to);
            return;
        }
        let handler = &self.handler;
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
            call.and_then(|call| handler.call(call))
        }))
        .unwrap_or_else(|_| Err(ApiError::Internal("the call failed unexpectedly".into())));
        let written = match answer {
            Ok(value) => self.answer(stream, value.to_string(), "application/json"),
            Err(e) => {
                log::debug!("control {} {}: {e}", req.method, req.url);
                answer_error(&mut stream, e.status(), &e.to_string())
            }
        };
        if let Err(e) = written {
            log::debug!("control client went away: {e}");
        }
    }

    /// Sends a successful answer: on this thread when it is small, else on a sender thread
    /// (a client that does not read a large answer must not hold the loop).
    fn answer(
        &self,
        mut stream: UnixStream,
        body: String,
        content_type: &'static str,
    ) -> io::Result<()> {
        if body.len() <= INLINE_ANSWER {
            return http::write_body(&mut stream, 200, content_type, &body);
        }
        let d = Download {
            len: body.len() as u64,
            reader: Box::new(io::Cursor::new(body.into_bytes())),
        };
        match self.sender_slot() {
            Some(slot) => {
                send_on_thread(slot, stream, d, content_type);
                Ok(())
            }
            None => answer_busy(&mut stream, &self.limits),
        }
    }

    fn export(&self, mut stream: UnixStream, req: &Request, disk: &str, from: &str, to: &str) {
        // Taken before the export is prepared, so a refused one costs nothing.
        let Some(slot) = self.sender_slot() else {
            let _ = answer_busy(&mut stream, &self.limits);
            return;
        };
        let download =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.export(disk, from, to)))
                .unwrap_or_else(|_| {
                    Err(ApiError::Internal("the export failed unexpectedly".into()))
                });
        match download {
            Ok(d) => send_on_thread(slot, stream, d, "application/octet-stream"),
            Err(e) => {
                log::debug!("control {} {}: {e}", req.method, req.url);
                let _ = answer_error(&mut stream, e.status(), &e.to_string());
            }
        }
    }

    /// One of the threads that write answers, if fewer than the limit are running.
    fn sender_slot(&self) -> Option<SenderSlot> {
        let running = Arc::clone(&self.senders);
        if running.fetch_add(1, Ordering::AcqRel) >= self.limits.senders {
            running.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(SenderSlot(running))
    }
}

/// A running sender thread, counted until it is dropped.
struct SenderSlot(Arc<AtomicUsize>);

impl Drop for SenderSlot {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "control sender threads: count underflow");
    }
}

/// Writes an answer of known length on a thread of its own. If the thread cannot start, the
/// closure and with it the slot and the connection are dropped: the client sees it closed.
fn send_on_thread(
    slot: SenderSlot,
    mut stream: UnixStream,
    d: Download,
    content_type: &'static str,
) {
    let spawned = std::thread::Builder::new()
        .name("keel-answer".into())
        .spawn(move || {
            let _slot = slot;
            send_download(&mut stream, d, content_type);
        });
    if let Err(e) = spawned {
        log::error!("control: cannot start a thread to send an answer: {e}");
    }
}

fn answer_busy(stream: &mut UnixStream, limits: &Limits) -> io::Result<()> {
    let message = format!(
        "{} large answers or exports are being sent; try again later",
        limits.senders
    );
    answer_error(stream, 503, &message)
}

/// Reads every byte the client has sent so far and parses them.
fn read_available(c: &mut Conn) -> Received {
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    while c.buf.len() < http::MAX_HEAD + http::MAX_BODY {
        match c.stream.read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Received::Gone,
        }
    }
    match http::parse(&c.buf) {
        Progress::Complete(r) => Received::Request(r),
        Progress::Refused { status, message } => Received::Refused(status, message),
        Progress::Partial { .. } if eof => Received::Gone,
        Progress::Partial { head_done } => {
            c.head_done = head_done;
            Received::Waiting
        }
    }
}

/// Answers are written blocking, but never for longer than the write timeout.
fn prepare_answer(stream: &UnixStream, limits: &Limits) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(limits.write_timeout))
}

fn answer_error(stream: &mut UnixStream, status: u16, message: &str) -> io::Result<()> {
    let body = ErrorBody {
        error: message.to_owned(),
    };
    let body = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    http::write_json(stream, status, &body)
}

/// Streams an answer. Its length is sent first: a transfer cut short is seen as such.
fn send_download(stream: &mut UnixStream, d: Download, content_type: &str) {
    let head = http::response_head(200, content_type, d.len);
    let sent = stream
        .write_all(head.as_bytes())
        .and_then(|()| io::copy(&mut d.reader.take(d.len), stream))
        .and_then(|copied| {
            if copied == d.len {
                stream.flush()
            } else {
                Err(io::Error::other(format!(
                    "the export ended after {copied} of {} bytes",
                    d.len
                )))
            }
        });
    if let Err(e) = sent {
        log::warn!("control: an answer or export stopped: {e}");
    }
}

fn poll_fd(fd: std::os::fd::RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests;
