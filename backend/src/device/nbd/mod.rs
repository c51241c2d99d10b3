//! A [`BlockDevice`] on a remote NBD export (qemu-nbd, qemu-storage-daemon, nbdkit, keeld).
//!
//! One connection carries many requests at once: callers on any thread write their request
//! and wait for its reply, which a reader thread matches by cookie. Every request has a
//! deadline, and a connection that fails (closed, a malformed reply, a request past its
//! deadline) is dead for good: every waiting and later request fails at once with the reason,
//! never hangs. Opening a new device is the way to reconnect.
//!
//! Only one connection is used, so `NBD_FLAG_CAN_MULTI_CONN` is never needed; it is reported
//! by [`NbdDevice::can_multi_conn`] for callers that would open more.

pub mod handshake;
mod replies;
#[cfg(test)]
mod tests;
pub mod uri;

use std::collections::HashMap;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use handshake::ExportInfo;
pub use uri::NbdAddress;

use super::{BlockDevice, check_range};
use crate::engine::Extent;
use crate::nbd::socket::Socket;
use crate::nbd::wire::{Request, allocation, cflag, cmd, tflag};
use replies::{Answer, Pending, Shared};

/// Timeouts of an NBD device.
#[derive(Clone, Copy, Debug)]
pub struct NbdOptions {
    /// Connecting and the handshake.
    pub connect_timeout: Duration,
    /// Each request, from sending it to its reply.
    pub request_timeout: Duration,
}

impl Default for NbdOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// An open NBD export.
pub struct NbdDevice {
    shared: Arc<Shared>,
    /// Serialises whole requests (header and data) on the socket.
    writer: Mutex<()>,
    info: ExportInfo,
    options: NbdOptions,
    cookies: AtomicU64,
    reader: Option<JoinHandle<()>>,
    address: String,
}

fn connect_socket(address: &NbdAddress, timeout: Duration) -> io::Result<Socket> {
    match address {
        NbdAddress::Unix { socket, .. } => Ok(Socket::new(UnixStream::connect(socket)?)),
        NbdAddress::Tcp { host, port, .. } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the host");
            for addr in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Socket::new(s));
                    }
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

impl NbdDevice {
    /// Connects to the export `uri` names (see [`NbdAddress`]).
    pub fn open(uri: &str, options: NbdOptions) -> io::Result<Self> {
        let address = NbdAddress::parse(uri)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let deadline = Instant::now() + options.connect_timeout;
        let socket = connect_socket(&address, options.connect_timeout)
            .map_err(|e| io::Error::new(e.kind(), format!("{uri}: {e}")))?;
        let info = handshake::negotiate(&socket, address.export(), deadline)
            .map_err(|e| io::Error::new(e.kind(), format!("{uri}: {e}")))?;
        let shared = Arc::new(Shared::new(
            socket,
            info.structured,
            info.allocation_context,
        ));
        let for_reader = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("keel-nbd-client".into())
            .spawn(move || for_reader.read_replies())?;
        Ok(Self {
            shared,
            writer: Mutex::new(()),
            info,
            options,
            cookies: AtomicU64::new(1),
            reader: Some(reader),
            address: uri.to_string(),
        })
    }

    pub fn info(&self) -> ExportInfo {
        self.info
    }

    pub fn read_only(&self) -> bool {
        self.info.flags & tflag::READ_ONLY != 0
    }

    /// Whether the server allows several connections to the export at once.
    pub fn can_multi_conn(&self) -> bool {
        self.info.flags & tflag::CAN_MULTI_CONN != 0
    }

    /// Why the connection is dead, if it is.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Sends one request and waits for its reply: the data a READ brought back, the
    /// descriptors of a BLOCK_STATUS.
    fn request(
        &self,
        command: u16,
        flags: u16,
        offset: u64,
        len: u32,
        data: &[u8],
    ) -> io::Result<Answer> {
        let cookie = self.cookies.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        let read_len = if command == cmd::READ {
            len as usize
        } else {
            0
        };
        self.shared.register(
            cookie,
            Pending {
                offset,
                status: command == cmd::BLOCK_STATUS,
                answer: Answer {
                    data: vec![0u8; read_len],
                    extents: Vec::new(),
                },
                error: None,
                done: tx,
            },
        )?;
        let header = Request {
            flags,
            command,
            cookie,
            offset,
            length: len,
        }
        .encode();
        let deadline = Instant::now() + self.options.request_timeout;
        let sent = {
            let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let mut msg = Vec::with_capacity(header.len() + data.len());
            msg.extend_from_slice(&header);
            msg.extend_from_slice(data);
            self.shared.socket.write_all(&msg, deadline)
        };
        if let Err(e) = sent {
            self.shared.fail(format!("sending a request failed: {e}"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(result) => result,
            Err(_) => {
                self.shared.fail(format!(
                    "no reply within {:?}; the server is stalled or gone",
                    self.options.request_timeout
                ));
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: no reply within {:?}",
                        self.address, self.options.request_timeout
                    ),
                ))
            }
        }
    }

    /// Checks a range and splits it into requests the server takes.
    fn pieces(&self, offset: u64, len: u64) -> io::Result<Vec<(u64, u32)>> {
        check_range(self.info.size, offset, len)?;
        let bs = u64::from(self.info.min_block);
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{offset}+{len} is not aligned to the export's {bs}-byte blocks"),
            ));
        }
        let max = (u64::from(self.info.max_request) / bs * bs).max(bs);
        let mut out = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(max);
            out.push((at, n as u32));
            at += n;
        }
        Ok(out)
    }

    /// Writes zeroes over a range; with `may_trim` the server may deallocate it, with `fast`
    /// the request fails ([`io::ErrorKind::Unsupported`]) unless the server can zero it
    /// quickly (without writing every byte).
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fast: bool,
    ) -> io::Result<()> {
        if self.info.flags & tflag::SEND_WRITE_ZEROES == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no WRITE_ZEROES on this export",
            ));
        }
        if fast && self.info.flags & tflag::SEND_FAST_ZERO == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no fast zeroing on this export",
            ));
        }
        let mut flags = if may_trim { 0 } else { cflag::NO_HOLE };
        if fast {
            flags |= cflag::FAST_ZERO;
        }
        for (at, n) in self.pieces(offset, len)? {
            self.request(cmd::WRITE_ZEROES, flags, at, n, &[])?;
        }
        Ok(())
    }
}

impl BlockDevice for NbdDevice {
    fn len(&self) -> u64 {
        self.info.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        for (at, n) in self.pieces(offset, buf.len() as u64)? {
            let answer = self.request(cmd::READ, 0, at, n, &[])?;
            buf[done..done + n as usize].copy_from_slice(&answer.data);
            done += n as usize;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        for (at, n) in self.pieces(offset, buf.len() as u64)? {
            self.request(cmd::WRITE, 0, at, n, &buf[done..done + n as usize])?;
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.info.flags & tflag::SEND_FLUSH == 0 {
            return Ok(());
        }
        self.request(cmd::FLUSH, 0, 0, 0, &[]).map(drop)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        // A discarded range must read back as zeroes: write-zeroes that may deallocate.
        if self.info.flags & tflag::SEND_WRITE_ZEROES != 0 {
            return self.write_zeroes(offset, len, true, false);
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no WRITE_ZEROES on this export",
        ))
    }
}

impl NbdDevice {
    /// Whether the server reports allocation (`base:allocation` was selected).
    pub fn has_block_status(&self) -> bool {
        self.info.allocation_context.is_some()
    }

    /// Which parts of `[offset, offset + len)` read as zeroes (`NBD_STATE_ZERO`), from
    /// `offset` on, cut to the range. The server may answer for a first part only: callers ask
    /// again from where the answer ends. A hole without `NBD_STATE_ZERO` is data: its contents
    /// are unknown.
    pub fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        if !self.has_block_status() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the server offers no base:allocation",
            ));
        }
        check_range(self.info.size, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = u64::from(self.info.min_block);
        // At most what a u32 length holds, in whole blocks (unless it ends at the export's end).
        let asked = len.min(u64::from(u32::MAX) / bs * bs);
        let answer = self.request(cmd::BLOCK_STATUS, 0, offset, asked as u32, &[])?;
        let mut out: Vec<Extent> = Vec::with_capacity(answer.extents.len());
        let mut covered = 0u64;
        for (n, flags) in answer.extents {
            if covered >= asked {
                break;
            }
            let n = u64::from(n).min(asked - covered);
            let hole = flags & allocation::ZERO != 0;
            covered += n;
            match out.last_mut() {
                Some(last) if last.hole == hole => last.len += n,
                _ => out.push(Extent { len: n, hole }),
            }
        }
        Ok(out)
    }

    /// Sends TRIM: the range's contents are no longer needed (they may read back as anything).
    pub fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.info.flags & tflag::SEND_TRIM == 0 {
            return Ok(());
        }
        for (at, n) in self.pieces(offset, len)? {
            self.request(cmd::TRIM, 0, at, n, &[])?;
        }
        Ok(())
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        if self.failure().is_none() {
            let disc = Request {
                flags: 0,
                command: cmd::DISC,
                cookie: 0,
                offset: 0,
                length: 0,
            }
            .encode();
            let _ = self
                .shared
                .socket
                .write_all(&disc, Instant::now() + Duration::from_secs(1));
        }
        self.shared.close();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Requests in flight, by cookie.
type PendingMap = HashMap<u64, Pending>;
