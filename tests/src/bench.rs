//! Block workloads for benchmarks: random or sequential I/O at a fixed queue depth against a
//! vhost-user-blk socket, measuring IOPS, bandwidth and completion latency.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{Client, Options};

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqWrite,
}

impl Pattern {
    pub fn fio_name(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::SeqWrite => "write",
        }
    }
}

/// One workload.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Workload {
    pub pattern: Pattern,
    pub block_size: usize,
    pub queue_depth: usize,
    /// Bytes of the disk the offsets range over.
    pub span: u64,
    #[serde(skip)]
    pub runtime: Duration,
    #[serde(skip)]
    pub warmup: Duration,
}

impl Workload {
    /// A short label, e.g. "4k randread qd32".
    pub fn label(&self) -> String {
        let bs = if self.block_size >= 1 << 20 {
            format!("{}M", self.block_size >> 20)
        } else {
            format!("{}k", self.block_size >> 10)
        };
        format!("{bs} {} qd{}", self.pattern.fio_name(), self.queue_depth)
    }
}

/// What a run measured.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Measurement {
    pub iops: f64,
    pub mib_per_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
}

/// A tiny xorshift generator: cheap and reproducible offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Connects to `socket` and runs `w`; `spin` makes the client poll for completions.
pub fn run(socket: &Path, w: &Workload, spin: bool) -> Result<Measurement, String> {
    let opts = Options {
        queues: 1,
        buf_len: w.block_size * w.queue_depth,
        queue_size: None,
        read_only: false,
    };
    let mut c = Client::connect_with(socket, &opts).map_err(|e| format!("connect: {e:?}"))?;
    let blocks = (w.span / w.block_size as u64).max(1);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut seq = 0u64;
    let mut next_offset = |rng: &mut Rng| -> u64 {
        match w.pattern {
            Pattern::SeqWrite => {
                let o = (seq % blocks) * w.block_size as u64;
                seq += 1;
                o
            }
            _ => (rng.next() % blocks) * w.block_size as u64,
        }
    };
    for slot in 0..w.queue_depth {
        c.buffer(0)[slot * w.block_size..(slot + 1) * w.block_size].fill(slot as u8 | 1);
    }
    let issue = |c: &mut Client, slot: usize, offset: u64| match w.pattern {
        Pattern::RandRead => c.enqueue_read(0, offset, slot * w.block_size, w.block_size, slot),
        _ => c.enqueue_write(0, offset, slot * w.block_size, w.block_size, slot),
    };

    let mut started = vec![Instant::now(); w.queue_depth];
    for (slot, start) in started.iter_mut().enumerate() {
        issue(&mut c, slot, next_offset(&mut rng));
        *start = Instant::now();
    }
    c.submit(0);

    let begin = Instant::now();
    let measure_from = begin + w.warmup;
    let end = measure_from + w.runtime;
    let mut lat_ns: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut done = Vec::with_capacity(w.queue_depth);
    let mut measured_ios = 0u64;
    let mut in_flight = w.queue_depth;
    let mut stopping = false;
    while in_flight > 0 {
        done.clear();
        c.wait_some(0, w.queue_depth, spin, &mut done);
        let now = Instant::now();
        for &(slot, ret) in &done {
            if ret != 0 {
                return Err(format!("request failed: {ret}"));
            }
            in_flight -= 1;
            if now >= measure_from && !stopping {
                measured_ios += 1;
                let ns = now.duration_since(started[slot]).as_nanos();
                lat_ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
            if now >= end {
                stopping = true;
            }
            if !stopping {
                issue(&mut c, slot, next_offset(&mut rng));
                started[slot] = Instant::now();
                in_flight += 1;
            }
        }
        if !stopping {
            c.submit(0);
        }
    }
    let secs = w.runtime.as_secs_f64();
    lat_ns.sort_unstable();
    let pct = |p: f64| {
        if lat_ns.is_empty() {
            0.0
        } else {
            let i = ((lat_ns.len() as f64 - 1.0) * p).round() as usize;
            f64::from(lat_ns[i]) / 1000.0
        }
    };
    let mean = if lat_ns.is_empty() {
        0.0
    } else {
        lat_ns.iter().map(|&x| f64::from(x)).sum::<f64>() / lat_ns.len() as f64 / 1000.0
    };
    let iops = measured_ios as f64 / secs;
    Ok(Measurement {
        iops,
        mib_per_s: iops * w.block_size as f64 / f64::from(1 << 20),
        lat_mean_us: mean,
        lat_p50_us: pct(0.5),
        lat_p99_us: pct(0.99),
    })
}

/// The median of each field over `ms` (fields taken independently).
pub fn median(ms: &[Measurement]) -> Measurement {
    let med = |f: fn(&Measurement) -> f64| {
        let mut v: Vec<f64> = ms.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() { 0.0 } else { v[v.len() / 2] }
    };
    Measurement {
        iops: med(|m| m.iops),
        mib_per_s: med(|m| m.mib_per_s),
        lat_mean_us: med(|m| m.lat_mean_us),
        lat_p50_us: med(|m| m.lat_p50_us),
        lat_p99_us: med(|m| m.lat_p99_us),
    }
}

/// A server process under test: SIGTERM on drop, SIGKILL if it has not exited within 10 s.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
