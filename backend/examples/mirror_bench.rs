//! Mirror benchmarks on files: write IOPS and latency with 1-3 components, resync after an
//! outage that wrote 1% of a 4 GiB disk against a full copy, and depth-1 write latency while
//! a resync runs.
//!
//! `cargo run --release -p keel-backend --example mirror_bench -- [dir] [seconds] [max_yield_ms] [all|writes|resync|latency]`
//! (`KEEL_BENCH_ROUNDS=N` sets the latency rounds, 5 by default; `KEEL_BENCH_NO_INTENT=1` turns
//! the write-intent bitmap off.)

use keel_backend::device::BlockDevice;
use keel_backend::device::FileDevice;

use keel_backend::device::mirror::{
    MirrorConfig, MirrorDevice, ResyncOutcome, ResyncScheduler, sidecar_path,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const BLOCK: usize = 4096;
/// The default `checkpoint_chunks`: one copier step in the latency bench is one checkpoint.
const CHECKPOINT_CHUNKS: u64 = 256;

fn remove(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(sidecar_path(p));
    }
}

fn paths(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.join(format!("{prefix}{i}.img")))
        .collect()
}

fn open(
    paths: &[PathBuf],
    size: u64,
    parallel: bool,
    sched: Option<Arc<ResyncScheduler>>,
) -> MirrorDevice {
    let mut c = MirrorConfig::new("bench", paths.to_vec());
    c.size = Some(size);
    c.options.assume_clean = true;
    // Buffered, as the tables in docs/benchmarks.md were measured (a bare file is the baseline).
    c.options.direct = false;
    c.options.parallel_write_min = parallel.then_some(0);
    c.options.scheduler = sched;
    c.options.write_intent = std::env::var_os("KEEL_BENCH_NO_INTENT").is_none();
    MirrorDevice::open(c).expect("open mirror")
}

struct Lat {
    samples: Vec<Duration>,
    elapsed: Duration,
    /// Resync bytes copied while these samples were taken.
    copied: u64,
}

impl Lat {
    fn pct(&self, p: f64) -> f64 {
        let mut s = self.samples.clone();
        s.sort_unstable();
        let i = ((s.len() as f64 - 1.0) * p) as usize;
        s.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }

    fn iops(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn line(&self, what: &str) {
        println!(
            "| {what} | {:.0} | {:.1} | {:.1} | {:.1} |",
            self.iops(),
            self.pct(0.5),
            self.pct(0.99),
            self.pct(0.999)
        );
    }

    fn line_with(&mut self, what: &str, copied: u64) {
        self.copied = copied;
        println!(
            "| {what} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.iops(),
            self.pct(0.5),
            self.pct(0.99),
            self.pct(0.999),
            copied as f64 / 1e6
        );
    }
}

/// 4 KiB random writes at depth 1 for `secs` (or until `stop` says so).
fn random_writes(dev: &dyn BlockDevice, secs: f64, seed: u64, stop: &dyn Fn() -> bool) -> Lat {
    let mut rng = fastrand::Rng::with_seed(seed);
    let blocks = dev.len() / BLOCK as u64;
    let buf = vec![0xA5u8; BLOCK];
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs && !stop() {
        let off = rng.u64(0..blocks) * BLOCK as u64;
        let t = Instant::now();
        dev.write_at(&buf, off).expect("write");
        samples.push(t.elapsed());
    }
    Lat {
        samples,
        elapsed: start.elapsed(),
        copied: 0,
    }
}

fn write_bench(dir: &Path, secs: f64) {
    println!("\n### 4 KiB random writes, depth 1, buffered files (1 GiB), {secs} s each\n");
    println!("| setup | IOPS | p50 us | p99 us | p99.9 us |");
    println!("|---|---|---|---|---|");
    let raw = dir.join("raw.img");
    let _ = std::fs::remove_file(&raw);
    let dev = FileDevice::create(&raw, GIB).expect("raw file");
    random_writes(&dev, secs, 1, &|| false).line("FileDevice (no mirror)");
    drop(dev);
    let _ = std::fs::remove_file(&raw);
    for n in 1..=3 {
        for parallel in [false, true] {
            if n == 1 && parallel {
                continue;
            }
            let p = paths(dir, "w", n);
            remove(&p);
            let dev = open(&p, GIB, parallel, None);
            let mode = if parallel { "parallel" } else { "in turn" };
            random_writes(&dev, secs, 1, &|| false)
                .line(&format!("mirror, {n} component(s), {mode}"));
            dev.flush().expect("flush");
            drop(dev);
            remove(&p);
        }
    }
}

/// Writes `fraction` of the disk in 64 KiB writes at random chunk-aligned offsets.
fn dirty(dev: &MirrorDevice, fraction: f64, seed: u64) -> u64 {
    let chunk = dev.chunk_size();
    let chunks = dev.len() / chunk;
    let want = (chunks as f64 * fraction) as u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    let buf = vec![0x5Au8; chunk as usize];
    let mut written = std::collections::HashSet::new();
    while (written.len() as u64) < want {
        let c = rng.u64(0..chunks);
        dev.write_at(&buf, c * chunk).expect("write");
        written.insert(c);
    }
    dev.flush().expect("flush");
    written.len() as u64
}

fn resync_bench(dir: &Path) {
    println!("\n### Resync of a 4 GiB disk (2 components, 64 KiB chunks, sparse files)\n");
    let p = paths(dir, "r", 2);
    let fresh = dir.join("r-new.img");
    remove(&p);
    let dev = open(&p, 4 * GIB, false, None);
    dev.offline(1).expect("offline");
    let written = dirty(&dev, 0.01, 7);
    let st = dev.status();
    let dirty_chunks = st.components[1].dirty_chunks;
    dev.online(1).expect("online");
    let t = Instant::now();
    let out = dev.run_resync(1).expect("resync");
    let took = t.elapsed();
    let ResyncOutcome::Completed { bytes } = out else {
        panic!("resync did not complete: {out:?}");
    };
    let dirty_bytes = dirty_chunks * dev.chunk_size();
    println!(
        "| resync | chunks written | dirty chunks | dirty bytes | bytes copied | copied / dirty | time s | MB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| bitmap (1% written) | {written} | {dirty_chunks} | {dirty_bytes} | {bytes} | {:.3} | {:.2} | {:.0} |",
        bytes as f64 / dirty_bytes as f64,
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6
    );
    remove(std::slice::from_ref(&fresh));
    dev.replace(1, &fresh).expect("replace");
    let t = Instant::now();
    let out = dev.run_resync(1).expect("full copy");
    let took = t.elapsed();
    let ResyncOutcome::Completed { bytes } = out else {
        panic!("full copy did not complete: {out:?}");
    };
    println!(
        "| full copy (replace) | - | {} | {} | {bytes} | {:.3} | {:.2} | {:.0} |",
        4 * GIB / dev.chunk_size(),
        4 * GIB,
        bytes as f64 / (4 * GIB) as f64,
        took.as_secs_f64(),
        bytes as f64 / took.as_secs_f64() / 1e6
    );
    drop(dev);
    remove(&p);
    remove(std::slice::from_ref(&fresh));
}

/// Depth-1 4 KiB writes with the copier paused ("idle") and running ("resync"), in
/// alternating rounds on the same set, so both see the same files and the same machine load.
fn latency_bench(dir: &Path, secs: f64, max_yield_ms: u64, rounds: usize) {
    let p = paths(dir, "r", 2);
    let fresh = dir.join("r-new.img");
    remove(&p);
    remove(std::slice::from_ref(&fresh));
    println!(
        "\n### Depth-1 4 KiB write latency: copier paused vs running (full-copy resync, {rounds} rounds of {secs} s each, max_yield {max_yield_ms} ms)\n"
    );
    let mut c = MirrorConfig::new("bench", p.clone());
    c.size = Some(4 * GIB);
    c.options.assume_clean = true;
    c.options.direct = false;
    c.options.write_intent = std::env::var_os("KEEL_BENCH_NO_INTENT").is_none();
    c.options.throttle.max_yield = Duration::from_millis(max_yield_ms);
    let dev = Arc::new(MirrorDevice::open(c).expect("open mirror"));
    // Start from a flushed state, as a guest that flushes would leave it.
    dev.flush().expect("flush");
    dev.replace(1, &fresh).expect("replace");
    println!("| round | phase | IOPS | p50 us | p99 us | p99.9 us | copied MB |");
    println!("|---|---|---|---|---|---|---|");
    let (mut idle, mut busy) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let seed = 10 + round as u64 * 2;
        let before = dev.status().components[1].resync_bytes_copied;
        let mut lat = random_writes(dev.as_ref(), secs, seed, &|| false);
        lat.line_with(&format!("{round} | idle"), 0);
        idle.push(lat);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let copier = {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match dev.resync_step(1, CHECKPOINT_CHUNKS) {
                        Ok(ResyncOutcome::Paused { .. }) => {}
                        other => panic!("resync ended early: {other:?}"),
                    }
                }
            })
        };
        let mut lat = random_writes(dev.as_ref(), secs, seed + 1, &|| false);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        copier.join().expect("copier thread");
        let copied = dev.status().components[1].resync_bytes_copied - before;
        lat.line_with(&format!("{round} | resync"), copied);
        busy.push(lat);
    }
    let med = |v: &[Lat], p: f64| {
        let mut x: Vec<f64> = v.iter().map(|l| l.pct(p)).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    let (i50, i99, b50, b99) = (
        med(&idle, 0.5),
        med(&idle, 0.99),
        med(&busy, 0.5),
        med(&busy, 0.99),
    );
    // Each resync round against the idle round just before it: slow drifts in the machine's
    // load cancel out.
    let mut round_ratios: Vec<f64> = idle
        .iter()
        .zip(&busy)
        .map(|(i, b)| b.pct(0.99) / i.pct(0.99))
        .collect();
    round_ratios.sort_by(f64::total_cmp);
    let round_p99 = round_ratios[round_ratios.len() / 2];
    let copied: u64 = busy.iter().map(|l| l.copied).sum();
    let busy_secs: f64 = busy.iter().map(|l| l.elapsed.as_secs_f64()).sum();
    println!(
        "\nmedians: idle p50 {i50:.1} us, p99 {i99:.1} us; during resync p50 {b50:.1} us, p99 {b99:.1} us; ratios p50 {:.2}, p99 {:.2}; median of per-round p99 ratios {round_p99:.2}; copier {:.1} MB/s while the guest wrote",
        b50 / i50,
        b99 / i99,
        copied as f64 / busy_secs / 1e6
    );
    println!(
        "{{\"bench\":\"mirror_latency\",\"max_yield_ms\":{max_yield_ms},\"rounds\":{rounds},\"idle_p50_us\":{i50:.1},\"idle_p99_us\":{i99:.1},\"resync_p50_us\":{b50:.1},\"resync_p99_us\":{b99:.1},\"p50_ratio\":{:.3},\"p99_ratio\":{:.3},\"round_p99_ratio\":{round_p99:.3},\"copier_mb_s\":{:.2}}}",
        b50 / i50,
        b99 / i99,
        copied as f64 / busy_secs / 1e6
    );
    drop(dev);
    remove(&p);
    remove(std::slice::from_ref(&fresh));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/keel-mirror-bench".into()),
    );
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let max_yield_ms: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let rounds: usize = std::env::var("KEEL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    match args.next().as_deref() {
        Some("latency") => latency_bench(&dir, secs, max_yield_ms, rounds),
        Some("writes") => write_bench(&dir, secs),
        Some("resync") => resync_bench(&dir),
        _ => {
            write_bench(&dir, secs);
            resync_bench(&dir);
            latency_bench(&dir, secs, max_yield_ms, rounds);
        }
    }
}
