//! Write-and-flush at depth 1 (fio's `--fsync=1`): every 4 KiB random write is followed by a
//! FLUSH, the pattern of a database or a journaling file system committing. Each keeld binary
//! named serves a new keel-engine disk with the defaults (O_DIRECT); the runs alternate between
//! them, so two builds can be compared on a noisy machine. Prints a table and JSON.
//!
//! `flush_bench --keeld A [--keeld B] [--runs 3] [--seconds 5] [--size BYTES]`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_tests::bench::{Measurement, median};
use keel_tests::client::Client;
use keel_tests::keeld::{spawn_keel_bench_disk_with, wait_for_socket};

#[derive(Parser, Debug)]
#[command(about = "4 KiB random write + FLUSH at depth 1 against keel-engine disks")]
struct Args {
    /// keeld binaries to compare (each run starts a new disk on each).
    #[arg(long, required = true)]
    keeld: Vec<PathBuf>,
    /// Runs per binary (the table shows medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Disk size in bytes; offsets range over all of it.
    #[arg(long, default_value_t = 1 << 30)]
    size: u64,
}

/// One run: write+flush pairs for `secs` seconds; latency is that of the pair.
fn run(c: &mut Client, size: u64, secs: u64, seed: u64) -> Result<Measurement, String> {
    let blocks = size / 4096;
    let mut x = seed | 1;
    let data = vec![0x5au8; 4096];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let t = Instant::now();
        c.write(0, (x % blocks) * 4096, &data)
            .map_err(|e| format!("write: {e:?}"))?;
        c.flush(0).map_err(|e| format!("flush: {e:?}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Ok(Measurement {
        iops: lat.len() as f64 / secs,
        mib_per_s: lat.len() as f64 * 4096.0 / secs / (1 << 20) as f64,
        lat_mean_us: lat.iter().sum::<f64>() / lat.len() as f64,
        lat_p50_us: at(0.5),
        lat_p99_us: at(0.99),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); args.keeld.len()];
    for r in 0..args.runs {
        for (i, bin) in args.keeld.iter().enumerate() {
            let stem = format!("f{i}");
            let (_server, sock, _ctl) =
                spawn_keel_bench_disk_with(bin, dir.path(), &stem, args.size);
            if !wait_for_socket(&sock, Duration::from_secs(30)) {
                eprintln!("{}: keeld did not listen", bin.display());
                return ExitCode::FAILURE;
            }
            let m = Client::connect(&sock, 1, 1 << 20)
                .map_err(|e| format!("connect: {e:?}"))
                .and_then(|mut c| run(&mut c, args.size, args.seconds, 0x9e37 + r as u64));
            match m {
                Ok(m) => {
                    eprintln!("run {r} {}: {:.0} write+flush/s", bin.display(), m.iops);
                    results[i].push(m);
                }
                Err(e) => {
                    eprintln!("{}: {e}", bin.display());
                    return ExitCode::FAILURE;
                }
            }
            let _ = std::fs::remove_file(dir.path().join(format!("{stem}.keel")));
        }
    }
    println!("| keeld | write+flush/s | mean us | p50 us | p99 us |");
    println!("|---|---:|---:|---:|---:|");
    let mut json = Vec::new();
    for (bin, ms) in args.keeld.iter().zip(&results) {
        let m = median(ms);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            bin.display(),
            m.iops,
            m.lat_mean_us,
            m.lat_p50_us,
            m.lat_p99_us
        );
        json.push(serde_json::json!({
            "keeld": bin.display().to_string(),
            "median": m,
            "runs": ms,
        }));
    }
    println!("{}", serde_json::Value::Array(json));
    ExitCode::SUCCESS
}
