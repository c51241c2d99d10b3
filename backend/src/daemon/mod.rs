//! keeld's top level: owns the set of served disks (start, stop, list) and the control API
//! over them.
//!
//! `vhost` serves one disk's frontend sessions and knows nothing of the control API; `control`
//! parses calls and hands them to a [`crate::control::ControlHandler`], which this module
//! implements over its [`DiskSet`]. [`start_disk`] is the one way a disk starts.

mod add_remove;
mod clone;
mod clone_rbd;
mod control;
mod disks;
mod info;
mod limits;
mod reload;
mod served;
mod stop;

#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod tests;

pub use control::DaemonControl;
pub use disks::{DiskSet, FailedDisk, Missing, Poisoned, StartError};
pub use reload::Reload;
pub use served::{ServedDisk, start_disk, start_disk_on};

use std::sync::Arc;

use log::{error, info};
use thiserror::Error;

use crate::config::{Config, DiskConfig};
use crate::control::ControlServer;
use crate::control::metrics_listener::MetricsListener;
use crate::engine::EngineError;
use crate::nbd::{self, Exports, NbdServer};
use crate::service::Activation;
use crate::vhost::server::ServerError;
use crate::vhost::stats::DiskStats;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("disk {disk}: {source}")]
    Engine { disk: String, source: EngineError },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("NBD server: {0}")]
    Nbd(std::io::Error),
    #[error("metrics_listen {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The name, socket or a file is another disk's (the text says which).
    #[error("{0}")]
    Exists(String),
    #[error("no such disk: {0}")]
    NotFound(String),
    #[error("the disk list is poisoned")]
    Poisoned,
}

/// The running disks and the control API over them.
pub struct Daemon {
    disks: Arc<DiskSet>,
    /// The control API, when the config names a socket for it.
    control: Option<ControlServer>,
    /// The `metrics_listen` TCP listener, when configured.
    metrics: Option<MetricsListener>,
    /// The disks exported over NBD (every served disk), and the server, when configured.
    exports: Arc<Exports>,
    nbd: Option<NbdServer>,
    /// The control calls' side, which also runs clones' copies.
    handler: Arc<DaemonControl>,
    /// The config the disks were started from (changed by [`Daemon::reload`]).
    config: Config,
}

impl Daemon {
    /// Opens every disk's engine and starts serving its socket. A disk that cannot be opened
    /// is logged, left out and listed as failed by the control API: the healthy disks beside
    /// it are served. Only when no disk at all can be served is the first error returned.
    pub fn start(config: &Config) -> Result<Self, DaemonError> {
        Self::start_with(config, &mut Activation::default())
    }

    /// [`start`](Self::start), serving each disk on the socket `activation` holds under its
    /// name, if any (systemd socket activation).
    pub fn start_with(config: &Config, activation: &mut Activation) -> Result<Self, DaemonError> {
        let mut served = Vec::with_capacity(config.disks.len());
        let mut failed = Vec::new();
        let mut first_error = None;
        let exports = Arc::new(Exports::default());
        for disk in &config.disks {
            match start_disk_on(disk, activation.take(&disk.name)) {
                Ok(d) => {
                    exports.add(disk, Arc::clone(d.engine()));
                    served.push(d);
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
        if served.is_empty()
            && let Some(e) = first_error
        {
            return Err(e);
        }
        let count = served.len();
        let disks = Arc::new(DiskSet::new(served, failed));
        let handler =
            Arc::new(DaemonControl::new(Arc::clone(&disks)).with_exports(Arc::clone(&exports)));
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
        let metrics = match config.server.metrics_listen {
            Some(addr) => Some(
                MetricsListener::start(addr, Arc::clone(&handler) as _)
                    .map_err(|source| DaemonError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let nbd = nbd::start(&config.server, Arc::clone(&exports)).map_err(DaemonError::Nbd)?;
        info!("serving {count} disk(s)");
        Ok(Self {
            disks,
            control,
            metrics,
            exports,
            nbd,
            handler,
            config: config.clone(),
        })
    }

    /// The set of disks this daemon serves.
    pub fn disks(&self) -> &Arc<DiskSet> {
        &self.disks
    }

    /// Starts serving one more disk; refused if its name, socket or a file is another's.
    pub fn start_disk(&self, config: &DiskConfig) -> Result<Arc<ServedDisk>, DaemonError> {
        let disk = self
            .disks
            .start_new(config, start_disk)
            .map_err(|e| match e {
                StartError::InUse(why) => DaemonError::Exists(why),
                StartError::Start(e) => e,
                StartError::Poisoned => DaemonError::Poisoned,
            })?;
        self.exports.add(config, Arc::clone(disk.engine()));
        Ok(disk)
    }

    /// Stops serving disk `name`: no new connections, in-flight I/O finished, writes flushed.
    pub fn stop_disk(&self, name: &str) -> Result<(), DaemonError> {
        self.exports.remove(name);
        let stopped = self.disks.stop(name).map_err(|m| match m {
            Missing::Poisoned => DaemonError::Poisoned,
            Missing::Unknown | Missing::Failed(_) => DaemonError::NotFound(name.to_string()),
        })?;
        stopped.map_err(|source| DaemonError::Engine {
            disk: name.to_string(),
            source,
        })
    }

    /// The served disks, in start order.
    pub fn list(&self) -> Result<Vec<Arc<ServedDisk>>, DaemonError> {
        Ok(self.disks.list()?)
    }

    /// The names of the config's disks that could not be opened.
    pub fn failed(&self) -> Vec<String> {
        let failed = self.disks.failed();
        failed.iter().map(|f| f.config.name.clone()).collect()
    }

    /// Each disk's name and counters.
    pub fn stats(&self) -> Vec<(String, Arc<DiskStats>)> {
        self.disks
            .list()
            .unwrap_or_default()
            .iter()
            .map(|d| (d.name().to_string(), Arc::clone(d.stats())))
            .collect()
    }

    /// Stops every disk: no new connections, in-flight I/O finished, writes flushed.
    /// Returns the first flush error after trying every disk.
    pub fn shutdown(mut self) -> Result<(), DaemonError> {
        drop(self.metrics.take());
        drop(self.control.take());
        drop(self.nbd.take());
        // A clone still copying stops and takes its partial container with it.
        self.handler.finish_clones(true);
        let mut first = None;
        for (disk, source) in self.disks.stop_all() {
            error!("disk {disk}: flush at shutdown failed: {source}");
            first.get_or_insert(DaemonError::Engine { disk, source });
        }
        first.map_or(Ok(()), Err)
    }
}

impl From<Poisoned> for DaemonError {
    fn from(_: Poisoned) -> Self {
        Self::Poisoned
    }
}
