//! `keel.toml`: the disks `keeld` serves, parsed and checked before anything starts.
//!
//! Loading is all-or-nothing: a file with one bad value is refused with one message that names
//! the key and the line, so an operator never runs a half-configured daemon. See docs/config.md.

mod check;
mod size;
mod space;

pub use size::{SizeValue, parse_size};
pub use space::{DiskSpace, MAX_SPACE_WAIT_MS};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
}

/// The `[server]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where the control API will listen (HTTP/JSON); resolved, not yet served by keeld itself.
    pub control_socket: Option<PathBuf>,
    /// Log filter used when neither `KEEL_LOG` nor `RUST_LOG` is set (e.g. "info", "keel=debug").
    pub log_level: Option<String>,
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
}

/// A whole, checked config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub disks: Vec<DiskConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    disk: Vec<Spanned<RawDisk>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    control_socket: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    name: Spanned<String>,
    socket: Spanned<String>,
    engine: Spanned<EngineKind>,
    path: Option<Spanned<String>>,
    mirror: Option<Spanned<Vec<String>>>,
    resync_chunk: Option<Spanned<SizeValue>>,
    size: Option<Spanned<SizeValue>>,
    resize: Option<Spanned<bool>>,
    queues: Option<Spanned<u16>>,
    queue_size: Option<Spanned<u16>>,
    read_only: Option<Spanned<bool>>,
    serial: Option<Spanned<String>>,
    direct: Option<Spanned<bool>>,
    logical_block_size: Option<Spanned<u32>>,
    poll_us: Option<Spanned<u32>>,
    delay_us: Option<Spanned<u32>>,
    max_size: Option<Spanned<SizeValue>>,
    space_warn: Option<Spanned<space::PercentValue>>,
    space_critical: Option<Spanned<space::PercentValue>>,
    space_wait_ms: Option<Spanned<u64>>,
}

impl Config {
    /// Reads, parses and checks `path`. Relative paths inside resolve against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses `text` as if read from `file`, resolving relative paths against `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let checker = check::Checker { text, file, base };
        checker.check(raw)
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
