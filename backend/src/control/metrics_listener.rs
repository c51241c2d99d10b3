//! `[server] metrics_listen`: a TCP listener that serves `GET /metrics` and nothing else, so
//! Prometheus can scrape keeld without reaching the control socket.
//!
//! One thread answers one connection at a time; each has 5 s to send its request and 5 s to
//! take the answer, so a client that stalls delays the next scrape by at most that, and can
//! change nothing.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::http::{self, Progress};
use super::{ControlHandler, metrics};

/// Time a client has to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The running listener; dropping it stops the thread.
pub struct MetricsListener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsListener {
    /// Binds `addr` and serves the metrics `handler` reports.
    pub fn start(addr: SocketAddr, handler: Arc<dyn ControlHandler>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("keel-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(stream) => {
                            if let Err(e) = serve(stream, handler.as_ref()) {
                                log::debug!("metrics client: {e}");
                            }
                        }
                        Err(e) => {
                            log::warn!("metrics listener: accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        log::info!("metrics listening on http://{addr}{}", metrics::PATH);
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (the port is known here when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept; the thread sees the flag and ends.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request and answers it.
fn serve(mut stream: TcpStream, handler: &dyn ControlHandler) -> io::Result<()> {
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The read timeout bounds each read; this bounds the whole request, so a client trickling
    // bytes cannot hold the listener either.
    let deadline = Instant::now() + IO_TIMEOUT;
    let request = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request not complete in time",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match http::parse(&buf) {
            Progress::Partial { .. } => continue,
            Progress::Complete(r) => break r,
            Progress::Refused { status, message } => {
                return http::write_json(&mut stream, status, &error_body(&message));
            }
        }
    };
    if !metrics::is_metrics_request(&request.method, &request.url) {
        let message = format!("only GET {} is served here", metrics::PATH);
        return http::write_json(&mut stream, 404, &error_body(&message));
    }
    let body = metrics::render(handler);
    http::write_body(&mut stream, 200, metrics::CONTENT_TYPE, &body)
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}
