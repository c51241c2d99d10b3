//! The control server against real socket clients: calls, errors, and clients that misbehave.

use super::*;
use crate::control::client::{ClientError, ControlClient};
use keel_protocol::control::{CreateSnapshot, DiskInfo};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::Mutex;
use std::time::Duration;

/// Answers ListDisks with one disk and records snapshot creations.
#[derive(Default)]
struct Fake {
    created: Mutex<Vec<String>>,
}

impl ControlHandler for Fake {
    fn call(&self, call: ApiCall) -> Result<serde_json::Value, ApiError> {
        match call {
            ApiCall::ListDisks => Ok(serde_json::to_value(vec![DiskInfo {
                name: "vm1".into(),
                ..Default::default()
            }])
            .map_err(|e| ApiError::Internal(e.to_string()))?),
            ApiCall::CreateSnapshot { disk, name } if disk == "vm1" => {
                let mut c = self
                    .created
                    .lock()
                    .map_err(|_| ApiError::Internal("lock".into()))?;
                if c.contains(&name) {
                    return Err(ApiError::Conflict(format!("snapshot {name} exists")));
                }
                c.push(name);
                Ok(serde_json::json!({}))
            }
            other => Err(ApiError::NotFound(format!("{other:?}"))),
        }
    }
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("keel-ctl-{}-{tag}.sock", std::process::id()))
}

#[test]
fn serves_calls_and_errors_over_the_socket() {
    let path = socket_path("serve");
    let handler = Arc::new(Fake::default());
    let server = ControlServer::start(&path, handler.clone()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let client = ControlClient::new(&path);
    let disks: Vec<DiskInfo> = client.get("/v1/disks").unwrap();
    assert_eq!(disks[0].name, "vm1");

    let body = CreateSnapshot { name: "s1".into() };
    let _: serde_json::Value = client.post("/v1/disks/vm1/snapshots", &body).unwrap();
    let again = client.post::<_, serde_json::Value>("/v1/disks/vm1/snapshots", &body);
    assert!(matches!(again, Err(ClientError::Api { status: 409, .. })));
    let missing = client.get::<serde_json::Value>("/v1/nothing");
    assert!(matches!(missing, Err(ClientError::Api { status: 404, .. })));
    let (status, _) = client
        .raw("POST", "/v1/disks/vm1/snapshots", b"{oops")
        .unwrap();
    assert_eq!(status, 400);
    assert_eq!(handler.created.lock().unwrap().as_slice(), ["s1"]);

    drop(server);
    assert!(!path.exists(), "socket file removed on shutdown");
    assert!(matches!(
        client.get::<serde_json::Value>("/v1/disks"),
        Err(ClientError::Connect { .. })
    ));
}

#[test]
fn refuses_a_live_socket_and_replaces_a_stale_one() {
    let path = socket_path("stale");
    let _ = std::fs::remove_file(&path);
    drop(UnixListener::bind(&path).unwrap()); // stale: file stays, nobody listens
    let first = ControlServer::start(&path, Arc::new(Fake::default())).unwrap();
    assert!(ControlServer::start(&path, Arc::new(Fake::default())).is_err());
    drop(first);

    let file = socket_path("plainfile");
    std::fs::write(&file, b"x").unwrap();
    assert!(ControlServer::start(&file, Arc::new(Fake::default())).is_err());
    std::fs::remove_file(&file).unwrap();
}

/// Connects without sending anything yet.
fn connect(path: &Path) -> UnixStream {
    UnixStream::connect(path).unwrap()
}

/// Reads a connection to its end and returns the answer's status, or None if it was closed
/// without one.
fn status_of(mut s: UnixStream) -> Option<u16> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn idle_clients_partial_heads_and_stalled_bodies_do_not_hold_up_calls() {
    let path = socket_path("flood");
    let limits = Limits {
        connections: 8,
        ..Limits::default()
    };
    let server = ControlServer::start_with(&path, Arc::new(Fake::default()), limits).unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect(&path));
    }
    for _ in 0..5 {
        let mut s = connect(&path);
        s.write_all(b"GET /v1/disks HTTP/1.1\r\nHost: k").unwrap();
        held.push(s);
    }
    let mut stalled = connect(&path);
    stalled
        .write_all(
            b"POST /v1/disks/vm1/snapshots HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{\"name\"",
        )
        .unwrap();
    // Well below the default timeouts: the answer comes because nothing waits on the others.
    let client = ControlClient::new(&path).with_timeout(Duration::from_secs(4));
    for _ in 0..3 {
        let disks: Vec<DiskInfo> = client.get("/v1/disks").unwrap();
        assert_eq!(disks[0].name, "vm1");
    }
    // The first idle connections were closed to make room, with a 503.
    let first = held.remove(0);
    assert_eq!(status_of(first), Some(503));
    drop(stalled);
    drop(held);
    let disks: Vec<DiskInfo> = client.get("/v1/disks").unwrap();
    assert_eq!(disks.len(), 1);
    drop(server);
}

#[test]
fn slow_heads_and_bodies_are_cut_off() {
    let path = socket_path("timeouts");
    let limits = Limits {
        head_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(400),
        ..Limits::default()
    };
    let server = ControlServer::start_with(&path, Arc::new(Fake::default()), limits).unwrap();
    let mut partial = connect(&path);
    partial.write_all(b"GET /v1/disks HTTP/1.1\r\n").unwrap();
    let mut body = connect(&path);
    body.write_all(b"POST /v1/disks/vm1/snapshots HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    assert_eq!(status_of(partial), Some(408));
    assert_eq!(status_of(body), Some(408));
    let mut idle = connect(&path);
    let mut byte = [0u8; 1];
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // An idle client is answered too, then closed.
    assert!(idle.read(&mut byte).unwrap() > 0);
    drop(server);
}

#[test]
fn oversized_and_unknown_bodies_are_refused() {
    let path = socket_path("bodies");
    let server = ControlServer::start(&path, Arc::new(Fake::default())).unwrap();
    let mut big = connect(&path);
    let head = format!(
        "POST /v1/disks/vm1/snapshots HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        http::MAX_BODY + 1
    );
    big.write_all(head.as_bytes()).unwrap();
    assert_eq!(status_of(big), Some(413));

    let client = ControlClient::new(&path);
    let (status, answer) = client
        .raw(
            "POST",
            "/v1/disks/vm1/snapshots",
            br#"{"name":"s1","label":"x"}"#,
        )
        .unwrap();
    assert_eq!(status, 400);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("unknown field `label`"), "{text}");
    drop(server);
}

/// Holds every call until the test lets it go.
struct Gated {
    gate: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl ControlHandler for Gated {
    fn call(&self, _call: ApiCall) -> Result<serde_json::Value, ApiError> {
        let gate = self
            .gate
            .lock()
            .map_err(|_| ApiError::Internal("gate".into()))?;
        let _ = gate.recv();
        Ok(serde_json::json!({}))
    }
}

#[test]
fn a_request_sent_during_a_long_call_is_served_not_timed_out() {
    let path = socket_path("long");
    let (open, gate) = std::sync::mpsc::channel();
    let handler = Arc::new(Gated {
        gate: Mutex::new(gate),
    });
    let limits = Limits {
        head_timeout: Duration::from_millis(100),
        request_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let server = ControlServer::start_with(&path, handler, limits).unwrap();
    // Accepted first, silent for now.
    let mut late = connect(&path);
    std::thread::sleep(Duration::from_millis(20));
    let mut first = connect(&path);
    first
        .write_all(b"GET /v1/version HTTP/1.1\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // The first call holds the server past the late client's deadline while it sends.
    late.write_all(b"GET /v1/version HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    open.send(()).unwrap();
    open.send(()).unwrap();
    assert_eq!(status_of(first), Some(200));
    assert_eq!(status_of(late), Some(200));
    drop(server);
}

/// Answers ListDisks with a body far larger than a socket buffer, anything else with `{}`.
struct Big;

const BIG: usize = 4 << 20;

impl ControlHandler for Big {
    fn call(&self, call: ApiCall) -> Result<serde_json::Value, ApiError> {
        match call {
            ApiCall::ListDisks => Ok(serde_json::Value::String("x".repeat(BIG))),
            _ => Ok(serde_json::json!({})),
        }
    }
}

#[test]
fn a_client_that_does_not_read_a_large_answer_holds_nobody_up() {
    let path = socket_path("big");
    let server = ControlServer::start(&path, Arc::new(Big)).unwrap();
    let mut slow = connect(&path);
    slow.write_all(b"GET /v1/disks HTTP/1.1\r\n\r\n").unwrap();
    // Well under the write timeout: the slow client's answer is not written on the loop.
    let client = ControlClient::new(&path).with_timeout(Duration::from_secs(4));
    for _ in 0..3 {
        let _: serde_json::Value = client.get("/v1/version").unwrap();
    }
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &text[..80]);
    assert!(text.ends_with(&format!("{}\"", "x".repeat(100))));
    assert!(raw.len() > BIG, "{}", raw.len());
    drop(server);
}
