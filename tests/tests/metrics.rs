//! `GET /metrics` on the control socket and on `metrics_listen`, scraped after real guest I/O
//! through a vhost-user frontend, and checked with Prometheus' `promtool`.

use keel_backend::testing::promtool_check;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

use keel_tests::client::Client;
use keel_tests::keeld::InProcess;

/// Sends a bare HTTP request and returns the status line, the headers and the body.
fn http_get(mut stream: impl Read + Write, path: &str) -> (String, String) {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: keel\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A free TCP port on the loopback address.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn guest_io_shows_in_the_metrics_of_both_listeners() {
    let port = free_port();
    let toml = format!(
        "[server]\ncontrol_socket = \"control.sock\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\
         [[disk]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\nengine = \"keel\"\n\
         path = \"vm1.keel\"\nsize = \"64M\"\n"
    );
    let keeld = InProcess::start(&toml);
    let mut client = Client::connect(&keeld.socket("vm1"), 1, 1 << 20).expect("connect");
    for i in 0..8u64 {
        client.write(0, i * 65536, &[0x5a; 65536]).unwrap();
    }
    client.flush(0).unwrap();
    for i in 0..4u64 {
        client.read(0, i * 65536, 65536).unwrap();
    }

    let (head, tcp_text) = http_get(TcpStream::connect(("127.0.0.1", port)).unwrap(), "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtool_check(&tcp_text);
    let at = |s: &str| value(&tcp_text, s);
    assert_eq!(
        at(r#"keel_disk_requests_total{disk="vm1",op="write"}"#),
        Some(8.0)
    );
    assert_eq!(
        at(r#"keel_disk_requests_total{disk="vm1",op="read"}"#),
        Some(4.0)
    );
    assert_eq!(
        at(r#"keel_disk_requests_total{disk="vm1",op="flush"}"#),
        Some(1.0)
    );
    assert_eq!(
        at(r#"keel_disk_io_bytes_total{disk="vm1",op="write"}"#),
        Some(8.0 * 65536.0)
    );
    assert_eq!(at(r#"keel_disk_frontend_connected{disk="vm1"}"#), Some(1.0));
    assert_eq!(
        at(r#"keel_disk_in_flight_requests{disk="vm1"}"#),
        Some(0.0),
        "every request was answered"
    );
    // Every request the engine served is in its operation's latency histogram.
    let latency = |op: &str, part: &str| {
        at(&format!(
            "keel_disk_request_latency_seconds_{part}{{disk=\"vm1\",op=\"{op}\"}}"
        ))
    };
    assert_eq!(latency("write", "count"), Some(8.0));
    assert_eq!(latency("read", "count"), Some(4.0));
    assert_eq!(latency("flush", "count"), Some(1.0));
    assert_eq!(latency("other", "count"), Some(0.0));
    assert!(latency("write", "sum").unwrap() > 0.0);
    assert!(at(r#"keel_store_journal_records_total{disk="vm1"}"#).unwrap() > 0.0);
    assert!(at(r#"keel_store_write_amplification{disk="vm1"}"#).unwrap() >= 1.0);
    // A new disk has free segments: nothing cleaned, no batch waited for space.
    assert_eq!(
        at(r#"keel_store_segment_waits_total{disk="vm1"}"#),
        Some(0.0)
    );
    assert_eq!(
        at(r#"keel_store_cleaner_moved_blocks_total{disk="vm1"}"#),
        Some(0.0)
    );
    assert!(at(r#"keel_store_segments_total{disk="vm1",event="freed"}"#).is_some());
    for outcome in ["planned", "refused", "refused_late"] {
        let name =
            format!(r#"keel_store_pipelined_batches_total{{disk="vm1",outcome="{outcome}"}}"#);
        assert!(at(&name).is_some(), "{name} missing");
    }

    // The control socket serves the same figures.
    let control = UnixStream::connect(keeld.dir().join("control.sock")).unwrap();
    let (head, unix_text) = http_get(control, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    promtool_check(&unix_text);
    assert_eq!(
        value(
            &unix_text,
            r#"keel_disk_requests_total{disk="vm1",op="write"}"#
        ),
        Some(8.0)
    );

    // The TCP listener serves nothing else.
    let (head, _) = http_get(
        TcpStream::connect(("127.0.0.1", port)).unwrap(),
        "/v1/disks",
    );
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
