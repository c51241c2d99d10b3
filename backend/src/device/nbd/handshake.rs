//! The client's side of the fixed-newstyle handshake: structured replies if the server has
//! them, the `base:allocation` metadata context if it has that too (block status), then
//! `NBD_OPT_GO` for the export, with its size, flags and block sizes.

use std::io;
use std::time::Instant;

use crate::nbd::socket::Socket;
use crate::nbd::wire::{
    self, BASE_ALLOCATION, Fields, GoRequest, MetaContextRequest, OptionHeader, info, opt, rep,
};

/// Longest option reply accepted from a server.
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// The protocol's default largest request when the server names none.
const DEFAULT_MAX_REQUEST: u32 = 32 << 20;

/// What the server told about the export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    pub min_block: u32,
    pub max_request: u32,
    pub structured: bool,
    /// The id the server gave `base:allocation`, when it offers block status.
    pub allocation_context: Option<u32>,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads one option reply: its type and data.
fn option_reply(socket: &Socket, option: u32, deadline: Instant) -> io::Result<(u32, Vec<u8>)> {
    let mut head = [0u8; 20];
    socket.read_exact(&mut head, Some(deadline))?;
    let mut f = Fields::new(&head);
    let magic = f.u64().map_err(|e| invalid(e.to_string()))?;
    let answered = f.u32().map_err(|e| invalid(e.to_string()))?;
    let kind = f.u32().map_err(|e| invalid(e.to_string()))?;
    let len = f.u32().map_err(|e| invalid(e.to_string()))?;
    if magic != wire::OPTION_REPLY_MAGIC || answered != option {
        return Err(invalid(format!(
            "bad option reply (magic {magic:#x}, option {answered})"
        )));
    }
    if len > MAX_OPTION_REPLY {
        return Err(invalid(format!("an option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    socket.read_exact(&mut data, Some(deadline))?;
    Ok((kind, data))
}

fn send_option(socket: &Socket, option: u32, data: &[u8], deadline: Instant) -> io::Result<()> {
    let mut msg = OptionHeader {
        option,
        length: data.len() as u32,
    }
    .encode()
    .to_vec();
    msg.extend_from_slice(data);
    socket.write_all(&msg, deadline)
}

/// Runs the handshake for `export`; fails if the server does not have it.
pub fn negotiate(socket: &Socket, export: &str, deadline: Instant) -> io::Result<ExportInfo> {
    let mut hello = [0u8; 18];
    socket.read_exact(&mut hello, Some(deadline))?;
    let mut f = Fields::new(&hello);
    let (magic, newstyle) = (f.u64(), f.u64());
    let server_flags = f.u16().map_err(|e| invalid(e.to_string()))?;
    if magic != Ok(wire::NBD_MAGIC) || newstyle != Ok(wire::IHAVEOPT) {
        return Err(invalid("not an NBD newstyle server".into()));
    }
    if server_flags & wire::FLAG_FIXED_NEWSTYLE == 0 {
        return Err(invalid("the server is not fixed newstyle".into()));
    }
    let mut client = wire::CLIENT_FIXED_NEWSTYLE;
    if server_flags & wire::FLAG_NO_ZEROES != 0 {
        client |= wire::CLIENT_NO_ZEROES;
    }
    socket.write_all(&client.to_be_bytes(), deadline)?;

    send_option(socket, opt::STRUCTURED_REPLY, &[], deadline)?;
    let (kind, _) = option_reply(socket, opt::STRUCTURED_REPLY, deadline)?;
    let structured = kind == rep::ACK;
    // Block status needs structured replies; a server without the context is no error.
    let allocation_context = if structured {
        select_allocation(socket, export, deadline)?
    } else {
        None
    };

    let mut go = Vec::with_capacity(8 + export.len());
    go.extend_from_slice(&(export.len() as u32).to_be_bytes());
    go.extend_from_slice(export.as_bytes());
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    debug_assert!(GoRequest::parse(&go).is_ok());
    send_option(socket, opt::GO, &go, deadline)?;
    let mut export_info = None;
    let (mut min_block, mut max_request) = (1, DEFAULT_MAX_REQUEST);
    loop {
        let (kind, data) = option_reply(socket, opt::GO, deadline)?;
        match kind {
            rep::ACK => break,
            rep::INFO => {
                let mut f = Fields::new(&data);
                match f.u16() {
                    Ok(info::EXPORT) => {
                        let size = f.u64().map_err(|e| invalid(e.to_string()))?;
                        let flags = f.u16().map_err(|e| invalid(e.to_string()))?;
                        export_info = Some((size, flags));
                    }
                    Ok(info::BLOCK_SIZE) => {
                        let min = f.u32().map_err(|e| invalid(e.to_string()))?;
                        let _preferred = f.u32().map_err(|e| invalid(e.to_string()))?;
                        let max = f.u32().map_err(|e| invalid(e.to_string()))?;
                        if !min.is_power_of_two() || min > 65536 || max < min {
                            return Err(invalid(format!("bad block sizes {min}/{max}")));
                        }
                        (min_block, max_request) = (min, max.min(DEFAULT_MAX_REQUEST));
                    }
                    _ => {}
                }
            }
            k if k & (1 << 31) != 0 => {
                let message = String::from_utf8_lossy(&data).into_owned();
                let kind = if k == rep::ERR_UNKNOWN {
                    io::ErrorKind::NotFound
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!("the server refused export {export:?} ({k:#x}): {message}"),
                ));
            }
            other => return Err(invalid(format!("unexpected reply {other} to NBD_OPT_GO"))),
        }
    }
    let (size, flags) =
        export_info.ok_or_else(|| invalid("no export information before the ACK".into()))?;
    Ok(ExportInfo {
        size,
        flags,
        min_block,
        max_request: max_request.max(min_block),
        structured,
        allocation_context,
    })
}

/// Asks for `base:allocation` on `export` (`NBD_OPT_SET_META_CONTEXT`); its id, or `None` when
/// the server refuses the option or does not select the context.
fn select_allocation(socket: &Socket, export: &str, deadline: Instant) -> io::Result<Option<u32>> {
    let mut data = Vec::with_capacity(12 + export.len() + BASE_ALLOCATION.len());
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u32.to_be_bytes());
    data.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
    data.extend_from_slice(BASE_ALLOCATION.as_bytes());
    debug_assert!(MetaContextRequest::parse(&data).is_ok());
    send_option(socket, opt::SET_META_CONTEXT, &data, deadline)?;
    let mut id = None;
    loop {
        let (kind, reply) = option_reply(socket, opt::SET_META_CONTEXT, deadline)?;
        match kind {
            rep::ACK => return Ok(id),
            rep::META_CONTEXT => {
                let mut f = Fields::new(&reply);
                let context = f.u32().map_err(|e| invalid(e.to_string()))?;
                if f.take(f.remaining()) == Ok(BASE_ALLOCATION.as_bytes()) {
                    id = Some(context);
                }
            }
            // An error reply ends the option: no context selected.
            k if k & (1 << 31) != 0 => return Ok(None),
            other => {
                return Err(invalid(format!(
                    "unexpected reply {other} to NBD_OPT_SET_META_CONTEXT"
                )));
            }
        }
    }
}
