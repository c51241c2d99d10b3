//! keeld against qemu-storage-daemon: the same workloads, the same client, the same run.
//!
//! Usage: vs_qsd [--runs N] [--runtime SECS] [--dir DIR] [--image-size GIB] [--no-fio]
//!               [--client blkio|keel]
//! Prints a markdown table and, after a line "JSON:", the raw numbers. See docs/benchmarks.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use keel_tests::bench::{
    self, ClientKind, Measurement, Pattern, RunOptions, Running, Workload, median,
};
use keel_tests::bench_args;
use keel_tests::keeld::{keeld_binary_near_exe, wait_for_socket};
use serde::Serialize;

/// keeld against qemu-storage-daemon.
#[derive(Parser)]
struct Args {
    /// Runs of every workload; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each workload runs.
    #[arg(long, value_parser = bench_args::secs, default_value = "5")]
    runtime: Duration,
    /// Where the images go.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-bench"))]
    dir: PathBuf,
    /// The raw image's size in GiB.
    #[arg(long = "image-size", default_value_t = 1)]
    image_gib: u64,
    /// Skip the fio rows.
    #[arg(long = "no-fio", action = clap::ArgAction::SetFalse)]
    fio: bool,
    /// The client library that drives the load.
    #[arg(long, value_enum, default_value_t = ClientKind::Blkio)]
    client: ClientKind,
}

/// A server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Server {
    Keel,
    KeelPoll,
    Qsd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Backing {
    Null,
    Raw,
}

const POLL_US: u32 = 100;

fn start(
    server: Server,
    backing: Backing,
    dir: &Path,
    image: &Path,
    size: u64,
) -> (Running, PathBuf) {
    let sock = dir.join(format!("{server:?}-{backing:?}.sock").to_lowercase());
    let _ = fs::remove_file(&sock);
    let child = match server {
        Server::Keel | Server::KeelPoll => {
            let poll = if server == Server::KeelPoll {
                POLL_US
            } else {
                0
            };
            let disk = match backing {
                Backing::Null => format!("engine = \"null\"\nsize = {size}\n"),
                Backing::Raw => format!(
                    "engine = \"raw\"\npath = \"{}\"\ndirect = true\n",
                    image.display()
                ),
            };
            let cfg = dir.join("keel-bench.toml");
            fs::write(
                &cfg,
                format!(
                    "[[disk]]\nname = \"b\"\nsocket = \"{}\"\n{disk}poll_us = {poll}\n",
                    sock.display()
                ),
            )
            .expect("write config");
            Command::new(keeld_binary_near_exe())
                .arg("--config")
                .arg(&cfg)
                .env("KEEL_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("start keeld")
        }
        Server::Qsd => {
            let blockdev = match backing {
                Backing::Null => format!("driver=null-co,node-name=n,size={size},read-zeroes=on"),
                Backing::Raw => format!(
                    "driver=file,filename={},aio=io_uring,cache.direct=on,node-name=n",
                    image.display()
                ),
            };
            Command::new("qemu-storage-daemon")
                .arg("--blockdev")
                .arg(blockdev)
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path={},writable=on,num-queues=1",
                    sock.display()
                ))
                .stdout(Stdio::null())
                .spawn()
                .expect("start qemu-storage-daemon")
        }
    };
    let running = Running(child);
    assert!(
        wait_for_socket(&sock, Duration::from_secs(20)),
        "{server:?} did not listen"
    );
    // The probe connection above must be gone before the benchmark client attaches.
    std::thread::sleep(Duration::from_millis(100));
    (running, sock)
}

#[derive(Serialize)]
struct Row {
    client: ClientKind,
    backing: Backing,
    workload: String,
    keel: Measurement,
    keel_poll_spin: Option<Measurement>,
    qsd: Measurement,
    qsd_spin: Option<Measurement>,
    fio: Option<Measurement>,
    keel_runs: Vec<Measurement>,
    qsd_runs: Vec<Measurement>,
}

fn fio(image: &Path, w: &Workload) -> Option<Measurement> {
    let out = Command::new("fio")
        .args([
            "--name=host",
            "--ioengine=io_uring",
            "--direct=1",
            "--time_based",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", image.display()))
        .arg(format!("--rw={}", w.pattern.fio_name()))
        .arg(format!("--bs={}", w.block_size))
        .arg(format!("--iodepth={}", w.queue_depth))
        .arg(format!("--size={}", w.span))
        .arg(format!("--runtime={}", w.runtime.as_secs_f64()))
        .arg(format!("--ramp_time={}", w.warmup.as_secs_f64()))
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let dir = if w.pattern == Pattern::RandRead {
        "read"
    } else {
        "write"
    };
    let job = &v["jobs"][0][dir];
    let pct = |p: &str| job["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let iops = job["iops"].as_f64()?;
    Some(Measurement {
        iops,
        mib_per_s: iops * w.block_size as f64 / f64::from(1 << 20),
        lat_mean_us: job["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        lat_p50_us: pct("50.000000"),
        lat_p99_us: pct("99.000000"),
    })
}

fn main() {
    let args = Args::parse();
    fs::create_dir_all(&args.dir).expect("bench dir");
    let size = args.image_gib << 30;
    let image = args.dir.join("bench.img");
    if fs::metadata(&image).map(|m| m.len()).unwrap_or(0) != size {
        eprintln!(
            "writing a {} GiB image (allocated, not sparse) ...",
            args.image_gib
        );
        let status = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "oflag=direct", "status=none"])
            .arg(format!("of={}", image.display()))
            .arg(format!("count={}", size >> 20))
            .status()
            .expect("dd");
        assert!(status.success());
    }
    let wl = |pattern, block_size, queue_depth| Workload {
        pattern,
        block_size,
        queue_depth,
        span: size,
        runtime: args.runtime,
        warmup: Duration::from_millis(500),
    };
    let groups: Vec<(Backing, Vec<Workload>)> = vec![
        (
            Backing::Null,
            vec![
                wl(Pattern::RandRead, 4096, 1),
                wl(Pattern::RandRead, 4096, 32),
                wl(Pattern::RandWrite, 4096, 1),
                wl(Pattern::RandWrite, 4096, 32),
            ],
        ),
        (
            Backing::Raw,
            vec![
                wl(Pattern::RandRead, 4096, 1),
                wl(Pattern::RandRead, 4096, 32),
                wl(Pattern::RandWrite, 4096, 1),
                wl(Pattern::RandWrite, 4096, 32),
                wl(Pattern::SeqWrite, 1 << 20, 4),
            ],
        ),
    ];
    // results[group][workload][setup] = runs. Setups 2 and 3 measure depth-1 latency with a
    // client that spins for completions (as a polling guest driver would): keeld polling the
    // ring versus QSD, both seen by the same spinning client.
    let setups = [
        (Server::Keel, false),
        (Server::Qsd, false),
        (Server::KeelPoll, true),
        (Server::Qsd, true),
    ];
    let mut results: Vec<Vec<Vec<Vec<Measurement>>>> = groups
        .iter()
        .map(|(_, ws)| ws.iter().map(|_| vec![Vec::new(); setups.len()]).collect())
        .collect();
    for run in 0..args.runs {
        for (gi, (backing, workloads)) in groups.iter().enumerate() {
            for (si, &(server, spin)) in setups.iter().enumerate() {
                let (proc_, sock) = start(server, *backing, &args.dir, &image, size);
                for (wi, w) in workloads.iter().enumerate() {
                    // Spinning clients only measure depth-1 latency.
                    if spin && w.queue_depth != 1 {
                        continue;
                    }
                    let m = bench::run_with(&sock, w, &RunOptions::new(args.client, spin))
                        .unwrap_or_else(|e| panic!("{server:?} {}: {e}", w.label()))
                        .measurement;
                    let client = if spin { "spinning client" } else { "" };
                    eprintln!(
                        "run {} {backing:?} {:<18} {server:?} {client}: {:>9.0} IOPS {:>8.1} MiB/s p50 {:>6.1} us",
                        run + 1,
                        w.label(),
                        m.iops,
                        m.mib_per_s,
                        m.lat_p50_us
                    );
                    results[gi][wi][si].push(m);
                    // Let the previous connection's teardown finish before the next client.
                    std::thread::sleep(Duration::from_millis(100));
                }
                drop(proc_);
            }
        }
    }
    let mut rows = Vec::new();
    for (gi, (backing, workloads)) in groups.iter().enumerate() {
        for (wi, w) in workloads.iter().enumerate() {
            let r = &results[gi][wi];
            let fio = if args.fio && *backing == Backing::Raw {
                fio(&image, w)
            } else {
                None
            };
            rows.push(Row {
                client: args.client,
                backing: *backing,
                workload: w.label(),
                keel: median(&r[0]),
                qsd: median(&r[1]),
                keel_poll_spin: (!r[2].is_empty()).then(|| median(&r[2])),
                qsd_spin: (!r[3].is_empty()).then(|| median(&r[3])),
                fio,
                keel_runs: r[0].clone(),
                qsd_runs: r[1].clone(),
            });
        }
    }
    println!(
        "Median of {} runs, {} s each (+0.5 s warm-up), 1 queue, client: {}, {} GiB span.\n",
        args.runs,
        args.runtime.as_secs_f64(),
        args.client.name(),
        args.image_gib
    );
    let spinning = format!("spinning {}", args.client.name());
    println!(
        "| backing | workload | Keel IOPS | QSD IOPS | Keel/QSD | Keel p50 us | QSD p50 us | \
         {spinning}: Keel poll_us={POLL_US} p50 us | {spinning}: QSD p50 us | \
         host fio IOPS | host fio p50 us |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let opt = |m: &Option<Measurement>, f: fn(&Measurement) -> f64, prec: usize| {
            m.as_ref()
                .map_or("-".to_owned(), |m| format!("{:.*}", prec, f(m)))
        };
        println!(
            "| {:?} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {} | {} | {} | {} |",
            r.backing,
            r.workload,
            r.keel.iops,
            r.qsd.iops,
            r.keel.iops / r.qsd.iops.max(1.0),
            r.keel.lat_p50_us,
            r.qsd.lat_p50_us,
            opt(&r.keel_poll_spin, |m| m.lat_p50_us, 1),
            opt(&r.qsd_spin, |m| m.lat_p50_us, 1),
            opt(&r.fio, |m| m.iops, 0),
            opt(&r.fio, |m| m.lat_p50_us, 1),
        );
    }
    println!("\nJSON:");
    println!(
        "{}",
        serde_json::to_string_pretty(&rows).unwrap_or_default()
    );
}
