//! Token buckets: how long a request must wait before its disk's limits let it through.
//!
//! Everything here takes the time as an argument (nanoseconds on any monotonic clock), so the
//! arithmetic is tested with an injected clock and the data path reads the real one once per
//! release.

use keel_protocol::control::DiskLimits;

/// Time a bucket can save up when no burst is configured: enough to let a batch through at
/// once, short enough that a rate measured over a second is the limit.
const SMOOTHING_NS: u64 = 50_000_000;
const NS_PER_SEC: f64 = 1e9;

/// What a request costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    /// Writes, discards and write-zeroes.
    Write,
    /// Flushes and anything else that moves no data: never held back by a bucket.
    Free,
}

/// One request's cost: an operation of `kind` moving `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub kind: Kind,
    pub bytes: u64,
}

/// Which requests a bucket counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applies {
    All,
    Reads,
    Writes,
}

/// What a bucket counts: requests or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Ops,
    Bytes,
}

/// A token bucket: `rate` tokens a second, at most `capacity` saved up. A request may take it
/// into debt (a request larger than the bucket still goes, once the bucket is full), which the
/// following requests pay back, so the long-run rate is exact.
#[derive(Clone, Debug)]
struct Bucket {
    applies: Applies,
    unit: Unit,
    rate: f64,
    capacity: f64,
    level: f64,
    last_ns: u64,
}

impl Bucket {
    fn new(applies: Applies, unit: Unit, rate: u64, capacity: f64, now_ns: u64) -> Self {
        let capacity = capacity.max(1.0);
        Self {
            applies,
            unit,
            rate: rate as f64,
            capacity,
            level: capacity,
            last_ns: now_ns,
        }
    }

    /// A bucket for `rate` with the default smoothing window.
    fn plain(applies: Applies, unit: Unit, rate: u64, now_ns: u64) -> Self {
        let capacity = rate as f64 * SMOOTHING_NS as f64 / NS_PER_SEC;
        Self::new(applies, unit, rate, capacity, now_ns)
    }

    fn cost(&self, c: Cost) -> f64 {
        let counted = match (self.applies, c.kind) {
            (_, Kind::Free) => false,
            (Applies::All, _) => true,
            (Applies::Reads, k) => k == Kind::Read,
            (Applies::Writes, k) => k == Kind::Write,
        };
        match (counted, self.unit) {
            (false, _) => 0.0,
            (true, Unit::Ops) => 1.0,
            (true, Unit::Bytes) => c.bytes as f64,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64 / NS_PER_SEC;
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
        self.last_ns = self.last_ns.max(now_ns);
    }

    /// Nanoseconds until this bucket lets `cost` through (0: now).
    fn wait_ns(&self, cost: f64) -> u64 {
        let need = cost.min(self.capacity);
        if cost == 0.0 || self.level >= need {
            0
        } else {
            ((need - self.level) / self.rate * NS_PER_SEC).ceil() as u64
        }
    }
}

/// Every bucket of one disk's limits.
#[derive(Clone, Debug, Default)]
pub struct Limiter {
    buckets: Vec<Bucket>,
}

impl Limiter {
    /// The buckets `limits` asks for (none when every limit is 0), full at `now_ns`.
    pub fn new(limits: &DiskLimits, now_ns: u64) -> Self {
        let mut buckets = Vec::new();
        let mut add = |applies, unit, rate: u64| {
            if rate > 0 {
                buckets.push(Bucket::plain(applies, unit, rate, now_ns));
            }
        };
        add(Applies::Reads, Unit::Ops, limits.read_iops_limit);
        add(Applies::Writes, Unit::Ops, limits.write_iops_limit);
        add(Applies::All, Unit::Bytes, limits.bps_limit);
        add(Applies::Reads, Unit::Bytes, limits.read_bps_limit);
        add(Applies::Writes, Unit::Bytes, limits.write_bps_limit);
        let base = limits.iops_limit;
        if base > 0 && limits.iops_burst > base {
            // The sustained bucket saves up the burst's extra requests for `burst_seconds`; a
            // second bucket keeps the burst itself at `iops_burst`.
            let burst = limits.iops_burst;
            let extra = (burst - base) as f64 * limits.burst_seconds.max(1) as f64;
            let smooth = SMOOTHING_NS as f64 / NS_PER_SEC;
            buckets.push(Bucket::new(
                Applies::All,
                Unit::Ops,
                base,
                base as f64 * smooth + extra,
                now_ns,
            ));
            buckets.push(Bucket::plain(Applies::All, Unit::Ops, burst, now_ns));
        } else if base > 0 {
            buckets.push(Bucket::plain(Applies::All, Unit::Ops, base, now_ns));
        }
        Self { buckets }
    }

    /// Whether any limit is set.
    pub fn is_limited(&self) -> bool {
        !self.buckets.is_empty()
    }

    /// Takes `cost` from every bucket and returns `Ok` if they all let it through at `now_ns`;
    /// otherwise takes nothing and returns how many nanoseconds to wait before asking again.
    pub fn admit(&mut self, cost: Cost, now_ns: u64) -> Result<(), u64> {
        let mut wait = 0;
        for b in &mut self.buckets {
            b.refill(now_ns);
            wait = wait.max(b.wait_ns(b.cost(cost)));
        }
        if wait > 0 {
            return Err(wait);
        }
        for b in &mut self.buckets {
            b.level -= b.cost(cost);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn read(bytes: u64) -> Cost {
        Cost {
            kind: Kind::Read,
            bytes,
        }
    }

    fn write(bytes: u64) -> Cost {
        Cost {
            kind: Kind::Write,
            bytes,
        }
    }

    /// Runs a closed loop that admits `cost` whenever the limiter lets it, for `secs` seconds
    /// of injected time, and returns how many went through.
    fn admitted_in(l: &mut Limiter, cost: Cost, start: u64, secs: u64) -> u64 {
        let (mut now, mut n) = (start, 0);
        while now < start + secs * SEC {
            match l.admit(cost, now) {
                Ok(()) => n += 1,
                Err(wait) => now += wait,
            }
        }
        n
    }

    #[test]
    fn no_limits_means_no_buckets() {
        let mut l = Limiter::new(&DiskLimits::default(), 0);
        assert!(!l.is_limited());
        assert_eq!(l.admit(read(1 << 20), 0), Ok(()));
    }

    #[test]
    fn iops_limit_refills_at_its_rate() {
        let limits = DiskLimits {
            iops_limit: 1000,
            ..DiskLimits::default()
        };
        let mut l = Limiter::new(&limits, 0);
        // The saved-up window (50 ms) goes at once, then one request per millisecond.
        let n = admitted_in(&mut l, read(4096), 0, 10);
        assert!(n.abs_diff(10_000 + 50) <= 1, "{n} in 10 s at 1000/s");
        // Idle, the bucket fills to its window and no further; then each request waits 1 ms.
        let t = 20 * SEC;
        let full = (0..100)
            .take_while(|_| l.admit(read(4096), t).is_ok())
            .count();
        assert_eq!(full, 50);
        let wait = l.admit(read(4096), t).unwrap_err();
        assert!(wait.abs_diff(1_000_000) <= 1, "{wait}");
    }

    #[test]
    fn flushes_are_never_held_back() {
        let limits = DiskLimits {
            iops_limit: 1,
            bps_limit: 1,
            ..DiskLimits::default()
        };
        let mut l = Limiter::new(&limits, 0);
        assert_eq!(l.admit(write(4096), 0), Ok(()));
        let flush = Cost {
            kind: Kind::Free,
            bytes: 0,
        };
        for _ in 0..100 {
            assert_eq!(l.admit(flush, 0), Ok(()));
        }
    }

    #[test]
    fn a_request_larger_than_the_bucket_goes_and_the_next_ones_pay() {
        let limits = DiskLimits {
            bps_limit: 1 << 20,
            ..DiskLimits::default()
        };
        let mut l = Limiter::new(&limits, 0);
        // 4 MiB at 1 MiB/s: it goes (the bucket is full), and the next waits 4 s of debt.
        assert_eq!(l.admit(write(4 << 20), 0), Ok(()));
        let wait = l.admit(write(4096), 0).unwrap_err();
        assert!((4 * SEC - SEC / 20..=4 * SEC).contains(&wait), "{wait}");
        // Over a minute, the bytes admitted match the rate.
        let n = admitted_in(&mut l, write(64 << 10), wait, 60);
        let bytes = n * (64 << 10);
        assert!(
            bytes.abs_diff(60 << 20) <= 128 << 10,
            "{bytes} bytes in 60 s at 1 MiB/s"
        );
    }

    #[test]
    fn read_and_write_limits_count_only_their_kind() {
        let limits = DiskLimits {
            read_iops_limit: 100,
            write_bps_limit: 1000,
            ..DiskLimits::default()
        };
        let mut l = Limiter::new(&limits, 0);
        // Writes are limited by bytes only: many small ones pass while reads wait.
        let reads = admitted_in(&mut l.clone(), read(1 << 20), 0, 2);
        assert!(reads.abs_diff(200 + 5) <= 1, "{reads}");
        let writes = admitted_in(&mut l, write(10), 0, 2);
        assert!(writes.abs_diff(200 + 5) <= 1, "{writes}");
        // A read does not spend the write budget, nor a write the read one.
        let mut l = Limiter::new(&limits, 0);
        for _ in 0..5 {
            l.admit(write(10), 0).unwrap();
        }
        assert_eq!(l.admit(read(1 << 20), 0), Ok(()));
    }

    #[test]
    fn a_burst_runs_at_the_burst_rate_for_burst_seconds_then_at_the_limit() {
        let limits = DiskLimits {
            iops_limit: 100,
            iops_burst: 1000,
            burst_seconds: 2,
            ..DiskLimits::default()
        };
        let mut l = Limiter::new(&limits, 0);
        // First second: the burst rate (1000/s, its 50 ms window on top).
        let first = admitted_in(&mut l, read(512), 0, 1);
        assert!((1000..=1060).contains(&first), "{first}");
        // The saved-up credit is (1000 - 100) * 2 s = 1800 extra requests: it lasts about 2 s
        // at the burst rate, after which the disk runs at its limit.
        let second = admitted_in(&mut l, read(512), SEC, 1);
        assert!((900..=1060).contains(&second), "{second}");
        let later = admitted_in(&mut l, read(512), 2 * SEC, 5);
        assert!(later.abs_diff(500) <= 2, "{later} in 5 s at 100/s");
        // After a quiet time the burst is back.
        let again = admitted_in(&mut l, read(512), 100 * SEC, 1);
        assert!(again >= 1000, "{again}");
    }
}
