//! keeld's top level: every disk of a config, started together and stopped together.

use std::sync::Arc;

use log::{error, info};
use thiserror::Error;

use super::backend::DiskContext;
use super::server::{DiskServer, ServerError};
use super::stats::DiskStats;
use crate::config::{Config, DiskConfig};
use crate::control::{ControlServer, DaemonControl, DiskEntry, FailedDisk};
use crate::engine::{self, EngineError};
use crate::nbd::{self, Exports, NbdServer};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("disk {disk}: {source}")]
    Engine { disk: String, source: EngineError },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("NBD server: {0}")]
    Nbd(std::io::Error),
    #[error("control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The running disks.
pub struct Daemon {
    disks: Vec<DiskServer>,
    /// The NBD exports of the disks, when the config names a listener for them.
    nbd: Option<NbdServer>,
    /// The control API, when the config names a socket for it.
    control: Option<ControlServer>,
    /// What the control API serves (it also owns the disks cloned at run time).
    handler: Option<Arc<DaemonControl>>,
    /// The config's disks that could not be opened.
    failed: Vec<String>,
}

/// Opens one disk's engine and starts serving its socket.
fn start_disk(
    disk: &DiskConfig,
    exports: &Exports,
) -> Result<(DiskServer, DiskEntry), DaemonError> {
    let engine = engine::open(disk).map_err(|source| DaemonError::Engine {
        disk: disk.name.clone(),
        source,
    })?;
    let ctx = Arc::new(DiskContext::new(disk, engine, Arc::default()));
    let entry = DiskEntry {
        config: disk.clone(),
        engine: Arc::clone(&ctx.engine),
        stats: Arc::clone(&ctx.stats),
        config_change: Arc::clone(&ctx.config_change),
    };
    let server = DiskServer::start(Arc::clone(&ctx), disk.socket.clone())?;
    exports.add(disk, Arc::clone(&ctx.engine));
    Ok((server, entry))
}

impl Daemon {
    /// Opens every disk's engine and starts serving its socket. A disk that cannot be opened
    /// is logged, left out and listed as failed by the control API: the healthy disks beside
    /// it are served. Only when no disk at all can be served is the first error returned.
    pub fn start(config: &Config) -> Result<Self, DaemonError> {
        let mut disks = Vec::with_capacity(config.disks.len());
        let mut entries = Vec::with_capacity(config.disks.len());
        let mut failed = Vec::new();
        let mut first_error = None;
        let exports = Arc::new(Exports::default());
        for disk in &config.disks {
            match start_disk(disk, &exports) {
                Ok((server, entry)) => {
                    disks.push(server);
                    entries.push(entry);
                }
                Err(e) => {
                    error!("{e}; this disk is not served");
                    failed.push(FailedDisk {
                        config: disk.clone(),
                        reason: e.to_string(),
                    });
                    first_error.get_or_insert(e);
                }
            }
        }
        if disks.is_empty()
            && let Some(e) = first_error
        {
            return Err(e);
        }
        let failed_names: Vec<String> = failed.iter().map(|f| f.config.name.clone()).collect();
        let handler = Arc::new(DaemonControl::with_failed(entries, failed));
        let control = match &config.server.control_socket {
            Some(path) => Some(
                ControlServer::start(path, Arc::clone(&handler) as _).map_err(|source| {
                    DaemonError::Control {
                        path: path.clone(),
                        source,
                    }
                })?,
            ),
            None => None,
        };
        let nbd = nbd::start(&config.server, exports).map_err(DaemonError::Nbd)?;
        info!("serving {} disk(s)", disks.len());
        Ok(Self {
            disks,
            nbd,
            control,
            handler: Some(handler),
            failed: failed_names,
        })
    }

    /// The names of the config's disks that could not be opened.
    pub fn failed(&self) -> &[String] {
        &self.failed
    }

    /// Each disk's name and counters.
    pub fn stats(&self) -> Vec<(String, Arc<DiskStats>)> {
        self.disks
            .iter()
            .map(|d| (d.context().name.clone(), Arc::clone(&d.context().stats)))
            .collect()
    }

    /// Stops every disk: no new connections, in-flight I/O finished, writes flushed.
    /// Returns the first flush error after trying every disk.
    pub fn shutdown(mut self) -> Result<(), DaemonError> {
        drop(self.control.take());
        drop(self.nbd.take());
        let mut first = None;
        if let Some(h) = self.handler.take() {
            for (disk, source) in h.stop_clones() {
                error!("disk {disk}: flush at shutdown failed: {source}");
                first.get_or_insert(DaemonError::Engine { disk, source });
            }
        }
        for d in self.disks {
            let name = d.context().name.clone();
            if let Err(source) = d.stop() {
                error!("disk {name}: flush at shutdown failed: {source}");
                first.get_or_insert(DaemonError::Engine { disk: name, source });
            }
        }
        first.map_or(Ok(()), Err)
    }
}
