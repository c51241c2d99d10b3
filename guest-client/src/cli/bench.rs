//! `keel-client bench`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_client::bench::{self, BenchConfig, Pattern, Progress};
use keel_client::memory::{PAGE, round_up};

use super::ConnectArgs;
use super::units::{parse_duration, parse_size};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
    Randrw,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Percentage of reads for --rw randrw.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    rwmixread: u8,
    /// Request size.
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    iodepth: usize,
    /// Queues (one thread each); default: every queue the device offers.
    #[arg(long)]
    queues: Option<u16>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    runtime: Duration,
    /// Bytes of the disk to address; default: all of it.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let bs = usize::try_from(args.bs)?;
    let per_queue = args.iodepth as u64 * round_up(args.bs, PAGE);
    let queues_for_memory = u64::from(args.queues.unwrap_or(16));
    let mut disk = args
        .connect
        .connect(args.queues, per_queue * queues_for_memory + (1 << 20))?;
    let config = BenchConfig {
        pattern: match args.rw {
            Rw::Read => Pattern::Read,
            Rw::Write => Pattern::Write,
            Rw::Randread => Pattern::RandRead,
            Rw::Randwrite => Pattern::RandWrite,
            Rw::Randrw => Pattern::RandRw {
                read_percent: args.rwmixread,
            },
        },
        block_size: bs,
        iodepth: args.iodepth,
        runtime: args.runtime,
        size: args.size.unwrap_or(disk.info().capacity()),
        seed: args.seed,
    };
    let progress = Progress::default();
    let live = std::io::stdout().is_terminal() && !args.json;
    let done = std::sync::atomic::AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        if live {
            s.spawn(|| print_progress(&progress, &done));
        }
        let r = bench::run(&mut disk, &config, &progress);
        done.store(true, Ordering::Relaxed);
        r
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per second while the run lasts, rewritten in place.
fn print_progress(progress: &Progress, done: &std::sync::atomic::AtomicBool) {
    let start = Instant::now();
    let mut last = (0u64, 0u64);
    let mut tick = 1;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if start.elapsed() < Duration::from_secs(tick) {
            continue;
        }
        let ops = progress.ops.load(Ordering::Relaxed);
        let bytes = progress.bytes.load(Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "\r[{tick:>4}s] {} IOPS, {:.1} MiB/s   ",
            keel_client::bench::report::human_count((ops - last.0) as f64),
            (bytes - last.1) as f64 / f64::from(1u32 << 20)
        );
        let _ = out.flush();
        last = (ops, bytes);
        tick += 1;
    }
    if tick > 1 {
        println!();
    }
}
