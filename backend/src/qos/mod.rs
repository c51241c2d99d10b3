//! Per-disk I/O limits (QoS): token buckets shared by a disk's queues, applied before requests
//! reach the engine.
//!
//! Each queue's engine half is wrapped in a [`ThrottledQueue`]: a request the buckets do not let
//! through yet is parked in the queue, in order, and a timer wakes the worker when it may go.
//! The worker keeps serving completions and its ring meanwhile; a request is never failed for a
//! limit. A disk without limits costs its queues one atomic load (acquire: a plain load on x86) per batch and nothing else.

mod bucket;
mod queue;

pub use bucket::{Cost, Kind, Limiter};
pub use queue::ThrottledQueue;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use keel_protocol::control::DiskLimits;

/// Longest `burst_seconds` accepted.
pub const MAX_BURST_SECONDS: u64 = 3600;

/// Why a set of limits is refused: the key at fault and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct LimitError {
    pub key: &'static str,
    pub message: String,
}

/// Checks limits that belong together: a burst needs `iops_limit` and must exceed it.
pub fn check(l: &DiskLimits) -> Result<(), LimitError> {
    let err = |key, message: String| Err(LimitError { key, message });
    if l.iops_burst > 0 && l.iops_limit == 0 {
        return err(
            "iops_burst",
            "a burst rises above `iops_limit`: set `iops_limit` too".into(),
        );
    }
    if l.iops_burst > 0 && l.iops_burst < l.iops_limit {
        return err(
            "iops_burst",
            format!(
                "{} is below iops_limit ({}): the burst rate must be the higher one",
                l.iops_burst, l.iops_limit
            ),
        );
    }
    if !(1..=MAX_BURST_SECONDS).contains(&l.burst_seconds) {
        return err(
            "burst_seconds",
            format!("{} is outside 1..={MAX_BURST_SECONDS}", l.burst_seconds),
        );
    }
    Ok(())
}

/// The limits that are set, as `key=value` pairs for a log line ("none" without any).
pub fn describe(l: &DiskLimits) -> String {
    let keys = [
        ("iops_limit", l.iops_limit),
        ("read_iops_limit", l.read_iops_limit),
        ("write_iops_limit", l.write_iops_limit),
        ("bps_limit", l.bps_limit),
        ("read_bps_limit", l.read_bps_limit),
        ("write_bps_limit", l.write_bps_limit),
        ("iops_burst", l.iops_burst),
        ("resync_bps_limit", l.resync_bps_limit),
    ];
    let mut set: Vec<String> = keys
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if l.iops_burst > 0 {
        set.push(format!("burst_seconds={}", l.burst_seconds));
    }
    if set.is_empty() {
        "none".into()
    } else {
        set.join(" ")
    }
}

/// The limits a disk starts with when its config sets none.
pub fn unlimited() -> DiskLimits {
    DiskLimits {
        burst_seconds: 1,
        ..DiskLimits::default()
    }
}

/// One disk's limits and buckets, shared by its queues, and what throttling cost so far.
pub struct DiskQos {
    limits: Mutex<(DiskLimits, Limiter)>,
    /// Bumped by every change, so a queue notices with one load per batch.
    version: AtomicU64,
    epoch: Instant,
    throttled_ns: AtomicU64,
    throttled_requests: AtomicU64,
}

impl DiskQos {
    pub fn new(limits: &DiskLimits) -> Self {
        let epoch = Instant::now();
        Self {
            limits: Mutex::new((limits.clone(), Limiter::new(limits, 0))),
            version: AtomicU64::new(0),
            epoch,
            throttled_ns: AtomicU64::new(0),
            throttled_requests: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (DiskLimits, Limiter)> {
        // The pair is replaced whole or a bucket's level changes: a panic leaves it usable.
        self.limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The limits in force.
    pub fn limits(&self) -> DiskLimits {
        self.lock().0.clone()
    }

    /// Puts `limits` in force (checked by the caller), with full buckets.
    pub fn set(&self, limits: &DiskLimits) {
        let now = self.now_ns();
        *self.lock() = (limits.clone(), Limiter::new(limits, now));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Nanoseconds since this disk's clock started: the buckets' time.
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Time queues held requests back, summed over queues.
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.throttled_ns.load(Ordering::Relaxed))
    }

    /// Requests that waited for a limit.
    pub fn throttled_requests(&self) -> u64 {
        self.throttled_requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_must_sit_above_a_limit() {
        let mut l = unlimited();
        assert_eq!(check(&l), Ok(()));
        l.iops_burst = 100;
        assert_eq!(check(&l).unwrap_err().key, "iops_burst");
        l.iops_limit = 200;
        assert!(check(&l).unwrap_err().message.contains("below iops_limit"));
        l.iops_limit = 50;
        assert_eq!(check(&l), Ok(()));
        assert_eq!(describe(&l), "iops_limit=50 iops_burst=100 burst_seconds=1");
        assert_eq!(describe(&unlimited()), "none");
        l.burst_seconds = 0;
        assert_eq!(check(&l).unwrap_err().key, "burst_seconds");
    }

    #[test]
    fn setting_limits_is_seen_through_the_version() {
        let q = DiskQos::new(&unlimited());
        assert!(!q.lock().1.is_limited());
        let before = q.version.load(Ordering::Acquire);
        let mut l = unlimited();
        l.iops_limit = 10;
        q.set(&l);
        assert_ne!(q.version.load(Ordering::Acquire), before);
        assert!(q.lock().1.is_limited());
        assert_eq!(q.limits().iops_limit, 10);
    }
}
