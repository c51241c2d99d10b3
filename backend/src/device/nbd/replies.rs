//! The reader side of an NBD client connection: replies matched to the requests waiting for
//! them, and the connection's death when anything goes wrong.

use std::io;
use std::sync::Mutex;
use std::sync::mpsc::SyncSender;

use super::PendingMap;
use crate::nbd::socket::Socket;
use crate::nbd::wire::{self, ChunkHeader, Fields, ReplyHeader, chunk, errno};

/// Longest reply chunk accepted (a 32 MiB read and its offset, with room to spare).
const MAX_CHUNK: u32 = (32 << 20) + 64;

/// What a request brought back.
#[derive(Debug, Default)]
pub struct Answer {
    /// A READ's data, filled by `OFFSET_DATA` chunks (holes stay zero).
    pub data: Vec<u8>,
    /// A BLOCK_STATUS's `base:allocation` descriptors: (length, status flags).
    pub extents: Vec<(u32, u32)>,
}

/// A request waiting for its reply.
pub struct Pending {
    pub offset: u64,
    /// Whether it is a BLOCK_STATUS (its answer must carry descriptors).
    pub status: bool,
    pub answer: Answer,
    pub error: Option<u32>,
    pub done: SyncSender<io::Result<Answer>>,
}

/// What the callers and the reader thread share.
pub struct Shared {
    pub socket: Socket,
    structured: bool,
    /// The id of `base:allocation`, when it was selected.
    allocation_context: Option<u32>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: PendingMap,
    failure: Option<String>,
}

fn dead(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("NBD connection lost: {reason}"),
    )
}

/// The I/O error for a reply's error value.
fn reply_error(value: u32) -> io::Error {
    let kind = match value {
        errno::EPERM => io::ErrorKind::PermissionDenied,
        errno::EINVAL => io::ErrorKind::InvalidInput,
        errno::ENOSPC => io::ErrorKind::StorageFull,
        errno::ENOTSUP => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("the NBD server answered error {value}"))
}

impl Shared {
    pub fn new(socket: Socket, structured: bool, allocation_context: Option<u32>) -> Self {
        Self {
            socket,
            structured,
            allocation_context,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn failure(&self) -> Option<String> {
        self.state().failure.clone()
    }

    /// Registers a request before it is sent; fails if the connection is dead.
    pub fn register(&self, cookie: u64, p: Pending) -> io::Result<()> {
        let mut st = self.state();
        if let Some(f) = &st.failure {
            return Err(dead(f));
        }
        st.pending.insert(cookie, p);
        Ok(())
    }

    /// Kills the connection: every waiting request fails with `reason`, later ones at once.
    pub fn fail(&self, reason: String) {
        self.end(reason, true);
    }

    /// Ends the connection on purpose (the device is dropped): as `fail`, without a warning.
    pub fn close(&self) {
        self.end("the device was closed".into(), false);
    }

    fn end(&self, reason: String, lost: bool) {
        let mut st = self.state();
        if st.failure.is_none() {
            if lost {
                log::warn!("NBD connection lost: {reason}");
            }
            st.failure = Some(reason.clone());
        }
        for (_, p) in st.pending.drain() {
            let _ = p.done.try_send(Err(dead(&reason)));
        }
        drop(st);
        self.socket.shut_down();
    }

    /// The reader thread: replies until the connection ends.
    pub fn read_replies(&self) {
        let reason = loop {
            if let Err(e) = self.read_one() {
                break e.to_string();
            }
        };
        self.fail(reason);
    }

    fn read_one(&self) -> io::Result<()> {
        let mut head = [0u8; wire::CHUNK_HEADER_LEN];
        self.socket
            .read_exact(&mut head[..wire::SIMPLE_REPLY_LEN], None)?;
        if head[..4] == wire::STRUCTURED_REPLY_MAGIC.to_be_bytes() {
            self.socket
                .read_exact(&mut head[wire::SIMPLE_REPLY_LEN..], None)?;
        }
        let (header, _) = ReplyHeader::parse(&head, MAX_CHUNK)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match header {
            ReplyHeader::Simple { cookie, error } => self.simple(cookie, error),
            ReplyHeader::Chunk(c) => {
                if !self.structured {
                    return Err(invalid("a structured reply that was not negotiated"));
                }
                let mut payload = vec![0u8; c.length as usize];
                self.socket.read_exact(&mut payload, None)?;
                self.chunk(c, &payload)
            }
        }
    }

    fn simple(&self, cookie: u64, error: u32) -> io::Result<()> {
        let mut p = self
            .state()
            .pending
            .remove(&cookie)
            .ok_or_else(|| invalid("a reply to no request"))?;
        if error != 0 {
            let _ = p.done.try_send(Err(reply_error(error)));
            return Ok(());
        }
        if p.status {
            let _ = p
                .done
                .try_send(Err(invalid("block status without descriptors")));
            return Err(invalid("a simple reply to BLOCK_STATUS"));
        }
        if !p.answer.data.is_empty() {
            // A simple reply to a READ: its data follows.
            if self.structured {
                return Err(invalid("a simple reply to a structured READ"));
            }
            self.socket.read_exact(&mut p.answer.data, None)?;
        }
        let _ = p.done.try_send(Ok(std::mem::take(&mut p.answer)));
        Ok(())
    }

    fn chunk(&self, c: ChunkHeader, payload: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        let p = st
            .pending
            .get_mut(&c.cookie)
            .ok_or_else(|| invalid("a reply chunk for no request"))?;
        let mut f = Fields::new(payload);
        let bad = |e: wire::WireError| invalid(&e.to_string());
        match c.kind {
            chunk::NONE => {}
            chunk::OFFSET_DATA | chunk::OFFSET_HOLE => {
                let at = f.u64().map_err(bad)?;
                let len = if c.kind == chunk::OFFSET_DATA {
                    f.remaining() as u64
                } else {
                    u64::from(f.u32().map_err(bad)?)
                };
                let data = &mut p.answer.data;
                let start = at
                    .checked_sub(p.offset)
                    .filter(|s| s.saturating_add(len) <= data.len() as u64)
                    .ok_or_else(|| invalid("read data outside the request"))?
                    as usize;
                if c.kind == chunk::OFFSET_DATA {
                    data[start..start + len as usize]
                        .copy_from_slice(f.take(len as usize).map_err(bad)?);
                } else {
                    data[start..start + len as usize].fill(0);
                }
            }
            chunk::BLOCK_STATUS => {
                if !p.status {
                    return Err(invalid("block status in a reply to another command"));
                }
                let context = f.u32().map_err(bad)?;
                if Some(context) != self.allocation_context {
                    return Err(invalid("block status for a context that was not selected"));
                }
                let n = f.remaining();
                if n == 0 || !n.is_multiple_of(8) {
                    return Err(invalid(&format!(
                        "a block status chunk with {n} bytes of descriptors"
                    )));
                }
                if !p.answer.extents.is_empty() {
                    return Err(invalid("two block status chunks for one context"));
                }
                for _ in 0..n / 8 {
                    let len = f.u32().map_err(bad)?;
                    let flags = f.u32().map_err(bad)?;
                    if len == 0 {
                        return Err(invalid("a block status descriptor of length 0"));
                    }
                    p.answer.extents.push((len, flags));
                }
            }
            kind if kind & (1 << 15) != 0 => {
                let value = f.u32().map_err(bad)?;
                p.error
                    .get_or_insert(if value == 0 { errno::EIO } else { value });
            }
            other => return Err(invalid(&format!("unknown reply chunk type {other}"))),
        }
        if c.flags & chunk::FLAG_DONE != 0 {
            let mut p = st.pending.remove(&c.cookie).expect("looked up above");
            let result = match p.error {
                Some(e) => Err(reply_error(e)),
                None if p.status && p.answer.extents.is_empty() => {
                    Err(invalid("block status without descriptors"))
                }
                None => Ok(std::mem::take(&mut p.answer)),
            };
            let _ = p.done.try_send(result);
        }
        Ok(())
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}
