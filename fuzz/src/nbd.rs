//! NBD traffic from a hostile peer: arbitrary client bytes against keeld's NBD server (handshake
//! and transmission, over a null engine), and arbitrary server bytes through the reply parsers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use keel_backend::engine::null::NullEngine;
use keel_backend::nbd::server::serve_connection;
use keel_backend::nbd::socket::Socket;
use keel_backend::nbd::wire::{Fields, ReplyHeader};
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

/// Parses `data` as a stream of server replies the way a client reads them.
pub fn run_replies(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        let Ok((header, used)) = ReplyHeader::parse(&data[at..], 1 << 20) else {
            break;
        };
        at += used;
        if let ReplyHeader::Chunk(c) = header {
            let mut f = Fields::new(&data[at..]);
            let Ok(body) = f.take(c.length as usize) else {
                break;
            };
            let mut fields = Fields::new(body);
            let _ = fields.u32();
            let _ = fields.u32();
            at += c.length as usize;
        }
    }
}
