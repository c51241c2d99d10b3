//! The server's side of the fixed-newstyle handshake: options until the client picks an export
//! with `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME`).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use super::exports::{Export, Exports};
use super::socket::Socket;
use super::wire::{self, GoRequest, MetaContextRequest, OptionHeader, WireError, info, opt, rep};

/// Longest option data accepted; longer options end the connection.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Largest request data (READ/WRITE length) the server accepts.
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Preferred request size announced to clients.
const PREFERRED_BLOCK: u32 = 64 << 10;
/// The id of `base:allocation` on every connection.
pub const ALLOCATION_CONTEXT_ID: u32 = 1;

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("malformed handshake: {0}")]
    Wire(#[from] WireError),
    #[error("client flags {0:#x} are not supported (fixed newstyle is required)")]
    ClientFlags(u32),
    #[error("option data of {0} bytes is over the limit")]
    OptionTooLong(u32),
    #[error("no export named {0:?}")]
    NoSuchExport(String),
}

/// What the client chose: the export, and the transmission features it asked for.
pub struct Negotiated {
    pub export: Arc<Export>,
    /// The export's size when it was announced; requests are checked against it.
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
    /// Whether `base:allocation` was selected (block status allowed).
    pub allocation: bool,
}

/// The transmission flags of `export`.
pub fn transmission_flags(export: &Export, structured: bool) -> u16 {
    use wire::tflag::*;
    let mut flags = HAS_FLAGS | SEND_FLUSH | SEND_FUA | CAN_MULTI_CONN;
    if export.engine.capabilities().read_only {
        flags |= READ_ONLY;
    } else {
        flags |= SEND_TRIM | SEND_WRITE_ZEROES;
    }
    if structured {
        flags |= SEND_DF;
    }
    flags
}

/// Runs the handshake; `Ok(None)` when the client ends it without choosing an export.
pub fn negotiate(
    socket: &Socket,
    exports: &Exports,
    deadline: Instant,
) -> Result<Option<Negotiated>, HandshakeError> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&wire::NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
    socket.write_all(&hello, deadline)?;
    let mut client = [0u8; 4];
    socket.read_exact(&mut client, Some(deadline))?;
    let client_flags = u32::from_be_bytes(client);
    let known = wire::CLIENT_FIXED_NEWSTYLE | wire::CLIENT_NO_ZEROES;
    if client_flags & !known != 0 || client_flags & wire::CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::ClientFlags(client_flags));
    }
    let no_zeroes = client_flags & wire::CLIENT_NO_ZEROES != 0;
    let mut state = Options {
        socket,
        exports,
        deadline,
        structured: false,
        allocation: false,
    };
    loop {
        let mut head = [0u8; wire::OPTION_HEADER_LEN];
        socket.read_exact(&mut head, Some(deadline))?;
        let header = OptionHeader::parse(&head)?;
        if header.length > MAX_OPTION_DATA {
            return Err(HandshakeError::OptionTooLong(header.length));
        }
        let mut data = vec![0u8; header.length as usize];
        socket.read_exact(&mut data, Some(deadline))?;
        match header.option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let export = exports
                    .get(&name)
                    .ok_or(HandshakeError::NoSuchExport(name))?;
                let size = export.engine.capacity();
                let flags = transmission_flags(&export, false);
                let mut reply = Vec::with_capacity(10 + 124);
                reply.extend_from_slice(&size.to_be_bytes());
                reply.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    reply.resize(reply.len() + 124, 0);
                }
                socket.write_all(&reply, deadline)?;
                return Ok(Some(Negotiated {
                    export,
                    size,
                    flags,
                    structured: false,
                    allocation: false,
                }));
            }
            opt::ABORT => {
                // The client may already be gone; the ACK is a courtesy.
                let _ = state.reply(header.option, rep::ACK, &[]);
                return Ok(None);
            }
            opt::GO | opt::INFO => {
                if let Some(n) = state.info(header.option, &data)?
                    && header.option == opt::GO
                {
                    return Ok(Some(n));
                }
            }
            other => state.other(other, &data)?,
        }
    }
}

/// The options' state between two options.
struct Options<'a> {
    socket: &'a Socket,
    exports: &'a Exports,
    deadline: Instant,
    structured: bool,
    allocation: bool,
}

impl Options<'_> {
    fn reply(&self, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
        self.socket
            .write_all(&wire::option_reply(option, kind, data), self.deadline)
    }

    /// Answers an error reply with a message for the client's log.
    fn refuse(&self, option: u32, kind: u32, message: &str) -> io::Result<()> {
        self.reply(option, kind, message.as_bytes())
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`: describes the export; the result is `Some` when the
    /// export exists (and, for GO, transmission starts).
    fn info(&self, option: u32, data: &[u8]) -> Result<Option<Negotiated>, HandshakeError> {
        let go = match GoRequest::parse(data) {
            Ok(go) => go,
            Err(e) => {
                self.refuse(option, rep::ERR_INVALID, &e.to_string())?;
                return Ok(None);
            }
        };
        let Some(export) = self.exports.get(&go.name) else {
            self.refuse(option, rep::ERR_UNKNOWN, "no such export")?;
            return Ok(None);
        };
        let size = export.engine.capacity();
        let flags = transmission_flags(&export, self.structured);
        let mut ex = Vec::with_capacity(12);
        ex.extend_from_slice(&info::EXPORT.to_be_bytes());
        ex.extend_from_slice(&size.to_be_bytes());
        ex.extend_from_slice(&flags.to_be_bytes());
        self.reply(option, rep::INFO, &ex)?;
        let mut bs = Vec::with_capacity(14);
        bs.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        bs.extend_from_slice(&export.block_size.to_be_bytes());
        bs.extend_from_slice(&PREFERRED_BLOCK.max(export.block_size).to_be_bytes());
        bs.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
        self.reply(option, rep::INFO, &bs)?;
        self.reply(option, rep::ACK, &[])?;
        Ok(Some(Negotiated {
            export,
            size,
            flags,
            structured: self.structured,
            allocation: self.allocation,
        }))
    }

    /// Every option other than the ones that pick an export.
    fn other(&mut self, option: u32, data: &[u8]) -> Result<(), HandshakeError> {
        match option {
            opt::LIST => {
                if !data.is_empty() {
                    return Ok(self.refuse(option, rep::ERR_INVALID, "LIST takes no data")?);
                }
                for name in self.exports.names() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    self.reply(option, rep::SERVER, &d)?;
                }
                self.reply(option, rep::ACK, &[])?;
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return Ok(self.refuse(option, rep::ERR_INVALID, "takes no data")?);
                }
                self.structured = true;
                self.reply(option, rep::ACK, &[])?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => self.meta_context(option, data)?,
            opt::STARTTLS => self.refuse(option, rep::ERR_POLICY, "TLS is not offered")?,
            _ => self.refuse(option, rep::ERR_UNSUP, "option not supported")?,
        }
        Ok(())
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<(), HandshakeError> {
        let set = option == opt::SET_META_CONTEXT;
        if !self.structured {
            return Ok(self.refuse(option, rep::ERR_INVALID, "structured replies first")?);
        }
        let req = match MetaContextRequest::parse(data) {
            Ok(r) => r,
            Err(e @ WireError::TooLong { .. }) => {
                return Ok(self.refuse(option, rep::ERR_TOO_BIG, &e.to_string())?);
            }
            Err(e) => return Ok(self.refuse(option, rep::ERR_INVALID, &e.to_string())?),
        };
        if self.exports.get(&req.name).is_none() {
            return Ok(self.refuse(option, rep::ERR_UNKNOWN, "no such export")?);
        }
        let matches = |q: &str| q == wire::BASE_ALLOCATION || (!set && q == "base:");
        let chosen = if req.queries.is_empty() {
            !set
        } else {
            req.queries.iter().any(|q| matches(q))
        };
        if set {
            self.allocation = chosen;
        }
        if chosen {
            let mut d = Vec::with_capacity(4 + wire::BASE_ALLOCATION.len());
            d.extend_from_slice(&ALLOCATION_CONTEXT_ID.to_be_bytes());
            d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
            self.reply(option, rep::META_CONTEXT, &d)?;
        }
        self.reply(option, rep::ACK, &[])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
