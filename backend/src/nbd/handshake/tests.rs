use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::device::nbd::handshake as client;
use crate::engine::null::NullEngine;
use crate::nbd::exports::Export;

fn exports(read_only: bool) -> Exports {
    let e = Exports::default();
    e.insert(Export {
        name: "d".into(),
        engine: Arc::new(NullEngine::new(8 << 20, read_only)),
        block_size: 512,
    });
    e
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

/// Runs the server's handshake on one end of a socket pair while `client` drives the other.
fn with_server<T: Send + 'static>(
    read_only: bool,
    client: impl FnOnce(UnixStream) -> T + Send + 'static,
) -> (Result<Option<Negotiated>, HandshakeError>, T) {
    let (a, b) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || client(b));
    let socket = Socket::new(a);
    let result = negotiate(&socket, &exports(read_only), soon());
    socket.shut_down();
    (result, peer.join().unwrap())
}

#[test]
fn keels_client_and_server_agree_on_go_structured_replies_block_status_and_block_sizes() {
    let (server, info) = with_server(false, |s| {
        client::negotiate(&Socket::new(s), "d", soon()).unwrap()
    });
    let n = server.unwrap().expect("an export was chosen");
    assert_eq!((n.export.name.as_str(), n.size), ("d", 8 << 20));
    assert!(n.structured && n.allocation);
    assert_eq!(info.size, 8 << 20);
    assert!(info.structured);
    assert_eq!(info.allocation_context, Some(ALLOCATION_CONTEXT_ID));
    assert_eq!((info.min_block, info.max_request), (512, MAX_PAYLOAD));
    use wire::tflag::*;
    assert_eq!(
        info.flags & (HAS_FLAGS | SEND_FLUSH | CAN_MULTI_CONN | SEND_TRIM | READ_ONLY),
        HAS_FLAGS | SEND_FLUSH | CAN_MULTI_CONN | SEND_TRIM
    );
}

#[test]
fn read_only_exports_say_so_and_unknown_exports_are_refused() {
    let (_, info) = with_server(true, |s| {
        client::negotiate(&Socket::new(s), "d", soon()).unwrap()
    });
    assert_ne!(info.flags & wire::tflag::READ_ONLY, 0);
    assert_eq!(info.flags & wire::tflag::SEND_TRIM, 0);

    let (server, err) = with_server(false, |s| {
        client::negotiate(&Socket::new(s), "other", soon()).unwrap_err()
    });
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    // The client gave up after the refusal: the server sees the connection end.
    assert!(server.is_err());
}

#[test]
fn list_then_export_name_with_zero_padding() {
    let (server, reply) = with_server(false, |mut s| {
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&wire::CLIENT_FIXED_NEWSTYLE.to_be_bytes())
            .unwrap();
        s.write_all(
            &OptionHeader {
                option: opt::LIST,
                length: 0,
            }
            .encode(),
        )
        .unwrap();
        let mut server_reply = [0u8; 20 + 5];
        s.read_exact(&mut server_reply).unwrap();
        let mut ack = [0u8; 20];
        s.read_exact(&mut ack).unwrap();
        s.write_all(
            &OptionHeader {
                option: opt::EXPORT_NAME,
                length: 1,
            }
            .encode(),
        )
        .unwrap();
        s.write_all(b"d").unwrap();
        let mut reply = vec![0u8; 8 + 2 + 124];
        s.read_exact(&mut reply).unwrap();
        (server_reply, ack, reply)
    });
    let (listed, ack, reply) = reply;
    assert_eq!(
        u32::from_be_bytes(listed[12..16].try_into().unwrap()),
        rep::SERVER
    );
    assert_eq!(&listed[20..], &[0, 0, 0, 1, b'd']);
    assert_eq!(
        u32::from_be_bytes(ack[12..16].try_into().unwrap()),
        rep::ACK
    );
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 8 << 20);
    assert!(reply[10..].iter().all(|&b| b == 0));
    assert!(!server.unwrap().unwrap().structured);
}

#[test]
fn bad_client_flags_and_oversized_options_end_the_handshake() {
    let (server, ()) = with_server(false, |mut s| {
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&0u32.to_be_bytes()).unwrap();
    });
    assert!(matches!(server, Err(HandshakeError::ClientFlags(0))));

    let (server, ()) = with_server(false, |mut s| {
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        s.write_all(&wire::CLIENT_FIXED_NEWSTYLE.to_be_bytes())
            .unwrap();
        let h = OptionHeader {
            option: opt::GO,
            length: u32::MAX,
        };
        s.write_all(&h.encode()).unwrap();
    });
    assert!(matches!(
        server,
        Err(HandshakeError::OptionTooLong(u32::MAX))
    ));
}
