//! The slice of HTTP/1.1 the control socket speaks: one request per connection, a
//! `Content-Length` body, an answer with `Connection: close`.
//!
//! Requests are parsed with `httparse` from bytes read without blocking, so a client that
//! sends half a request holds nothing but its own buffer.

use std::io::{self, Write};

/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 << 10;
/// Longest request body: no control call needs more.
pub const MAX_BODY: usize = 1 << 20;
/// Most headers a request may carry.
const MAX_HEADERS: usize = 32;

/// A complete request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub body: Vec<u8>,
}

/// Where the bytes received so far stand.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed; `head_done` says whether the head is complete.
    Partial {
        head_done: bool,
    },
    Complete(Request),
    /// The request cannot be served: answer with this status and message, then close.
    Refused {
        status: u16,
        message: String,
    },
}

/// Parses the bytes received so far.
pub fn parse(buf: &[u8]) -> Progress {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return refused(431, format!("request head longer than {MAX_HEAD} bytes"));
        }
        Ok(httparse::Status::Partial) => return Progress::Partial { head_done: false },
        Err(httparse::Error::TooManyHeaders) => {
            return refused(431, format!("more than {MAX_HEADERS} headers"));
        }
        Err(e) => return refused(400, format!("malformed request: {e}")),
    };
    if head_len > MAX_HEAD {
        return refused(431, format!("request head longer than {MAX_HEAD} bytes"));
    }
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return refused(411, "send the body with a Content-Length".into());
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match parsed {
                Some(n) if n > MAX_BODY => {
                    return refused(413, format!("body larger than {MAX_BODY} bytes"));
                }
                Some(n) => length = n,
                None => return refused(400, "bad Content-Length".into()),
            }
        }
    }
    let Some(body) = buf.get(head_len..head_len + length) else {
        return Progress::Partial { head_done: true };
    };
    Progress::Complete(Request {
        method: req.method.unwrap_or_default().to_ascii_uppercase(),
        url: req.path.unwrap_or_default().to_owned(),
        body: body.to_vec(),
    })
}

fn refused(status: u16, message: String) -> Progress {
    Progress::Refused { status, message }
}

/// The status line's reason phrase.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// The head of an answer whose body is `len` bytes of `content_type`.
pub fn response_head(status: u16, content_type: &str, len: u64) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
        reason(status)
    )
}

/// Writes a whole JSON answer.
pub fn write_json(out: &mut impl Write, status: u16, body: &str) -> io::Result<()> {
    write_body(out, status, "application/json", body)
}

/// Writes a whole answer of `content_type`.
pub fn write_body(
    out: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let mut all = response_head(status, content_type, body.len() as u64).into_bytes();
    all.extend_from_slice(body.as_bytes());
    out.write_all(&all)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_the_head_then_the_body() {
        let full = b"POST /v1/disks/a/resize HTTP/1.1\r\nHost: k\r\nContent-Length: 4\r\n\r\nabcd";
        assert_eq!(parse(&full[..20]), Progress::Partial { head_done: false });
        assert_eq!(
            parse(&full[..full.len() - 2]),
            Progress::Partial { head_done: true }
        );
        assert_eq!(
            parse(full),
            Progress::Complete(Request {
                method: "POST".into(),
                url: "/v1/disks/a/resize".into(),
                body: b"abcd".to_vec(),
            })
        );
        let get = parse(b"get /v1/disks HTTP/1.1\r\n\r\n");
        assert!(matches!(get, Progress::Complete(r) if r.method == "GET" && r.body.is_empty()));
    }

    #[test]
    fn refuses_oversized_and_malformed_requests() {
        let status = |raw: &[u8]| match parse(raw) {
            Progress::Refused { status, .. } => status,
            other => panic!("{other:?}"),
        };
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(status(big.as_bytes()), 413);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status(b"\x01\x02 / HTTP/1.1\r\n\r\n"), 400);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(status(&long), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn answers_close_the_connection() {
        let mut out = Vec::new();
        write_json(&mut out, 404, "{}").unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }
}
