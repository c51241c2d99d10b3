//! The control socket's accept loop: one thread, requests answered in turn.
//!
//! Control calls are rare and short next to guest I/O, so one thread is enough and keeps the
//! daemon's state changes (snapshots, mirror ops) naturally serialised.

use super::{ApiCall, ApiError, ControlHandler, Download, route};
use crate::vhost::socket::bind_private;
use keel_protocol::control::ErrorBody;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Bodies larger than this are refused: no control call needs more.
const MAX_BODY: usize = 1 << 20;

/// A running control socket; dropping it stops the thread and removes the socket file.
pub struct ControlServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (mode 0600) and serves calls with `handler` on a thread of its own.
    pub fn start(path: &Path, handler: Arc<dyn ControlHandler>) -> io::Result<Self> {
        let listener = bind_private(path)?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let server = Arc::new(server);
        let loop_server = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("keel-control".into())
            .spawn(move || serve(&loop_server, handler.as_ref()))?;
        log::info!("control API listening on {}", path.display());
        Ok(Self {
            server,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(server: &tiny_http::Server, handler: &dyn ControlHandler) {
    for mut request in server.incoming_requests() {
        let method = request.method().as_str().to_ascii_uppercase();
        let url = request.url().to_string();
        let call = read_body(&mut request).and_then(|body| route(&method, &url, &body));
        if let Ok(ApiCall::Export { disk, from, to }) = &call {
            match handler.export(disk, from, to) {
                Ok(d) => {
                    send_download(request, d);
                    continue;
                }
                Err(e) => {
                    respond_error(request, &method, &url, &e);
                    continue;
                }
            }
        }
        let answer = call.and_then(|call| handler.call(call));
        match answer {
            Ok(value) => respond(request, 200, value.to_string()),
            Err(e) => respond_error(request, &method, &url, &e),
        }
    }
}

fn respond(request: tiny_http::Request, status: u16, body: String) {
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(json_header());
    if let Err(e) = request.respond(response) {
        log::debug!("control client went away: {e}");
    }
}

fn respond_error(request: tiny_http::Request, method: &str, url: &str, e: &ApiError) {
    log::debug!("control {method} {url}: {e}");
    let body = ErrorBody {
        error: e.to_string(),
    };
    let body = serde_json::to_string(&body).unwrap_or_else(|_| "{}".into());
    respond(request, e.status(), body);
}

/// Streams a binary answer on a thread of its own, so a long export does not hold up other
/// calls. Its length is sent first: a transfer cut short by an error is seen as such.
fn send_download(request: tiny_http::Request, d: Download) {
    let spawned = std::thread::Builder::new()
        .name("keel-export".into())
        .spawn(move || {
            let header = tiny_http::Header {
                field: "Content-Type"
                    .parse()
                    .unwrap_or_else(|_| unreachable!("static header name")),
                value: "application/octet-stream"
                    .parse()
                    .unwrap_or_else(|_| unreachable!("static header value")),
            };
            let response = tiny_http::Response::new(
                tiny_http::StatusCode(200),
                vec![header],
                d.reader,
                usize::try_from(d.len).ok(),
                None,
            )
            .with_chunked_threshold(usize::MAX);
            if let Err(e) = request.respond(response) {
                log::warn!("control: export stopped: {e}");
            }
        });
    if let Err(e) = spawned {
        log::error!("control: cannot start an export thread: {e}");
    }
}

fn read_body(request: &mut tiny_http::Request) -> Result<Vec<u8>, ApiError> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(ApiError::BadRequest(format!(
            "body larger than {MAX_BODY} bytes"
        )));
    }
    Ok(body)
}

fn json_header() -> tiny_http::Header {
    tiny_http::Header {
        field: "Content-Type"
            .parse()
            .unwrap_or_else(|_| unreachable!("static header name")),
        value: "application/json"
            .parse()
            .unwrap_or_else(|_| unreachable!("static header value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::client::{ClientError, ControlClient};
    use keel_protocol::control::{CreateSnapshot, DiskInfo};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    use std::sync::Mutex;

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
}
