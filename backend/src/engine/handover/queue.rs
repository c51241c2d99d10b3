//! A queue half of a handover disk: the real engine's queue half while this keeld holds the
//! disk, set up on first use and taken back when the disk is released.
//!
//! The worker registers one completion descriptor for its queue when the frontend attaches,
//! before the engine may even be open. So the queue shows the worker an epoll descriptor of its
//! own, which watches the real queue's completion descriptor whenever there is one.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use log::debug;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::HandoverEngine;
use crate::engine::{Completion, EngineError, IoRequest, QueueEngine};

/// The real engine's queue half and the opening it came from.
struct Inner {
    generation: u64,
    queue: Box<dyn QueueEngine>,
}

/// What a queue shares with its engine, so that a release can take the real queue half back.
pub(super) struct QueueSlot {
    inner: Mutex<Option<Inner>>,
    /// The descriptor the worker watches: it watches the real queue's completions.
    epoll: Epoll,
}

impl QueueSlot {
    /// Whether the real queue half has requests in flight.
    pub(super) fn busy(&self) -> bool {
        self.inner.lock().map_or(true, |i| {
            i.as_ref().is_some_and(|i| i.queue.in_flight() > 0)
        })
    }

    /// Drops the real queue half (with the engine's references it holds).
    pub(super) fn drop_engine_queue(&self) {
        let inner = self.inner.lock().ok().and_then(|mut i| i.take());
        if let Some(inner) = inner {
            self.unwatch(&inner);
        }
    }

    fn watch(&self, inner: &Inner) -> std::io::Result<()> {
        match inner.queue.completion_fd() {
            Some(fd) => self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            ),
            None => Ok(()),
        }
    }

    fn unwatch(&self, inner: &Inner) {
        if let Some(fd) = inner.queue.completion_fd()
            && let Err(e) = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            debug!("epoll_ctl(DEL): {e}");
        }
    }
}

/// See the module documentation.
pub(super) struct HandoverQueue {
    index: usize,
    engine: Arc<HandoverEngine>,
    slot: Arc<QueueSlot>,
    /// Requests refused because the disk was not held (the vhost layer does not submit then).
    refused: Vec<Completion>,
}

impl HandoverQueue {
    pub(super) fn new(index: usize, engine: Arc<HandoverEngine>) -> Result<Self, EngineError> {
        let epoll = Epoll::new().map_err(|source| EngineError::Queue {
            queue: index,
            source,
        })?;
        let slot = Arc::new(QueueSlot {
            inner: Mutex::default(),
            epoll,
        });
        Ok(Self {
            index,
            engine,
            slot,
            refused: Vec::new(),
        })
    }

    pub(super) fn slot(&self) -> std::sync::Weak<QueueSlot> {
        Arc::downgrade(&self.slot)
    }

    /// Runs `f` on the real queue half, setting it up from the open engine first if it is
    /// missing or from an earlier opening. `None` when the disk is not held.
    fn with_queue<T>(
        &mut self,
        f: impl FnOnce(&mut dyn QueueEngine) -> T,
    ) -> Result<Option<T>, EngineError> {
        let slot = Arc::clone(&self.slot);
        let Ok(mut inner) = slot.inner.lock() else {
            return Ok(None);
        };
        let Some((engine, generation)) = self.engine.engine_and_generation() else {
            return Ok(None);
        };
        if inner.as_ref().is_none_or(|i| i.generation != generation) {
            if let Some(old) = inner.take() {
                slot.unwatch(&old);
            }
            let queue = engine.queue(self.index)?;
            let fresh = Inner { generation, queue };
            slot.watch(&fresh).map_err(|source| EngineError::Queue {
                queue: self.index,
                source,
            })?;
            *inner = Some(fresh);
        }
        Ok(inner.as_mut().map(|i| f(i.queue.as_mut())))
    }

    /// Ends every request of `batch` with `why`.
    fn refuse(&mut self, batch: &mut Vec<IoRequest>, why: impl Fn() -> EngineError) {
        self.refused.extend(batch.drain(..).map(|r| Completion {
            token: r.token,
            result: Err(why()),
        }));
    }
}

impl QueueEngine for HandoverQueue {
    fn submit(&mut self, batch: &mut Vec<IoRequest>) {
        let mut taken = std::mem::take(batch);
        match self.with_queue(|q| q.submit(&mut taken)) {
            Ok(Some(())) => {}
            Ok(None) => {
                let why = self.engine.not_held();
                self.refuse(&mut taken, || EngineError::Refused(why.clone()));
            }
            Err(e) => {
                let why = e.to_string();
                self.refuse(&mut taken, || EngineError::Refused(why.clone()));
            }
        }
        *batch = taken;
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        done.append(&mut self.refused);
        let _ = self.with_existing(|q| q.reap(done));
    }

    fn wait(&mut self, done: &mut Vec<Completion>) {
        if !self.refused.is_empty() {
            done.append(&mut self.refused);
            return;
        }
        let _ = self.with_existing(|q| q.wait(done));
    }

    fn in_flight(&self) -> usize {
        let inner = self
            .slot
            .inner
            .lock()
            .map_or(0, |i| i.as_ref().map_or(0, |i| i.queue.in_flight()));
        inner + self.refused.len()
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.slot.epoll.as_raw_fd())
    }

    fn ack_completion_fd(&mut self) {
        let _ = self.with_existing(|q| q.ack_completion_fd());
    }
}

impl HandoverQueue {
    /// Runs `f` on the real queue half if there is one (completions of an engine being
    /// replaced are still reaped from the half that has them).
    fn with_existing(&mut self, f: impl FnOnce(&mut dyn QueueEngine)) -> bool {
        let Ok(mut inner) = self.slot.inner.lock() else {
            return false;
        };
        match inner.as_mut() {
            Some(i) => {
                f(i.queue.as_mut());
                true
            }
            None => false,
        }
    }
}
