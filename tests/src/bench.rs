//! Block workloads for benchmarks: random or sequential I/O at a fixed queue depth against a
//! vhost-user-blk socket, measuring IOPS, bandwidth and completion latency.

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

mod data;
mod driver;
pub use data::{DataKind, set_data_kind};

use driver::{Connection, QueueDriver, Shape};

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
    /// Random writes with a hot set: 90 % of them go to the first 10 % of the span, the rest
    /// anywhere in the other 90 %.
    HotWrite,
    /// Random writes whose blocks follow a Zipf distribution with exponent 1.2 (fio's
    /// `random_distribution=zipf:1.2`), the popular blocks scattered over the span.
    ZipfWrite,
}

impl Pattern {
    pub fn fio_name(self) -> &'static str {
        match self {
            Self::RandRead => "randread",
            Self::RandWrite => "randwrite",
            Self::SeqRead => "read",
            Self::SeqWrite => "write",
            Self::HotWrite => "randwrite-90/10",
            Self::ZipfWrite => "randwrite-zipf1.2",
        }
    }

    pub fn is_read(self) -> bool {
        matches!(self, Self::RandRead | Self::SeqRead)
    }

    fn is_random(self) -> bool {
        !matches!(self, Self::SeqRead | Self::SeqWrite)
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

/// Which client library drives the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// Keel's own driver, `keel-client` (guest-client/).
    Keel,
    /// libblkio's pure-Rust `virtio-blk-vhost-user` driver (the `blkio` crate).
    Blkio,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Keel => "keel-client",
            Self::Blkio => "blkio",
        }
    }
}

/// How to run a workload.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub client: ClientKind,
    /// Queues, one thread each, every one running the whole workload.
    pub queues: usize,
    /// Poll the used rings (spinning) instead of sleeping on the completion eventfd.
    pub poll: bool,
    /// keel-client only: indirect descriptors and EVENT_IDX when the device offers them.
    pub indirect: bool,
    pub event_idx: bool,
    /// Mixed into the random offsets' seed: runs with the same seed write the same blocks in
    /// the same order (as fio's `randrepeat`), so a measurement after an overwrite with the
    /// same seed rewrites the blocks that overwrite wrote first. 0 by default.
    pub seed: u64,
}

impl RunOptions {
    /// One queue through `client`, completions by eventfd or, if `poll`, by polling.
    pub fn new(client: ClientKind, poll: bool) -> Self {
        Self {
            client,
            queues: 1,
            poll,
            indirect: true,
            event_idx: true,
            seed: 0,
        }
    }
}

/// A run's figures, with the tail of the latency distribution.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub measurement: Measurement,
    /// Requests completed in the measured interval.
    pub ops: u64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
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

/// Where one queue's requests go: random blocks over the whole span (uniform or skewed as the
/// pattern says), or, sequentially, the queue's own slice of it (so queues do not hit the same
/// blocks).
struct Offsets {
    rng: Rng,
    pattern: Pattern,
    zipf: Option<(rand_distr::Zipf<f64>, rand::rngs::SmallRng)>,
    block_size: u64,
    first: u64,
    count: u64,
    next: u64,
}

impl Offsets {
    fn new(w: &Workload, index: usize, queues: usize, seed: u64) -> Self {
        let blocks = (w.span / w.block_size as u64).max(1);
        let random = w.pattern.is_random();
        let zipf = (w.pattern == Pattern::ZipfWrite).then(|| {
            use rand::SeedableRng;
            let d = rand_distr::Zipf::new(blocks as f64, 1.2).expect("zipf over a non-empty span");
            (
                d,
                rand::rngs::SmallRng::seed_from_u64(0x5eed ^ index as u64 ^ seed << 32),
            )
        });
        let per = (blocks / queues as u64).max(1);
        let (first, count) = if random {
            (0, blocks)
        } else {
            ((index as u64 * per).min(blocks - 1), per.min(blocks))
        };
        Self {
            rng: Rng(0x2545_f491_4f6c_dd1d
                ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ seed.wrapping_mul(0xd1b5_4a32_d192_ed03)),
            pattern: w.pattern,
            zipf,
            block_size: w.block_size as u64,
            first,
            count,
            next: 0,
        }
    }

    fn next(&mut self) -> u64 {
        let block = if let Some((zipf, rng)) = &mut self.zipf {
            use rand::distr::Distribution;
            // Rank 1 is the most popular; a multiplicative scramble (odd factor, so a
            // bijection mod 2^64, then reduced) spreads the ranks over the span.
            let rank = zipf.sample(rng) as u64 - 1;
            rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.count
        } else if self.pattern == Pattern::HotWrite {
            let hot = (self.count / 10).max(1);
            let r = self.rng.next();
            if r % 10 < 9 {
                (r >> 8) % hot
            } else {
                hot + (r >> 8) % (self.count - hot).max(1)
            }
        } else if self.pattern.is_random() {
            self.rng.next() % self.count
        } else {
            let b = self.next;
            self.next = (self.next + 1) % self.count;
            b
        };
        (self.first + block) * self.block_size
    }
}

/// Connects to `socket` with the blkio client and runs `w` on one queue; `spin` makes the
/// client poll for completions.
pub fn run(socket: &Path, w: &Workload, spin: bool) -> Result<Measurement, String> {
    run_with(socket, w, &RunOptions::new(ClientKind::Blkio, spin)).map(|r| r.measurement)
}

/// Connects to `socket` as `opts` says and runs `w` on every queue at once.
pub fn run_with(socket: &Path, w: &Workload, opts: &RunOptions) -> Result<Report, String> {
    run_limited(socket, w, opts, None)
}

/// Runs `w` (one queue, libblkio) until `bytes` have been transferred, however long that
/// takes (its runtime and warmup are ignored), and measures the whole of it. A disk filled
/// this way gets the same bytes from every server, whatever their speed.
pub fn run_bytes(socket: &Path, w: &Workload, bytes: u64) -> Result<Measurement, String> {
    run_bytes_with(socket, w, &RunOptions::new(ClientKind::Blkio, false), bytes)
        .map(|r| r.measurement)
}

/// [`run_bytes`] with the client and queues `opts` says.
pub fn run_bytes_with(
    socket: &Path,
    w: &Workload,
    opts: &RunOptions,
    bytes: u64,
) -> Result<Report, String> {
    let w = Workload {
        warmup: Duration::ZERO,
        runtime: Duration::from_secs(3600),
        ..*w
    };
    let ops = bytes.div_ceil(w.block_size as u64).max(1);
    run_limited(socket, &w, opts, Some(ops))
}

fn run_limited(
    socket: &Path,
    w: &Workload,
    opts: &RunOptions,
    ops_limit: Option<u64>,
) -> Result<Report, String> {
    if w.block_size == 0
        || !w.block_size.is_multiple_of(512)
        || w.queue_depth == 0
        || opts.queues == 0
    {
        return Err(format!(
            "block size {} (whole sectors), queue depth {}, queues {} (at least 1)",
            w.block_size, w.queue_depth, opts.queues
        ));
    }
    let shape = Shape {
        queues: opts.queues,
        slots: w.queue_depth,
        block_size: w.block_size,
        poll: opts.poll,
        indirect: opts.indirect,
        event_idx: opts.event_idx,
    };
    let mut conn = match opts.client {
        ClientKind::Blkio => Connection::blkio(socket, &shape)?,
        ClientKind::Keel => Connection::keel(socket, &shape)?,
    };
    let capacity = conn.capacity();
    if w.span > capacity || w.span < w.block_size as u64 {
        return Err(format!(
            "span {} must hold one block and fit the disk ({capacity} bytes)",
            w.span
        ));
    }
    let queues = conn.queues(&shape)?;
    let begin = Instant::now();
    let window = (begin + w.warmup, begin + w.warmup + w.runtime);
    let results: Vec<Result<QueueStats, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, mut q)| {
                s.spawn(move || {
                    let limit = ops_limit.map(|n| n.div_ceil(opts.queues as u64));
                    drive(q.as_mut(), w, (i, opts), window, limit)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("queue thread panicked".into()))
            })
            .collect()
    });
    let mut all = QueueStats::new();
    let mut last = begin;
    for r in results {
        let q = r?;
        last = last.max(q.last);
        all.ops += q.ops;
        all.latency
            .add(&q.latency)
            .map_err(|e| format!("histogram: {e}"))?;
    }
    let elapsed = match ops_limit {
        Some(_) => last.duration_since(begin),
        None => w.runtime,
    };
    let iops = all.ops as f64 / elapsed.as_secs_f64().max(1e-9);
    let us = |ns: u64| ns as f64 / 1000.0;
    let h = &all.latency;
    let pct = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(q))
        }
    };
    Ok(Report {
        measurement: Measurement {
            iops,
            mib_per_s: iops * w.block_size as f64 / f64::from(1 << 20),
            lat_mean_us: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            lat_p50_us: pct(0.5),
            lat_p99_us: pct(0.99),
        },
        ops: all.ops,
        lat_p999_us: pct(0.999),
        lat_max_us: us(h.max()),
    })
}

struct QueueStats {
    ops: u64,
    /// When the last request completed.
    last: Instant,
    /// Nanoseconds, submission to completion.
    latency: Histogram<u64>,
}

impl QueueStats {
    fn new() -> Self {
        Self {
            ops: 0,
            last: Instant::now(),
            // 1 ns .. 100 s, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("constant histogram bounds are valid"),
        }
    }
}

/// How long a polling queue spins flat out before it yields the CPU between checks.
const PURE_SPIN: Duration = Duration::from_micros(10);

/// How long a polling queue waits for a completion before it gives up (a dead server).
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Submits, then checks the used ring until something completes: flat out for [`PURE_SPIN`],
/// then yielding between checks, as keel-client's and keeld's polling do. (libblkio's own
/// polling wait never yields, which on a small machine can hold a CPU the server's polling
/// thread needs for a whole time slice.) Both clients are polled this way.
fn wait_polling(q: &mut dyn QueueDriver, out: &mut Vec<(usize, bool)>) -> Result<(), String> {
    let since = Instant::now();
    while q.submit_and_reap(out)? == 0 {
        let waited = since.elapsed();
        if waited < PURE_SPIN {
            std::hint::spin_loop();
        } else if waited < POLL_TIMEOUT {
            std::thread::yield_now();
        } else {
            return Err(format!("no completion within {} s", POLL_TIMEOUT.as_secs()));
        }
    }
    Ok(())
}

/// Keeps `w.queue_depth` requests in flight on one queue; counts the completions that land in
/// `window` (after the warm-up), then lets the rest drain.
fn drive(
    q: &mut dyn QueueDriver,
    w: &Workload,
    (index, opts): (usize, &RunOptions),
    (measure_from, end): (Instant, Instant),
    ops_limit: Option<u64>,
) -> Result<QueueStats, String> {
    let poll = opts.poll;
    let mut offsets = Offsets::new(w, index, opts.queues, opts.seed);
    let read = w.pattern.is_read();
    let mut stats = QueueStats::new();
    let mut started = vec![Instant::now(); w.queue_depth];
    let mut left = ops_limit.unwrap_or(u64::MAX);
    let mut in_flight = 0;
    for (slot, at) in started.iter_mut().enumerate() {
        if left == 0 {
            break;
        }
        q.enqueue(slot, read, offsets.next())?;
        *at = Instant::now();
        in_flight += 1;
        left -= 1;
    }
    let mut done = Vec::with_capacity(w.queue_depth);
    let mut stopping = false;
    while in_flight > 0 {
        done.clear();
        if poll {
            wait_polling(q, &mut done)?;
        } else {
            q.submit_and_wait(&mut done)?;
        }
        let now = Instant::now();
        stats.last = now;
        if now >= end {
            stopping = true;
        }
        for &(slot, ok) in &done {
            if !ok {
                return Err(format!("request failed (slot {slot})"));
            }
            in_flight -= 1;
            if now >= measure_from && now < end {
                stats.ops += 1;
                let ns = now.duration_since(started[slot]).as_nanos();
                stats
                    .latency
                    .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
            }
            if !stopping && left > 0 {
                q.enqueue(slot, read, offsets.next())?;
                started[slot] = Instant::now();
                in_flight += 1;
                left -= 1;
            }
        }
    }
    Ok(stats)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `n` offsets of `pattern` over 10 000 blocks land in each block.
    /// The first `n` offsets of `pattern` with `seed`.
    fn sequence(pattern: Pattern, seed: u64, n: usize) -> Vec<u64> {
        let w = Workload {
            pattern,
            block_size: 4096,
            queue_depth: 1,
            span: 1 << 30,
            runtime: Duration::ZERO,
            warmup: Duration::ZERO,
        };
        let mut offsets = Offsets::new(&w, 0, 1, seed);
        (0..n).map(|_| offsets.next()).collect()
    }

    #[test]
    fn a_seed_draws_its_own_sequence_and_the_same_seed_replays_it() {
        for pattern in [Pattern::RandWrite, Pattern::ZipfWrite, Pattern::HotWrite] {
            let (a, b) = (sequence(pattern, 5, 1000), sequence(pattern, 6, 1000));
            assert_eq!(a, sequence(pattern, 5, 1000), "{pattern:?}");
            let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
            assert!(same < 100, "{pattern:?}: {same} of 1000 offsets alike");
        }
        let seq = sequence(Pattern::SeqWrite, 0, 10);
        assert_eq!(
            seq,
            sequence(Pattern::SeqWrite, 9, 10),
            "sequential runs ignore it"
        );
    }

    fn hits(pattern: Pattern, n: usize) -> Vec<u32> {
        let w = Workload {
            pattern,
            block_size: 4096,
            queue_depth: 1,
            span: 10_000 * 4096,
            runtime: Duration::ZERO,
            warmup: Duration::ZERO,
        };
        let mut offsets = Offsets::new(&w, 0, 1, 0);
        let mut hits = vec![0u32; 10_000];
        for _ in 0..n {
            let off = offsets.next();
            assert_eq!(off % 4096, 0);
            hits[(off / 4096) as usize] += 1;
        }
        hits
    }

    /// The share of all hits that the `top` most-hit blocks took.
    fn top_share(mut hits: Vec<u32>, top: usize) -> f64 {
        let total: u32 = hits.iter().sum();
        hits.sort_unstable_by(|a, b| b.cmp(a));
        f64::from(hits[..top].iter().sum::<u32>()) / f64::from(total)
    }

    #[test]
    fn the_hot_set_takes_nine_writes_in_ten() {
        let h = hits(Pattern::HotWrite, 200_000);
        let hot: u32 = h[..1000].iter().sum();
        let share = f64::from(hot) / 200_000.0;
        assert!((0.88..0.92).contains(&share), "hot share {share}");
        assert!(
            h[1000..].iter().filter(|&&c| c > 0).count() > 7500,
            "the cold 90 % is written too"
        );
    }

    #[test]
    fn zipf_concentrates_and_uniform_does_not() {
        let zipf = top_share(hits(Pattern::ZipfWrite, 200_000), 100);
        let uniform = top_share(hits(Pattern::RandWrite, 200_000), 100);
        assert!(
            zipf > 0.5,
            "the top 1 % of blocks took {zipf} of zipf:1.2's writes"
        );
        assert!(
            uniform < 0.03,
            "the top 1 % took {uniform} of uniform writes"
        );
    }
}
