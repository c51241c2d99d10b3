//! Per-disk counters, updated by the queue workers once per batch and readable at any time
//! (the control API serves them as [`keel_protocol::control::DiskStats`], with the same names).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use keel_protocol::control::{DiskStats as ApiStats, OpLatency};

/// Counters of one disk, shared by its queues.
#[derive(Debug, Default)]
pub struct DiskStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub get_ids: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    /// Requests refused by parsing as malformed or out of range (IOERR).
    pub invalid_requests: AtomicU64,
    /// Requests of a type or with flags the disk does not offer (UNSUPP).
    pub unsupported: AtomicU64,
    /// Requests the engine failed.
    pub errors: AtomicU64,
    /// Times a worker took requests off the ring and submitted them together.
    pub batches: AtomicU64,
    /// Requests in all batches (batched_requests / batches = mean batch size).
    pub batched_requests: AtomicU64,
    pub max_batch: AtomicU64,
    /// Guest notifications sent.
    pub notifications: AtomicU64,
    /// Frontend connections accepted / refused because two were already attached.
    pub connections: AtomicU64,
    pub refused_connections: AtomicU64,
    /// Requests run again after a restart because the frontend's inflight area marked them.
    pub resubmitted: AtomicU64,
    /// Requests at the engine now, over all queues (each worker publishes its change once per
    /// batch).
    pub in_flight: AtomicU64,
    /// Whether a frontend is attached now (the control API refuses some operations then).
    pub attached: std::sync::atomic::AtomicBool,
    /// Completion latency of requests the engine served.
    pub latency: LatencyHistogram,
    /// The same, by operation (indexed by [`LatencyOp`]).
    pub latency_by_op: [LatencyHistogram; LatencyOp::COUNT],
}

/// The operations latency is kept apart for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyOp {
    Read = 0,
    Write = 1,
    Flush = 2,
    /// Discard and write-zeroes.
    Other = 3,
}

impl LatencyOp {
    pub const COUNT: usize = 4;
    pub const ALL: [LatencyOp; Self::COUNT] = [Self::Read, Self::Write, Self::Flush, Self::Other];

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Flush => "flush",
            Self::Other => "other",
        }
    }
}

/// Buckets of the latency histogram: up to 2^0 .. 2^(N-1) microseconds, then everything longer.
const LATENCY_BUCKETS: usize = 25;

/// A lock-free latency histogram with power-of-two microsecond buckets.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS + 1],
    /// Sum of all recorded latencies, in microseconds (the histogram's `_sum`).
    sum_us: AtomicU64,
}

/// The bucket a latency of `us` microseconds lands in: bucket i holds (2^(i-1), 2^i] us,
/// 0 and 1 us land in bucket 0, everything over 2^(N-1) in the last.
fn bucket_of(us: u64) -> usize {
    ((u64::BITS - us.saturating_sub(1).leading_zeros()) as usize).min(LATENCY_BUCKETS)
}

fn micros(took: Duration) -> u64 {
    took.as_micros().min(u64::MAX as u128) as u64
}

impl LatencyHistogram {
    /// Counts `n` requests that took `took`.
    pub fn record(&self, took: Duration, n: u64) {
        let us = micros(took);
        if let Some(c) = self.counts.get(bucket_of(us)) {
            c.fetch_add(n, Relaxed);
        }
        self.sum_us.fetch_add(us.saturating_mul(n), Relaxed);
    }

    /// Adds a worker's local counts: one atomic add per bucket it used, once per batch.
    pub fn merge(&self, local: &LocalLatency) {
        if local.sum_us == 0 && local.counts.iter().all(|&c| c == 0) {
            return;
        }
        for (shared, &n) in self.counts.iter().zip(&local.counts) {
            if n != 0 {
                shared.fetch_add(n, Relaxed);
            }
        }
        self.sum_us.fetch_add(local.sum_us, Relaxed);
    }

    /// Sum of all recorded latencies, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Relaxed)
    }

    /// Cumulative counts: requests that took at most `le_us` (the last bucket is u64::MAX).
    pub fn buckets(&self) -> Vec<keel_protocol::control::LatencyBucket> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c.load(Relaxed);
                keel_protocol::control::LatencyBucket {
                    le_us: if i < LATENCY_BUCKETS {
                        1 << i
                    } else {
                        u64::MAX
                    },
                    count: total,
                }
            })
            .collect()
    }
}

/// A worker's latency counts for one batch of completions, kept in plain integers so the
/// data path touches no shared cache line per request; merged into the disk's histogram
/// once per batch.
#[derive(Clone, Debug, Default)]
pub struct LocalLatency {
    counts: [u64; LATENCY_BUCKETS + 1],
    sum_us: u64,
}

impl LocalLatency {
    pub fn record(&mut self, took: Duration) {
        let us = micros(took);
        self.counts[bucket_of(us)] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }
}

/// Counts of one batch, gathered without atomics and published at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchCounts {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub get_ids: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub invalid_requests: u64,
    pub unsupported: u64,
    pub requests: u64,
}

impl DiskStats {
    /// Adds a worker's per-operation latency counts of one batch, to each operation's
    /// histogram and to the all-operations one.
    pub fn merge_latency(&self, by_op: &[LocalLatency; LatencyOp::COUNT]) {
        for (shared, local) in self.latency_by_op.iter().zip(by_op) {
            shared.merge(local);
            self.latency.merge(local);
        }
    }

    pub fn record_batch(&self, b: &BatchCounts) {
        if b.requests == 0 {
            return;
        }
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Relaxed);
            }
        };
        add(&self.reads, b.reads);
        add(&self.writes, b.writes);
        add(&self.flushes, b.flushes);
        add(&self.discards, b.discards);
        add(&self.write_zeroes, b.write_zeroes);
        add(&self.get_ids, b.get_ids);
        add(&self.read_bytes, b.read_bytes);
        add(&self.written_bytes, b.written_bytes);
        add(&self.invalid_requests, b.invalid_requests);
        add(&self.unsupported, b.unsupported);
        self.batches.fetch_add(1, Relaxed);
        self.batched_requests.fetch_add(b.requests, Relaxed);
        self.max_batch.fetch_max(b.requests, Relaxed);
    }

    /// The request side of the disk's stats as the control API serves them; the engine's
    /// own counters, limits and import are added by the daemon.
    pub fn snapshot(&self) -> ApiStats {
        ApiStats {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            discards: self.discards.load(Relaxed),
            write_zeroes: self.write_zeroes.load(Relaxed),
            get_ids: self.get_ids.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            written_bytes: self.written_bytes.load(Relaxed),
            invalid_requests: self.invalid_requests.load(Relaxed),
            unsupported: self.unsupported.load(Relaxed),
            errors: self.errors.load(Relaxed),
            batches: self.batches.load(Relaxed),
            batched_requests: self.batched_requests.load(Relaxed),
            max_batch: self.max_batch.load(Relaxed),
            notifications: self.notifications.load(Relaxed),
            connections: self.connections.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
            resubmitted: self.resubmitted.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            latency: self.latency.buckets(),
            latency_sum_us: self.latency.sum_us(),
            latency_by_op: LatencyOp::ALL
                .iter()
                .zip(&self.latency_by_op)
                .map(|(op, h)| OpLatency {
                    op: op.name().to_string(),
                    buckets: h.buckets(),
                    sum_us: h.sum_us(),
                })
                .collect(),
            ..ApiStats::default()
        }
    }
}

/// Lets a few messages per interval through, so a misbehaving guest cannot flood the log.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: u32,
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLimit {
    pub fn new(interval: Duration, burst: u32) -> Self {
        Self {
            interval,
            burst,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// Whether to log now; when a new interval starts, also how many were suppressed before.
    pub fn allow(&self) -> Option<u64> {
        let Ok(mut s) = self.state.lock() else {
            return None;
        };
        let now = Instant::now();
        if now.duration_since(s.0) >= self.interval {
            let suppressed = s.2;
            *s = (now, 1, 0);
            return Some(suppressed);
        }
        if s.1 < self.burst {
            s.1 += 1;
            Some(0)
        } else {
            s.2 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_power_of_two_buckets() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(1), 1);
        h.record(Duration::from_micros(3), 2);
        h.record(Duration::from_micros(4), 1);
        h.record(Duration::from_secs(3600), 1);
        let b = h.buckets();
        let at = |le: u64| b.iter().find(|x| x.le_us == le).map(|x| x.count);
        assert_eq!(at(1), Some(1));
        assert_eq!(at(2), Some(1));
        assert_eq!(at(4), Some(4));
        assert_eq!(b.last().map(|x| (x.le_us, x.count)), Some((u64::MAX, 5)));
        assert_eq!(h.sum_us(), 1 + 3 * 2 + 4 + 3_600_000_000);
    }

    #[test]
    fn local_latency_merges_into_the_same_buckets() {
        let direct = LatencyHistogram::default();
        let merged = LatencyHistogram::default();
        let mut local = LocalLatency::default();
        for us in [0, 1, 2, 3, 1000, 5_000_000_000] {
            direct.record(Duration::from_micros(us), 1);
            local.record(Duration::from_micros(us));
        }
        merged.merge(&local);
        assert_eq!(merged.buckets(), direct.buckets());
        assert_eq!(merged.sum_us(), direct.sum_us());
    }

    #[test]
    fn batches_add_up() {
        let s = DiskStats::default();
        s.record_batch(&BatchCounts {
            reads: 2,
            read_bytes: 8192,
            requests: 2,
            ..Default::default()
        });
        s.record_batch(&BatchCounts {
            writes: 5,
            written_bytes: 5 * 512,
            requests: 5,
            ..Default::default()
        });
        s.record_batch(&BatchCounts::default());
        let snap = s.snapshot();
        assert_eq!((snap.reads, snap.writes, snap.read_bytes), (2, 5, 8192));
        assert_eq!(
            (snap.batches, snap.batched_requests, snap.max_batch),
            (2, 7, 5)
        );
    }

    #[test]
    fn rate_limit_suppresses_after_burst() {
        let rl = RateLimit::new(Duration::from_secs(3600), 3);
        assert_eq!(
            (0..5).filter(|_| rl.allow().is_some()).count(),
            3,
            "only the burst passes within one interval"
        );
    }
}
