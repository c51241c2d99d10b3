//! One workload against one vhost-user-blk socket, through keel-client or libblkio with the same
//! load loop (`keel_tests::bench`): for comparing the two clients, quick checks and profiling.
//!
//! `blk_bench SOCKET [--client keel|blkio] [--rw randread|randwrite|read|write] [--bs 4096]
//! [--iodepth 32] [--queues 1] [--runtime 10] [--warmup 0] [--size BYTES] [--poll]
//! [--bytes N] [--no-indirect] [--no-event-idx] [--json]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use keel_tests::bench::{self, ClientKind, Pattern, RunOptions, Workload};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rw {
    Read,
    Write,
    Randread,
    Randwrite,
}

#[derive(Parser, Debug)]
#[command(about = "Benchmark a vhost-user-blk server through keel-client or libblkio")]
struct Args {
    socket: PathBuf,
    #[arg(long, value_enum, default_value = "blkio")]
    client: ClientKind,
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Request size in bytes.
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    /// Requests in flight per queue.
    #[arg(long, visible_alias = "qd", default_value_t = 32)]
    iodepth: usize,
    /// Queues, one thread each.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Seconds measured.
    #[arg(long, visible_alias = "runtime-s", default_value_t = 10.0)]
    runtime: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Bytes of the disk to address, from offset 0.
    #[arg(long, visible_alias = "span", default_value_t = 1 << 30)]
    size: u64,
    /// Stop once this many bytes are transferred (runtime and warmup are then ignored): fills
    /// a disk exactly, however fast the server is.
    #[arg(long)]
    bytes: Option<u64>,
    /// Poll the used rings instead of sleeping on the completion eventfd.
    #[arg(long, visible_alias = "spin")]
    poll: bool,
    /// keel-client: no indirect descriptors (libblkio never uses them).
    #[arg(long)]
    no_indirect: bool,
    /// keel-client: no EVENT_IDX notification suppression.
    #[arg(long)]
    no_event_idx: bool,
    /// Seed of the random offsets: the same seed writes the same blocks in the same order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let w = Workload {
        pattern: match args.rw {
            Rw::Read => Pattern::SeqRead,
            Rw::Write => Pattern::SeqWrite,
            Rw::Randread => Pattern::RandRead,
            Rw::Randwrite => Pattern::RandWrite,
        },
        block_size: args.bs,
        queue_depth: args.iodepth,
        span: args.size,
        runtime: Duration::from_secs_f64(args.runtime),
        warmup: Duration::from_secs_f64(args.warmup),
    };
    let opts = RunOptions {
        client: args.client,
        queues: args.queues,
        poll: args.poll,
        indirect: !args.no_indirect,
        event_idx: !args.no_event_idx,
        seed: args.seed,
    };
    let r = match args.bytes {
        Some(bytes) => bench::run_bytes_with(&args.socket, &w, &opts, bytes),
        None => bench::run_with(&args.socket, &w, &opts),
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blk_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let m = &r.measurement;
    if args.json {
        let report = serde_json::json!({
            "client": args.client.name(),
            "workload": w.label(),
            "rw": w.pattern.fio_name(),
            "bs": w.block_size,
            "iodepth": w.queue_depth,
            "queues": opts.queues,
            "poll": opts.poll,
            "indirect": opts.indirect,
            "event_idx": opts.event_idx,
            "runtime_s": args.runtime,
            "result": r,
        });
        println!("{report:#}");
    } else {
        println!(
            "{} {} queues={}{}: IOPS={:.0}, BW={:.1}MiB/s, lat (usec) mean={:.1} p50={:.1} p99={:.1} p99.9={:.1} max={:.1}",
            args.client.name(),
            w.label(),
            opts.queues,
            if opts.poll { " poll" } else { "" },
            m.iops,
            m.mib_per_s,
            m.lat_mean_us,
            m.lat_p50_us,
            m.lat_p99_us,
            r.lat_p999_us,
            r.lat_max_us
        );
    }
    ExitCode::SUCCESS
}
