//! One served disk: its engine, counters and vhost-user socket, and the one function that
//! starts it (for the config's disks at start and for disks added while keeld runs).

use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use log::error;

use super::DaemonError;
use crate::config::DiskConfig;
use crate::engine::handover::HandoverEngine;
use crate::engine::{self, Engine, EngineError};
use crate::vhost::backend::DiskContext;
use crate::vhost::config_change::ConfigNotifier;
use crate::vhost::server::DiskServer;
use crate::vhost::stats::DiskStats;

/// A disk being served: what the control API reads, and the server that [`Self::stop`] ends.
pub struct ServedDisk {
    pub config: DiskConfig,
    ctx: Arc<DiskContext>,
    /// Taken by [`Self::stop`]; `None` once stopped.
    server: Mutex<Option<DiskServer>>,
}

/// Opens `config`'s engine and starts serving its socket.
pub fn start_disk(config: &DiskConfig) -> Result<ServedDisk, DaemonError> {
    start_disk_on(config, None)
}

/// [`start_disk`] on `inherited`, when the service manager passed a socket for the disk.
pub fn start_disk_on(
    config: &DiskConfig,
    inherited: Option<UnixListener>,
) -> Result<ServedDisk, DaemonError> {
    let failed = |source| DaemonError::Engine {
        disk: config.name.clone(),
        source,
    };
    let ctx = if config.handover {
        let engine = HandoverEngine::start(config).map_err(failed)?;
        DiskContext::with_handover(config, engine, Arc::default())
    } else {
        DiskContext::new(
            config,
            engine::open(config).map_err(failed)?,
            Arc::default(),
        )
    };
    let ctx = Arc::new(ctx);
    let server = DiskServer::start_on(Arc::clone(&ctx), config.socket.clone(), inherited)?;
    Ok(ServedDisk {
        config: config.clone(),
        ctx,
        server: Mutex::new(Some(server)),
    })
}

impl ServedDisk {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.ctx.engine
    }

    pub fn stats(&self) -> &Arc<DiskStats> {
        &self.ctx.stats
    }

    /// The disk's I/O limits and what they held back.
    pub fn qos(&self) -> &Arc<crate::qos::DiskQos> {
        &self.ctx.qos
    }

    /// Tells the attached frontend the disk grew.
    pub fn config_change(&self) -> &ConfigNotifier {
        &self.ctx.config_change
    }

    /// The handover side of a `handover = true` disk.
    pub fn handover(&self) -> Option<&Arc<HandoverEngine>> {
        self.ctx.handover.as_ref()
    }

    /// Whether a frontend is attached now.
    pub fn attached(&self) -> bool {
        self.ctx.stats.attached.load(Ordering::Acquire)
    }

    /// Stops accepting, ends the attached session and flushes. Stopping twice is a no-op.
    pub fn stop(&self) -> Result<(), EngineError> {
        if let Some(h) = self.handover() {
            h.stop();
        }
        let server = match self.server.lock() {
            Ok(mut s) => s.take(),
            Err(poisoned) => {
                // The slot only ever holds or loses the server: taking it is still sound.
                error!("disk {}: the server slot was poisoned", self.name());
                poisoned.into_inner().take()
            }
        };
        server.map_or(Ok(()), DiskServer::stop)
    }
}
