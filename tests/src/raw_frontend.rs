//! A vhost-user frontend that sends whatever it is told: any request code, flags, declared size,
//! payload and attached file descriptors. It plays the hostile (or broken) VMM in the
//! `hostile_frontend` tests and the `vhost_frontend` fuzz target.
//!
//! [`decode`] turns arbitrary bytes into a list of messages, so a fuzzer and a seeded generator
//! share one input format; [`Message`] builders write the well-known bodies for hand-made cases.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Request codes (vhost-user spec, "Front-end message types").
pub mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    /// One past the highest code the tests generate on purpose.
    pub const END: u32 = 48;
}

/// Header flags.
pub const VERSION_1: u32 = 0x1;
pub const REPLY: u32 = 0x4;
pub const NEED_REPLY: u32 = 0x8;
/// Size of the message header.
pub const HEADER: usize = 12;

/// A file descriptor to attach, created when the message is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    /// A memfd of this many bytes (guest memory, inflight regions).
    MemFd(u64),
    /// A memfd of this many bytes, every byte set to the second value (garbage rings).
    MemFdFilled(u64, u8),
    /// An eventfd already signalled, so a ring kicked with it wakes its worker at once.
    EventFd,
    /// /dev/null: cannot be mapped.
    DevNull,
    /// One end of a socket pair (backend request channel).
    Socket,
    /// A memfd of this many bytes sealed against shrinking and growing (inflight areas).
    SealedMemFd(u64),
    /// A duplicate of a descriptor the caller keeps (to change the file after sending it).
    Dup(std::os::fd::RawFd),
}

/// One message, as sent: `size` may disagree with `payload.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub code: u32,
    pub flags: u32,
    pub size: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<Fd>,
}

/// One region of a SET_MEM_TABLE body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub guest_addr: u64,
    pub size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
}

impl Message {
    pub fn new(code: u32, payload: Vec<u8>) -> Self {
        Self {
            code,
            flags: VERSION_1,
            size: payload.len() as u32,
            payload,
            fds: Vec::new(),
        }
    }

    pub fn with_fds(mut self, fds: Vec<Fd>) -> Self {
        self.fds = fds;
        self
    }

    pub fn need_reply(mut self) -> Self {
        self.flags |= NEED_REPLY;
        self
    }

    pub fn u64(code: u32, value: u64) -> Self {
        Self::new(code, value.to_le_bytes().to_vec())
    }

    /// SET_VRING_NUM / SET_VRING_BASE / SET_VRING_ENABLE / GET_VRING_BASE body.
    pub fn vring_state(code: u32, index: u32, num: u32) -> Self {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&num.to_le_bytes());
        Self::new(code, p)
    }

    pub fn vring_addr(index: u32, flags: u32, desc: u64, used: u64, avail: u64) -> Self {
        let mut p = Vec::with_capacity(40);
        p.extend_from_slice(&index.to_le_bytes());
        p.extend_from_slice(&flags.to_le_bytes());
        for v in [desc, used, avail, 0] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        Self::new(code::SET_VRING_ADDR, p)
    }

    /// SET_VRING_KICK / CALL / ERR with an eventfd for ring `index`.
    pub fn vring_fd(code: u32, index: u8) -> Self {
        Self::u64(code, u64::from(index)).with_fds(vec![Fd::EventFd])
    }

    /// SET_MEM_TABLE declaring `count` regions (which may disagree with `regions.len()`).
    pub fn mem_table(count: u32, regions: &[Region]) -> Self {
        let mut p = count.to_le_bytes().to_vec();
        p.extend_from_slice(&0u32.to_le_bytes());
        for r in regions {
            for v in [r.guest_addr, r.size, r.user_addr, r.mmap_offset] {
                p.extend_from_slice(&v.to_le_bytes());
            }
        }
        Self::new(code::SET_MEM_TABLE, p)
    }

    /// GET_CONFIG / SET_CONFIG body: offset, size, flags, then `data`.
    pub fn config(code: u32, offset: u32, size: u32, data: &[u8]) -> Self {
        let mut p = Vec::new();
        for v in [offset, size, 0] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(data);
        Self::new(code, p)
    }

    fn header(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&self.code.to_le_bytes());
        h[4..8].copy_from_slice(&self.flags.to_le_bytes());
        h[8..12].copy_from_slice(&self.size.to_le_bytes());
        h
    }
}

/// Most messages [`decode`] produces from one input.
pub const MAX_MESSAGES: usize = 32;
/// Largest payload [`decode`] produces (the protocol's own limit is 4 KiB plus a header).
pub const MAX_PAYLOAD: usize = 4200;

/// Little-endian fields from a byte string; past its end every field reads as zero.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let s = self.take(2);
        b[..s.len()].copy_from_slice(s);
        u16::from_le_bytes(b)
    }
    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let s = self.take(4);
        b[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let s = self.take(8);
        b[..s.len()].copy_from_slice(s);
        u64::from_le_bytes(b)
    }
}

/// Turns any byte string into messages. Per message: code selector, flags selector, body kind
/// and fields, declared-size selector, attached fds. Structured bodies (memory tables, ring
/// states and addresses) keep mutations near the interesting values.
pub fn decode(data: &[u8]) -> Vec<Message> {
    let mut f = Fields(data);
    let mut out = Vec::new();
    while !f.0.is_empty() && out.len() < MAX_MESSAGES {
        let sel = f.u8();
        let code = if sel < 0xf0 {
            u32::from(sel) % code::END
        } else {
            f.u32()
        };
        let fsel = f.u8();
        let flags = if fsel & 0x80 == 0 {
            VERSION_1 | u32::from(fsel) & NEED_REPLY
        } else {
            f.u32()
        };
        let payload = match f.u8() % 6 {
            0 => {
                let len = usize::from(f.u16()) % (MAX_PAYLOAD + 1);
                f.take(len).to_vec()
            }
            1 => {
                let count = u32::from(f.u8());
                let n = usize::from(f.u8() % 10);
                let regions: Vec<Region> = (0..n)
                    .map(|_| Region {
                        guest_addr: f.u64(),
                        size: f.u64(),
                        user_addr: f.u64(),
                        mmap_offset: f.u64(),
                    })
                    .collect();
                Message::mem_table(count, &regions).payload
            }
            2 => Message::vring_state(code, f.u32(), f.u32()).payload,
            3 => Message::vring_addr(f.u32(), f.u32(), f.u64(), f.u64(), f.u64()).payload,
            4 => f.u64().to_le_bytes().to_vec(),
            _ => {
                let (offset, size, n) = (f.u32(), f.u32(), usize::from(f.u8()));
                Message::config(code, offset, size, f.take(n)).payload
            }
        };
        let size = match f.u8() {
            0..=0xef => payload.len() as u32,
            0xf0..=0xf7 => (payload.len() as u32).wrapping_add(u32::from(f.u16())),
            0xf8..=0xfe => (payload.len() as u32).saturating_sub(u32::from(f.u16())),
            0xff => f.u32(),
        };
        let nfds = f.u8() % 5;
        let fds = (0..nfds)
            .map(|_| match f.u8() % 6 {
                0 => Fd::MemFd(u64::from(f.u16()) * 16),
                4 => Fd::MemFdFilled(u64::from(f.u16()) * 16, f.u8()),
                5 => Fd::SealedMemFd(u64::from(f.u16()) * 16),
                1 => Fd::EventFd,
                2 => Fd::DevNull,
                _ => Fd::Socket,
            })
            .collect();
        out.push(Message {
            code,
            flags,
            size,
            payload,
            fds,
        });
    }
    out
}

/// The bytes [`decode`] turns back into `msgs` (payloads as raw bytes), for seed inputs.
pub fn encode(msgs: &[Message]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        if m.code < code::END {
            out.push(m.code as u8);
        } else {
            out.push(0xff);
            out.extend_from_slice(&m.code.to_le_bytes());
        }
        if m.flags & !NEED_REPLY == VERSION_1 {
            out.push((m.flags & NEED_REPLY) as u8);
        } else {
            out.push(0x80);
            out.extend_from_slice(&m.flags.to_le_bytes());
        }
        out.push(0);
        out.extend_from_slice(&(m.payload.len() as u16).to_le_bytes());
        out.extend_from_slice(&m.payload);
        if m.size as usize == m.payload.len() {
            out.push(0);
        } else {
            out.push(0xff);
            out.extend_from_slice(&m.size.to_le_bytes());
        }
        out.push(m.fds.len() as u8);
        for fd in &m.fds {
            match *fd {
                Fd::MemFd(size) => {
                    out.push(0);
                    out.extend_from_slice(&((size / 16) as u16).to_le_bytes());
                }
                Fd::EventFd => out.push(1),
                Fd::DevNull => out.push(2),
                Fd::Socket => out.push(3),
                Fd::MemFdFilled(size, byte) => {
                    out.push(4);
                    out.extend_from_slice(&((size / 16) as u16).to_le_bytes());
                    out.push(byte);
                }
                Fd::SealedMemFd(size) => {
                    out.push(5);
                    out.extend_from_slice(&((size / 16) as u16).to_le_bytes());
                }
                // A caller's descriptor has no encoding; /dev/null stands in.
                Fd::Dup(_) => out.push(2),
            }
        }
    }
    out
}

/// A connection to a disk's socket.
pub struct RawFrontend {
    sock: UnixStream,
}

impl RawFrontend {
    pub fn connect(path: &Path) -> io::Result<Self> {
        let sock = UnixStream::connect(path)?;
        let limit = Some(Duration::from_secs(10));
        sock.set_write_timeout(limit)?;
        sock.set_read_timeout(limit)?;
        Ok(Self { sock })
    }

    /// Sends `msg` with its fds in one `sendmsg`. Errors (the server hung up) are returned,
    /// never raised as SIGPIPE.
    pub fn send(&mut self, msg: &Message) -> io::Result<()> {
        let fds: Vec<OwnedFd> = msg
            .fds
            .iter()
            .map(|f| make_fd(*f))
            .collect::<io::Result<_>>()?;
        let mut bytes = msg.header().to_vec();
        bytes.extend_from_slice(&msg.payload);
        send_with_fds(&self.sock, &bytes, &fds)
    }

    /// Reads one reply: (code, flags, payload).
    pub fn read_reply(&mut self) -> io::Result<(u32, u32, Vec<u8>)> {
        let mut h = [0u8; HEADER];
        self.sock.read_exact(&mut h)?;
        let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8));
        if size as usize > MAX_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply too large",
            ));
        }
        let mut payload = vec![0u8; size as usize];
        self.sock.read_exact(&mut payload)?;
        Ok((code, flags, payload))
    }

    /// Closes the sending side and waits for the server to close the connection, draining
    /// replies. Returns false if the server kept it open past `timeout`.
    pub fn finish(mut self, timeout: Duration) -> bool {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < timeout {
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// Sends `msgs` on a fresh connection (stopping at the first send error: the server hung up),
/// then closes it. Returns whether the server ended the connection within `timeout`.
pub fn send_all(path: &Path, msgs: &[Message], timeout: Duration) -> io::Result<bool> {
    let mut fe = RawFrontend::connect(path)?;
    for m in msgs {
        if fe.send(m).is_err() {
            break;
        }
    }
    Ok(fe.finish(timeout))
}

/// A well-behaved frontend's first steps: GET_FEATURES, GET_PROTOCOL_FEATURES, GET_CONFIG.
/// Retries while the server is still detaching an earlier frontend (it refuses newcomers
/// then). Returns the device features.
pub fn handshake(path: &Path, timeout: Duration) -> io::Result<u64> {
    let start = Instant::now();
    loop {
        match try_handshake(path) {
            Ok(f) => return Ok(f),
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn try_handshake(path: &Path) -> io::Result<u64> {
    let mut fe = RawFrontend::connect(path)?;
    fe.send(&Message::new(code::GET_FEATURES, Vec::new()))?;
    let (c, flags, p) = fe.read_reply()?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    if c != code::GET_FEATURES || flags & REPLY == 0 || p.len() != 8 {
        return Err(bad("bad GET_FEATURES reply"));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&p);
    let features = u64::from_le_bytes(b);
    fe.send(&Message::new(code::GET_PROTOCOL_FEATURES, Vec::new()))?;
    let (c, _, _) = fe.read_reply()?;
    if c != code::GET_PROTOCOL_FEATURES {
        return Err(bad("bad GET_PROTOCOL_FEATURES reply"));
    }
    // Config space access needs the CONFIG protocol feature acknowledged first.
    fe.send(&Message::u64(code::SET_FEATURES, features))?;
    fe.send(&Message::u64(code::SET_PROTOCOL_FEATURES, 1 << 9))?;
    fe.send(&Message::config(code::GET_CONFIG, 0, 8, &[0; 8]))?;
    let (c, _, p) = fe.read_reply()?;
    if c != code::GET_CONFIG || p.len() != 20 {
        return Err(bad("bad GET_CONFIG reply"));
    }
    fe.finish(Duration::from_secs(10));
    Ok(features)
}

fn make_fd(kind: Fd) -> io::Result<OwnedFd> {
    match kind {
        Fd::MemFd(size) => memfd(size, 0),
        Fd::MemFdFilled(size, byte) => memfd(size, byte),
        Fd::SealedMemFd(size) => {
            let fd = memfd(size, 0)?;
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
            // SAFETY: fcntl on a descriptor we own with a valid command and argument.
            if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(fd)
        }
        Fd::EventFd => {
            // SAFETY: plain system call; result checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a fresh descriptor we own.
            let mut file = unsafe { File::from_raw_fd(fd) };
            file.write_all(&1u64.to_ne_bytes())?;
            Ok(file.into())
        }
        Fd::DevNull => Ok(File::open("/dev/null")?.into()),
        Fd::Dup(fd) => {
            // SAFETY: the caller keeps `fd` open while the message is sent.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            borrowed.try_clone_to_owned()
        }
        Fd::Socket => {
            let (a, _b) = UnixStream::pair()?;
            Ok(a.into())
        }
    }
}

fn memfd(size: u64, byte: u8) -> io::Result<OwnedFd> {
    // SAFETY: plain system call with a static NUL-terminated name; result checked.
    let fd = unsafe {
        libc::memfd_create(
            c"keel-test".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    if byte != 0 {
        let chunk = vec![byte; 1 << 16];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
    }
    Ok(file.into())
}

fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let fd_bytes = std::mem::size_of_val(raw.as_slice());
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut sent = 0;
    while sent < bytes.len() {
        let mut iov = libc::iovec {
            iov_base: bytes[sent..].as_ptr() as *mut libc::c_void,
            iov_len: bytes.len() - sent,
        };
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if sent == 0 && !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: `control` is `space` bytes, enough for one header with `raw.len()` fds;
            // the pointers come from CMSG_FIRSTHDR/CMSG_DATA on that buffer.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
                std::ptr::copy_nonoverlapping(
                    raw.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    fd_bytes,
                );
            }
        }
        // SAFETY: `msg` points at live buffers set up above.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

pub mod session;

#[cfg(test)]
mod tests;
