//! An import's progress as the engine, the copier and the control API share it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use keel_protocol::control::{ImportReport, ImportState};

/// Shared between the copier thread, the queues and the stats.
pub struct Progress {
    /// The source's size.
    pub total_bytes: u64,
    /// How far the copy got (the cursor, in bytes).
    done_bytes: AtomicU64,
    /// Where this run started, for the rate.
    start_bytes: u64,
    started: Instant,
    finished: AtomicBool,
    /// Why the copy is paused (the source failed), if it is.
    paused: Mutex<Option<String>>,
    /// Milliseconds since `started` of the last guest request: the copier steps aside.
    last_guest_ms: AtomicU64,
    /// Bytes of data read from the source in this run (holes it reported are not read).
    source_read_bytes: AtomicU64,
}

impl Progress {
    pub fn new(total_bytes: u64, start_bytes: u64, finished: bool) -> Self {
        Self {
            total_bytes,
            done_bytes: AtomicU64::new(start_bytes.min(total_bytes)),
            start_bytes: start_bytes.min(total_bytes),
            started: Instant::now(),
            finished: AtomicBool::new(finished),
            paused: Mutex::new(None),
            last_guest_ms: AtomicU64::new(0),
            source_read_bytes: AtomicU64::new(0),
        }
    }

    pub fn advance(&self, bytes: u64) {
        self.done_bytes
            .store(bytes.min(self.total_bytes), Ordering::Release);
    }

    pub fn done_bytes(&self) -> u64 {
        self.done_bytes.load(Ordering::Acquire)
    }

    pub fn finish(&self) {
        self.advance(self.total_bytes);
        self.finished.store(true, Ordering::Release);
    }

    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }

    pub fn pause(&self, why: Option<String>) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Counts bytes read from the source.
    pub fn note_source_read(&self, bytes: u64) {
        self.source_read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn source_read_bytes(&self) -> u64 {
        self.source_read_bytes.load(Ordering::Relaxed)
    }

    pub fn note_guest_io(&self) {
        self.last_guest_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Milliseconds since the guest's last request (since the start when it sent none).
    pub fn guest_idle_ms(&self) -> u64 {
        (self.started.elapsed().as_millis() as u64)
            .saturating_sub(self.last_guest_ms.load(Ordering::Relaxed))
    }

    pub fn report(&self) -> ImportReport {
        let done = self.done_bytes();
        let secs = self.started.elapsed().as_secs_f64();
        let state = if self.is_finished() {
            ImportState::Done
        } else if self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            ImportState::Paused
        } else {
            ImportState::Copying
        };
        ImportReport {
            state,
            copied_bytes: done,
            total_bytes: self.total_bytes,
            source_read_bytes: self.source_read_bytes(),
            rate_bytes_per_s: if secs > 0.0 && !self.is_finished() {
                ((done - self.start_bytes) as f64 / secs) as u64
            } else {
                0
            },
            error: self
                .paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
