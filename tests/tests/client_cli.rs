//! The `keel-client` binary against qemu-storage-daemon: info, bench, and verify catching a
//! corrupted block and surviving a server crash.

mod client_support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use client_support::{Qsd, keel_client};

const MIB: u64 = 1 << 20;

fn run(args: &[&str]) -> Output {
    Command::new(keel_client())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run keel-client")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn info_reports_what_the_server_offers() {
    let qsd = Qsd::file(8 * MIB, 2);
    let out = run(&["info", path(&qsd.socket), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["capacity_bytes"], 8 * MIB);
    assert_eq!(v["device_queues"], 2);
    assert_eq!(v["block_size"], 512);
    let features: Vec<&str> = v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "VERSION_1",
        "FLUSH",
        "MQ",
        "RING_EVENT_IDX",
        "RING_INDIRECT_DESC",
    ] {
        assert!(features.contains(&f), "{f} missing from {features:?}");
    }
    assert!(v["serial"].as_str().is_some_and(|s| !s.is_empty()));

    let text = run(&["info", path(&qsd.socket)]);
    assert!(stdout(&text).contains("capacity:          8388608 bytes"));
}

#[test]
fn info_without_a_server_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["info", path(&dir.path().join("none.sock"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no vhost-user socket"));
}

#[test]
fn bench_reports_rates_and_latencies() {
    let qsd = Qsd::null(256 * MIB, 2);
    for extra in [
        &["--rw", "randread"][..],
        &["--rw", "randwrite", "--poll"],
        &["--rw", "randrw", "--queues", "1"],
    ] {
        let mut args = vec![
            "bench",
            path(&qsd.socket),
            "--runtime",
            "1s",
            "--json",
            "--iodepth",
            "8",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success(), "{extra:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ops = |dir: &str| v[dir]["ops"].as_u64().unwrap_or(0);
        match extra[1] {
            "randread" => assert!(ops("read") > 0 && v["write"].is_null()),
            "randwrite" => assert!(ops("write") > 0 && v["read"].is_null()),
            _ => assert!(ops("read") > 0 && ops("write") > 0),
        }
        let dir = if v["read"].is_null() { "write" } else { "read" };
        let lat = &v[dir];
        let p50 = lat["lat_p50_us"].as_f64().unwrap();
        let p99 = lat["lat_p99_us"].as_f64().unwrap();
        let max = lat["lat_max_us"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{lat}");
    }
    let too_big = run(&[
        "bench",
        path(&qsd.socket),
        "--runtime",
        "1s",
        "--size",
        "1G",
    ]);
    assert!(!too_big.status.success());
    assert!(String::from_utf8_lossy(&too_big.stderr).contains("device too small"));
}

#[test]
fn verify_catches_a_block_corrupted_in_the_image() {
    let qsd = Qsd::file(16 * MIB, 1);
    let state = qsd.dir.path().join("verify.state");
    let common = ["--state", path(&state), "--blocks", "2048", "--bs", "4k"];
    let mut args = vec!["verify", path(&qsd.socket)];
    args.extend_from_slice(&common);
    let both = run(&[&args[..], &["both"]].concat());
    assert!(both.status.success(), "{both:?}");
    assert!(stdout(&both).contains("checked 2048 blocks: 2048 ok"));

    // Flip bytes inside block 77's payload, behind the server's back.
    let img = std::fs::OpenOptions::new()
        .write(true)
        .open(qsd.image.as_ref().unwrap())
        .unwrap();
    img.write_all_at(&[0xde, 0xad], 77 * 4096 + 1000).unwrap();
    img.sync_all().unwrap();

    // The state file records --blocks and --bs: `check` needs only the socket and the state.
    let check = run(&[
        "verify",
        path(&qsd.socket),
        "--state",
        path(&state),
        "check",
        "--json",
    ]);
    assert_eq!(check.status.code(), Some(2), "{check:?}");
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(v["check"]["corrupt"], 1);
    assert_eq!(v["check"]["ok"], 2047);
    assert_eq!(v["check"]["first_offenders"][0]["block"], 77);
    assert_eq!(v["check"]["first_offenders"][0]["offset"], 77 * 4096);
}

#[test]
fn verify_catches_a_lost_write() {
    let qsd = Qsd::file(16 * MIB, 1);
    let state = qsd.dir.path().join("verify.state");
    let args = [
        "verify",
        path(&qsd.socket),
        "--state",
        path(&state),
        "--blocks",
        "256",
    ];
    // Generation 1 of block 9, saved aside; then a second pass overwrites it.
    assert!(run(&[&args[..], &["write"]].concat()).status.success());
    let img = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(qsd.image.as_ref().unwrap())
        .unwrap();
    let mut old = vec![0u8; 4096];
    img.read_exact_at(&mut old, 9 * 4096).unwrap();
    assert!(run(&[&args[..], &["write"]].concat()).status.success());
    // Put the old generation back: the disk "lost" the acknowledged, flushed write.
    img.write_all_at(&old, 9 * 4096).unwrap();
    img.sync_all().unwrap();
    let check = run(&[&args[..], &["check"]].concat());
    assert_eq!(check.status.code(), Some(2));
    let text = stdout(&check);
    assert!(text.contains("1 lost"), "{text}");
    assert!(text.contains("block 9 (offset 36864): lost"), "{text}");
}

#[test]
fn verify_survives_a_server_crash_mid_write() {
    let mut qsd = Qsd::file(16 * MIB, 2);
    let state = qsd.dir.path().join("verify.state");
    let args = [
        "verify",
        path(&qsd.socket),
        "--state",
        path(&state),
        "--blocks",
        "1024",
        "--flush-every",
        "64",
    ]
    .map(String::from);
    let writer = Command::new(keel_client())
        .args(&args)
        .args(["write", "--rounds", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it write a while (until the state file shows progress), then crash the server.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "writer made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    qsd.kill();
    let out = writer.wait_with_output().unwrap();
    assert!(!out.status.success(), "the writer must notice the crash");
    assert!(String::from_utf8_lossy(&out.stderr).contains("closed the connection"));

    qsd.restart();
    let check = Command::new(keel_client())
        .args(&args)
        .arg("check")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stdout(&check));
    // Writing resumes from the crashed state, and the result checks out.
    let both = Command::new(keel_client())
        .args(&args)
        .arg("both")
        .output()
        .unwrap();
    assert!(both.status.success(), "{both:?}");
    assert!(stdout(&both).contains("checked 1024 blocks: 1024 ok"));
}
