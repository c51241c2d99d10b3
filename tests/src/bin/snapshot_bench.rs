//! Snapshots on a live keel disk, and qemu-storage-daemon's qcow2 internal snapshots as the
//! peer: the same blkio client and workloads in one run. See docs/benchmarks.md.
//!
//! Usage: snapshot_bench [--sizes-gib 1,16] [--runtime SECS] [--creates N] [--runs N]
//!                       [--rows 0,10,100] [--dir DIR]
//! Prints markdown tables and, after a line "JSON:", the raw numbers.
//!
//! Random writes go to the first `size` bytes (the data written first); the disks are 8 GiB
//! larger, since snapshots pin what the writes overwrite and a keel container does not grow.
//!
//! - Create: on a disk holding `size` of data, while 4 KiB random writes run at depth 32,
//!   snapshots are created one after another; each create's round trip through the control
//!   API and the time keeld held guest writes back (`pause_us` in its answer).
//! - Write IOPS with 0, 10 and 100 snapshots: for every row a new 1 GiB disk with the same
//!   history (filled, then as many short bursts of random writes as the largest row has
//!   snapshots, a snapshot after each of the last N bursts), so the rows differ only in their
//!   snapshots; rows interleaved over `--runs`
//!   runs, medians reported. The peer is qcow2 with 0 and 10 internal snapshots made with
//!   `qemu-img snapshot -c` before the run.
//! - Delete: each snapshot of the last run's 100-snapshot row (else its largest), oldest first, while random writes go
//!   on: the API answer, then the time until its blocks are back (keeld's
//!   `snapshots_being_deleted` drops to 0), with the blocks it changed from its successor
//!   (what deleting it can free), and the guest writes' rate and p99 meanwhile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use keel_backend::control::client::ControlClient;
use keel_protocol::control::{CreateSnapshot, DiskStats, SnapshotInfo};
use keel_tests::bench::{self, Measurement, Pattern, Running, Workload};
use keel_tests::bench_args;
use keel_tests::keeld::{spawn_keel_bench_disk, wait_for_socket};
use serde::Serialize;

/// Snapshots on a live keel disk against qcow2 internal snapshots.
#[derive(Parser)]
struct Args {
    /// Data sizes of the create rows, in GiB.
    #[arg(long = "sizes-gib", value_delimiter = ',', value_parser = bench_args::gib, default_values = ["1", "16"])]
    sizes: Vec<u64>,
    /// Seconds each timed workload runs.
    #[arg(long, value_parser = bench_args::secs, default_value = "4")]
    runtime: Duration,
    /// Snapshots created under load.
    #[arg(long, default_value_t = 20)]
    creates: usize,
    /// Runs of the write rows; medians reported.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    runs: usize,
    /// Snapshots per write row.
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 10, 100])]
    rows: Vec<usize>,
    /// Where the images go.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-snapshot-bench"))]
    dir: PathBuf,
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("\"{s}\" is not a count of at least 1")),
    }
}

struct Keeld {
    _proc: Running,
    sock: PathBuf,
    ctl: ControlClient,
}

fn start_keeld(dir: &Path, size: u64) -> Keeld {
    let (proc, sock, ctl) = spawn_keel_bench_disk(dir, "snap", size);
    assert!(
        wait_for_socket(&sock, Duration::from_secs(60)),
        "keeld did not listen"
    );
    Keeld {
        _proc: proc,
        sock,
        ctl: ControlClient::new(&ctl),
    }
}

fn workload(pattern: Pattern, bs: usize, qd: usize, span: u64, runtime: Duration) -> Workload {
    Workload {
        pattern,
        block_size: bs,
        queue_depth: qd,
        span,
        runtime,
        warmup: Duration::from_millis(300),
    }
}

/// Writes the whole disk once, sequentially, so every block is mapped.
fn fill(sock: &Path, size: u64, written: impl Fn() -> u64) {
    let start = written();
    while written() - start < size {
        bench::run(
            sock,
            &workload(Pattern::SeqWrite, 1 << 20, 4, size, Duration::from_secs(3)),
            false,
        )
        .expect("fill");
    }
}

#[derive(Debug, Default, Serialize)]
struct CreateRun {
    size_gib: u64,
    /// Control API round trips, microseconds.
    latency_us: Vec<u64>,
    /// Guest writes held back, microseconds (keeld's own measure).
    pause_us: Vec<u64>,
    write_iops_during: f64,
}

fn create_snapshot(ctl: &ControlClient, name: &str) -> (u64, u64) {
    let t = Instant::now();
    let info: SnapshotInfo = ctl
        .post(
            "/v1/disks/b/snapshots",
            &CreateSnapshot {
                name: name.to_string(),
            },
        )
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    (t.elapsed().as_micros() as u64, info.pause_us.unwrap_or(0))
}

/// Disk size for `data` bytes of data: snapshots pin what the random writes overwrite, and a
/// keel container does not grow, so the disk leaves room for the run's new versions.
fn disk_for(data: u64) -> u64 {
    data + (8 << 30)
}

fn create_run(a: &Args, size: u64) -> CreateRun {
    let k = start_keeld(&a.dir, disk_for(size));
    let written = || {
        k.ctl
            .get::<DiskStats>("/v1/disks/b/stats")
            .map_or(0, |s| s.written_bytes)
    };
    fill(&k.sock, size, written);
    let load = workload(
        Pattern::RandWrite,
        4096,
        32,
        size,
        a.runtime + Duration::from_secs(1),
    );
    let sock = k.sock.clone();
    let writer = std::thread::spawn(move || bench::run(&sock, &load, false).expect("load"));
    std::thread::sleep(Duration::from_millis(800));
    let mut run = CreateRun {
        size_gib: size >> 30,
        ..CreateRun::default()
    };
    let every = a.runtime / a.creates.max(1) as u32;
    for i in 0..a.creates {
        let (lat, pause) = create_snapshot(&k.ctl, &format!("c{i}"));
        run.latency_us.push(lat);
        run.pause_us.push(pause);
        std::thread::sleep(every.saturating_sub(Duration::from_micros(lat)));
    }
    run.write_iops_during = writer.join().expect("load thread").iops;
    run
}

#[derive(Debug, Default, Serialize)]
struct WriteRow {
    snapshots: usize,
    /// The run with the median IOPS.
    keel: Measurement,
    keel_runs_iops: Vec<f64>,
    qcow2: Option<Measurement>,
}

#[derive(Debug, Default, Serialize)]
struct DeleteRow {
    name: String,
    /// Blocks that differ between it and the next tree: what its deletion may free.
    changed_blocks: u64,
    /// The API's answer: the delete is durable, the snapshot gone from the list.
    answer_us: u64,
    /// Until keeld reports no snapshot being deleted: its blocks are free again.
    reclaimed_us: u64,
}

#[derive(Debug, Default, Serialize)]
struct DeletePhase {
    deletes: Vec<DeleteRow>,
    /// Random writes at depth 32 while the deletes ran.
    writes_meanwhile: Measurement,
}

fn randwrite(sock: &Path, size: u64, runtime: Duration) -> Measurement {
    bench::run(
        sock,
        &workload(Pattern::RandWrite, 4096, 32, size, runtime),
        false,
    )
    .expect("random writes")
}

/// Random writes for `runtime` with no warm-up: the short bursts between two snapshots.
fn burst(sock: &Path, size: u64, runtime: Duration) {
    let w = Workload {
        warmup: Duration::ZERO,
        ..workload(Pattern::RandWrite, 4096, 32, size, runtime)
    };
    bench::run(sock, &w, false).expect("random writes");
}

/// Bursts of random writes every row's disk gets, whatever its snapshots: one per snapshot of
/// the largest row.
fn bursts(a: &Args) -> usize {
    a.rows.iter().copied().max().unwrap_or(0)
}

/// A new keel disk with the history every row shares (filled, then [`bursts`] bursts), a
/// snapshot after each of the last `snapshots` bursts; then random writes measured. Each
/// burst's overwrites may stay pinned: the disk has room for them.
fn keel_row(a: &Args, size: u64, snapshots: usize) -> (Measurement, Keeld) {
    let _ = fs::remove_file(a.dir.join("snap.keel"));
    let bursts = bursts(a);
    let k = start_keeld(
        &a.dir,
        disk_for(size).max(size + bursts as u64 * (12 << 20)),
    );
    let written = || {
        k.ctl
            .get::<DiskStats>("/v1/disks/b/stats")
            .map_or(0, |s| s.written_bytes)
    };
    fill(&k.sock, size, written);
    for i in 0..bursts {
        self::burst(&k.sock, size, Duration::from_millis(20));
        if i + snapshots >= bursts {
            create_snapshot(&k.ctl, &format!("s{}", i + snapshots - bursts));
        }
    }
    let m = randwrite(&k.sock, size, a.runtime);
    eprintln!("keel, {snapshots} snapshots: {:.0} IOPS", m.iops);
    (m, k)
}

fn being_deleted(k: &Keeld) -> u64 {
    k.ctl
        .get::<DiskStats>("/v1/disks/b/stats")
        .map_or(0, |s| s.snapshots_being_deleted)
}

/// Deletes `count` snapshots oldest first while random writes run, each timed to its answer
/// and to the end of its background work.
fn deletes(k: &Keeld, size: u64, count: usize) -> DeletePhase {
    let span = Duration::from_secs(6).max(Duration::from_millis(60) * count as u32);
    let load = workload(Pattern::RandWrite, 4096, 32, size, span);
    let sock = k.sock.clone();
    let writer = std::thread::spawn(move || bench::run(&sock, &load, false).expect("load"));
    std::thread::sleep(Duration::from_millis(500));
    let mut rows = Vec::new();
    for i in 0..count {
        let name = format!("s{i}");
        let next = if i + 1 < count {
            format!("s{}", i + 1)
        } else {
            "@running".to_string()
        };
        let changed = k
            .ctl
            .get::<serde_json::Value>(&format!("/v1/disks/b/diff?from={name}&to={next}"))
            .ok()
            .map_or(0, |v| {
                let bytes = |k: &str| v.get(k).and_then(|c| c.as_u64()).unwrap_or(0);
                (bytes("data_bytes") + bytes("zero_bytes")) / 4096
            });
        let t = Instant::now();
        k.ctl
            .delete::<serde_json::Value>(&format!("/v1/disks/b/snapshots/{name}"))
            .unwrap_or_else(|e| panic!("delete {name}: {e}"));
        let answer_us = t.elapsed().as_micros() as u64;
        // Polled gently: a control call costs CPU the writes share on a small machine.
        while being_deleted(k) > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        rows.push(DeleteRow {
            name,
            changed_blocks: changed,
            answer_us,
            reclaimed_us: t.elapsed().as_micros() as u64,
        });
    }
    DeletePhase {
        deletes: rows,
        writes_meanwhile: writer.join().expect("load thread"),
    }
}

fn keel_writes_and_deletes(a: &Args, size: u64) -> (Vec<WriteRow>, DeletePhase) {
    let targets = a.rows.clone();
    let deleted = if targets.contains(&100) {
        100
    } else {
        bursts(a)
    };
    let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); targets.len()];
    let mut phase = DeletePhase::default();
    for run in 0..a.runs {
        for (t, &n) in targets.iter().enumerate() {
            let (m, k) = keel_row(a, size, n);
            runs[t].push(m);
            if run + 1 == a.runs && n == deleted {
                phase = deletes(&k, size, n);
            }
        }
    }
    let rows = targets
        .iter()
        .zip(runs)
        .map(|(&n, mut ms)| {
            ms.sort_by(|x, y| x.iops.total_cmp(&y.iops));
            WriteRow {
                snapshots: n,
                keel_runs_iops: ms.iter().map(|m| m.iops).collect(),
                keel: ms[ms.len() / 2],
                qcow2: None,
            }
        })
        .collect();
    (rows, phase)
}

/// qemu-storage-daemon on a qcow2 image with `snapshots` internal snapshots.
fn qcow2_writes(a: &Args, size: u64, snapshots: usize) -> Measurement {
    let image = a.dir.join("snap.qcow2");
    let sock = a.dir.join("qsd.sock");
    let _ = fs::remove_file(&image);
    let ok = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
        ])
        .arg(&image)
        .arg(disk_for(size).to_string())
        .status()
        .expect("qemu-img");
    assert!(ok.success(), "qemu-img create failed");
    let serve = || {
        let _ = fs::remove_file(&sock);
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=qcow2,node-name=n,file.driver=file,file.filename={},file.aio=io_uring,file.cache.direct=on",
                image.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path={},writable=on,num-queues=1",
                sock.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("start qemu-storage-daemon");
        let r = Running(child);
        assert!(
            wait_for_socket(&sock, Duration::from_secs(30)),
            "qsd did not listen"
        );
        r
    };
    {
        let _qsd = serve();
        let mut done = 0.0;
        while done < size as f64 {
            let t = Duration::from_secs(2);
            let m = bench::run(
                &sock,
                &workload(Pattern::SeqWrite, 1 << 20, 4, size, t),
                false,
            )
            .expect("qcow2 fill");
            done += m.mib_per_s * (1 << 20) as f64 * t.as_secs_f64();
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..snapshots {
        let ok = Command::new("qemu-img")
            .args(["snapshot", "-c", &format!("s{i}")])
            .arg(&image)
            .status()
            .expect("qemu-img snapshot");
        assert!(ok.success(), "qemu-img snapshot -c failed");
    }
    let _qsd = serve();
    let m = randwrite(&sock, size, a.runtime);
    eprintln!("qcow2, {snapshots} snapshots: {:.0} IOPS", m.iops);
    m
}

fn pct(v: &[u64], q: f64) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(((s.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0)
}

#[derive(Serialize)]
struct Report {
    creates: Vec<CreateRun>,
    writes: Vec<WriteRow>,
    deletes: DeletePhase,
}

fn main() {
    let a = Args::parse();
    fs::create_dir_all(&a.dir).expect("bench dir");
    let creates: Vec<CreateRun> = a.sizes.iter().map(|s| create_run(&a, *s)).collect();
    let size = 1 << 30;
    let (mut writes, deletes) = keel_writes_and_deletes(&a, size);
    for row in writes.iter_mut().filter(|r| r.snapshots <= 10) {
        row.qcow2 = Some(qcow2_writes(&a, size, row.snapshots));
    }
    let _ = fs::remove_file(a.dir.join("snap.keel"));
    let _ = fs::remove_file(a.dir.join("snap.qcow2"));

    println!("Snapshot create while 4 KiB random writes run at depth 32 (keel engine):\n");
    println!(
        "| data on the disk | creates | latency median us | latency max us | write pause median us | write pause max us | write IOPS meanwhile |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for c in &creates {
        println!(
            "| {} GiB | {} | {} | {} | {} | {} | {:.0} |",
            c.size_gib,
            c.latency_us.len(),
            pct(&c.latency_us, 0.5),
            pct(&c.latency_us, 1.0),
            pct(&c.pause_us, 0.5),
            pct(&c.pause_us, 1.0),
            c.write_iops_during
        );
    }
    println!(
        "\n4 KiB random writes, depth 32, 1 GiB disk, after a sequential fill and {} bursts (median of {} runs):\n",
        bursts(&a),
        a.runs
    );
    println!(
        "| snapshots | keel IOPS | keel runs | keel p99 us | keel / no snapshots | qcow2 IOPS | qcow2 p99 us | keel / qcow2 |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    let base = writes.first().map_or(1.0, |r| r.keel.iops.max(1.0));
    for r in &writes {
        let (q, qp, ratio) = match r.qcow2 {
            Some(q) => (
                format!("{:.0}", q.iops),
                format!("{:.0}", q.lat_p99_us),
                format!("{:.2}", r.keel.iops / q.iops.max(1.0)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let each: Vec<String> = r.keel_runs_iops.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "| {} | {:.0} | {} | {:.0} | {:.2} | {q} | {qp} | {ratio} |",
            r.snapshots,
            r.keel.iops,
            each.join(", "),
            r.keel.lat_p99_us,
            r.keel.iops / base
        );
    }
    let d = &deletes.deletes;
    let answer: Vec<u64> = d.iter().map(|d| d.answer_us).collect();
    let back: Vec<u64> = d.iter().map(|d| d.reclaimed_us).collect();
    let changed: Vec<u64> = d.iter().map(|d| d.changed_blocks).collect();
    println!(
        "\nDelete, {} snapshots oldest first, while random writes run: answer median {} us, max {} us; blocks back after median {} us, max {} us; blocks changed after each: median {}, max {}",
        d.len(),
        pct(&answer, 0.5),
        pct(&answer, 1.0),
        pct(&back, 0.5),
        pct(&back, 1.0),
        pct(&changed, 0.5),
        pct(&changed, 1.0)
    );
    let same_row = writes.iter().find(|r| r.snapshots == d.len());
    if let (Some(big), Some(r)) = (d.iter().max_by_key(|d| d.changed_blocks), same_row) {
        println!(
            "the largest: {} changed blocks back in {} us ({:.0} blocks/s)",
            big.changed_blocks,
            big.reclaimed_us,
            big.changed_blocks as f64 / (big.reclaimed_us.max(1) as f64 / 1e6)
        );
        println!(
            "random writes meanwhile: {:.0} IOPS, p99 {:.0} us (with {} snapshots and no delete: {:.0} IOPS, p99 {:.0} us)",
            deletes.writes_meanwhile.iops,
            deletes.writes_meanwhile.lat_p99_us,
            r.snapshots,
            r.keel.iops,
            r.keel.lat_p99_us
        );
    }
    println!("\nJSON:");
    println!(
        "{}",
        serde_json::to_string_pretty(&Report {
            creates,
            writes,
            deletes
        })
        .unwrap_or_default()
    );
}
