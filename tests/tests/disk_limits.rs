//! Per-disk I/O limits, measured with the keel-client guest driver against keeld: a disk
//! limited in IOPS and one limited in bytes per second get their rate within 10 % (the byte
//! limit is measured with reads: the first writes to a fresh sparse image are bound by the
//! host's block allocation, not by the limit), while an
//! unlimited disk of the same keeld, driven at the same time, runs far faster; limits changed
//! through `keel limits` apply at once.

mod client_support;

use std::path::Path;
use std::process::{Command, Output};

use client_support::keel_client;
use keel_backend::control::client::ControlClient;
use keel_tests::keeld::{InProcess, keel_binary, raw_disk};

/// Runs keel-client's bench against `socket` and returns its JSON report.
fn bench(socket: &Path, rw: &str, bs: &str, runtime: &str) -> serde_json::Value {
    let out = Command::new(keel_client())
        .arg("bench")
        .arg(socket)
        .args(["--rw", rw, "--bs", bs, "--runtime", runtime])
        .args(["--iodepth", "16", "--json"])
        .output()
        .expect("run keel-client");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bench JSON")
}

fn keel(keeld: &InProcess, args: &[&str]) -> Output {
    Command::new(keel_binary())
        .arg("--control")
        .arg(keeld.dir().join("ctl.sock"))
        .args(args)
        .output()
        .expect("run keel")
}

fn keel_json(keeld: &InProcess, args: &[&str]) -> serde_json::Value {
    let out = keel(keeld, args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).expect("keel --json")
}

fn within_10_percent(got: f64, limit: f64) -> bool {
    (got - limit).abs() <= limit * 0.10
}

/// The value of `series{disk="<disk>"}` in a metrics answer.
fn metric(text: &str, series: &str, disk: &str) -> f64 {
    let prefix = format!("{series}{{disk=\"{disk}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn limited_disks_get_their_rate_and_an_unlimited_one_beside_them_is_unaffected() {
    let keeld = InProcess::start(&format!(
        "[server]\ncontrol_socket = \"ctl.sock\"\n{}{}{}",
        raw_disk("capped", "64M", "queues = 2\niops_limit = 2000"),
        raw_disk("narrow", "64M", "bps_limit = \"16M\""),
        raw_disk("free", "64M", "queues = 2"),
    ));
    let (capped, narrow, free) = std::thread::scope(|s| {
        let capped = s.spawn(|| bench(&keeld.socket("capped"), "randread", "4k", "3s"));
        let narrow = s.spawn(|| bench(&keeld.socket("narrow"), "randread", "64k", "3s"));
        let free = s.spawn(|| bench(&keeld.socket("free"), "randread", "4k", "3s"));
        (
            capped.join().unwrap(),
            narrow.join().unwrap(),
            free.join().unwrap(),
        )
    });
    let capped_iops = capped["iops"].as_f64().unwrap();
    let narrow_mib = narrow["mib_per_s"].as_f64().unwrap();
    let free_iops = free["iops"].as_f64().unwrap();
    eprintln!(
        "capped {capped_iops:.0} IOPS, narrow {narrow_mib:.1} MiB/s, free {free_iops:.0} IOPS"
    );
    assert!(within_10_percent(capped_iops, 2000.0), "{capped}");
    assert!(within_10_percent(narrow_mib, 16.0), "{narrow}");
    assert!(
        free_iops > 3.0 * capped_iops,
        "the unlimited disk ran at {free_iops:.0} IOPS beside {capped_iops:.0}"
    );

    let stats = keel_json(&keeld, &["stats", "capped", "--json"]);
    assert!(
        stats["throttled_seconds"].as_f64().unwrap() > 1.0,
        "{stats}"
    );
    assert!(
        stats["throttled_requests"].as_u64().unwrap() > 1000,
        "{stats}"
    );
    let (status, body) = ControlClient::new(&keeld.dir().join("ctl.sock"))
        .raw("GET", "/metrics", b"")
        .unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let series = "keel_disk_throttled_seconds_total";
    assert!(metric(&text, series, "capped") > 1.0);
    assert!(metric(&text, series, "narrow") > 1.0);
    assert_eq!(metric(&text, series, "free"), 0.0);
    assert_eq!(
        metric(&text, "keel_disk_throttled_requests_total", "free"),
        0.0
    );
}

#[test]
fn limits_set_with_keel_limits_apply_at_once_and_are_checked() {
    let keeld = InProcess::start(&format!(
        "[server]\ncontrol_socket = \"ctl.sock\"\n{}",
        raw_disk("d", "64M", "")
    ));
    let shown = keel_json(&keeld, &["limits", "d", "--json"]);
    assert_eq!(shown["iops_limit"], 0);
    assert_eq!(shown["burst_seconds"], 1);

    let set = keel_json(&keeld, &["limits", "d", "--iops", "1000", "--json"]);
    assert_eq!(set["iops_limit"], 1000);
    let run = bench(&keeld.socket("d"), "randread", "4k", "2s");
    let iops = run["iops"].as_f64().unwrap();
    assert!(within_10_percent(iops, 1000.0), "{run}");

    // Lifted: the same run goes far faster.
    keel_json(&keeld, &["limits", "d", "--iops", "0", "--json"]);
    let run = bench(&keeld.socket("d"), "randread", "4k", "2s");
    let unlimited = run["iops"].as_f64().unwrap();
    assert!(unlimited > 3.0 * iops, "{unlimited:.0} IOPS after lifting");

    for (args, says) in [
        (&["--iops-burst", "10"][..], "`iops_burst`"),
        (&["--iops", "100", "--iops-burst", "50"], "below iops_limit"),
        (&["--burst-seconds", "0"], "`burst_seconds`"),
        (&["--resync-bps", "1M"], "not mirrored"),
    ] {
        let out = keel(&keeld, &[&["limits", "d"][..], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let unchanged = keel_json(&keeld, &["limits", "d", "--json"]);
    assert_eq!(unchanged, shown, "a refused change changes nothing");
}
