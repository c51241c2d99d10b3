//! Mirror benchmarks on files: write IOPS and latency with 1-3 components, resync after an
//! outage that wrote 1% of a 4 GiB disk against a full copy, and depth-1 write latency while
//! a resync runs.
//!
//! `cargo run --release -p keel-backend --example mirror_bench -- [dir] [seconds] [max_yield_ms] [all|latency]`

use keel_backend::device::BlockDevice;
use keel_backend::device::FileDevice;
use keel_backend::device::faulty::SimRng;
use keel_backend::device::mirror::{
    MirrorConfig, MirrorDevice, ResyncOutcome, ResyncScheduler, sidecar_path,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const BLOCK: usize = 4096;

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
    c.options.parallel_write_min = parallel.then_some(0);
    c.options.scheduler = sched;
    MirrorDevice::open(c).expect("open mirror")
}

struct Lat {
    samples: Vec<Duration>,
    elapsed: Duration,
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
}

/// 4 KiB random writes at depth 1 for `secs` (or until `stop` says so).
fn random_writes(dev: &dyn BlockDevice, secs: f64, seed: u64, stop: &dyn Fn() -> bool) -> Lat {
    let mut rng = SimRng::new(seed);
    let blocks = dev.len() / BLOCK as u64;
    let buf = vec![0xA5u8; BLOCK];
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs && !stop() {
        let off = rng.below(blocks) * BLOCK as u64;
        let t = Instant::now();
        dev.write_at(&buf, off).expect("write");
        samples.push(t.elapsed());
    }
    Lat {
        samples,
        elapsed: start.elapsed(),
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
    let mut rng = SimRng::new(seed);
    let buf = vec![0x5Au8; chunk as usize];
    let mut written = std::collections::HashSet::new();
    while (written.len() as u64) < want {
        let c = rng.below(chunks);
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

fn latency_bench(dir: &Path, secs: f64) {
    let p = paths(dir, "r", 2);
    let fresh = dir.join("r-new.img");
    remove(&p);
    remove(std::slice::from_ref(&fresh));
    println!("\n### Depth-1 4 KiB write latency: idle vs during a full-copy resync\n");
    let sched = ResyncScheduler::new(1);
    let dev = open(&p, 4 * GIB, false, Some(sched.clone()));
    println!("| phase | IOPS | p50 us | p99 us | p99.9 us |");
    println!("|---|---|---|---|---|");
    let idle = random_writes(&dev, secs, 3, &|| false);
    idle.line("idle");
    // Start the resync from a flushed state, as a guest that flushes would leave it.
    dev.flush().expect("flush");
    dev.replace(1, &fresh).expect("replace");
    let busy = random_writes(&dev, secs, 4, &|| sched.running() == 0);
    busy.line("during resync");
    let st = dev.status();
    let r = &st.components[1];
    let progress = r
        .resync
        .as_ref()
        .map(|x| {
            format!(
                "{}/{} chunks, {} MB/s",
                x.done_chunks,
                x.total_chunks,
                x.rate_bytes_per_sec / 1_000_000
            )
        })
        .unwrap_or_else(|| "done".into());
    println!(
        "\nduring the measurement the resync copied {} MB ({progress}); p50 ratio {:.2}, p99 ratio {:.2}",
        r.resync_bytes_copied / 1_000_000,
        busy.pct(0.5) / idle.pct(0.5),
        busy.pct(0.99) / idle.pct(0.99)
    );
    sched.wait_idle();
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
    if args.nth(1).as_deref() != Some("latency") {
        write_bench(&dir, secs);
        resync_bench(&dir);
    }
    latency_bench(&dir, secs);
}
