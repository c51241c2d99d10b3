//! The set of served disks, one list shared by the daemon and its control API.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::config::DiskConfig;
use crate::engine::EngineError;

use super::served::ServedDisk;

/// A configured disk that could not be opened at start: listed, not served.
pub struct FailedDisk {
    pub config: DiskConfig,
    pub reason: String,
}

/// The disk list's lock was poisoned by a panic mid-update: the list may be half-changed, so
/// no call is served from it.
#[derive(Debug)]
pub struct Poisoned;

/// Why a name does not give a served disk.
pub enum Missing {
    /// No disk has this name.
    Unknown,
    /// The config names it but it failed to open, for this reason.
    Failed(String),
    /// The list's lock was poisoned by a panic mid-update.
    Poisoned,
}

/// The served disks, in start order, and the config's disks that failed to open.
#[derive(Default)]
pub struct DiskSet {
    served: RwLock<Vec<Arc<ServedDisk>>>,
    failed: Vec<FailedDisk>,
}

impl DiskSet {
    pub fn new(served: Vec<ServedDisk>, failed: Vec<FailedDisk>) -> Self {
        Self {
            served: RwLock::new(served.into_iter().map(Arc::new).collect()),
            failed,
        }
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Vec<Arc<ServedDisk>>>, Poisoned> {
        self.served.read().map_err(|_| {
            log::error!("the disk list is poisoned");
            Poisoned
        })
    }

    /// The served disk called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<ServedDisk>, Missing> {
        let served = self.read().map_err(|_| Missing::Poisoned)?;
        if let Some(d) = served.iter().find(|d| d.name() == name) {
            return Ok(Arc::clone(d));
        }
        match self.failed.iter().find(|f| f.config.name == name) {
            Some(f) => Err(Missing::Failed(f.reason.clone())),
            None => Err(Missing::Unknown),
        }
    }

    /// The served disks, in start order.
    pub fn list(&self) -> Result<Vec<Arc<ServedDisk>>, Poisoned> {
        Ok(self.read()?.clone())
    }

    /// The config's disks that could not be opened.
    pub fn failed(&self) -> &[FailedDisk] {
        &self.failed
    }

    /// Whether a served or failed disk has `name`.
    pub fn has(&self, name: &str) -> Result<bool, Poisoned> {
        Ok(self.read()?.iter().any(|d| d.name() == name)
            || self.failed.iter().any(|f| f.config.name == name))
    }

    /// Adds a started disk; its name must be free (checked by the caller's reservation).
    pub fn insert(&self, disk: ServedDisk) -> Result<Arc<ServedDisk>, Poisoned> {
        let disk = Arc::new(disk);
        self.served
            .write()
            .map_err(|_| Poisoned)?
            .push(Arc::clone(&disk));
        Ok(disk)
    }

    /// Takes `name` out of the set and stops it.
    pub fn stop(&self, name: &str) -> Result<Result<(), EngineError>, Missing> {
        let disk = {
            let mut served = self.served.write().map_err(|_| Missing::Poisoned)?;
            let at = served
                .iter()
                .position(|d| d.name() == name)
                .ok_or(Missing::Unknown)?;
            served.remove(at)
        };
        Ok(disk.stop())
    }

    /// Stops every served disk, flushing each; returns the failures (disk, error).
    pub fn stop_all(&self) -> Vec<(String, EngineError)> {
        let disks = match self.served.write() {
            Ok(mut s) => std::mem::take(&mut *s),
            // Stopping is all that is left to do: the disks in the list are whole.
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        disks
            .into_iter()
            .filter_map(|d| d.stop().err().map(|e| (d.name().to_string(), e)))
            .collect()
    }
}
