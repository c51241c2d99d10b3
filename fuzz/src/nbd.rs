//! NBD traffic from a hostile peer: arbitrary client bytes against keeld's NBD server (handshake
//! and transmission, over a null engine), and arbitrary server bytes against Keel's NBD client
//! device (handshake and replies to a few requests).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_backend::device::BlockDevice;
use keel_backend::device::nbd::{NbdDevice, NbdOptions};
use keel_backend::engine::null::NullEngine;
use keel_backend::nbd::server::serve_connection;
use keel_backend::nbd::socket::Socket;
use keel_backend::nbd::{Export, Exports};

/// Serves one connection whose client sends `data` and then closes its side.
pub fn run_server(data: &[u8]) {
    let exports = Exports::default();
    exports.insert(Export {
        name: "d".into(),
        engine: Arc::new(NullEngine::new(1 << 20, false)),
        block_size: 512,
    });
    let (server, mut client) = UnixStream::pair().expect("socketpair");
    let mut reader = client.try_clone().expect("clone");
    // Replies are drained so the server never waits on a full socket.
    let drain = std::thread::spawn(move || {
        let mut sink = [0u8; 64 << 10];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let input = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = client.write_all(&input);
        let _ = client.shutdown(std::net::Shutdown::Write);
    });
    let socket = Socket::new(server);
    serve_connection(&socket, &exports, 0);
    socket.shut_down();
    let _ = writer.join();
    let _ = drain.join();
}

/// A server that sends `data` (its handshake and replies) to Keel's client device, which
/// opens the export and issues a read, a block status, a write, a flush and a discard
/// (cookies 1, 2, 3, 4, 5...).
pub fn run_replies(data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let input = data.to_vec();
    let server = std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = stream.try_clone().expect("clone");
        let socket = Socket::new(stream);
        let _ = socket.write_all(&input, Instant::now() + Duration::from_secs(2));
        // Half-close: the client sees the end of the stream and fails what still waits.
        // SAFETY: shutdown on a descriptor `socket` owns; it does not close it.
        unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) };
        let mut sink = [0u8; 64 << 10];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let options = NbdOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    };
    let uri = format!("nbd+unix:///d?socket={}", path.display());
    if let Ok(dev) = NbdDevice::open(&uri, options) {
        let len = dev.len().min(8192) as usize;
        let mut buf = vec![0u8; len];
        let _ = dev.read_at(&mut buf, 0);
        let _ = dev.block_status(0, len as u64);
        let _ = dev.write_at(&buf, 0);
        let _ = dev.flush();
        let _ = dev.discard(0, len as u64);
        drop(dev);
    } else {
        // Unblock accept if the client never connected.
        let _ = UnixStream::connect(&path);
    }
    let _ = server.join();
}
