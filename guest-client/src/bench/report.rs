//! What a bench run measured, as numbers a person or a script can read.

use std::time::Duration;

use serde::Serialize;

use super::{BenchConfig, Stats};

/// One direction (reads or writes) of a run.
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub ops: u64,
    pub bytes: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
}

impl OpReport {
    fn new(stats: &Stats, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let us = |ns: u64| ns as f64 / 1000.0;
        let h = &stats.latency;
        let empty = h.is_empty();
        let q = |quantile: f64| {
            if empty {
                0.0
            } else {
                us(h.value_at_quantile(quantile))
            }
        };
        Self {
            ops: stats.ops,
            bytes: stats.bytes,
            iops: stats.ops as f64 / secs,
            mib_per_s: stats.bytes as f64 / secs / f64::from(1u32 << 20),
            lat_mean_us: if empty { 0.0 } else { h.mean() / 1000.0 },
            lat_p50_us: q(0.50),
            lat_p99_us: q(0.99),
            lat_p999_us: q(0.999),
            lat_max_us: if empty { 0.0 } else { us(h.max()) },
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub config: BenchConfig,
    pub queues: u16,
    pub elapsed_s: f64,
    pub read: Option<OpReport>,
    pub write: Option<OpReport>,
    /// Both directions together.
    pub iops: f64,
    pub mib_per_s: f64,
}

impl BenchReport {
    pub(super) fn new(
        config: &BenchConfig,
        queues: u16,
        elapsed: Duration,
        reads: &Stats,
        writes: &Stats,
    ) -> Self {
        let read = (reads.ops > 0).then(|| OpReport::new(reads, elapsed));
        let write = (writes.ops > 0).then(|| OpReport::new(writes, elapsed));
        let secs = elapsed.as_secs_f64().max(1e-9);
        Self {
            config: config.clone(),
            queues,
            elapsed_s: elapsed.as_secs_f64(),
            read,
            write,
            iops: (reads.ops + writes.ops) as f64 / secs,
            mib_per_s: (reads.bytes + writes.bytes) as f64 / secs / f64::from(1u32 << 20),
        }
    }

    /// fio-style text: one block per direction.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "{}: bs={} iodepth={} queues={} size={} runtime={:.1}s\n",
            c.pattern.name(),
            c.block_size,
            c.iodepth,
            self.queues,
            c.size,
            self.elapsed_s
        );
        for (name, op) in [("read", &self.read), ("write", &self.write)] {
            if let Some(op) = op {
                out += &format!(
                    "  {name}: IOPS={}, BW={:.1}MiB/s ({} ops)\n    lat (usec): mean={:.1}, p50={:.1}, p99={:.1}, p99.9={:.1}, max={:.1}\n",
                    human_count(op.iops),
                    op.mib_per_s,
                    op.ops,
                    op.lat_mean_us,
                    op.lat_p50_us,
                    op.lat_p99_us,
                    op.lat_p999_us,
                    op.lat_max_us
                );
            }
        }
        out
    }
}

/// 123456 -> "123k", as fio prints IOPS.
pub fn human_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Pattern;

    #[test]
    fn report_computes_rates_and_percentiles() {
        let mut reads = Stats::new();
        for ns in 1..=1000u64 {
            reads.latency.saturating_record(ns * 1000);
            reads.ops += 1;
            reads.bytes += 4096;
        }
        let config = BenchConfig {
            pattern: Pattern::RandRead,
            block_size: 4096,
            iodepth: 1,
            runtime: Duration::from_secs(2),
            size: 1 << 20,
            seed: 0,
        };
        let r = BenchReport::new(&config, 1, Duration::from_secs(2), &reads, &Stats::new());
        let op = r.read.as_ref().unwrap();
        assert!(r.write.is_none());
        assert_eq!(op.iops, 500.0);
        assert!((op.lat_p50_us - 500.0).abs() < 1.0, "{}", op.lat_p50_us);
        assert!((op.lat_p99_us - 990.0).abs() < 2.0, "{}", op.lat_p99_us);
        assert!((op.lat_max_us - 1000.0).abs() < 2.0);
        assert!((op.mib_per_s - 1000.0 * 4096.0 / 2.0 / 1048576.0).abs() < 1e-9);
        assert!(r.to_text().contains("IOPS=500"));
        assert_eq!(human_count(123_456.0), "123k");
    }
}
