//! A minimal HTTP/1.1 client for the control socket: one request per connection.

use keel_protocol::control::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach keeld at {path}: {source} (is the daemon running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to keeld: {0}")]
    Io(#[from] std::io::Error),
    #[error("keeld sent a malformed answer: {0}")]
    BadResponse(String),
    /// Something listens there, but it does not speak HTTP: most likely a disk's vhost-user
    /// socket given as the control socket.
    #[error(
        "{path} is not keeld's control socket (it did not answer in HTTP; a disk's vhost-user \
         socket?): give the [server] control_socket of keeld's config"
    )]
    NotControl { path: PathBuf },
    /// The daemon answered with an error status.
    #[error("{message}")]
    Api { status: u16, message: String },
}

/// Talks to one daemon's control socket.
pub struct ControlClient {
    path: PathBuf,
    timeout: Duration,
}

impl ControlClient {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            timeout: Duration::from_secs(600),
        }
    }

    /// The same client, giving up on an answer after `timeout` instead of the default ten minutes.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("POST", path, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("DELETE", path, None::<&()>)
    }

    /// Sends one request and decodes a 200 answer as `T`; other statuses become [`ClientError::Api`].
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => {
                serde_json::to_vec(b).map_err(|e| ClientError::BadResponse(e.to_string()))?
            }
            None => Vec::new(),
        };
        let (status, answer) = self.raw(method, path, &body)?;
        if status != 200 {
            return Err(api_error(status, &answer));
        }
        serde_json::from_slice(&answer).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// GETs a binary answer (an export file) into `out`, streaming it; returns its length.
    /// A transfer shorter than the announced length is an error.
    pub fn download(&self, path: &str, out: &mut dyn Write) -> Result<u64, ClientError> {
        let stream = self.send("GET", path, b"")?;
        let mut r = std::io::BufReader::new(stream);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line)? == 0 || head.len() > 64 << 10 {
                return Err(self.bad_answer(&head, "truncated header"));
            }
            head.extend_from_slice(&line);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        response
            .parse(&head)
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let status = response
            .code
            .ok_or_else(|| ClientError::BadResponse("no status code".into()))?;
        let length = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if status != 200 {
            let mut raw = head;
            r.read_to_end(&mut raw)?;
            let (status, answer) = parse_response(&raw)?;
            return Err(api_error(status, &answer));
        }
        let length = length.ok_or_else(|| ClientError::BadResponse("no Content-Length".into()))?;
        let copied = std::io::copy(&mut r.take(length), out)?;
        if copied != length {
            return Err(ClientError::BadResponse(format!(
                "the answer stopped after {copied} of {length} bytes (see keeld's log)"
            )));
        }
        Ok(length)
    }

    fn send(&self, method: &str, path: &str, body: &[u8]) -> Result<UnixStream, ClientError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(self.timeout))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: keeld\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        Ok(stream)
    }

    /// Sends a request and returns the status code and body, whatever the status.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut stream = self.send(method, path, body)?;
        let mut raw = Vec::new();
        // A peer that closes without answering (a vhost-user socket) may reset the connection.
        match stream.read_to_end(&mut raw) {
            Ok(_) => {}
            Err(e) if raw.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(self.bad_answer(&raw, "connection reset"));
            }
            Err(e) => return Err(e.into()),
        }
        if !raw.starts_with(b"HTTP/") {
            return Err(self.bad_answer(&raw, "not HTTP"));
        }
        parse_response(&raw)
    }

    /// An answer that went wrong: one that is not HTTP at all means the wrong socket.
    fn bad_answer(&self, raw: &[u8], what: &str) -> ClientError {
        let http = b"HTTP/";
        if raw.is_empty() || (raw.len() >= http.len() && !raw.starts_with(http)) {
            return ClientError::NotControl {
                path: self.path.clone(),
            };
        }
        ClientError::BadResponse(what.into())
    }
}

/// An error status, with the daemon's message, or the status when it gave none.
fn api_error(status: u16, answer: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(answer)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(answer).trim().to_owned());
    let message = if message.is_empty() {
        format!("keeld refused the request (HTTP {status}) without saying why")
    } else {
        message
    };
    ClientError::Api { status, message }
}

fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::BadResponse("truncated header".into()));
        }
        Err(e) => return Err(ClientError::BadResponse(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| ClientError::BadResponse("no status code".into()))?;
    let mut body = raw.get(head_len..).unwrap_or_default().to_vec();
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

/// Decodes a chunked body (keeld sends none, but HTTP allows one).
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| ClientError::BadResponse("bad chunk header".into()))?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ClientError::BadResponse(format!("bad chunk size {size_text:?}")))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = raw
            .get(..size)
            .ok_or_else(|| ClientError::BadResponse("truncated chunk".into()))?;
        out.extend_from_slice(chunk);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (404, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, b"abcde".to_vec()));
        assert!(parse_response(b"garbage").is_err());
    }

    /// A peer on a fresh socket that reads the request and answers `reply`.
    fn peer(reply: &'static [u8]) -> (tempfile::TempDir, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let _ = s.write_all(reply);
        });
        (dir, t)
    }

    #[test]
    fn a_socket_that_does_not_speak_http_is_named() {
        for reply in [&b""[..], b"\x01\x00\x00\x00vhost"] {
            let (dir, t) = peer(reply);
            let c = ControlClient::new(&dir.path().join("s"));
            let e = c.get::<serde_json::Value>("/v1/disks").unwrap_err();
            assert!(matches!(e, ClientError::NotControl { .. }), "{e}");
            assert!(
                e.to_string().contains("is not keeld's control socket"),
                "{e}"
            );
            t.join().unwrap();
        }
    }

    #[test]
    fn an_error_without_a_message_says_its_status() {
        let (dir, t) = peer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let c = ControlClient::new(&dir.path().join("s"));
        let e = c.get::<serde_json::Value>("/v1/disks/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "keeld refused the request (HTTP 400) without saying why"
        );
        t.join().unwrap();
    }
}
