//! What spare space buys: a keel disk per `spare` value, filled sequentially, overwritten at
//! random (once by default; its write amplification measured over the last overwrite, at
//! steady state), then timed 4 KiB random writes at depth 32. See docs/benchmarks.md, "Spare
//! space".
//!
//! Usage: spare_bench [--runs N] [--runtime SECS] [--size-mib N] [--overwrites N] [--dir DIR]
//! [SPARE...]
//! (default spares: 10% 20% 25% 50% 100%). Prints a markdown table.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use keel_backend::control::client::ControlClient;
use keel_protocol::control::DiskStats;
use keel_tests::bench::{self, ClientKind, Measurement, Pattern, RunOptions, Workload, median};
use keel_tests::bench_args;
use keel_tests::keeld::{keeld_binary_near_exe, spawn_keel_bench_disk_keys, wait_for_socket};

/// What spare space buys at steady state.
#[derive(Parser)]
struct Args {
    /// Runs of every spare value; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds of the timed random writes.
    #[arg(long, value_parser = bench_args::secs, default_value = "3")]
    runtime: Duration,
    /// The disk's size in MiB.
    #[arg(long = "size-mib", value_parser = bench_args::mib, default_value = "1024")]
    size: u64,
    /// Random overwrites of the whole disk before the timed writes: a disk's maps and free
    /// space settle over several (a VM's disk is overwritten many times in its life).
    #[arg(long, default_value_t = 1)]
    overwrites: u32,
    /// Where the containers go.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-spare-bench"))]
    dir: PathBuf,
    /// The `spare` values to measure.
    #[arg(default_values_t = ["10%", "20%", "25%", "50%", "100%"].map(String::from))]
    spares: Vec<String>,
}

/// One run of one spare value.
struct Run {
    container_mib: u64,
    write_amplification: f64,
    moved_per_guest_block: f64,
    /// Live metadata and the free space kept back from guest writes after the overwrites.
    metadata_mib: u64,
    kept_mib: u64,
    steady: Measurement,
}

fn stats(c: &ControlClient) -> DiskStats {
    c.get("/v1/disks/b/stats").expect("keeld stats")
}

fn one(a: &Args, spare: &str) -> Run {
    let extra = format!("spare = \"{spare}\"\n");
    let (_keeld, sock, ctl) =
        spawn_keel_bench_disk_keys(&keeld_binary_near_exe(), &a.dir, "spare", a.size, &extra);
    assert!(
        wait_for_socket(&sock, Duration::from_secs(30)),
        "keeld did not listen"
    );
    let ctl = ControlClient::new(&ctl);
    let wl = |pattern, block_size, queue_depth, runtime| Workload {
        pattern,
        block_size,
        queue_depth,
        span: a.size,
        runtime,
        warmup: Duration::ZERO,
    };
    bench::run_bytes(&sock, &wl(Pattern::SeqWrite, 1 << 20, 4, a.runtime), a.size).expect("fill");
    let mut before = stats(&ctl);
    let mut after = before.clone();
    for pass in 1..=a.overwrites.max(1) {
        before = after;
        // A new random sequence each pass: one that replays the last rewrites the blocks the
        // last wrote first, whose segments then empty without copying.
        let seeded = |seed| RunOptions {
            seed,
            ..RunOptions::new(ClientKind::Blkio, false)
        };
        let w = wl(Pattern::RandWrite, 4096, 32, a.runtime);
        bench::run_bytes_with(&sock, &w, &seeded(u64::from(pass)), a.size).expect("overwrite");
        after = stats(&ctl);
        if let Some(sp) = &after.space {
            eprintln!(
                "spare {spare} after overwrite {pass}: MiB live {}, metadata {}, reclaimable {}, \
                 free {}, spare {}, data {}",
                sp.live_bytes >> 20,
                sp.metadata_bytes >> 20,
                sp.reclaimable_bytes >> 20,
                sp.free_bytes >> 20,
                sp.spare_bytes >> 20,
                sp.data_bytes >> 20
            );
        }
    }
    let space = after.space.clone().unwrap_or_default();
    let guest = (after.written_bytes - before.written_bytes).max(1) as f64;
    let moved = |s: &DiskStats| s.cleaning.as_ref().map_or(0, |c| c.blocks_moved);
    let mut steady = wl(Pattern::RandWrite, 4096, 32, a.runtime);
    steady.warmup = Duration::from_millis(500);
    let opts = RunOptions {
        seed: u64::from(a.overwrites.max(1)) + 1,
        ..RunOptions::new(ClientKind::Blkio, false)
    };
    let steady = bench::run_with(&sock, &steady, &opts)
        .expect("steady random writes")
        .measurement;
    let container_mib = std::fs::metadata(a.dir.join("spare.keel")).map_or(0, |m| m.len() >> 20);
    Run {
        container_mib,
        write_amplification: (after.device_bytes_written - before.device_bytes_written) as f64
            / guest,
        moved_per_guest_block: (moved(&after) - moved(&before)) as f64 * 4096.0 / guest,
        metadata_mib: space.metadata_bytes >> 20,
        kept_mib: space.spare_bytes >> 20,
        steady,
    }
}

fn main() {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir).expect("bench dir");
    let mut results: Vec<Vec<Run>> = a.spares.iter().map(|_| Vec::new()).collect();
    for r in 0..a.runs {
        for (i, spare) in a.spares.iter().enumerate() {
            let run = one(&a, spare);
            eprintln!(
                "run {} spare {spare}: WA {:.2}, moved/guest {:.2}, {:.0} IOPS, p99 {:.0} us",
                r + 1,
                run.write_amplification,
                run.moved_per_guest_block,
                run.steady.iops,
                run.steady.lat_p99_us
            );
            results[i].push(run);
        }
    }
    let _ = std::fs::remove_file(a.dir.join("spare.keel"));
    println!(
        "Median of {} runs, {} MiB disk: sequential fill, {} random 4k overwrite(s) of the whole \
         disk (qd32; write amplification over the last), then {} s of 4k random writes at qd32.\n",
        a.runs,
        a.size >> 20,
        a.overwrites.max(1),
        a.runtime.as_secs_f64()
    );
    println!(
        "| spare | container MiB | write amp. | moved/guest block | metadata MiB | kept free MiB | steady 4k randwrite IOPS | p99 us | per-run IOPS | per-run WA |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    for (spare, runs) in a.spares.iter().zip(&results) {
        let m = median(&runs.iter().map(|r| r.steady).collect::<Vec<_>>());
        let per = |f: fn(&Run) -> String| runs.iter().map(f).collect::<Vec<_>>().join(", ");
        println!(
            "| {spare} | {} | {:.2} | {:.2} | {} | {} | {:.0} | {:.0} | {} | {} |",
            runs[0].container_mib,
            med(&mut runs.iter().map(|r| r.write_amplification).collect()),
            med(&mut runs.iter().map(|r| r.moved_per_guest_block).collect()),
            runs[0].metadata_mib,
            runs[0].kept_mib,
            m.iops,
            m.lat_p99_us,
            per(|r| format!("{:.0}", r.steady.iops)),
            per(|r| format!("{:.2}", r.write_amplification)),
        );
    }
}
