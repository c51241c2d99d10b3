//! The transmission phase of one connection: requests read in batches, handed to the disk's
//! engine through a queue of its own (as a vhost-user virtqueue is), replies sent as they finish.
//!
//! Every request is checked before the engine sees it (magic, flags, alignment, the export's
//! end, a size limit); a bad request gets an error reply, a bad header ends the connection.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::debug;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use super::arena::Arena;
use super::handshake::{ALLOCATION_CONTEXT_ID, MAX_PAYLOAD, Negotiated};
use super::socket::Socket;
use super::wire::{self, ChunkHeader, Request, WireError, cflag, chunk, cmd, errno};
use crate::engine::{
    self, ByteRange, Completion, EngineError, Extent, GuestBuffers, IoOp, IoRequest, QueueEngine,
    ZeroRange,
};

/// Data bytes of the requests in flight at once on one connection.
const ARENA: usize = 64 << 20;
/// Time a peer has to finish sending a request it started, or to take a reply.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest range of one discard or write-zeroes range handed to the engine (as for vhost).
const MAX_RANGE: u64 = 1 << 30;
/// `base:allocation` status bits: unallocated, and reads as zeroes.
const ALLOCATION_HOLE: u32 = wire::allocation::HOLE;
const ALLOCATION_ZERO: u32 = wire::allocation::ZERO;
/// The slot of a request without data.
const NO_SLOT: u64 = u64::MAX;
/// Input held while requests wait for room in the arena (a largest write and some more).
const INPUT_LIMIT: usize = MAX_PAYLOAD as usize + (4 << 20);
/// Most bytes read from the socket in one call.
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum TransmissionError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("malformed request: {0}")]
    Wire(#[from] WireError),
    #[error("a {0}-byte write is over the limit of {MAX_PAYLOAD}")]
    WriteTooLarge(u32),
    #[error("cannot set up the connection's queue: {0}")]
    Queue(EngineError),
}

/// A request handed to the engine, until its completion.
struct InFlight {
    request: Request,
    /// Where its data lies in the arena.
    slot: u64,
}

/// What to do with a checked request.
enum Action {
    Io(IoOp),
    Reply(Vec<u8>),
    Disconnect,
}

/// Serves requests until the client disconnects, the socket fails or a header is malformed.
pub fn serve(socket: &Socket, n: &Negotiated, queue_index: usize) -> Result<(), TransmissionError> {
    let mut queue = n
        .export
        .engine
        .queue(queue_index)
        .map_err(TransmissionError::Queue)?;
    let arena = Arena::new(ARENA)?;
    let mut conn = Conn {
        socket,
        n,
        arena,
        inbuf: Vec::new(),
        in_flight: HashMap::new(),
        next_token: 0,
    };
    let result = conn.run(queue.as_mut());
    // The arena must outlive every request the engine still holds.
    let mut done = Vec::new();
    engine::drain(queue.as_mut(), &mut done);
    result
}

struct Conn<'a> {
    socket: &'a Socket,
    n: &'a Negotiated,
    arena: Arena,
    inbuf: Vec<u8>,
    in_flight: HashMap<u64, InFlight>,
    next_token: u64,
}

impl Conn<'_> {
    /// Requests are taken as they arrive and replies sent as they finish, so the engine works
    /// while the client sends more and reads what is done.
    fn run(&mut self, queue: &mut dyn QueueEngine) -> Result<(), TransmissionError> {
        let mut batch = Vec::new();
        let mut done = Vec::new();
        let mut out = Vec::new();
        loop {
            let (consumed, disconnect) = self.parse_batch(&mut batch, &mut out)?;
            if !batch.is_empty() {
                queue.submit(&mut batch);
            }
            if disconnect {
                engine::drain(queue, &mut done);
            } else {
                queue.reap(&mut done);
            }
            for c in done.drain(..) {
                self.complete(c, &mut out);
            }
            if !out.is_empty() {
                self.socket
                    .write_all(&out, Instant::now() + STALL_TIMEOUT)?;
                out.clear();
            }
            if disconnect {
                return Ok(());
            }
            if consumed {
                continue;
            }
            let open = if queue.in_flight() == 0 {
                let deadline = (!self.inbuf.is_empty()).then(|| Instant::now() + STALL_TIMEOUT);
                let want = self.bytes_wanted().max(READ_CHUNK);
                self.socket.read_some(&mut self.inbuf, want, deadline)? > 0
            } else {
                self.wait_for_input_or_completion(queue, &mut done)?
            };
            if !open {
                return Ok(());
            }
        }
    }

    /// With requests in flight: waits until the client sends more or a request finishes.
    /// Returns false when the client closed the connection.
    fn wait_for_input_or_completion(
        &mut self,
        queue: &mut dyn QueueEngine,
        done: &mut Vec<Completion>,
    ) -> Result<bool, TransmissionError> {
        if self.inbuf.len() >= INPUT_LIMIT {
            // Enough is queued up: a client that keeps sending waits for its replies.
            queue.wait(done);
            return Ok(true);
        }
        let want = self.bytes_wanted().max(READ_CHUNK);
        let Some(cfd) = queue.completion_fd() else {
            // Completions come from `wait`: take input first if there is some.
            return match self.socket.try_read(&mut self.inbuf, want)? {
                Some(0) => Ok(false),
                Some(_) => Ok(true),
                None => {
                    queue.wait(done);
                    Ok(true)
                }
            };
        };
        let mut fds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: cfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds owned by this frame, for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        if fds[1].revents != 0 {
            queue.ack_completion_fd();
            queue.reap(done);
        }
        if fds[0].revents != 0 && self.socket.try_read(&mut self.inbuf, want)? == Some(0) {
            return Ok(false);
        }
        Ok(true)
    }

    /// Bytes missing for the next request to be complete.
    fn bytes_wanted(&self) -> usize {
        if self.inbuf.len() < wire::REQUEST_LEN {
            return wire::REQUEST_LEN - self.inbuf.len();
        }
        let head: &[u8; wire::REQUEST_LEN] = self.inbuf[..wire::REQUEST_LEN]
            .try_into()
            .expect("request length");
        match Request::parse(head) {
            Ok(r) if r.command == cmd::WRITE => {
                (wire::REQUEST_LEN + r.length as usize).saturating_sub(self.inbuf.len())
            }
            _ => 0,
        }
    }

    /// Takes every complete request from the input that fits in the arena; returns whether
    /// the client asked to disconnect.
    fn parse_batch(
        &mut self,
        batch: &mut Vec<IoRequest>,
        out: &mut Vec<u8>,
    ) -> Result<(bool, bool), TransmissionError> {
        let mut at = 0;
        let mut disconnect = false;
        while self.inbuf.len() - at >= wire::REQUEST_LEN {
            let head: &[u8; wire::REQUEST_LEN] = self.inbuf[at..at + wire::REQUEST_LEN]
                .try_into()
                .expect("request length");
            let req = Request::parse(head)?;
            let payload = if req.command == cmd::WRITE {
                if req.length > MAX_PAYLOAD {
                    return Err(TransmissionError::WriteTooLarge(req.length));
                }
                req.length as usize
            } else {
                0
            };
            if self.inbuf.len() - at - wire::REQUEST_LEN < payload {
                break;
            }
            let data_start = at + wire::REQUEST_LEN;
            at = data_start + payload;
            match self.check(&req) {
                Err(e) => out.extend_from_slice(&self.error_reply(&req, e)),
                Ok(Action::Reply(r)) => out.extend_from_slice(&r),
                Ok(Action::Disconnect) => {
                    disconnect = true;
                    break;
                }
                Ok(Action::Io(op)) => {
                    let len = match req.command {
                        cmd::READ | cmd::WRITE => req.length,
                        _ => 0,
                    };
                    let (slot, buffers) = if len == 0 {
                        (NO_SLOT, GuestBuffers::empty())
                    } else {
                        let Some(slot) = self.arena.take(u64::from(len)) else {
                            // Too much in flight: this request waits for completions.
                            at = data_start - wire::REQUEST_LEN;
                            break;
                        };
                        let buffers = self
                            .arena
                            .buffers(slot, len)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        (slot, buffers)
                    };
                    if req.command == cmd::WRITE {
                        self.arena
                            .memory()
                            .write_slice(
                                &self.inbuf[data_start..data_start + payload],
                                GuestAddress(slot),
                            )
                            .map_err(|e| io::Error::other(e.to_string()))?;
                    }
                    let token = self.next_token;
                    self.next_token = self.next_token.wrapping_add(1);
                    self.in_flight
                        .insert(token, InFlight { request: req, slot });
                    batch.push(IoRequest { token, op, buffers });
                }
            }
        }
        self.inbuf.drain(..at);
        Ok((at > 0, disconnect))
    }

    /// Checks a request against the export; the error is the protocol's errno.
    fn check(&self, req: &Request) -> Result<Action, u32> {
        let known = cflag::FUA | cflag::NO_HOLE | cflag::DF | cflag::REQ_ONE;
        if req.flags & !known != 0 {
            return Err(errno::EINVAL);
        }
        let writes = matches!(req.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
        if writes && self.n.export.engine.capabilities().read_only {
            return Err(errno::EPERM);
        }
        let range = || self.checked_range(req);
        match req.command {
            cmd::DISC => Ok(Action::Disconnect),
            cmd::FLUSH => Ok(Action::Io(IoOp::Flush)),
            cmd::READ => {
                range()?;
                Ok(Action::Io(IoOp::Read { offset: req.offset }))
            }
            cmd::WRITE => {
                range()?;
                Ok(Action::Io(IoOp::Write {
                    offset: req.offset,
                    durable: req.flags & cflag::FUA != 0,
                }))
            }
            cmd::TRIM => Ok(Action::Io(IoOp::Discard {
                ranges: split(range()?),
            })),
            cmd::WRITE_ZEROES => {
                let unmap = req.flags & cflag::NO_HOLE == 0;
                let ranges = split(range()?)
                    .into_iter()
                    .map(|range| ZeroRange { range, unmap })
                    .collect();
                Ok(Action::Io(IoOp::WriteZeroes { ranges }))
            }
            cmd::BLOCK_STATUS if self.n.allocation => Ok(Action::Reply(self.block_status(req)?)),
            _ => Err(errno::EINVAL),
        }
    }

    /// The request's range, if it is non-empty, aligned, inside the export and not too long.
    fn checked_range(&self, req: &Request) -> Result<ByteRange, u32> {
        let bs = u64::from(self.n.export.block_size);
        let len = u64::from(req.length);
        if len == 0 || !req.offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(errno::EINVAL);
        }
        if matches!(req.command, cmd::READ | cmd::WRITE) && req.length > MAX_PAYLOAD {
            return Err(errno::EOVERFLOW);
        }
        match req.offset.checked_add(len) {
            Some(end) if end <= self.n.size => Ok(ByteRange {
                offset: req.offset,
                len,
            }),
            _ if req.command == cmd::WRITE => Err(errno::ENOSPC),
            _ => Err(errno::EINVAL),
        }
    }

    /// `base:allocation` for the request's range, from the engine's allocation map (all data
    /// when the engine cannot tell). Extents are whole blocks; with `REQ_ONE`, only the first.
    fn block_status(&self, req: &Request) -> Result<Vec<u8>, u32> {
        if req.length == 0 || req.offset >= self.n.size {
            return Err(errno::EINVAL);
        }
        let len = u64::from(req.length).min(self.n.size - req.offset);
        let range = ByteRange {
            offset: req.offset,
            len,
        };
        let bs = u64::from(self.n.export.block_size);
        let mut extents = match self.n.export.engine.allocation(range) {
            Some(e) if !e.is_empty() && e.iter().all(|x| x.len > 0 && x.len.is_multiple_of(bs)) => {
                e
            }
            _ => vec![Extent { len, hole: false }],
        };
        if req.flags & cflag::REQ_ONE != 0 {
            extents.truncate(1);
        }
        let mut body = Vec::with_capacity(4 + 8 * extents.len());
        body.extend_from_slice(&ALLOCATION_CONTEXT_ID.to_be_bytes());
        for e in &extents {
            let status = if e.hole {
                ALLOCATION_HOLE | ALLOCATION_ZERO
            } else {
                0
            };
            // Extents lie inside the request, whose length is a u32.
            body.extend_from_slice(&(e.len.min(u64::from(u32::MAX)) as u32).to_be_bytes());
            body.extend_from_slice(&status.to_be_bytes());
        }
        let mut r = Vec::with_capacity(wire::CHUNK_HEADER_LEN + body.len());
        r.extend_from_slice(
            &ChunkHeader {
                flags: chunk::FLAG_DONE,
                kind: chunk::BLOCK_STATUS,
                cookie: req.cookie,
                length: body.len() as u32,
            }
            .encode(),
        );
        r.extend_from_slice(&body);
        Ok(r)
    }

    /// An error reply: a structured error chunk where the client expects chunks, else simple.
    fn error_reply(&self, req: &Request, error: u32) -> Vec<u8> {
        debug!(
            "nbd export {}: {} request at {}+{} refused with error {error}",
            self.n.export.name, req.command, req.offset, req.length
        );
        if self.n.structured && matches!(req.command, cmd::READ | cmd::BLOCK_STATUS) {
            let mut r = Vec::with_capacity(wire::CHUNK_HEADER_LEN + 6);
            r.extend_from_slice(
                &ChunkHeader {
                    flags: chunk::FLAG_DONE,
                    kind: chunk::ERROR,
                    cookie: req.cookie,
                    length: 6,
                }
                .encode(),
            );
            r.extend_from_slice(&error.to_be_bytes());
            r.extend_from_slice(&0u16.to_be_bytes());
            r
        } else {
            wire::simple_reply(req.cookie, error).to_vec()
        }
    }

    /// Appends the reply of a finished request.
    fn complete(&mut self, c: Completion, out: &mut Vec<u8>) {
        let Some(f) = self.in_flight.remove(&c.token) else {
            return;
        };
        let req = f.request;
        self.reply_to(&req, f.slot, c.result, out);
        if f.slot != NO_SLOT {
            self.arena.give_back(f.slot);
        }
    }

    fn reply_to(
        &self,
        req: &Request,
        slot: u64,
        result: Result<(), EngineError>,
        out: &mut Vec<u8>,
    ) {
        let req = *req;
        if let Err(e) = result {
            debug!("nbd export {}: {e}", self.n.export.name);
            out.extend_from_slice(&self.error_reply(&req, engine_errno(&e)));
            return;
        }
        if req.command != cmd::READ {
            out.extend_from_slice(&wire::simple_reply(req.cookie, 0));
            return;
        }
        let len = req.length as usize;
        if self.n.structured {
            out.extend_from_slice(
                &ChunkHeader {
                    flags: chunk::FLAG_DONE,
                    kind: chunk::OFFSET_DATA,
                    cookie: req.cookie,
                    length: req.length + 8,
                }
                .encode(),
            );
            out.extend_from_slice(&req.offset.to_be_bytes());
        } else {
            out.extend_from_slice(&wire::simple_reply(req.cookie, 0));
        }
        let start = out.len();
        out.resize(start + len, 0);
        if self
            .arena
            .memory()
            .read_slice(&mut out[start..], GuestAddress(slot))
            .is_err()
        {
            // Cannot happen (the slot lies inside the arena); never send wrong data.
            out.truncate(start);
        }
    }
}

/// Splits a range into pieces the engine takes (as vhost's discard limits do).
fn split(range: ByteRange) -> Vec<ByteRange> {
    let mut pieces = Vec::new();
    let mut offset = range.offset;
    let end = range.offset + range.len;
    while offset < end {
        let len = (end - offset).min(MAX_RANGE);
        pieces.push(ByteRange { offset, len });
        offset += len;
    }
    pieces
}

/// The protocol's errno for an engine's error.
fn engine_errno(e: &EngineError) -> u32 {
    match e {
        EngineError::ReadOnly { .. } => errno::EPERM,
        EngineError::Unsupported(_) => errno::ENOTSUP,
        EngineError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
            errno::ENOSPC
        }
        _ => errno::EIO,
    }
}
