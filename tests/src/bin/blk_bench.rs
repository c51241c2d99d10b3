//! One workload against one vhost-user-blk socket; prints JSON. For profiling and quick checks.
//!
//! Usage: blk_bench --socket PATH [--rw randread|randwrite|write] [--bs BYTES] [--qd N]
//!                  [--runtime SECS] [--span BYTES] [--spin]

use std::path::PathBuf;
use std::time::Duration;

use keel_tests::bench::{self, Pattern, Workload};

fn main() {
    let mut socket = None;
    let mut w = Workload {
        pattern: Pattern::RandRead,
        block_size: 4096,
        queue_depth: 1,
        span: 1 << 30,
        runtime: Duration::from_secs(5),
        warmup: Duration::from_millis(500),
    };
    let mut spin = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(val())),
            "--rw" => {
                w.pattern = match val().as_str() {
                    "randread" => Pattern::RandRead,
                    "randwrite" => Pattern::RandWrite,
                    "write" => Pattern::SeqWrite,
                    other => panic!("unknown pattern {other}"),
                }
            }
            "--bs" => w.block_size = val().parse().expect("--bs BYTES"),
            "--qd" => w.queue_depth = val().parse().expect("--qd N"),
            "--runtime" => w.runtime = Duration::from_secs_f64(val().parse().expect("--runtime S")),
            "--span" => w.span = val().parse().expect("--span BYTES"),
            "--spin" => spin = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let socket = socket.expect("--socket PATH");
    match bench::run(&socket, &w, spin) {
        Ok(m) => println!(
            "{{\"workload\": \"{}\", \"result\": {}}}",
            w.label(),
            serde_json::to_string(&m).unwrap_or_default()
        ),
        Err(e) => {
            eprintln!("blk_bench: {e}");
            std::process::exit(1);
        }
    }
}
