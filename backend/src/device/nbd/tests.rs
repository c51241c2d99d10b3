//! The client's block status against a scripted server: with and without `base:allocation`,
//! well-formed and malformed status replies.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::{NbdDevice, NbdOptions};
use crate::device::BlockDevice;
use crate::engine::Extent;
use crate::nbd::wire::{self, chunk, cmd, opt, rep};

const SIZE: u64 = 1 << 20;
const CONTEXT: u32 = 7;

fn option_reply(s: &mut UnixStream, option: u32, kind: u32, data: &[u8]) {
    s.write_all(&wire::option_reply(option, kind, data))
        .unwrap();
}

fn chunk_header(s: &mut UnixStream, kind: u16, cookie: u64, len: usize) {
    let header = wire::ChunkHeader {
        flags: chunk::FLAG_DONE,
        kind,
        cookie,
        length: len as u32,
    };
    s.write_all(&header.encode()).unwrap();
}

/// Serves one client: `base:allocation` when `status` is given, whose descriptors it then
/// answers to every BLOCK_STATUS (with `context` as the context id); READs read 0x5a.
fn serve(listener: UnixListener, status: Option<(u32, Vec<(u32, u32)>)>) {
    let (mut s, _) = listener.accept().unwrap();
    s.write_all(&wire::NBD_MAGIC.to_be_bytes()).unwrap();
    s.write_all(&wire::IHAVEOPT.to_be_bytes()).unwrap();
    s.write_all(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes())
        .unwrap();
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).unwrap();
    loop {
        let mut head = [0u8; wire::OPTION_HEADER_LEN];
        s.read_exact(&mut head).unwrap();
        let header = wire::OptionHeader::parse(&head).unwrap();
        let mut data = vec![0u8; header.length as usize];
        s.read_exact(&mut data).unwrap();
        match header.option {
            opt::STRUCTURED_REPLY => option_reply(&mut s, header.option, rep::ACK, &[]),
            opt::SET_META_CONTEXT => {
                let request = wire::MetaContextRequest::parse(&data).unwrap();
                assert_eq!(request.queries, [wire::BASE_ALLOCATION]);
                if status.is_some() {
                    let mut d = CONTEXT.to_be_bytes().to_vec();
                    d.extend_from_slice(wire::BASE_ALLOCATION.as_bytes());
                    option_reply(&mut s, header.option, rep::META_CONTEXT, &d);
                    option_reply(&mut s, header.option, rep::ACK, &[]);
                } else {
                    option_reply(&mut s, header.option, rep::ERR_UNSUP, &[]);
                }
            }
            opt::GO => {
                let mut d = wire::info::EXPORT.to_be_bytes().to_vec();
                d.extend_from_slice(&SIZE.to_be_bytes());
                d.extend_from_slice(&wire::tflag::HAS_FLAGS.to_be_bytes());
                option_reply(&mut s, header.option, rep::INFO, &d);
                option_reply(&mut s, header.option, rep::ACK, &[]);
                break;
            }
            other => panic!("unexpected option {other}"),
        }
    }
    loop {
        let mut head = [0u8; wire::REQUEST_LEN];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let req = wire::Request::parse(&head).unwrap();
        match req.command {
            cmd::READ => {
                chunk_header(
                    &mut s,
                    chunk::OFFSET_DATA,
                    req.cookie,
                    8 + req.length as usize,
                );
                s.write_all(&req.offset.to_be_bytes()).unwrap();
                s.write_all(&vec![0x5a; req.length as usize]).unwrap();
            }
            cmd::BLOCK_STATUS => {
                let (context, extents) = status.clone().expect("no block status negotiated");
                let mut body = context.to_be_bytes().to_vec();
                for (len, flags) in extents {
                    body.extend_from_slice(&len.to_be_bytes());
                    body.extend_from_slice(&flags.to_be_bytes());
                }
                chunk_header(&mut s, chunk::BLOCK_STATUS, req.cookie, body.len());
                s.write_all(&body).unwrap();
            }
            _ => return,
        }
    }
}

/// A device on a scripted server, and the server's thread.
fn open(status: Option<(u32, Vec<(u32, u32)>)>) -> (NbdDevice, std::thread::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || serve(listener, status));
    let options = NbdOptions {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    };
    let dev = NbdDevice::open(&format!("nbd+unix:///d?socket={}", path.display()), options);
    (dev.unwrap(), server)
}

#[test]
fn without_base_allocation_there_is_no_block_status_and_reads_still_work() {
    let (dev, server) = open(None);
    assert!(!dev.has_block_status());
    let err = dev.block_status(0, SIZE).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    let mut buf = [0u8; 4096];
    dev.read_at(&mut buf, 8192).unwrap();
    assert!(buf.iter().all(|b| *b == 0x5a));
    drop(dev);
    server.join().unwrap();
}

#[test]
fn block_status_is_merged_and_cut_to_the_request() {
    let hole_zero = wire::allocation::HOLE | wire::allocation::ZERO;
    let extents = vec![
        (4096, hole_zero),
        (4096, wire::allocation::ZERO),
        (8192, 0),
        // A hole whose contents are unknown is data.
        (4096, wire::allocation::HOLE),
        // The last descriptor may reach past the request.
        (1 << 19, hole_zero),
    ];
    let (dev, server) = open(Some((CONTEXT, extents)));
    assert!(dev.has_block_status());
    let got = dev.block_status(4096, 65536).unwrap();
    let ext = |len, hole| Extent { len, hole };
    assert_eq!(
        got,
        [ext(8192, true), ext(12288, false), ext(65536 - 20480, true)]
    );
    drop(dev);
    server.join().unwrap();
}

#[test]
fn malformed_block_status_fails_the_request_not_the_process() {
    for (context, extents) in [
        (CONTEXT, vec![(0, 0)]),
        (CONTEXT + 1, vec![(4096, 0)]),
        (CONTEXT, vec![]),
    ] {
        let (dev, server) = open(Some((context, extents)));
        assert!(dev.block_status(0, SIZE).is_err());
        assert!(dev.failure().is_some(), "a bad reply ends the connection");
        drop(dev);
        server.join().unwrap();
    }
}
