//! What the cleaner's victim policy buys on skewed writes: a keel disk per policy (`greedy`,
//! `cost-benefit`) and workload (uniform, 90/10 hot set, Zipf 1.2), filled sequentially, then
//! overwritten once with the workload to reach steady state, then overwritten once more while
//! the write amplification and throughput are measured. See docs/benchmarks.md, "Skewed
//! writes".
//!
//! Prints a markdown table on stdout and, with `--json`, the per-run figures as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_backend::control::client::ControlClient;
use keel_protocol::control::DiskStats;
use keel_tests::bench::{self, ClientKind, Pattern, RunOptions, Workload};
use keel_tests::keeld::{keeld_binary_near_exe, spawn_keel_bench_disk_keys, wait_for_socket};
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// Runs of every case; the table shows medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The disk's size in MiB (its container adds the default spare).
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Where the containers go (one at a time, removed after).
    #[arg(long, default_value_os_t = std::env::temp_dir().join("keel-skew-bench"))]
    dir: PathBuf,
    /// Print the per-run figures as JSON after the table.
    #[arg(long)]
    json: bool,
    /// Only the workloads whose name contains this ("uniform", "90/10", "zipf").
    #[arg(long)]
    only: Option<String>,
}

/// One run of one case.
#[derive(Clone, Debug, Serialize)]
struct Run {
    policy: &'static str,
    workload: &'static str,
    /// Container bytes written per guest byte over the measured overwrite.
    write_amplification: f64,
    /// Blocks the cleaner moved per guest block written.
    moved_per_guest_block: f64,
    /// Checkpoints taken over the measured overwrite (each rewrites the map nodes dirtied
    /// since the one before: most of the write amplification that is not data).
    checkpoints: u64,
    /// Guest writes per second over the measured overwrite (4 KiB, depth 32).
    iops: f64,
}

const POLICIES: [&str; 2] = ["greedy", "cost-benefit"];
const WORKLOADS: [(&str, Pattern); 3] = [
    ("uniform", Pattern::RandWrite),
    ("90/10 hot set", Pattern::HotWrite),
    ("zipf 1.2", Pattern::ZipfWrite),
];

fn stats(c: &ControlClient) -> DiskStats {
    c.get("/v1/disks/b/stats").expect("keeld stats")
}

fn one(a: &Args, policy: &'static str, name: &'static str, pattern: Pattern) -> Run {
    let size = a.size_mib << 20;
    let extra = format!("cleaner_policy = \"{policy}\"\n");
    let (_keeld, sock, ctl) =
        spawn_keel_bench_disk_keys(&keeld_binary_near_exe(), &a.dir, "skew", size, &extra);
    assert!(
        wait_for_socket(&sock, Duration::from_secs(30)),
        "keeld did not listen"
    );
    let ctl = ControlClient::new(&ctl);
    let wl = |pattern, block_size, queue_depth| Workload {
        pattern,
        block_size,
        queue_depth,
        span: size,
        runtime: Duration::ZERO,
        warmup: Duration::ZERO,
    };
    bench::run_bytes(&sock, &wl(Pattern::SeqWrite, 1 << 20, 4), size).expect("fill");
    // Each overwrite draws its own sequence (the same skew, other blocks in another order):
    // one that replayed the warm-up would rewrite the blocks it wrote first, in order.
    let seeded = |seed| RunOptions {
        seed,
        ..RunOptions::new(ClientKind::Blkio, false)
    };
    bench::run_bytes_with(&sock, &wl(pattern, 4096, 32), &seeded(1), size)
        .expect("warm-up overwrite");
    let before = stats(&ctl);
    let started = Instant::now();
    bench::run_bytes_with(&sock, &wl(pattern, 4096, 32), &seeded(2), size)
        .expect("measured overwrite");
    let took = started.elapsed().as_secs_f64();
    let after = stats(&ctl);
    let guest = (after.written_bytes - before.written_bytes).max(1) as f64;
    let moved = |s: &DiskStats| s.cleaning.as_ref().map_or(0, |c| c.blocks_moved);
    let checkpoints = |s: &DiskStats| s.cleaning.as_ref().map_or(0, |c| c.checkpoints);
    Run {
        policy,
        workload: name,
        write_amplification: (after.device_bytes_written - before.device_bytes_written) as f64
            / guest,
        moved_per_guest_block: (moved(&after) - moved(&before)) as f64 * 4096.0 / guest,
        checkpoints: checkpoints(&after) - checkpoints(&before),
        iops: guest / 4096.0 / took,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir).expect("bench dir");
    let mut runs = Vec::new();
    for r in 0..a.runs {
        let picked = WORKLOADS
            .into_iter()
            .filter(|(name, _)| a.only.as_deref().is_none_or(|o| name.contains(o)));
        for (name, pattern) in picked {
            for policy in POLICIES {
                let run = one(&a, policy, name, pattern);
                eprintln!(
                    "run {} {name} {policy}: WA {:.2}, moved/guest {:.2}, {} checkpoints, {:.0} IOPS",
                    r + 1,
                    run.write_amplification,
                    run.moved_per_guest_block,
                    run.checkpoints,
                    run.iops
                );
                runs.push(run);
            }
        }
    }
    let _ = std::fs::remove_file(a.dir.join("skew.keel"));
    println!(
        "Median of {} runs, {} MiB disk, default spare: sequential fill, one 4k overwrite of the \
         disk's size with the workload (qd32) to reach steady state, then one more, measured.\n",
        a.runs, a.size_mib
    );
    println!("| workload | policy | write amp. | moved/guest block | 4k write IOPS | per-run WA |");
    println!("|---|---|---:|---:|---:|---|");
    for (name, _) in WORKLOADS {
        for policy in POLICIES {
            let case: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == name && r.policy == policy)
                .collect();
            if case.is_empty() {
                continue;
            }
            let per = case
                .iter()
                .map(|r| format!("{:.2}", r.write_amplification))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "| {name} | {policy} | {:.2} | {:.2} | {:.0} | {per} |",
                median(case.iter().map(|r| r.write_amplification).collect()),
                median(case.iter().map(|r| r.moved_per_guest_block).collect()),
                median(case.iter().map(|r| r.iops).collect()),
            );
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).expect("runs as JSON")
        );
    }
}
