//! `keel.toml`: the disks `keeld` serves, parsed and checked before anything starts.
//!
//! Loading is all-or-nothing: a file with one bad value is refused with one message that names
//! the key and the line, so an operator never runs a half-configured daemon. See docs/config.md.

mod compression;
pub use compression::Compression;
mod encryption;
mod handover;
mod import;
mod mirror;
mod names;
mod one_disk;
mod paths;
mod qos;
mod raw;
mod rbd;
mod size;
mod space;

pub use names::{MAX_NAME, check_disk_name, check_log_level, check_name};
pub use one_disk::{absolute_paths, disk_from_json, disk_table_from_file};
pub use paths::{KEEL_BLOCK, MAX_SOCKET_PATH};
pub use rbd::RbdConfig;
pub use size::{SizeValue, parse_size};
pub use space::{DiskSpace, MAX_SPACE_WAIT_MS, create_options};

use paths::{canonical_if_exists, normalize};

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use keel_protocol::{ID_BYTES, SECTOR_SIZE};
use raw::{RawDisk, RawFile};
use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

/// Largest number of virtqueues a disk may offer (one worker thread each).
pub const MAX_QUEUES: u16 = 64;
/// Largest virtqueue size (the split-ring limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Longest adaptive polling window accepted, in microseconds.
pub const MAX_POLL_US: u32 = 1_000_000;
/// Longest `delay_us`: a second (a guest's I/O timeout is 30 s).
pub const MAX_DELAY_US: u32 = 1_000_000;

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Default granularity of a mirror's tracking bitmaps.
pub const DEFAULT_RESYNC_CHUNK: u64 = 64 * 1024;

/// Which engine serves a disk's blocks. Adding an engine is one variant here and one match arm
/// in [`crate::engine::open`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// A raw image file or block device, accessed with io_uring.
    Raw,
    /// No storage: reads return zeroes, writes are dropped. Measures the channel.
    Null,
    /// Keel's storage core: a log-structured container with snapshots and checksums.
    Keel,
    /// A Ceph RBD image, through librbd.
    Rbd,
}

/// The `[server]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the control API will listen (HTTP/JSON); resolved, not yet served by keeld itself.
    pub control_socket: Option<PathBuf>,
    /// Log filter used when neither `KEEL_LOG` nor `RUST_LOG` is set (e.g. "info", "keel=debug").
    pub log_level: Option<String>,
    /// A TCP address that serves `GET /metrics` only (e.g. "127.0.0.1:9184").
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Unix socket (mode 0600) where keeld exports its disks over NBD.
    pub nbd_socket: Option<PathBuf>,
    /// TCP address where keeld exports its disks over NBD, unauthenticated; off unless set.
    pub nbd_listen: Option<std::net::SocketAddr>,
}

/// `log_format`: plain text (to the journal natively under systemd), or JSON lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[disk]]`, with defaults applied and paths resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub name: String,
    pub socket: PathBuf,
    pub engine: EngineKind,
    pub path: Option<PathBuf>,
    /// Mirror components (instead of `path`), in the order the control API numbers them.
    pub mirror: Vec<PathBuf>,
    /// Granularity of a mirror's tracking bitmaps, in bytes.
    pub resync_chunk: u64,
    /// Capacity in bytes; `None` for a raw disk that takes its size from the existing file.
    pub size: Option<u64>,
    pub resize: bool,
    pub queues: u16,
    pub queue_size: u16,
    pub read_only: bool,
    pub serial: String,
    pub direct: bool,
    pub logical_block_size: u32,
    pub poll_us: u32,
    /// Latency added to every request (testing and planning; 0 = none).
    pub delay_us: u32,
    /// Space thresholds, growth and waiting (keel engine).
    pub space: DiskSpace,
    /// I/O limits (QoS) and the mirror's resync rate; 0 = unlimited.
    pub limits: keel_protocol::control::DiskLimits,
    /// A live import's source (keel engine): an absolute image path or an NBD URI.
    pub import_from: Option<String>,
    /// The import's background copy stays under this many bytes per second; `None`: no cap
    /// (it still steps aside while the guest is busy).
    pub import_rate: Option<u64>,
    /// The image and cluster of an rbd disk.
    pub rbd: Option<RbdConfig>,
    /// Another keeld may serve the same container or image: start in standby while it holds
    /// the lock, release it when the frontend stops its rings (live migration between keelds).
    pub handover: bool,
    /// `encryption` and `key_file`: the disk's container is encrypted (made so when it is
    /// created) with the key read from here.
    pub key_file: Option<crate::store::seal::KeySource>,
    /// `compression`: the codec a new container compresses with, and the one an existing
    /// container must have when the key is set.
    pub compression: Compression,
}

/// A whole, checked config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub disks: Vec<DiskConfig>,
}

impl Config {
    /// Reads, parses and checks `path`. Relative paths inside resolve against its directory
    /// and come out absolute, so logs and answers name them the same from any directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        Self::parse(&text, path, &base)
    }

    /// Parses `text` as if read from `file`, resolving relative paths against `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let checker = Checker { text, file, base };
        checker.check(raw)
    }
}

/// Validation state: turns spans into line numbers and paths into absolute ones.
struct Checker<'a> {
    text: &'a str,
    file: &'a Path,
    base: &'a Path,
}

impl Checker<'_> {
    fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// An optional count (0 when absent) of at most `max`.
    fn at_most(
        &self,
        value: &Option<Spanned<u32>>,
        key: &str,
        max: u32,
    ) -> Result<u32, ConfigError> {
        match value {
            Some(v) if *v.get_ref() > max => Err(self.err(
                v.span(),
                key,
                format!("{} is above the limit of {max}", v.get_ref()),
            )),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(0),
        }
    }

    fn err(&self, span: std::ops::Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.to_owned(),
            line: self.line_of(span),
            key: key.to_owned(),
            message,
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        normalize(&self.base.join(p))
    }

    fn check(&self, raw: RawFile) -> Result<Config, ConfigError> {
        if let Some(level) = &raw.server.log_level {
            check_log_level(level.get_ref()).map_err(|m| self.err(level.span(), "log_level", m))?;
        }
        let mut sockets = HashMap::new();
        let control_socket = match &raw.server.control_socket {
            Some(s) => {
                let path = self.resolve(s.get_ref());
                self.check_socket(&path, s.span(), "control_socket")?;
                sockets.insert(path.display().to_string(), self.line_of(s.span()));
                Some(path)
            }
            None => None,
        };
        let metrics_listen = match raw.server.metrics_listen {
            Some(v) => Some(v.get_ref().parse().map_err(|_| {
                self.err(
                    v.span(),
                    "metrics_listen",
                    format!("{:?} is not an IP address and port", v.get_ref()),
                )
            })?),
            None => None,
        };
        let log_format = match raw.server.log_format {
            None => LogFormat::Text,
            Some(v) => match v.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(self.err(
                        v.span(),
                        "log_format",
                        format!("{other:?} is not \"text\" or \"json\""),
                    ));
                }
            },
        };
        let nbd_socket = match &raw.server.nbd_socket {
            Some(s) => {
                let path = self.resolve(s.get_ref());
                self.check_socket(&path, s.span(), "nbd_socket")?;
                sockets.insert(path.display().to_string(), self.line_of(s.span()));
                Some(path)
            }
            None => None,
        };
        let nbd_listen = match &raw.server.nbd_listen {
            None => None,
            Some(s) => Some(s.get_ref().parse().map_err(|_| {
                self.err(
                    s.span(),
                    "nbd_listen",
                    format!(
                        "{:?} is not an address:port such as \"127.0.0.1:10809\"",
                        s.get_ref()
                    ),
                )
            })?),
        };
        let server = ServerConfig {
            log_format,
            control_socket,
            log_level: raw.server.log_level.map(Spanned::into_inner),
            metrics_listen,
            nbd_socket,
            nbd_listen,
        };
        let mut disks = Vec::with_capacity(raw.disk.len());
        let mut names = HashMap::new();
        let mut serials = HashMap::new();
        let mut paths = HashMap::new();
        for spanned in raw.disk {
            let disk_span = spanned.span();
            let raw_disk = spanned.into_inner();
            let disk = self.check_disk(&raw_disk, disk_span.clone())?;
            let dup = |map: &mut HashMap<String, usize>, key: &str, value: String, span| {
                let line = self.line_of(span);
                match map.insert(value.clone(), line) {
                    Some(first) => Err(ConfigError::Invalid {
                        path: self.file.to_owned(),
                        line,
                        key: key.to_owned(),
                        message: format!("\"{value}\" is already used at line {first}"),
                    }),
                    None => Ok(()),
                }
            };
            dup(&mut names, "name", disk.name.clone(), raw_disk.name.span())?;
            let socket_span = raw_disk.socket.span();
            dup(
                &mut sockets,
                "socket",
                disk.socket.display().to_string(),
                socket_span,
            )?;
            let serial_span = raw_disk
                .serial
                .as_ref()
                .map_or(raw_disk.name.span(), Spanned::span);
            dup(&mut serials, "serial", disk.serial.clone(), serial_span)?;
            if let (Some(p), Some(raw_path)) = (&disk.path, &raw_disk.path) {
                dup(&mut paths, "path", p.display().to_string(), raw_path.span())?;
            }
            disks.push(disk);
        }
        Ok(Config { server, disks })
    }

    fn check_disk(
        &self,
        raw: &RawDisk,
        disk_span: std::ops::Range<usize>,
    ) -> Result<DiskConfig, ConfigError> {
        let name = raw.name.get_ref().clone();
        check_disk_name(&name).map_err(|m| self.err(raw.name.span(), "name", m))?;
        let engine = *raw.engine.get_ref();

        let logical_block_size = match &raw.logical_block_size {
            None => SECTOR_SIZE as u32,
            Some(v) => {
                let n = *v.get_ref();
                if !n.is_power_of_two() || !(512..=65536).contains(&n) {
                    return Err(self.err(
                        v.span(),
                        "logical_block_size",
                        format!("{n} is not a power of two between 512 and 65536"),
                    ));
                }
                n
            }
        };

        let size = match &raw.size {
            None => None,
            Some(v) => {
                let bytes = v
                    .get_ref()
                    .to_bytes()
                    .map_err(|m| self.err(v.span(), "size", m))?;
                if bytes == 0 || bytes % u64::from(logical_block_size) != 0 {
                    return Err(self.err(
                        v.span(),
                        "size",
                        format!(
                            "{bytes} bytes is not a positive multiple of the logical block size \
                             ({logical_block_size})"
                        ),
                    ));
                }
                if engine == EngineKind::Keel && !bytes.is_multiple_of(KEEL_BLOCK) {
                    return Err(self.err(
                        v.span(),
                        "size",
                        format!("{bytes} bytes is not a multiple of 4K, a keel disk's block"),
                    ));
                }
                Some(bytes)
            }
        };

        let queues = raw.queues.as_ref().map_or(Ok(1), |v| {
            let n = *v.get_ref();
            if n == 0 || n > MAX_QUEUES {
                Err(self.err(
                    v.span(),
                    "queues",
                    format!("{n} is outside 1..={MAX_QUEUES}"),
                ))
            } else {
                Ok(n)
            }
        })?;
        let queue_size = raw.queue_size.as_ref().map_or(Ok(256), |v| {
            let n = *v.get_ref();
            if !n.is_power_of_two() || !(2..=MAX_QUEUE_SIZE).contains(&n) {
                Err(self.err(
                    v.span(),
                    "queue_size",
                    format!("{n} is not a power of two between 2 and {MAX_QUEUE_SIZE}"),
                ))
            } else {
                Ok(n)
            }
        })?;
        let poll_us = self.at_most(&raw.poll_us, "poll_us", MAX_POLL_US)?;
        let delay_us = self.at_most(&raw.delay_us, "delay_us", MAX_DELAY_US)?;
        let serial = match &raw.serial {
            Some(s) => {
                if s.get_ref().len() > ID_BYTES {
                    return Err(self.err(
                        s.span(),
                        "serial",
                        format!("\"{}\" is longer than {ID_BYTES} bytes", s.get_ref()),
                    ));
                }
                s.get_ref().clone()
            }
            None => {
                if name.len() > ID_BYTES {
                    return Err(self.err(
                        raw.name.span(),
                        "name",
                        format!(
                            "\"{name}\" is longer than {ID_BYTES} bytes and so cannot be the \
                             serial: set `serial`"
                        ),
                    ));
                }
                name.clone()
            }
        };

        let socket = self.resolve(raw.socket.get_ref());
        self.check_socket(&socket, raw.socket.span(), "socket")?;

        let resize = raw.resize.as_ref().is_some_and(|v| *v.get_ref());
        let rbd = self.check_rbd(raw, engine, disk_span.clone())?;
        let (mirror, resync_chunk) = self.check_mirror(raw, engine, size)?;
        let path = match (engine, &raw.path) {
            (EngineKind::Raw | EngineKind::Keel, None) if !mirror.is_empty() => None,
            (EngineKind::Raw | EngineKind::Keel, Some(p)) if !mirror.is_empty() => {
                return Err(self.err(
                    p.span(),
                    "path",
                    "give either `path` or `mirror`, not both".into(),
                ));
            }
            (EngineKind::Rbd, _) => None,
            (EngineKind::Null, Some(p)) => {
                return Err(self.err(
                    p.span(),
                    "path",
                    "the null engine stores nothing; remove `path`".into(),
                ));
            }
            (EngineKind::Null, None) => {
                if size.is_none() {
                    return Err(self.err(
                        disk_span,
                        "size",
                        "missing: the null engine needs a size".into(),
                    ));
                }
                None
            }
            (EngineKind::Raw, None) => {
                return Err(self.err(
                    disk_span,
                    "path",
                    "missing: the raw engine needs a file or block device".into(),
                ));
            }
            (EngineKind::Raw, Some(p)) => {
                let resolved = canonical_if_exists(self.resolve(p.get_ref()));
                self.check_raw_path(&resolved, p.span(), raw, size, resize, logical_block_size)?;
                Some(resolved)
            }
            (EngineKind::Keel, None) => {
                return Err(self.err(
                    disk_span,
                    "path",
                    "missing: the keel engine needs a container file or block device".into(),
                ));
            }
            (EngineKind::Keel, Some(p)) => {
                let resolved = canonical_if_exists(self.resolve(p.get_ref()));
                // An import makes a missing container as large as its source: no size needed.
                let size_or_import = size.or(raw.import_from.as_ref().map(|_| 0));
                self.check_container_path(&resolved, p.span(), raw, size_or_import)?;
                Some(resolved)
            }
        };

        let space = self.check_space(raw, engine, size, path.as_deref())?;
        let limits = self.check_limits(raw, disk_span.clone())?;
        let import_from = self.check_import(raw, engine, &mirror)?;
        let import_rate = self.check_import_rate(raw, import_from.is_some(), disk_span.clone())?;
        let handover = self.check_handover(raw, engine, import_from.is_some())?;
        let key_file = self.check_encryption(raw, engine, disk_span.clone())?;
        let compression = self.check_compression(raw, engine, disk_span.clone())?;
        Ok(DiskConfig {
            name,
            socket,
            engine,
            path,
            mirror,
            resync_chunk,
            size,
            resize,
            queues,
            queue_size,
            read_only: raw.read_only.as_ref().is_some_and(|v| *v.get_ref()),
            serial,
            direct: raw.direct.as_ref().is_none_or(|v| *v.get_ref()),
            logical_block_size,
            poll_us,
            delay_us,
            space,
            limits,
            import_from,
            import_rate,
            rbd,
            handover,
            key_file,
            compression,
        })
    }
}

#[cfg(test)]
mod tests;

impl EngineKind {
    /// The name the config file uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Null => "null",
            Self::Keel => "keel",
            Self::Rbd => "rbd",
        }
    }
}

impl DiskConfig {
    /// The files the disk's data lives in (none for the null engine).
    pub fn backing_paths(&self) -> Vec<PathBuf> {
        match &self.path {
            Some(p) => vec![p.clone()],
            None => self.mirror.clone(),
        }
    }
}
