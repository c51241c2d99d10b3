//! A disk that two keelds serve in turn (`handover = true`): live migration between keelds that
//! share a container or image, on one host or on shared storage.
//!
//! [`HandoverEngine`] stands in front of the disk's real engine and holds it only while this
//! keeld may write the disk. Which keeld may is decided by the lock the engine takes when it
//! opens and gives back when it closes: the OFD lock on its files ([`crate::device::lock`]) or
//! an RBD image's exclusive lock (`engine::rbd`). An open that finds the lock held
//! ([`EngineError::Locked`]) means another keeld holds the disk; for files a cheaper look at the
//! locks comes first ([`take`]). The states:
//!
//! - **standby**: another process held the lock when the disk started. The socket accepts a
//!   frontend and lets it set up memory and rings, but nothing is served.
//! - **taking**: the frontend started a ring; a thread waits for the lock, opens the engine
//!   (the keel engine replays the journal), and wakes the rings. The guest's requests wait in
//!   their rings meanwhile.
//! - **serving**: the engine is open and the lock held.
//! - **released**: every attached frontend stopped every ring (a migration's source stops the
//!   guest): the queues were drained, the engine flushed, checkpointed and closed, and the lock
//!   is free for the other keeld. A frontend that starts a ring again (a cancelled migration)
//!   takes the disk back, if the lock is still free.
//!
//! The vhost layer asks [`HandoverEngine::serving`] before it serves a ring and calls
//! [`HandoverEngine::release`] once no ring runs; nothing else changes for it.

mod admin;
mod queue;
mod take;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use log::{info, warn};

use super::{ByteRange, Capabilities, Engine, EngineAdmin, EngineError, Extent, QueueEngine};
use crate::config::{DiskConfig, EngineKind};
use queue::{HandoverQueue, QueueSlot};

pub use take::{LockProbe, probe_locks};

/// Opens the real engine (the lock comes with it); tests put their own.
pub type Opener = dyn Fn(&DiskConfig) -> Result<Arc<dyn Engine>, EngineError> + Send + Sync;

/// Where a handover disk stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    Standby,
    Taking,
    Serving,
    Released,
}

impl Holding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standby => "standby",
            Self::Taking => "taking",
            Self::Serving => "serving",
            Self::Released => "released",
        }
    }
}

/// The open engine and which opening it came from (queues set up from an older one drop it).
struct Held {
    engine: Arc<dyn Engine>,
    generation: u64,
}

/// The engine of a `handover = true` disk; see the module documentation.
pub struct HandoverEngine {
    /// This engine, for the queue halves it hands out.
    me: Weak<HandoverEngine>,
    config: DiskConfig,
    open: Box<Opener>,
    held: RwLock<Option<Held>>,
    state: Mutex<Holding>,
    /// `state == Serving`, read on the data path without the lock.
    serving: AtomicBool,
    generation: AtomicU64,
    /// The disk's size: the open engine's, or read from the file in standby.
    capacity: AtomicU64,
    caps: Capabilities,
    /// Every queue half handed out, so that a release can take the engine's queues back.
    queues: Mutex<Vec<Weak<QueueSlot>>>,
    /// The disk is being stopped: a take in progress gives up.
    stopping: AtomicBool,
    /// Why the last take failed, for stats.
    last_error: Mutex<Option<String>>,
}

impl HandoverEngine {
    /// Starts `config`'s disk with [`super::open`]: serving when its files' locks are free,
    /// standby when another process holds one.
    pub fn start(config: &DiskConfig) -> Result<Arc<Self>, EngineError> {
        Self::start_with(config, Box::new(super::open))
    }

    /// [`Self::start`] with another way to open the real engine.
    pub fn start_with(config: &DiskConfig, open: Box<Opener>) -> Result<Arc<Self>, EngineError> {
        let (held, state, capacity) = match take::look(config)? {
            LockProbe::Free => match open(config) {
                Ok(engine) => {
                    let capacity = engine.capacity();
                    let held = Held {
                        engine,
                        generation: 1,
                    };
                    (Some(held), Holding::Serving, capacity)
                }
                Err(EngineError::Locked(why)) => standby(config, &why)?,
                Err(e) => return Err(e),
            },
            LockProbe::Held(why) => standby(config, &why)?,
        };
        let caps = match &held {
            Some(h) => h.engine.capabilities(),
            None => Capabilities::all_unless(false),
        };
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            config: config.clone(),
            open,
            serving: AtomicBool::new(state == Holding::Serving),
            generation: AtomicU64::new(u64::from(held.is_some())),
            held: RwLock::new(held),
            state: Mutex::new(state),
            capacity: AtomicU64::new(capacity),
            caps,
            queues: Mutex::default(),
            stopping: AtomicBool::new(false),
            last_error: Mutex::default(),
        }))
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether this keeld holds the disk now (the data path's question).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    pub fn holding(&self) -> Holding {
        self.state.lock().map_or(Holding::Standby, |s| *s)
    }

    /// Why the last take failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The disk is stopping: a take in progress gives up.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// The open engine, if held.
    fn engine(&self) -> Option<Arc<dyn Engine>> {
        let held = self.held.read().ok()?;
        held.as_ref().map(|h| Arc::clone(&h.engine))
    }

    /// The open engine with its generation.
    fn engine_and_generation(&self) -> Option<(Arc<dyn Engine>, u64)> {
        let held = self.held.read().ok()?;
        held.as_ref().map(|h| (Arc::clone(&h.engine), h.generation))
    }

    /// Gives the disk up for another keeld: called once no attached frontend has a running
    /// ring, so every queue is drained. Takes the engine's queue halves back, flushes, and
    /// closes the engine (the keel engine checkpoints), which releases its locks. Returns
    /// whether it did (only a serving disk whose queues are all idle is released).
    pub fn release(&self) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        if *state != Holding::Serving {
            return false;
        }
        let started = std::time::Instant::now();
        let slots: Vec<Arc<QueueSlot>> = match self.queues.lock() {
            Ok(mut q) => {
                q.retain(|w| w.strong_count() > 0);
                q.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return false,
        };
        if slots.iter().any(|s| s.busy()) {
            warn!(
                "disk {}: not released: a queue still has requests in flight",
                self.config.name
            );
            return false;
        }
        self.serving.store(false, Ordering::Release);
        for s in &slots {
            s.drop_engine_queue();
        }
        let held = self.held.write().ok().and_then(|mut h| h.take());
        if let Some(h) = held {
            if let Err(e) = h.engine.flush() {
                warn!("disk {}: flush before the release: {e}", self.config.name);
            }
            let others = Arc::strong_count(&h.engine) - 1;
            drop(h);
            if others > 0 {
                warn!(
                    "disk {}: {others} user(s) of the engine remain (an export, a diff): its \
                     files stay locked until they finish",
                    self.config.name
                );
            }
        }
        *state = Holding::Released;
        info!(
            "disk {}: released for another keeld in {:?} (drained, flushed, closed, unlocked); \
             taken back if a frontend starts a ring again while the lock is free",
            self.config.name,
            started.elapsed()
        );
        true
    }

    /// Records the newly opened engine and serves it.
    fn install(&self, engine: Arc<dyn Engine>) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.capacity.store(engine.capacity(), Ordering::Release);
        if engine.capabilities() != self.caps {
            warn!(
                "disk {}: the engine opened with other capabilities than the frontend was \
                 offered ({:?}, offered {:?})",
                self.config.name,
                engine.capabilities(),
                self.caps
            );
        }
        if let Ok(mut h) = self.held.write() {
            *h = Some(Held { engine, generation });
        }
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
        self.serving.store(true, Ordering::Release);
    }
}

/// The start of a disk another process holds: standby, with the size read without the lock.
fn standby(config: &DiskConfig, why: &str) -> Result<(Option<Held>, Holding, u64), EngineError> {
    info!(
        "disk {}: standby: {why}; served once its frontend starts its rings and the lock is free",
        config.name
    );
    Ok((None, Holding::Standby, standby_capacity(config)?))
}

/// The size of a disk this keeld does not hold: the container's superblock (read without
/// locking), the RBD image's size, or the file's length.
fn standby_capacity(config: &DiskConfig) -> Result<u64, EngineError> {
    let paths = config.backing_paths();
    let first = paths.first().map_or(Path::new(""), |p| p.as_path());
    let setup = |message: String| EngineError::Setup {
        path: first.to_path_buf(),
        message,
    };
    match config.engine {
        EngineKind::Keel => {
            match crate::store::peek::peek(first).map_err(|e| setup(e.to_string()))? {
                crate::store::peek::Peeked::Container { capacity } => Ok(capacity),
                other => Err(setup(format!(
                    "not a readable keel container ({other:?}): another keeld holds it, so it \
                 cannot be checked here"
                ))),
            }
        }
        EngineKind::Rbd => super::rbd::image_size(config),
        _ => {
            let len = std::fs::metadata(first)
                .map_err(|e| setup(e.to_string()))?
                .len();
            Ok(config.size.filter(|_| len == 0).unwrap_or(len))
        }
    }
}

impl Engine for HandoverEngine {
    fn capacity(&self) -> u64 {
        match self.engine() {
            Some(e) => e.capacity(),
            None => self.capacity.load(Ordering::Acquire),
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn describe(&self) -> String {
        match self.engine() {
            Some(e) => format!("{} (handover: serving)", e.describe()),
            None => format!(
                "{} engine on {} (handover: {}, another keeld may hold it)",
                self.config.engine.name(),
                self.config.rbd.as_ref().map_or_else(
                    || self
                        .config
                        .backing_paths()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    |r| r.spec()
                ),
                self.holding().as_str()
            ),
        }
    }

    fn queue(&self, index: usize) -> Result<Box<dyn QueueEngine>, EngineError> {
        let me = self.me.upgrade().ok_or_else(|| EngineError::Queue {
            queue: index,
            source: std::io::Error::other("the disk is being stopped"),
        })?;
        let q = HandoverQueue::new(index, me)?;
        if let Ok(mut queues) = self.queues.lock() {
            queues.push(q.slot());
        }
        Ok(Box::new(q))
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.engine().map_or(Ok(()), |e| e.flush())
    }

    fn admin(&self) -> Option<&dyn EngineAdmin> {
        Some(self)
    }

    fn allocation(&self, range: ByteRange) -> Option<Vec<Extent>> {
        self.engine()?.allocation(range)
    }

    fn snapshot(&self, name: &str) -> Result<Arc<dyn Engine>, EngineError> {
        self.engine()
            .ok_or_else(|| EngineError::Refused(self.not_held()))?
            .snapshot(name)
    }

    fn import(&self) -> Option<keel_protocol::control::ImportReport> {
        self.engine()?.import()
    }

    fn grow(&self, size: u64) -> Result<u64, EngineError> {
        let e = self
            .engine()
            .ok_or_else(|| EngineError::Refused(self.not_held()))?;
        let grown = e.grow(size)?;
        self.capacity.store(grown, Ordering::Release);
        Ok(grown)
    }
}

impl HandoverEngine {
    /// Why a call that needs the engine is refused.
    fn not_held(&self) -> String {
        format!(
            "disk {} is in handover state {}: another keeld may hold it; this keeld serves it \
             once its frontend starts its rings",
            self.config.name,
            self.holding().as_str()
        )
    }
}

#[cfg(test)]
mod tests;
