//! Keel's storage core (engine "keel") against qemu-storage-daemon on a raw file and on a qcow2
//! image: the same client, the same workloads, the same run. See docs/benchmarks.md.
//!
//! Usage: store_vs_qsd [--runs N] [--runtime SECS] [--dir DIR] [--size-mib N] [--settle SECS]
//! [--no-amp] [--data pattern|random|text]
//! [--servers keel,keel-encrypted,keel-lz4,keel-zstd,qsd-raw,qsd-qcow2,qsd-qcow2-luks]
//! (default: keel, qsd-raw, qsd-qcow2; other lists print one IOPS/latency table of them all)
//! Prints a markdown table and, after a line "JSON:", the raw numbers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use keel_backend::control::client::ControlClient;
use keel_protocol::control::DiskStats;
use keel_tests::bench::{
    self, ClientKind, Measurement, Pattern, RunOptions, Running, Workload, median,
};
use keel_tests::bench_args;
use keel_tests::keeld::{
    keeld_binary_near_exe, spawn_keel_bench_disk, spawn_keel_bench_disk_keys, wait_for_socket,
};
use serde::Serialize;

/// Keel's storage core against qemu-storage-daemon on raw and qcow2.
#[derive(Parser)]
struct Args {
    /// Runs of every workload; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each timed workload runs.
    #[arg(long, value_parser = bench_args::secs, default_value = "5")]
    runtime: Duration,
    /// Where the images go.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-store-bench"))]
    dir: PathBuf,
    /// The disks' size in MiB.
    #[arg(long = "size-mib", value_parser = bench_args::mib, default_value = "2048")]
    size: u64,
    /// Skip the write-amplification readings.
    #[arg(long = "no-amp", action = clap::ArgAction::SetFalse)]
    amp: bool,
    /// Pause after the fill, before the reads (seconds).
    #[arg(long, value_parser = bench_args::secs, default_value = "5")]
    settle: Duration,
    /// What the writes hold: one repeated byte ("pattern", compresses to almost nothing),
    /// noise ("random", does not compress) or English-like text ("text"); noise and text
    /// writes never repeat a block until 64 MiB were written.
    #[arg(long, value_parser = ["pattern", "random", "text"], default_value = "pattern")]
    data: String,
    /// The servers to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = DEFAULT_SERVERS)]
    servers: Vec<Server>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
enum Server {
    /// keeld, engine "keel", container file opened O_DIRECT.
    Keel,
    /// qemu-storage-daemon, raw file, io_uring, O_DIRECT.
    QsdRaw,
    /// qemu-storage-daemon, qcow2 image (metadata preallocated), io_uring, O_DIRECT.
    QsdQcow2,
    /// keeld, engine "keel", encrypted container (AES-256-XTS), O_DIRECT.
    KeelEncrypted,
    /// keeld, engine "keel", container compressed with lz4, O_DIRECT.
    KeelLz4,
    /// keeld, engine "keel", container compressed with zstd, O_DIRECT.
    KeelZstd,
    /// qemu-storage-daemon, qcow2 image with LUKS encryption (aes-256-xts-plain64, QEMU's
    /// default), metadata preallocated, io_uring, O_DIRECT.
    QsdQcow2Luks,
}

const DEFAULT_SERVERS: [Server; 3] = [Server::Keel, Server::QsdRaw, Server::QsdQcow2];
/// The LUKS passphrase of the qcow2+LUKS image (a benchmark, not a secret).
const LUKS_SECRET: &str = "secret,id=sec0,data=keel-bench";

struct Setup {
    _proc: Running,
    sock: PathBuf,
    control: Option<ControlClient>,
}

/// Starts `server` on a fresh image of `size` bytes.
fn start(server: Server, dir: &Path, size: u64) -> Setup {
    let sock = dir.join(format!("{server:?}.sock").to_lowercase());
    let _ = fs::remove_file(&sock);
    let (child, control) = match server {
        Server::Keel => {
            let (running, keel_sock, ctl) = spawn_keel_bench_disk(dir, "keel", size);
            return finish_start(running, keel_sock, Some(ControlClient::new(&ctl)), server);
        }
        Server::KeelEncrypted => {
            let key = dir.join("bench.key");
            let raw: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(113) ^ 0x3c).collect();
            fs::write(&key, raw).expect("key file");
            let keys = format!(
                "encryption = \"aes-xts-256\"\nkey_file = \"{}\"\n",
                key.display()
            );
            let (running, keel_sock, ctl) =
                spawn_keel_bench_disk_keys(&keeld_binary_near_exe(), dir, "keelenc", size, &keys);
            return finish_start(running, keel_sock, Some(ControlClient::new(&ctl)), server);
        }
        Server::KeelLz4 | Server::KeelZstd => {
            let (stem, codec) = if server == Server::KeelLz4 {
                ("keellz4", "lz4")
            } else {
                ("keelzstd", "zstd")
            };
            let keys = format!("compression = \"{codec}\"\n");
            let (running, keel_sock, ctl) =
                spawn_keel_bench_disk_keys(&keeld_binary_near_exe(), dir, stem, size, &keys);
            return finish_start(running, keel_sock, Some(ControlClient::new(&ctl)), server);
        }
        Server::QsdRaw | Server::QsdQcow2 | Server::QsdQcow2Luks => {
            let (fmt, name) = if server == Server::QsdRaw {
                ("raw", "bench.img")
            } else {
                ("qcow2", "bench.qcow2")
            };
            let image = dir.join(name);
            let _ = fs::remove_file(&image);
            let mut create = Command::new("qemu-img");
            create.args(["create", "-q", "-f", fmt]);
            if server == Server::QsdQcow2Luks {
                create.args(["--object", LUKS_SECRET, "-o"]);
                create.arg("encrypt.format=luks,encrypt.key-secret=sec0,preallocation=metadata");
            } else if server == Server::QsdQcow2 {
                create.args(["-o", "preallocation=metadata"]);
            } else {
                create.args(["-o", "preallocation=falloc"]);
            }
            let ok = create
                .arg(&image)
                .arg(size.to_string())
                .status()
                .expect("qemu-img");
            assert!(ok.success(), "qemu-img create failed");
            let blockdev = if server == Server::QsdRaw {
                format!(
                    "driver=file,filename={},aio=io_uring,cache.direct=on,node-name=n",
                    image.display()
                )
            } else {
                format!(
                    "driver=qcow2,node-name=n,file.driver=file,file.filename={},file.aio=io_uring,file.cache.direct=on{}",
                    image.display(),
                    if server == Server::QsdQcow2Luks {
                        ",encrypt.format=luks,encrypt.key-secret=sec0"
                    } else {
                        ""
                    }
                )
            };
            let child = Command::new("qemu-storage-daemon")
                .args(["--object", LUKS_SECRET])
                .arg("--blockdev")
                .arg(blockdev)
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path={},writable=on,num-queues=1",
                    sock.display()
                ))
                .stdout(Stdio::null())
                .spawn()
                .expect("start qemu-storage-daemon");
            (child, None)
        }
    };
    finish_start(Running(child), sock, control, server)
}

/// Waits for the server to listen.
fn finish_start(
    running: Running,
    sock: PathBuf,
    control: Option<ControlClient>,
    server: Server,
) -> Setup {
    assert!(
        wait_for_socket(&sock, Duration::from_secs(30)),
        "{server:?} did not listen"
    );
    std::thread::sleep(Duration::from_millis(100));
    Setup {
        _proc: running,
        sock,
        control,
    }
}

fn stats(s: &Setup) -> Option<DiskStats> {
    s.control
        .as_ref()
        .and_then(|c| c.get("/v1/disks/b/stats").ok())
}

#[derive(Clone, Debug, Default, Serialize)]
struct RunResult {
    /// Random writes on a new, empty disk: where a log-structured store turns random writes
    /// into appends without having to clean yet.
    randwrite_fresh: Measurement,
    fill_seq: Measurement,
    randread_after_seq: Measurement,
    randwrite: Measurement,
    randread_after_random: Measurement,
    /// The whole disk overwritten once more at random (4 KiB, depth 32), all of it timed.
    overwrite: Measurement,
    /// Random writes once the disk has been overwritten at random: the steady state a VM's
    /// disk lives in (its live blocks scattered over every segment).
    randwrite_after_overwrite: Measurement,
    /// Keel only: journal records per guest write during the fresh random-write phase.
    metadata_per_write: Option<f64>,
    /// Keel only: the same while the disk is full and the cleaner works.
    metadata_per_write_full: Option<f64>,
    /// Keel only: where the fill's time went.
    cleaning_fill: Option<Breakdown>,
    /// Keel only: where the full-disk random writes' time went.
    cleaning_full: Option<Breakdown>,
    /// Keel only: the same after one full random overwrite.
    cleaning_after_overwrite: Option<Breakdown>,
    /// Keel only: guest data mapped / stored at the end of the run.
    compression_ratio: Option<f64>,
}

/// Where a phase's write time went besides the guest's own data (keeld's cleaning counters,
/// the phase's difference), as sums over the phase: they overlap the guest's writes, the
/// waits excepted.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Breakdown {
    guest_mib: f64,
    write_amplification: f64,
    blocks_moved_per_guest_block: f64,
    cleaner_read_ms: f64,
    cleaner_write_ms: f64,
    segments_cleaned: u64,
    segments_cleaned_by_writers: u64,
    checkpoints: u64,
    checkpoint_ms: f64,
    checkpoint_max_ms: f64,
    segment_waits: u64,
    segment_wait_ms: f64,
    /// Batches that waited for a checkpoint (its freeze, or a full journal ring), and how long.
    checkpoint_waits: u64,
    checkpoint_wait_ms: f64,
    /// Sparse metadata segments gathered, and how long marking their nodes held the maps
    /// (0 from a keeld that does not report them).
    meta_gathers: u64,
    meta_mark_ms: f64,
    /// Batches delayed to the cleaner's pace, and for how long.
    paced_batches: u64,
    paced_ms: f64,
    /// Batches planned beside one in flight on their queue, and such plans refused.
    batches_pipelined: u64,
    pipelined_refused: u64,
}

fn breakdown(b: Option<DiskStats>, a: Option<DiskStats>) -> Option<Breakdown> {
    let (b, a) = b.zip(a)?;
    let (cb, ca) = b.cleaning.zip(a.cleaning)?;
    let guest = (a.written_bytes - b.written_bytes).max(1);
    let ms = |x: u64, y: u64| (x - y) as f64 / 1000.0;
    Some(Breakdown {
        guest_mib: guest as f64 / f64::from(1 << 20),
        write_amplification: (a.device_bytes_written - b.device_bytes_written) as f64
            / guest as f64,
        blocks_moved_per_guest_block: (ca.blocks_moved - cb.blocks_moved) as f64 * 4096.0
            / guest as f64,
        cleaner_read_ms: ms(ca.read_us, cb.read_us),
        cleaner_write_ms: ms(ca.write_us, cb.write_us),
        segments_cleaned: ca.segments_cleaned - cb.segments_cleaned,
        segments_cleaned_by_writers: ca.segments_cleaned_by_writers
            - cb.segments_cleaned_by_writers,
        checkpoints: ca.checkpoints - cb.checkpoints,
        checkpoint_ms: ms(ca.checkpoint_us, cb.checkpoint_us),
        checkpoint_max_ms: ca.checkpoint_max_us as f64 / 1000.0,
        segment_waits: ca.segment_waits - cb.segment_waits,
        segment_wait_ms: ms(ca.segment_wait_us, cb.segment_wait_us),
        checkpoint_waits: ca.checkpoint_waits - cb.checkpoint_waits,
        checkpoint_wait_ms: ms(ca.checkpoint_wait_us, cb.checkpoint_wait_us),
        meta_gathers: ca.meta_gathers - cb.meta_gathers,
        meta_mark_ms: ms(ca.meta_mark_us, cb.meta_mark_us),
        paced_batches: ca.paced_batches - cb.paced_batches,
        paced_ms: ms(ca.paced_us, cb.paced_us),
        batches_pipelined: ca.batches_pipelined - cb.batches_pipelined,
        pipelined_refused: ca.pipelined_refused - cb.pipelined_refused,
    })
}

impl Breakdown {
    fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {} ({}) | {} | {:.0} | {:.1} | {} | {:.0} | {} | {:.0} | {} | {:.1} | {} | {:.0} | {} ({}) |",
            self.guest_mib,
            self.write_amplification,
            self.blocks_moved_per_guest_block,
            self.cleaner_read_ms,
            self.cleaner_write_ms,
            self.segments_cleaned,
            self.segments_cleaned_by_writers,
            self.checkpoints,
            self.checkpoint_ms,
            self.checkpoint_max_ms,
            self.segment_waits,
            self.segment_wait_ms,
            self.checkpoint_waits,
            self.checkpoint_wait_ms,
            self.meta_gathers,
            self.meta_mark_ms,
            self.paced_batches,
            self.paced_ms,
            self.batches_pipelined,
            self.pipelined_refused,
        )
    }
}

fn one_run(server: Server, a: &Args) -> RunResult {
    let s = start(server, &a.dir, a.size);
    let wl = |pattern, block_size, queue_depth, runtime| Workload {
        pattern,
        block_size,
        queue_depth,
        span: a.size,
        runtime,
        warmup: Duration::from_millis(500),
    };
    let show = |w: &Workload, m: &Measurement| {
        eprintln!(
            "{server:?} {:<18} {:>9.0} IOPS {:>8.1} MiB/s p50 {:>7.1} us p99 {:>8.1} us",
            w.label(),
            m.iops,
            m.mib_per_s,
            m.lat_p50_us,
            m.lat_p99_us
        );
    };
    // Every phase draws its own random offsets: one that replayed an earlier phase's
    // sequence would read (or rewrite) the blocks that phase wrote in the order it wrote
    // them, which in a log is the order they lie on the device.
    let seeded = |seed| RunOptions {
        seed,
        ..RunOptions::new(ClientKind::Blkio, false)
    };
    let run = |w: &Workload, seed: u64| {
        let m = bench::run_with(&s.sock, w, &seeded(seed))
            .map(|r| r.measurement)
            .unwrap_or_else(|e| panic!("{server:?} {}: {e}", w.label()));
        std::thread::sleep(Duration::from_millis(100));
        show(w, &m);
        m
    };
    let per_write = |b: Option<DiskStats>, a: Option<DiskStats>| {
        b.zip(a).map(|(b, a)| {
            (a.metadata_transactions - b.metadata_transactions) as f64
                / (a.writes - b.writes).max(1) as f64
        })
    };
    let before = stats(&s);
    // Half the disk, the same bytes on every server: a new disk's random writes, never more
    // than the container holds before Keel's cleaner must start (a timed run wrote more, the
    // faster the server).
    let fresh = wl(Pattern::RandWrite, 4096, 32, a.runtime);
    let randwrite_fresh = bench::run_bytes_with(&s.sock, &fresh, &seeded(1), a.size / 2)
        .map(|r| r.measurement)
        .unwrap_or_else(|e| panic!("{server:?} {}: {e}", fresh.label()));
    std::thread::sleep(Duration::from_millis(100));
    show(&fresh, &randwrite_fresh);
    let metadata_per_write = per_write(before, stats(&s));
    // Then lay the disk out sequentially, once over, so reads hit written blocks on every
    // server and every server's device took the same bytes; then let the device settle
    // (the host behind it may still be writing back).
    let fill = wl(Pattern::SeqWrite, 1 << 20, 4, a.runtime);
    let before = stats(&s);
    let fill_seq = bench::run_bytes(&s.sock, &fill, a.size)
        .unwrap_or_else(|e| panic!("{server:?} {}: {e}", fill.label()));
    show(&fill, &fill_seq);
    let cleaning_fill = breakdown(before, stats(&s));
    std::thread::sleep(a.settle);
    let randread_after_seq = run(&wl(Pattern::RandRead, 4096, 32, a.runtime), 2);
    let before = stats(&s);
    let randwrite = run(&wl(Pattern::RandWrite, 4096, 32, a.runtime), 3);
    let after = stats(&s);
    let cleaning_full = breakdown(before.clone(), after.clone());
    let metadata_per_write_full = per_write(before, after);
    let randread_after_random = run(&wl(Pattern::RandRead, 4096, 32, a.runtime), 4);
    let whole = wl(Pattern::RandWrite, 4096, 32, a.runtime);
    let overwrite = bench::run_bytes_with(&s.sock, &whole, &seeded(5), a.size)
        .map(|r| r.measurement)
        .unwrap_or_else(|e| panic!("{server:?} overwrite: {e}"));
    show(&whole, &overwrite);
    let before = stats(&s);
    let randwrite_after_overwrite = run(&wl(Pattern::RandWrite, 4096, 32, a.runtime), 6);
    let cleaning_after_overwrite = breakdown(before, stats(&s));
    let compression_ratio = stats(&s).and_then(|s| s.compression_ratio);
    RunResult {
        randwrite_fresh,
        fill_seq,
        randread_after_seq,
        randwrite,
        randread_after_random,
        overwrite,
        randwrite_after_overwrite,
        metadata_per_write,
        metadata_per_write_full,
        cleaning_fill,
        cleaning_full,
        cleaning_after_overwrite,
        compression_ratio,
    }
}

/// Random 4 KiB writes on a keel disk, one unbroken random sequence, until the guest has
/// written twice its size: bytes the engine wrote to the container per byte the guest wrote.
fn write_amplification(a: &Args) -> (f64, u64, u64) {
    let s = start(Server::Keel, &a.dir, a.size);
    let w = Workload {
        pattern: Pattern::RandWrite,
        block_size: 4096,
        queue_depth: 32,
        span: a.size,
        runtime: Duration::ZERO,
        warmup: Duration::ZERO,
    };
    let before = stats(&s).expect("keeld stats");
    let m = bench::run_bytes(&s.sock, &w, 2 * a.size).expect("random writes");
    let now = stats(&s).expect("keeld stats");
    let guest = now.written_bytes - before.written_bytes;
    let device = now.device_bytes_written - before.device_bytes_written;
    eprintln!(
        "write amplification run: guest {} MiB, container {} MiB, {:.0} IOPS",
        guest >> 20,
        device >> 20,
        m.iops
    );
    (device as f64 / guest.max(1) as f64, guest, device)
}

#[derive(Serialize)]
struct Report {
    runs: Vec<(Server, Vec<RunResult>)>,
    write_amplification: Option<(f64, u64, u64)>,
}

fn main() {
    let a = Args::parse();
    fs::create_dir_all(&a.dir).expect("bench dir");
    bench::set_data_kind(bench::DataKind::parse(&a.data).expect("checked by clap"));
    let mut runs: Vec<(Server, Vec<RunResult>)> =
        a.servers.iter().map(|s| (*s, Vec::new())).collect();
    for r in 0..a.runs {
        eprintln!("== run {}", r + 1);
        for (server, results) in runs.iter_mut() {
            results.push(one_run(*server, &a));
        }
    }
    let write_amplification = a.amp.then(|| write_amplification(&a));

    let pick = |rs: &[RunResult], f: fn(&RunResult) -> Measurement| {
        median(&rs.iter().map(f).collect::<Vec<_>>())
    };
    let rows: [(&str, Getter); 7] = [
        ("4k randwrite qd32, new disk (half of it)", |r| {
            r.randwrite_fresh
        }),
        ("1M seq write qd4 (fill)", |r| r.fill_seq),
        ("4k randread qd32, data written sequentially", |r| {
            r.randread_after_seq
        }),
        (
            "4k randwrite qd32, full disk (keel: cleaner at work)",
            |r| r.randwrite,
        ),
        ("4k randread qd32, data written randomly", |r| {
            r.randread_after_random
        }),
        ("4k randwrite qd32, the whole disk overwritten once", |r| {
            r.overwrite
        }),
        ("4k randwrite qd32, after one full random overwrite", |r| {
            r.randwrite_after_overwrite
        }),
    ];
    println!(
        "Median of {} runs, {} s each (new-disk writes: half the disk; the fill and the random \
         overwrite: the disk once over, then {} s to settle after the fill), 1 queue, blkio client, {} MiB disk, O_DIRECT everywhere.\n",
        a.runs,
        a.runtime.as_secs_f64(),
        a.settle.as_secs_f64(),
        a.size >> 20
    );
    if a.servers != DEFAULT_SERVERS {
        print_servers_table(&runs, &rows);
        return;
    }
    println!(
        "| workload | Keel (keel) IOPS | QSD raw IOPS | QSD qcow2 IOPS | Keel/raw | Keel/qcow2 | Keel p50 us | raw p50 us | qcow2 p50 us | Keel p99 us | raw p99 us |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, f) in rows {
        let k = pick(&runs[0].1, f);
        let r = pick(&runs[1].1, f);
        let q = pick(&runs[2].1, f);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
            k.iops,
            r.iops,
            q.iops,
            k.iops / r.iops.max(1.0),
            k.iops / q.iops.max(1.0),
            k.lat_p50_us,
            r.lat_p50_us,
            q.lat_p50_us,
            k.lat_p99_us,
            r.lat_p99_us
        );
    }
    let per_run = |f: Getter, peer: usize| {
        (runs[0].1.iter().zip(&runs[peer].1))
            .map(|(k, p)| format!("{:.2}", f(k).iops / f(p).iops.max(1.0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, f) in rows {
        println!(
            "\n{name}: Keel/raw per run {}; Keel/qcow2 per run {}",
            per_run(f, 1),
            per_run(f, 2)
        );
    }
    let median_of = |f: fn(&RunResult) -> Option<f64>| {
        let mut v: Vec<f64> = runs[0].1.iter().filter_map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    };
    if let (Some(fresh), Some(full)) = (
        median_of(|r| r.metadata_per_write),
        median_of(|r| r.metadata_per_write_full),
    ) {
        println!(
            "\nmetadata transactions per guest write (4k randwrite qd32, keeld stats): {fresh:.4} on the new disk, {full:.4} on the full disk"
        );
    }
    print_breakdowns("Keel", &runs[0].1);
    if let Some((amp, guest, device)) = write_amplification {
        println!(
            "write amplification, random 4k writes filling the disk twice: {amp:.3} ({} MiB guest, {} MiB to the container)",
            guest >> 20,
            device >> 20
        );
    }
    println!("\nJSON:");
    println!(
        "{}",
        serde_json::to_string_pretty(&Report {
            runs,
            write_amplification
        })
        .unwrap_or_default()
    );
}

/// Where a Keel server's write time went, per run and phase.
fn print_breakdowns(server: &str, rs: &[RunResult]) {
    println!(
        "\nWhere {server}'s write time went, per run (keeld's cleaning counters over the phase; times are sums, cleaner work overlaps guest writes, waits for a segment do not):\n"
    );
    println!(
        "| phase | guest MiB | write amp. | moved/guest block | cleaner read ms | cleaner write ms | segments cleaned (by writers) | checkpoints | checkpoint ms | longest checkpoint ms (so far) | batches waiting for a segment | wait ms | batches waiting for a checkpoint | wait ms | metadata gathered | marking ms | batches paced | paced ms | batches pipelined (refused) |"
    );
    println!("|---|{}", "---:|".repeat(18));
    for r in rs {
        for (name, b) in [
            ("1M seq fill", r.cleaning_fill),
            ("4k randwrite, full disk", r.cleaning_full),
            ("4k randwrite, after overwrite", r.cleaning_after_overwrite),
        ] {
            if let Some(b) = b {
                println!("{}", b.row(name));
            }
        }
    }
}

/// Picks one measurement out of a run.
type Getter = fn(&RunResult) -> Measurement;

/// One row per workload, IOPS, p50 and p99 latency per server (medians of the runs), for a
/// chosen list of servers; then, per Keel server, where its write time went.
fn print_servers_table(runs: &[(Server, Vec<RunResult>)], rows: &[(&str, Getter)]) {
    let head: Vec<String> = runs
        .iter()
        .map(|(s, _)| format!("{s:?} IOPS | {s:?} p50 us | {s:?} p99 us"))
        .collect();
    println!("| workload | {} |", head.join(" | "));
    println!("|---|{}", "---:|".repeat(3 * runs.len()));
    for (name, f) in rows {
        let cells: Vec<String> = runs
            .iter()
            .map(|(_, rs)| {
                let m = median(&rs.iter().map(f).collect::<Vec<_>>());
                format!("{:.0} | {:.1} | {:.0}", m.iops, m.lat_p50_us, m.lat_p99_us)
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    for (server, rs) in runs {
        if rs.iter().any(|r| r.cleaning_full.is_some()) {
            print_breakdowns(&format!("{server:?}"), rs);
        }
    }
    for (server, rs) in runs {
        let ratios: Vec<String> = rs
            .iter()
            .filter_map(|r| r.compression_ratio)
            .map(|r| format!("{r:.2}"))
            .collect();
        if !ratios.is_empty() {
            println!(
                "\n{server:?}: data mapped / stored per run: {}",
                ratios.join(", ")
            );
        }
    }
}
