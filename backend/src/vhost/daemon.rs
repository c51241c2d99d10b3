//! keeld's top level: every disk of a config, started together and stopped together.

mod reload;

pub use reload::Reload;

use std::sync::Arc;

use log::{error, info};
use thiserror::Error;

use super::backend::DiskContext;
use super::server::{DiskServer, ServerError};
use super::stats::DiskStats;
use crate::config::Config;
use crate::control::{ControlServer, DaemonControl, DiskEntry};
use crate::engine::{self, EngineError};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("disk {disk}: {source}")]
    Engine { disk: String, source: EngineError },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The running disks.
pub struct Daemon {
    disks: Vec<DiskServer>,
    /// The control API, when the config names a socket for it.
    control: Option<ControlServer>,
    /// What the control API serves (it also owns the disks cloned at run time).
    handler: Option<Arc<DaemonControl>>,
    /// The config the disks above were started from (changed by [`Daemon::reload`]).
    config: Config,
}

impl Daemon {
    /// Opens every disk's engine and starts serving its socket. If one disk fails, the ones
    /// already started are stopped again and the error is returned.
    pub fn start(config: &Config) -> Result<Self, DaemonError> {
        let mut disks = Vec::with_capacity(config.disks.len());
        let mut entries = Vec::with_capacity(config.disks.len());
        for disk in &config.disks {
            let engine = engine::open(disk).map_err(|source| DaemonError::Engine {
                disk: disk.name.clone(),
                source,
            })?;
            let ctx = Arc::new(DiskContext::new(disk, engine, Arc::default()));
            entries.push(DiskEntry {
                config: disk.clone(),
                engine: Arc::clone(&ctx.engine),
                stats: Arc::clone(&ctx.stats),
                config_change: Arc::clone(&ctx.config_change),
            });
            disks.push(DiskServer::start(ctx, disk.socket.clone())?);
        }
        let handler = Arc::new(DaemonControl::new(entries));
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
        info!("serving {} disk(s)", disks.len());
        Ok(Self {
            disks,
            control,
            handler: Some(handler),
            config: config.clone(),
        })
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
