//! Taking a handover disk: wait for its lock, open the engine, wake the rings.
//!
//! The other keeld releases the disk when its frontend stops the guest, at about the moment
//! this keeld's frontend starts it, so the lock may still be held for a few milliseconds (or
//! for as long as the other keeld checkpoints). The take runs on a thread of its own, polling
//! the lock, so no vhost event loop ever blocks on it; the guest's requests wait in their rings.
//!
//! Files are looked at first ([`probe_locks`], cheap) and then opened. An RBD image has no
//! cheap look that can be trusted: who owns its exclusive lock may change right after the
//! answer, and only `rbd_lock_acquire` asks the cluster atomically. So for rbd the open itself
//! is the look: it connects, opens the image and asks for the lock, and a lock held by another
//! client ends it with [`EngineError::Locked`], after which the take waits and tries again.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::{HandoverEngine, Holding};
use crate::config::{DiskConfig, EngineKind};
use crate::device::lock::{LockMode, lock_path};
use crate::engine::EngineError;

/// Pause between two looks at a held lock (each look itself retries for 0.2 s).
const POLL: Duration = Duration::from_millis(5);
/// How often a take still waiting says so.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Whether a disk's files can be locked for writing now.
#[derive(Debug, PartialEq, Eq)]
pub enum LockProbe {
    Free,
    /// Another process holds one (the text names the file and, when found, the process).
    Held(String),
}

/// The cheap look before an open: the files' locks; for an RBD image the open decides (see the
/// module documentation), so it is [`LockProbe::Free`] here.
pub(super) fn look(config: &DiskConfig) -> Result<LockProbe, EngineError> {
    match config.engine {
        EngineKind::Rbd => Ok(LockProbe::Free),
        _ => probe_locks(&config.backing_paths()),
    }
}

/// Asks for the exclusive lock of every file in `paths` and lets it go at once. A file that
/// does not exist yet is free (the engine creates it).
pub fn probe_locks(paths: &[PathBuf]) -> Result<LockProbe, EngineError> {
    for path in paths {
        if !path.exists() {
            continue;
        }
        match lock_path(path, LockMode::Exclusive) {
            Ok(file) => drop(file),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(LockProbe::Held(e.to_string()));
            }
            Err(source) => {
                return Err(EngineError::Open {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    Ok(LockProbe::Free)
}

impl HandoverEngine {
    /// A frontend started a ring of a disk this keeld does not hold: takes it on a thread of
    /// its own and calls `wake` once it is served. Does nothing while serving or taking.
    pub fn take(&self, wake: Box<dyn FnOnce() + Send>) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let from = *state;
        if matches!(from, Holding::Serving | Holding::Taking) {
            return;
        }
        *state = Holding::Taking;
        drop(state);
        info!(
            "disk {}: its frontend started a ring: taking the disk ({})",
            self.config.name,
            from.as_str()
        );
        let spawned = std::thread::Builder::new()
            .name(format!("keel-{}-take", self.config.name))
            .spawn(move || me.take_now(from, wake));
        if let Err(e) = spawned {
            self.give_up(from, format!("cannot start the take thread: {e}"));
        }
    }

    /// Waits for the locks, opens the engine, serves; on failure goes back to `from` (the next
    /// ring start tries again).
    fn take_now(&self, from: Holding, wake: Box<dyn FnOnce() + Send>) {
        let started = Instant::now();
        let mut reported = started;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                self.give_up(from, "the disk is being stopped".into());
                return;
            }
            let held = match look(&self.config) {
                Ok(LockProbe::Free) => None,
                Ok(LockProbe::Held(why)) => Some(why),
                Err(e) => {
                    self.give_up(from, e.to_string());
                    return;
                }
            };
            let why = match held {
                Some(why) => why,
                None => match (self.open)(&self.config) {
                    Ok(engine) => {
                        self.install(engine);
                        if let Ok(mut s) = self.state.lock() {
                            *s = Holding::Serving;
                        }
                        info!(
                            "disk {}: taken in {:?} (locked, opened): served",
                            self.config.name,
                            started.elapsed()
                        );
                        wake();
                        return;
                    }
                    // Another process holds the lock (an image's), or took it between the look
                    // and the open (a file's): wait again.
                    Err(EngineError::Locked(why)) => why,
                    Err(e) if matches!(look(&self.config), Ok(LockProbe::Held(_))) => {
                        format!("lost the race for the lock: {e}")
                    }
                    Err(e) => {
                        self.give_up(from, e.to_string());
                        return;
                    }
                },
            };
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                warn!(
                    "disk {}: still waiting for the lock after {:?}: {why}",
                    self.config.name,
                    started.elapsed()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn give_up(&self, from: Holding, why: String) {
        error!(
            "disk {}: cannot take the disk: {why}; its requests wait, and the next ring \
             start tries again",
            self.config.name
        );
        if let Ok(mut s) = self.state.lock() {
            *s = from;
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why);
        }
    }
}
