//! Keeps a resync from starving guest I/O: an optional byte-rate limit, and a short pause
//! while the guest is busy (bounded, so a resync under constant load still makes progress).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How hard a resync may push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Bytes per second, or `None` for no limit.
    pub rate_limit: Option<u64>,
    /// Longest pause before each chunk while guest I/O is active; zero disables yielding.
    pub max_yield: Duration,
    /// Guest I/O this recent counts as active.
    pub guest_quiet: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            rate_limit: None,
            max_yield: Duration::from_millis(10),
            guest_quiet: Duration::from_millis(1),
        }
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
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
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
        if let Some(rate) = self.config.rate_limit {
            let d = Self::rate_delay(self.bytes, next, rate, self.started.elapsed());
            if !d.is_zero() {
                std::thread::sleep(d);
            }
        }
        let step = Duration::from_micros(200);
        let mut waited = Duration::ZERO;
        while waited < self.config.max_yield && guest.busy(self.config.guest_quiet) {
            std::thread::sleep(step);
            waited += step;
        }
        self.bytes += next;
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
