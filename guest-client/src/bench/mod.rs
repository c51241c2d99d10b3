//! A fio-like load generator over a [`Disk`]: one thread per queue, a fixed number of requests
//! in flight per queue, latency recorded per request.

pub mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::buffer::Buffer;
use crate::disk::Disk;
use crate::error::{Error, Result};
use crate::queue::{Push, Queue};
use crate::request::{Completion, Request};
pub use report::{BenchReport, OpReport};

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Read,
    Write,
    RandRead,
    RandWrite,
    /// Random reads and writes; `read_percent` of the requests are reads.
    RandRw {
        read_percent: u8,
    },
}

impl Pattern {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::RandRw { .. } => "randrw",
        }
    }

    fn random(&self) -> bool {
        !matches!(self, Self::Read | Self::Write)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchConfig {
    pub pattern: Pattern,
    pub block_size: usize,
    /// Requests in flight per queue.
    pub iodepth: usize,
    #[serde(rename = "runtime_s", serialize_with = "seconds")]
    pub runtime: Duration,
    /// Bytes of the disk the requests fall in (from offset 0).
    pub size: u64,
    pub seed: u64,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Counters the worker threads bump and a progress printer reads.
#[derive(Default)]
pub struct Progress {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
}

/// Per-direction measurements of one queue.
pub struct Stats {
    pub ops: u64,
    pub bytes: u64,
    /// Latency in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            ops: 0,
            bytes: 0,
            // 1 ns .. 100 s, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("constant histogram bounds are valid"),
        }
    }

    fn merge(&mut self, other: &Stats) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        // Both have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// Runs `config` on every queue of `disk` at once; `progress` is updated as requests finish.
pub fn run(disk: &mut Disk, config: &BenchConfig, progress: &Progress) -> Result<BenchReport> {
    let capacity = disk.info().capacity();
    if config.size > capacity {
        return Err(Error::DeviceTooSmall {
            needed: config.size,
            capacity,
        });
    }
    if config.block_size == 0
        || !config.block_size.is_multiple_of(512)
        || config.size < config.block_size as u64
        || config.iodepth == 0
    {
        return Err(Error::InvalidRequest(format!(
            "block size {} (whole sectors, at most --size {}), iodepth {} (at least 1)",
            config.block_size, config.size, config.iodepth
        )));
    }
    let queues = disk.take_queues();
    let nqueues = queues.len() as u64;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results: Vec<Result<(Stats, Stats)>> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .map(|q| {
                let stop = &stop;
                s.spawn(move || run_queue(q, nqueues, config, progress, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::InvalidRequest("bench thread panicked".into())))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut reads = Stats::new();
    let mut writes = Stats::new();
    for r in results {
        let (rd, wr) = r?;
        reads.merge(&rd);
        writes.merge(&wr);
    }
    Ok(BenchReport::new(
        config,
        nqueues as u16,
        elapsed,
        &reads,
        &writes,
    ))
}

/// Where the next request of one queue goes.
struct Cursor {
    rng: fastrand::Rng,
    pattern: Pattern,
    block: u64,
    /// Blocks the queue addresses: all of them for random patterns, its own slice for
    /// sequential ones (so queues do not read the same blocks).
    first: u64,
    count: u64,
    next: u64,
}

impl Cursor {
    fn new(index: u64, queues: u64, config: &BenchConfig) -> Self {
        let block = config.block_size as u64;
        let blocks = config.size / block;
        let (first, count) = if config.pattern.random() {
            (0, blocks)
        } else {
            let per = (blocks / queues).max(1);
            ((index * per).min(blocks - 1), per.min(blocks))
        };
        Self {
            rng: fastrand::Rng::with_seed(config.seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            pattern: config.pattern,
            block,
            first,
            count,
            next: 0,
        }
    }

    /// (is_read, byte offset)
    fn next(&mut self) -> (bool, u64) {
        let block = if self.pattern.random() {
            self.rng.u64(0..self.count)
        } else {
            let b = self.next;
            self.next = (self.next + 1) % self.count;
            b
        };
        let read = match self.pattern {
            Pattern::Read | Pattern::RandRead => true,
            Pattern::Write | Pattern::RandWrite => false,
            Pattern::RandRw { read_percent } => self.rng.u8(0..100) < read_percent,
        };
        (read, (self.first + block) * self.block)
    }
}

fn run_queue(
    mut queue: Queue,
    queues: u64,
    config: &BenchConfig,
    progress: &Progress,
    stop: &AtomicBool,
) -> Result<(Stats, Stats)> {
    let mut cursor = Cursor::new(u64::from(queue.index()), queues, config);
    let mut idle: Vec<(u64, Buffer)> = Vec::with_capacity(config.iodepth);
    for token in 0..config.iodepth as u64 {
        let mut b = queue.alloc(config.block_size)?;
        // Not zeroes: a backend may detect and shortcut zero writes.
        b.fill(0x5a)?;
        idle.push((token, b));
    }
    let mut issued_at = vec![Instant::now(); config.iodepth];
    let mut is_read = vec![false; config.iodepth];
    let mut reads = Stats::new();
    let mut writes = Stats::new();
    let mut done: Vec<Completion> = Vec::with_capacity(config.iodepth);
    let deadline = Instant::now() + config.runtime;

    loop {
        let now = Instant::now();
        let submitting = now < deadline && !stop.load(Ordering::Relaxed);
        if submitting {
            while let Some((token, buf)) = idle.pop() {
                let (read, offset) = cursor.next();
                let buffers = vec![buf];
                let request = if read {
                    Request::Read { offset, buffers }
                } else {
                    Request::Write { offset, buffers }
                };
                match queue.push(request, token)? {
                    Push::Queued => {
                        issued_at[token as usize] = now;
                        is_read[token as usize] = read;
                    }
                    Push::Full(back) => {
                        if let Some(b) = back.into_buffers().pop() {
                            idle.push((token, b));
                        }
                        break;
                    }
                }
            }
            queue.kick()?;
        } else {
            stop.store(true, Ordering::Relaxed);
            if queue.in_flight() == 0 {
                break;
            }
        }
        queue.wait(&mut done)?;
        let now = Instant::now();
        let mut ops = 0;
        let mut bytes = 0;
        for mut c in done.drain(..) {
            c.result()?;
            let token = c.token;
            let i = token as usize;
            let stats = if is_read[i] { &mut reads } else { &mut writes };
            let latency = now.duration_since(issued_at[i]).as_nanos() as u64;
            stats.latency.saturating_record(latency.max(1));
            stats.ops += 1;
            stats.bytes += config.block_size as u64;
            ops += 1;
            bytes += config.block_size as u64;
            if let Some(b) = c.buffers.pop() {
                idle.push((token, b));
            }
        }
        progress.ops.fetch_add(ops, Ordering::Relaxed);
        progress.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    Ok((reads, writes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pattern: Pattern) -> BenchConfig {
        BenchConfig {
            pattern,
            block_size: 4096,
            iodepth: 4,
            runtime: Duration::from_secs(1),
            size: 4096 * 10,
            seed: 1,
        }
    }

    #[test]
    fn sequential_queues_walk_their_own_slices() {
        let c = config(Pattern::Read);
        let mut q0 = Cursor::new(0, 2, &c);
        let mut q1 = Cursor::new(1, 2, &c);
        let a: Vec<u64> = (0..6).map(|_| q0.next().1 / 4096).collect();
        let b: Vec<u64> = (0..6).map(|_| q1.next().1 / 4096).collect();
        assert_eq!(a, vec![0, 1, 2, 3, 4, 0]);
        assert_eq!(b, vec![5, 6, 7, 8, 9, 5]);
    }

    #[test]
    fn random_offsets_stay_inside_and_mix_follows_the_percentage() {
        let c = config(Pattern::RandRw { read_percent: 70 });
        let mut cur = Cursor::new(0, 1, &c);
        let mut reads = 0;
        for _ in 0..10_000 {
            let (read, off) = cur.next();
            assert!(off + 4096 <= c.size);
            assert_eq!(off % 4096, 0);
            reads += u32::from(read);
        }
        assert!((6500..7500).contains(&reads), "{reads} reads of 10000");
    }
}
