//! Snapshots on a live keel disk, and qemu-storage-daemon's qcow2 internal snapshots as the
//! peer: the same blkio client and workloads in one run. See docs/benchmarks.md.
//!
//! Usage: snapshot_bench [--sizes-gib 1,16] [--runtime SECS] [--creates N] [--dir DIR]
//! Prints markdown tables and, after a line "JSON:", the raw numbers.
//!
//! Random writes go to the first `size` bytes (the data written first); the disks are 8 GiB
//! larger, since snapshots pin what the writes overwrite and a keel container does not grow.
//!
//! - Create: on a disk holding `size` of data, while 4 KiB random writes run at depth 32,
//!   snapshots are created one after another; each create's round trip through the control
//!   API and the time keeld held guest writes back (`pause_us` in its answer).
//! - Write IOPS with 0, 10 and 100 snapshots (1 GiB disk, each snapshot after a burst of
//!   random writes so that they differ), against qcow2 with 0 and 10 internal snapshots made
//!   with `qemu-img snapshot -c` before the run.
//! - Delete: each of the 100 snapshots, oldest first, timed, with the blocks it changed from
//!   its predecessor (what deleting it can free).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_protocol::control::{CreateSnapshot, DiskStats, SnapshotInfo};
use keel_tests::bench::{self, Measurement, Pattern, Running, Workload};
use keel_tests::keeld::{spawn_keel_bench_disk, wait_for_socket};
use serde::Serialize;

struct Args {
    sizes: Vec<u64>,
    runtime: Duration,
    creates: usize,
    dir: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        sizes: vec![1 << 30, 16 << 30],
        runtime: Duration::from_secs(4),
        creates: 20,
        dir: std::env::temp_dir().join("keel-snapshot-bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--sizes-gib" => {
                a.sizes = val()
                    .split(',')
                    .map(|s| s.parse::<u64>().expect("--sizes-gib 1,16") << 30)
                    .collect()
            }
            "--runtime" => a.runtime = Duration::from_secs_f64(val().parse().expect("--runtime S")),
            "--creates" => a.creates = val().parse().expect("--creates N"),
            "--dir" => a.dir = PathBuf::from(val()),
            other => {
                if other != "--help" {
                    eprintln!("snapshot_bench: unknown argument {other}");
                }
                eprintln!(
                    "usage: snapshot_bench [--sizes-gib 1,16] [--runtime SECONDS] [--creates N] \
                     [--dir DIR]"
                );
                std::process::exit(if other == "--help" { 0 } else { 2 });
            }
        }
    }
    a
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
    keel: Measurement,
    qcow2: Option<Measurement>,
}

#[derive(Debug, Default, Serialize)]
struct DeleteRow {
    name: String,
    /// Blocks that differ between it and the next tree: what its deletion may free.
    changed_blocks: u64,
    micros: u64,
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

fn keel_writes_and_deletes(a: &Args, size: u64) -> (Vec<WriteRow>, Vec<DeleteRow>) {
    let k = start_keeld(&a.dir, disk_for(size));
    let written = || {
        k.ctl
            .get::<DiskStats>("/v1/disks/b/stats")
            .map_or(0, |s| s.written_bytes)
    };
    fill(&k.sock, size, written);
    let burst = Duration::from_millis(20);
    let mut rows = Vec::new();
    let mut made = 0;
    for target in [0usize, 10, 100] {
        while made < target {
            self::burst(&k.sock, size, burst);
            create_snapshot(&k.ctl, &format!("s{made}"));
            made += 1;
        }
        let m = randwrite(&k.sock, size, a.runtime);
        eprintln!("keel, {target} snapshots: {:.0} IOPS", m.iops);
        rows.push(WriteRow {
            snapshots: target,
            keel: m,
            qcow2: None,
        });
    }
    let mut deletes = Vec::new();
    for i in 0..made {
        let name = format!("s{i}");
        let next = if i + 1 < made {
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
        deletes.push(DeleteRow {
            name,
            changed_blocks: changed,
            micros: t.elapsed().as_micros() as u64,
        });
    }
    (rows, deletes)
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
    deletes: Vec<DeleteRow>,
}

fn main() {
    let a = parse_args();
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
    println!("\n4 KiB random writes, depth 32, 1 GiB disk, after a sequential fill:\n");
    println!(
        "| snapshots | keel IOPS | keel p99 us | keel / no snapshots | qcow2 IOPS | qcow2 p99 us | keel / qcow2 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
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
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {q} | {qp} | {ratio} |",
            r.snapshots,
            r.keel.iops,
            r.keel.lat_p99_us,
            r.keel.iops / base
        );
    }
    let times: Vec<u64> = deletes.iter().map(|d| d.micros).collect();
    let changed: Vec<u64> = deletes.iter().map(|d| d.changed_blocks).collect();
    println!(
        "\nDelete, {} snapshots oldest first: median {} us, max {} us; blocks changed after each: median {}, max {}",
        deletes.len(),
        pct(&times, 0.5),
        pct(&times, 1.0),
        pct(&changed, 0.5),
        pct(&changed, 1.0)
    );
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
