//! The set of served disks, one list shared by the daemon and its control API.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

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

/// What of `new` `other` already uses, if anything.
fn in_use(new: &DiskConfig, other: &DiskConfig) -> Option<String> {
    if new.name == other.name {
        return Some(format!("disk {} exists", new.name));
    }
    if new.socket == other.socket {
        return Some(format!(
            "socket {} is disk {}'s",
            new.socket.display(),
            other.name
        ));
    }
    let theirs = other.backing_paths();
    new.backing_paths()
        .into_iter()
        .find(|p| theirs.contains(p))
        .map(|p| format!("{} is disk {}'s", p.display(), other.name))
}

/// The served disks, in start order, and the config's disks that failed to open.
#[derive(Default)]
pub struct DiskSet {
    served: RwLock<Vec<Arc<ServedDisk>>>,
    failed: Vec<FailedDisk>,
    /// Held from the check that a new disk's name, socket and files are free to its insert,
    /// so two starts (the API's, a reload's) cannot both pass the check.
    starting: Mutex<()>,
}

/// Why a new disk was not started.
pub enum StartError {
    /// Its name, socket or a file is another disk's: the text says which.
    InUse(String),
    Start(super::DaemonError),
    Poisoned,
}

impl DiskSet {
    pub fn new(served: Vec<ServedDisk>, failed: Vec<FailedDisk>) -> Self {
        Self {
            served: RwLock::new(served.into_iter().map(Arc::new).collect()),
            failed,
            starting: Mutex::default(),
        }
    }

    /// Starts a disk with `start` and adds it, unless its name, socket or a file it stores
    /// in is another disk's (served or failed).
    pub fn start_new(
        &self,
        config: &DiskConfig,
        start: impl FnOnce(&DiskConfig) -> Result<ServedDisk, super::DaemonError>,
    ) -> Result<Arc<ServedDisk>, StartError> {
        let _one_start = self.starting.lock().map_err(|_| StartError::Poisoned)?;
        let served = self.list().map_err(|_| StartError::Poisoned)?;
        let configs = served
            .iter()
            .map(|d| &d.config)
            .chain(self.failed.iter().map(|f| &f.config));
        if let Some(why) = configs.filter_map(|other| in_use(config, other)).next() {
            return Err(StartError::InUse(why));
        }
        let disk = start(config).map_err(StartError::Start)?;
        self.insert(disk).map_err(|_| StartError::Poisoned)
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

    /// Stops every served disk, flushing each, side by side and within
    /// [`STOP_DEADLINE`](super::stop::STOP_DEADLINE); returns the failures (disk, error), a disk
    /// still stopping at the deadline among them.
    pub fn stop_all(&self) -> Vec<(String, EngineError)> {
        let disks = match self.served.write() {
            Ok(mut s) => std::mem::take(&mut *s),
            // Stopping is all that is left to do: the disks in the list are whole.
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        super::stop::stop_each_within(
            disks,
            super::stop::STOP_DEADLINE,
            |d| d.name().to_string(),
            |d: Arc<ServedDisk>| d.stop(),
        )
    }
}
