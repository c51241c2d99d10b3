//! A second vhost-user-blk client for benchmarks: the same load as `keel-client bench`, driven
//! through libblkio's pure-Rust `virtio-blk-vhost-user` driver. If the two clients disagree on
//! the same server, one of them has a problem worth finding.
//!
//! `blkio_bench SOCKET [--rw randread|randwrite|read|write] [--bs 4096] [--iodepth 32]
//! [--queues N] [--runtime-s 10] [--size BYTES] [--poll] [--json]`

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmark a vhost-user-blk server through libblkio")]
struct Args {
    socket: String,
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    #[arg(long, default_value_t = 32)]
    iodepth: usize,
    #[arg(long, default_value_t = 1)]
    queues: usize,
    #[arg(long, default_value_t = 10.0)]
    runtime_s: f64,
    /// Bytes of the disk to address (default: all of it).
    #[arg(long)]
    size: Option<u64>,
    /// Use polled queues (no completion eventfd).
    #[arg(long)]
    poll: bool,
    #[arg(long)]
    json: bool,
}

struct Worker {
    ops: u64,
    latency: Histogram<u64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut b = Blkio::new("virtio-blk-vhost-user")?;
    b.set_str("path", &args.socket)?;
    b.connect()?;
    let (normal, polled) = if args.poll {
        (0, args.queues)
    } else {
        (args.queues, 0)
    };
    b.set_i32("num-queues", normal as i32)?;
    b.set_i32("num-poll-queues", polled as i32)?;
    let started = b.start()?;
    let capacity = b.get_u64("capacity")?;
    let size = args.size.unwrap_or(capacity).min(capacity);
    let blocks = size / args.bs as u64;
    if blocks == 0 {
        return Err("--size smaller than --bs".into());
    }
    let align = b.get_u64("mem-region-alignment")?.max(4096) as usize;
    let per_queue = (args.iodepth * args.bs).div_ceil(align) * align;
    let region: MemoryRegion = b.alloc_mem_region(per_queue * args.queues)?;
    b.map_mem_region(&region)?;
    // Non-zero data for writes, as keel-client uses.
    fill_region(&region, 0x5a)?;

    let queues: Vec<Blkioq> = started
        .queues
        .into_iter()
        .chain(started.poll_queues)
        .collect();
    let stop = AtomicBool::new(false);
    let runtime = Duration::from_secs_f64(args.runtime_s);
    let t0 = Instant::now();
    let workers: Vec<Worker> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let base = region.addr + i * per_queue;
                let (args, stop) = (&args, &stop);
                s.spawn(move || run_queue(q, base, i as u64, blocks, args, runtime, stop))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread"))
            .collect::<Result<Vec<_>, String>>()
    })?;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3)?;
    let mut ops = 0;
    for w in &workers {
        ops += w.ops;
        all.add(&w.latency)?;
    }
    let iops = ops as f64 / elapsed;
    let mib = iops * args.bs as f64 / 1048576.0;
    let us = |ns: u64| ns as f64 / 1000.0;
    let report = serde_json::json!({
        "client": "blkio",
        "rw": format!("{:?}", args.rw).to_lowercase(),
        "bs": args.bs,
        "iodepth": args.iodepth,
        "queues": args.queues,
        "poll": args.poll,
        "elapsed_s": elapsed,
        "ops": ops,
        "iops": iops,
        "mib_per_s": mib,
        "lat_mean_us": all.mean() / 1000.0,
        "lat_p50_us": us(all.value_at_quantile(0.5)),
        "lat_p99_us": us(all.value_at_quantile(0.99)),
        "lat_p999_us": us(all.value_at_quantile(0.999)),
        "lat_max_us": us(all.max()),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "blkio {:?}: bs={} iodepth={} queues={}: IOPS={:.0}, BW={:.1}MiB/s, lat (usec) mean={:.1} p50={:.1} p99={:.1} p99.9={:.1} max={:.1}",
            args.rw,
            args.bs,
            args.iodepth,
            args.queues,
            iops,
            mib,
            all.mean() / 1000.0,
            us(all.value_at_quantile(0.5)),
            us(all.value_at_quantile(0.99)),
            us(all.value_at_quantile(0.999)),
            us(all.max())
        );
    }
    Ok(())
}

/// Sets every byte of the buffer region. It is a shared memfd mapping, so writing the memfd
/// (reopened through /proc) fills it without touching raw pointers.
fn fill_region(region: &MemoryRegion, byte: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", region.fd))?;
    let chunk = vec![byte; 1 << 20];
    let mut off = region.fd_offset as u64;
    let end = off + region.len as u64;
    while off < end {
        let n = chunk.len().min((end - off) as usize);
        file.write_all_at(&chunk[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

fn run_queue(
    mut q: Blkioq,
    base: usize,
    index: u64,
    blocks: u64,
    args: &Args,
    runtime: Duration,
    stop: &AtomicBool,
) -> Result<Worker, String> {
    let mut rng = fastrand::Rng::with_seed(1 ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).map_err(|e| e.to_string())?;
    let mut issued = vec![Instant::now(); args.iodepth];
    let mut idle: Vec<usize> = (0..args.iodepth).collect();
    let mut completions: Vec<MaybeUninit<Completion>> =
        (0..args.iodepth).map(|_| MaybeUninit::uninit()).collect();
    let mut in_flight = 0usize;
    let mut ops = 0u64;
    let mut next_seq = (index * blocks / args.queues as u64) % blocks;
    let deadline = Instant::now() + runtime;
    let random = matches!(args.rw, Rw::Randread | Rw::Randwrite);
    let read = matches!(args.rw, Rw::Randread | Rw::Read);
    loop {
        let now = Instant::now();
        if now < deadline && !stop.load(Ordering::Relaxed) {
            while let Some(slot) = idle.pop() {
                let block = if random {
                    rng.u64(0..blocks)
                } else {
                    let b = next_seq;
                    next_seq = (next_seq + 1) % blocks;
                    b
                };
                let buf = (base + slot * args.bs) as *mut u8;
                let offset = block * args.bs as u64;
                if read {
                    q.read(offset, buf, args.bs, slot, ReqFlags::empty());
                } else {
                    q.write(offset, buf, args.bs, slot, ReqFlags::empty());
                }
                issued[slot] = now;
                in_flight += 1;
            }
        } else {
            stop.store(true, Ordering::Relaxed);
            if in_flight == 0 {
                break;
            }
        }
        let n = q
            .do_io(&mut completions, 1, None, None)
            .map_err(|e| format!("do_io: {e:?}"))?;
        let now = Instant::now();
        for c in &completions[..n] {
            // SAFETY: do_io initialised the first `n` entries of `completions`.
            let c = unsafe { c.assume_init_read() };
            if c.ret != 0 {
                return Err(format!("request failed: {}", c.ret));
            }
            let slot = c.user_data;
            latency.saturating_record((now - issued[slot]).as_nanos().max(1) as u64);
            idle.push(slot);
            in_flight -= 1;
            ops += 1;
        }
    }
    Ok(Worker { ops, latency })
}
