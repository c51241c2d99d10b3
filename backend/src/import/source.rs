//! Where an import reads from: a raw file or block device read directly, an NBD export, or any
//! other image (qcow2 with its backing chain, vmdk, vhdx...) read through `qemu-nbd`, which
//! keeld starts read-only on a private unix socket and stops when the source is dropped.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::device::lock::{LockMode, lock_path};
use crate::device::nbd::{NbdAddress, NbdDevice, NbdOptions};
use crate::device::{BlockDevice, FileDevice};
use crate::engine::Extent;
use crate::store::layout::BLOCK;

use super::holes;

/// Why a source cannot be opened; every message names the source.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("import source {0}: {1}")]
    Open(String, String),
}

fn fail(name: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Open(name.to_string(), e.to_string())
}

/// A `qemu-nbd` serving an image read-only on a socket in a private directory.
///
/// It is started by a thread of its own that lives as long as the server: the child asks the
/// kernel for SIGKILL when the thread that forked it ends (`PR_SET_PDEATHSIG`), so a keeld
/// killed with SIGKILL leaves no `qemu-nbd` behind, and no other thread's end stops it early.
struct QemuNbd {
    /// Dropping it tells the thread to stop the server.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The socket's directory, removed once keeld is connected (see [`Self::connected`]).
    dir: Option<tempfile::TempDir>,
}

impl QemuNbd {
    fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> io::Result<(Self, u32)> {
        let (started_tx, started_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("keel-qemu-nbd".into())
            .spawn(move || {
                // SAFETY: the closure runs in the forked child before exec and only calls
                // prctl(2), which is async-signal-safe, with constant arguments.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(child.id()));
                // Until the source is dropped (or the sender with it).
                let _ = stop_rx.recv();
                let _ = child.kill();
                let _ = child.wait();
            })?;
        let pid = started_rx
            .recv()
            .map_err(|_| io::Error::other("the qemu-nbd thread ended"))??;
        Ok((
            Self {
                stop: Some(stop_tx),
                thread: Some(thread),
                dir: Some(dir),
            },
            pid,
        ))
    }

    /// keeld holds its one connection: the socket and its directory go now, so nothing else
    /// can connect and a keeld killed later leaves no directory behind.
    fn connected(&mut self) {
        drop(self.dir.take());
    }

    /// Whether the server is still running (an exited child stays a zombie until the thread
    /// reaps it, so its state is read).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`Source::read_sparse`] did.
pub struct SparseRead {
    /// Bytes read from the source.
    pub read_bytes: u64,
    /// Block by block, whether the source reported it as zeroes (and it was not read), when
    /// it could tell.
    pub zero: Option<Vec<bool>>,
}

/// An open import source: its bytes as one flat view, whatever the format.
pub struct Source {
    dev: Arc<dyn BlockDevice>,
    /// The same device when it is an NBD client, for block status.
    nbd: Option<Arc<NbdDevice>>,
    name: String,
    /// The internal snapshot of the image read instead of its current contents.
    internal: Option<String>,
    format: String,
    /// Dropped after `dev` (fields drop in order): the connection closes before the server.
    _server: Option<QemuNbd>,
    /// Held for raw files: a shared lock, so no writer changes the image under the import.
    _lock: Option<std::fs::File>,
}

impl Source {
    /// Opens `spec`: an NBD URI, or the path of an image in any format QEMU reads.
    pub fn open(spec: &str) -> Result<Self, SourceError> {
        if NbdAddress::is_uri(spec) {
            let dev =
                Arc::new(NbdDevice::open(spec, NbdOptions::default()).map_err(|e| fail(spec, e))?);
            return Ok(Self {
                dev: dev.clone(),
                nbd: Some(dev),
                name: spec.to_string(),
                internal: None,
                format: "nbd".into(),
                _server: None,
                _lock: None,
            });
        }
        let path = Path::new(spec).canonicalize().map_err(|e| fail(spec, e))?;
        let format = probe_format(&path, spec)?;
        if format == "raw" {
            let lock = lock_path(&path, LockMode::Shared).map_err(|e| fail(spec, e))?;
            let dev = FileDevice::open(&path, true, false).map_err(|e| fail(spec, e))?;
            return Ok(Self {
                dev: Arc::new(dev),
                nbd: None,
                name: spec.to_string(),
                internal: None,
                format,
                _server: None,
                _lock: Some(lock),
            });
        }
        Self::through_qemu_nbd(spec, &path, format, None)
    }

    /// Opens the internal snapshot `snapshot` of the image `spec` (as `qemu-img snapshot -l`
    /// names it), read-only through `qemu-nbd --load-snapshot`.
    pub fn open_internal_snapshot(spec: &str, snapshot: &str) -> Result<Self, SourceError> {
        let path = Path::new(spec).canonicalize().map_err(|e| fail(spec, e))?;
        let format = probe_format(&path, spec)?;
        Self::through_qemu_nbd(spec, &path, format, Some(snapshot))
    }

    /// The same source opened again (after its connection failed).
    pub fn open_again(&self) -> Result<Self, SourceError> {
        match &self.internal {
            Some(snapshot) => Self::open_internal_snapshot(&self.name, snapshot),
            None => Self::open(&self.name),
        }
    }

    fn through_qemu_nbd(
        spec: &str,
        path: &Path,
        format: String,
        internal: Option<&str>,
    ) -> Result<Self, SourceError> {
        let (mut server, uri) = start_qemu_nbd(path, &format, spec, internal)?;
        let dev =
            Arc::new(NbdDevice::open(&uri, NbdOptions::default()).map_err(|e| fail(spec, e))?);
        server.connected();
        Ok(Self {
            dev: dev.clone(),
            nbd: Some(dev),
            name: spec.to_string(),
            internal: internal.map(str::to_string),
            format,
            _server: Some(server),
            _lock: None,
        })
    }

    /// The source's size in bytes (the image's virtual size).
    pub fn len(&self) -> u64 {
        self.dev.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name it was given (a path or URI), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image format (`raw`, `qcow2`, ... or `nbd`).
    pub fn format(&self) -> &str {
        &self.format
    }

    /// Which 4 KiB blocks of `[offset, offset + len)` (block-aligned) read as zeroes, from
    /// the source's own allocation data: a raw file's holes (`SEEK_DATA`/`SEEK_HOLE`), an NBD
    /// server's block status (`NBD_STATE_ZERO`). Blocks past the source's end are zeroes.
    /// `None` when the source cannot tell: every block must then be read.
    pub fn zero_blocks(&self, offset: u64, len: u64) -> io::Result<Option<Vec<bool>>> {
        let inside = self.len().saturating_sub(offset).min(len);
        let extents = if inside == 0 {
            Vec::new()
        } else if let Some(nbd) = self.nbd.as_ref().filter(|n| n.has_block_status()) {
            nbd_extents(nbd, offset, inside)?
        } else if self.format == "raw"
            && let Some(fd) = self.dev.raw_fd()
        {
            match holes::file_extents(fd, offset, inside) {
                Some(e) => e,
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        Ok(Some(holes::zero_blocks(&extents, len, BLOCK)))
    }

    /// Reads `buf.len()` bytes at `offset` (block-aligned) as [`Self::read`], but reads only
    /// the blocks the source does not report as zeroes.
    pub fn read_sparse(&self, buf: &mut [u8], offset: u64) -> io::Result<SparseRead> {
        let Some(zero) = self.zero_blocks(offset, buf.len() as u64)? else {
            self.read(buf, offset)?;
            return Ok(SparseRead {
                read_bytes: buf.len() as u64,
                zero: None,
            });
        };
        let mut read = 0u64;
        let (block, total) = (BLOCK as usize, buf.len());
        let mut i = 0;
        while i < zero.len() {
            let run = zero[i..].iter().take_while(|z| **z == zero[i]).count();
            let bytes = &mut buf[i * block..((i + run) * block).min(total)];
            if zero[i] {
                bytes.fill(0);
            } else {
                self.read(bytes, offset + (i * block) as u64)?;
                read += bytes.len() as u64;
            }
            i += run;
        }
        Ok(SparseRead {
            read_bytes: read,
            zero: Some(zero),
        })
    }

    /// Reads `buf.len()` bytes at `offset`; bytes past the source's end read as zeroes.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.len();
        let inside = len.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[inside..].fill(0);
        if inside == 0 {
            return Ok(());
        }
        // Reads are whole 512-byte sectors for devices that need them; the tail is cut off.
        let sectors = inside.next_multiple_of(512);
        if sectors == inside || offset + sectors as u64 > len {
            return self.dev.read_at(&mut buf[..inside], offset);
        }
        let mut tmp = vec![0u8; sectors];
        self.dev.read_at(&mut tmp, offset)?;
        buf[..inside].copy_from_slice(&tmp[..inside]);
        Ok(())
    }
}

/// The NBD server's block status for `[offset, offset + len)`, asked again from where each
/// answer ends until the range is covered.
fn nbd_extents(nbd: &NbdDevice, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut at = offset;
    while at < offset + len {
        let answer = nbd.block_status(at, offset + len - at)?;
        let got: u64 = answer.iter().map(|e| e.len).sum();
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("block status at {at} answered for no bytes"),
            ));
        }
        out.extend(answer);
        at += got;
    }
    Ok(out)
}

/// Asks `qemu-img info` what `path` is; a missing backing file or an unreadable image is an
/// error naming it.
fn probe_format(path: &Path, name: &str) -> Result<String, SourceError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "--backing-chain"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(name, format!("running qemu-img: {e}")))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(fail(name, why.trim()));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| fail(name, format!("qemu-img info: {e}")))?;
    let top = match &info {
        serde_json::Value::Array(chain) => chain.first(),
        v => Some(v),
    };
    top.and_then(|t| t.get("format"))
        .and_then(|f| f.as_str())
        .map(str::to_string)
        .ok_or_else(|| fail(name, "qemu-img info names no format"))
}

/// Starts `qemu-nbd` read-only on `path` (or on its internal snapshot `internal`) with an
/// export on a private socket; waits for it.
fn start_qemu_nbd(
    path: &Path,
    format: &str,
    name: &str,
    internal: Option<&str>,
) -> Result<(QemuNbd, String), SourceError> {
    let dir = tempfile::Builder::new()
        .prefix("keel-import-")
        .tempdir()
        .map_err(|e| fail(name, e))?;
    let socket: PathBuf = dir.path().join("nbd.sock");
    let mut cmd = Command::new("qemu-nbd");
    cmd.arg("--read-only")
        .arg("--persistent")
        .arg("--shared=4")
        .arg(format!("--format={format}"))
        .arg("--export-name=src")
        .arg("--socket")
        .arg(&socket);
    if let Some(snapshot) = internal {
        // QEMU's option syntax: a comma inside a value is written twice.
        cmd.arg(format!(
            "--load-snapshot=snapshot.name={}",
            snapshot.replace(',', ",,")
        ));
    }
    cmd.arg(path).stdin(Stdio::null()).stdout(Stdio::null());
    let (server, pid) =
        QemuNbd::spawn(cmd, dir).map_err(|e| fail(name, format!("starting qemu-nbd: {e}")))?;
    // The socket exists once qemu-nbd has bound it; connecting works once it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            break;
        }
        if !QemuNbd::alive(pid) {
            return Err(fail(name, "qemu-nbd exited before serving it"));
        }
        if Instant::now() > deadline {
            return Err(fail(name, "qemu-nbd did not start within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let uri = format!("nbd+unix:///src?socket={}", socket.display());
    Ok((server, uri))
}
