//! Keeps a resync from starving guest I/O: an optional byte-rate limit, a short pause while
//! the guest is busy (bounded, so a resync under constant load still makes progress), and a
//! batch scheduling class for the copier thread.
//!
//! Measured with `perf` (docs/mirror.md): what hurt the guest most was not the copying but the
//! copier waking up, every 200 µs while it waited, and preempting the guest's thread on its
//! CPU. The wait now sleeps in steps no shorter than 1 ms, and the copier runs as
//! `SCHED_BATCH`, whose wakeups never preempt a running thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How hard a resync may push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Longest pause before each chunk while guest I/O is active; zero disables yielding.
    pub max_yield: Duration,
    /// Guest I/O this recent counts as active.
    pub guest_quiet: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_yield: Duration::from_millis(10),
            guest_quiet: Duration::from_millis(1),
        }
    }
}

/// A mirror's resync byte rate (`resync_bps_limit`), read before each chunk so a change while
/// a resync runs applies to its next chunk. 0 means unlimited.
#[derive(Debug, Default)]
pub struct ResyncRate(AtomicU64);

impl ResyncRate {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self(AtomicU64::new(bytes_per_sec))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, bytes_per_sec: u64) {
        self.0.store(bytes_per_sec, Ordering::Relaxed);
    }
}

/// Guest activity as seen by the data path: requests in flight and the last completion.
#[derive(Debug)]
pub struct GuestActivity {
    epoch: Instant,
    in_flight: AtomicU64,
    last_done_us: AtomicU64,
}

impl Default for GuestActivity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicU64::new(0),
            last_done_us: AtomicU64::new(0),
        }
    }
}

/// Marks one guest request in flight until dropped.
pub struct GuestRequest<'a>(&'a GuestActivity);

impl Drop for GuestRequest<'_> {
    fn drop(&mut self) {
        // Stored plus one so that zero keeps meaning "never".
        let now = self.0.epoch.elapsed().as_micros() as u64 + 1;
        self.0.last_done_us.store(now, Ordering::Relaxed);
        let before = self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0, "guest requests in flight: count underflow");
    }
}

impl GuestActivity {
    pub fn begin(&self) -> GuestRequest<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        GuestRequest(self)
    }

    /// Whether the guest has a request in flight or finished one within `quiet`.
    pub fn busy(&self, quiet: Duration) -> bool {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = self.last_done_us.load(Ordering::Relaxed);
        last != 0
            && (self.epoch.elapsed().as_micros() as u64 + 1).saturating_sub(last)
                < quiet.as_micros() as u64
    }
}

/// Paces one resync job.
pub struct Throttle {
    config: ThrottleConfig,
    rate: std::sync::Arc<ResyncRate>,
    /// The rate `started` and `bytes` count under: a new rate starts a new count.
    counted_rate: u64,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(config: ThrottleConfig, rate: std::sync::Arc<ResyncRate>) -> Self {
        Self {
            config,
            counted_rate: rate.get(),
            rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// How long to wait before copying `next` more bytes after `bytes` so far, at `rate`.
    pub fn rate_delay(bytes: u64, next: u64, rate: u64, elapsed: Duration) -> Duration {
        let due = Duration::from_secs_f64((bytes + next) as f64 / rate.max(1) as f64);
        due.saturating_sub(elapsed)
    }

    /// Blocks until `next` bytes may be copied.
    pub fn pace(&mut self, next: u64, guest: &GuestActivity) {
        let rate = self.rate.get();
        if rate != self.counted_rate {
            self.counted_rate = rate;
            self.started = Instant::now();
            self.bytes = 0;
        }
        if rate > 0 {
            let d = Self::rate_delay(self.bytes, next, rate, self.started.elapsed());
            if !d.is_zero() {
                std::thread::sleep(d);
            }
        }
        let step = self.config.guest_quiet.max(MIN_STEP);
        let mut waited = Duration::ZERO;
        while waited < self.config.max_yield && guest.busy(self.config.guest_quiet) {
            let nap = step.min(self.config.max_yield - waited);
            std::thread::sleep(nap);
            waited += nap;
        }
        self.bytes += next;
    }
}

/// The shortest sleep while waiting for the guest to go quiet: each wake-up costs the guest's
/// CPU a context switch.
const MIN_STEP: Duration = Duration::from_millis(1);

/// Runs the calling thread in the `SCHED_BATCH` class until dropped, then restores its class.
/// A batch thread's wake-ups do not preempt running threads, so the copier takes CPU time
/// only at scheduler ticks or when a CPU is free, never in the middle of a guest request.
pub struct BatchScheduling {
    previous: Option<libc::c_int>,
}

impl BatchScheduling {
    pub fn enter() -> Self {
        // SAFETY: sched_getscheduler only reads its argument; 0 means the calling thread.
        let policy = unsafe { libc::sched_getscheduler(0) };
        if policy != libc::SCHED_OTHER {
            // Already batch, idle or real-time: the caller chose; leave it.
            return Self { previous: None };
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param that outlives the call; 0 is this thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        Self {
            previous: (rc == 0).then_some(policy),
        }
    }
}

impl Drop for BatchScheduling {
    fn drop(&mut self) {
        if let Some(policy) = self.previous {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `enter`; switching back from batch to normal needs no privilege.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_delay_spreads_bytes_over_time() {
        let s = Duration::from_secs(1);
        assert_eq!(Throttle::rate_delay(0, 1000, 1000, Duration::ZERO), s);
        assert_eq!(
            Throttle::rate_delay(1000, 1000, 1000, s * 2),
            Duration::ZERO
        );
        assert_eq!(Throttle::rate_delay(3000, 1000, 1000, s), s * 3);
    }

    #[test]
    fn a_rate_set_while_copying_paces_the_next_chunks() {
        let rate = std::sync::Arc::new(ResyncRate::default());
        let config = ThrottleConfig {
            max_yield: Duration::ZERO,
            ..ThrottleConfig::default()
        };
        let mut t = Throttle::new(config, std::sync::Arc::clone(&rate));
        let idle = GuestActivity::default();
        let start = Instant::now();
        t.pace(1 << 30, &idle);
        assert!(start.elapsed() < Duration::from_millis(500), "unlimited");
        // 20 KiB at 100 KiB/s: at least 200 ms.
        rate.set(100 << 10);
        let start = Instant::now();
        t.pace(10 << 10, &idle);
        t.pace(10 << 10, &idle);
        assert!(start.elapsed() >= Duration::from_millis(100), "paced");
    }

    #[test]
    fn batch_scheduling_is_entered_and_left() {
        // SAFETY: reads this thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        std::thread::spawn(move || {
            assert_eq!(policy(), libc::SCHED_OTHER);
            {
                let _batch = BatchScheduling::enter();
                assert_eq!(policy(), libc::SCHED_BATCH);
            }
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_busy_guest_delays_the_copier_by_at_most_max_yield() {
        let g = GuestActivity::default();
        let _busy = g.begin();
        let config = ThrottleConfig {
            max_yield: Duration::from_millis(5),
            ..ThrottleConfig::default()
        };
        let mut t = Throttle::new(config, std::sync::Arc::default());
        let start = Instant::now();
        t.pace(4096, &g);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(5), "{took:?}");
    }

    #[test]
    fn in_flight_requests_count_as_busy() {
        let g = GuestActivity::default();
        assert!(!g.busy(Duration::ZERO));
        let r = g.begin();
        assert!(g.busy(Duration::ZERO));
        drop(r);
        assert!(!g.busy(Duration::ZERO));
        assert!(g.busy(Duration::from_secs(3600)));
    }
}
