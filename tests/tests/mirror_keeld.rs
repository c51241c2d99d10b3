//! `keel-client verify` against keeld on a mirrored disk in the configuration users get (O_DIRECT,
//! default chunk), on both engines: a component is taken offline, written around and brought
//! back. Nothing acknowledged is lost, the resync copies only the chunks the component missed,
//! no component is ever marked failed (no fault is injected), and the components end identical.

mod client_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client_support::keel_client;
use keel_backend::control::client::ControlClient;
use keel_tests::keeld::InProcess;

const BLOCKS: &str = "2048";

/// A mirrored disk with nothing but its size set: `direct` is left at its default (true).
fn mirrored(engine: &str, size: &str) -> String {
    format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n[[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"{engine}\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"{size}\"\n"
    )
}

/// No fault is injected in these tests: a component marked failed is Keel's own error.
fn assert_nothing_failed(api: &ControlClient, engine: &str) {
    let status: serde_json::Value = api.get("/v1/disks/m/mirror").unwrap();
    for c in status["components"].as_array().unwrap() {
        assert_ne!(c["state"], "failed", "{engine}: {status}");
    }
    for e in status["events"].as_array().unwrap() {
        let e = e.as_str().unwrap_or_default();
        assert!(
            !e.contains("failed") && !e.contains("stopped"),
            "{engine}: {e}"
        );
    }
}

/// Chunks in which the two components' files differ.
fn differing_chunks(dir: &Path, chunk: usize) -> usize {
    let a = std::fs::read(dir.join("a.img")).unwrap();
    let b = std::fs::read(dir.join("b.img")).unwrap();
    assert_eq!(a.len(), b.len());
    a.chunks(chunk)
        .zip(b.chunks(chunk))
        .filter(|(x, y)| x != y)
        .count()
}

fn component(api: &ControlClient, n: usize) -> serde_json::Value {
    let status: serde_json::Value = api.get("/v1/disks/m/mirror").unwrap();
    status["components"][n].clone()
}

fn post(api: &ControlClient, what: &str) {
    let _: serde_json::Value = api
        .post(
            &format!("/v1/disks/m/mirror/1/{what}"),
            &serde_json::json!({}),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn verify_passes_with_a_component_taken_offline_mid_write_and_brought_back() {
    for engine in ["raw", "keel"] {
        let keeld = InProcess::start(&mirrored(engine, "16M"));
        let api = ControlClient::new(&keeld.dir().join("keel.sock"));
        let (socket, state) = (keeld.socket("m"), keeld.dir().join("verify.state"));
        let args = [
            "verify",
            s(&socket),
            "--state",
            s(&state),
            "--blocks",
            BLOCKS,
            "--flush-every",
            "64",
        ];
        let writer = Command::new(keel_client())
            .args(args)
            .args(["write", "--rounds", "0", "--duration", "4s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The state file appears at the first FLUSH: the writer is under way.
        wait_for("the writer's first flush", Duration::from_secs(30), || {
            std::fs::metadata(&state).is_ok_and(|m| m.len() > 0)
        });
        std::thread::sleep(Duration::from_millis(300));
        post(&api, "offline");
        assert_eq!(component(&api, 1)["state"], "offline", "{engine}");
        std::thread::sleep(Duration::from_millis(1000));
        post(&api, "online");
        // Tracking bits stop growing once the component takes writes again.
        let dirty = component(&api, 1)["dirty_chunks"].as_u64().unwrap();
        assert!(dirty > 0, "{engine}: writes while offline must be tracked");
        let out = writer.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{engine}: writer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for("the resync", Duration::from_secs(30), || {
            component(&api, 1)["state"] == "in_sync"
        });
        assert_nothing_failed(&api, engine);
        let chunk = 64 << 10;
        let copied = component(&api, 1)["resync_bytes_copied"].as_u64().unwrap();
        assert_eq!(copied, dirty * chunk, "{engine}: only the dirty chunks");
        if engine == "raw" {
            // The verify blocks cover the first half of the disk. (The keel engine's log may
            // touch every chunk of its small container in a second of writes.)
            assert!(copied <= 8 << 20, "{engine}: not a full copy");
        }

        let check = Command::new(keel_client())
            .args(args)
            .arg("check")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success(), "{engine}: {report}");
        assert!(
            report.contains(&format!("checked {BLOCKS} blocks: {BLOCKS} ok")),
            "{engine}: {report}"
        );
        let dir = keeld.stop();
        let differing = differing_chunks(dir.path(), chunk as usize);
        assert_eq!(
            differing, 0,
            "{engine}: components differ in {differing} chunks"
        );
    }
}

/// What a new user does by hand: fill the disk's first 16 MiB, take component 1 offline,
/// write 4 MiB, bring it back. The resync copies exactly the 4 MiB, both components end in
/// sync and identical, and after a restart (every component now reopened with O_DIRECT) the
/// disk still reads and writes.
#[test]
fn offline_write_online_in_the_default_config_copies_only_what_was_written() {
    let chunk = 64usize << 10;
    for engine in ["raw", "keel"] {
        let keeld = InProcess::start(&mirrored(engine, "64M"));
        let api = ControlClient::new(&keeld.dir().join("keel.sock"));
        // The directory (and the socket in it) stays the same across the restart below.
        let (socket, home) = (keeld.socket("m"), keeld.dir().to_path_buf());
        let verify = |state: &str, blocks: &str, seed: &str, what: &[&str]| {
            let out = Command::new(keel_client())
                .args(["verify", s(&socket), "--state"])
                .arg(home.join(state))
                .args(["--blocks", blocks, "--seed", seed])
                .args(what)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{engine}: verify {what:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        verify("fill.state", "4096", "1", &["write"]);
        post(&api, "offline");
        verify("dirty.state", "1024", "2", &["write"]);
        post(&api, "online");
        let dirty = component(&api, 1)["dirty_chunks"].as_u64().unwrap();
        wait_for("the resync", Duration::from_secs(60), || {
            component(&api, 1)["state"] == "in_sync"
        });
        assert_nothing_failed(&api, engine);
        let copied = component(&api, 1)["resync_bytes_copied"].as_u64().unwrap();
        assert_eq!(copied, dirty * chunk as u64, "{engine}: the dirty chunks");
        if engine == "raw" {
            assert_eq!(copied, 4 << 20, "{engine}: exactly what was written");
        } else {
            // The log writes the 4 MiB at new places, with its journal and maps besides: more
            // chunks, but far from the whole disk.
            assert!(
                (4 << 20..32 << 20).contains(&copied),
                "{engine}: copied {copied}"
            );
        }
        let report = verify("dirty.state", "1024", "2", &["check"]);
        assert!(report.contains("1024 ok"), "{engine}: {report}");
        let dir = keeld.stop();
        assert_eq!(differing_chunks(dir.path(), chunk), 0, "{engine}");

        let keeld = InProcess::start_in(dir, &mirrored(engine, "64M"));
        let api = ControlClient::new(&keeld.dir().join("keel.sock"));
        verify("after.state", "256", "3", &["both"]);
        for n in 0..2 {
            let c = component(&api, n);
            assert_eq!(c["state"], "in_sync", "{engine}: {c}");
            assert_eq!(
                c["resync_bytes_copied"], 0,
                "{engine}: a clean restart copies nothing"
            );
        }
        assert_nothing_failed(&api, engine);
        let dir = keeld.stop();
        assert_eq!(differing_chunks(dir.path(), chunk), 0, "{engine}");
    }
}

#[test]
fn the_resync_rate_is_set_in_the_config_and_changed_live() {
    let config = mirrored("raw", "64M").replace(
        "size = \"64M\"\n",
        "size = \"64M\"\nresync_bps_limit = \"256K\"\n",
    );
    let keeld = InProcess::start(&config);
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let rate = |api: &ControlClient| {
        let status: serde_json::Value = api.get("/v1/disks/m/mirror").unwrap();
        let limits: serde_json::Value = api.get("/v1/disks/m/limits").unwrap();
        assert_eq!(status["resync_bps_limit"], limits["resync_bps_limit"]);
        status["resync_bps_limit"].as_u64().unwrap()
    };
    assert_eq!(rate(&api), 256 << 10);

    post(&api, "offline");
    let out = Command::new(keel_client())
        .args(["verify", s(&keeld.socket("m")), "--state"])
        .arg(keeld.dir().join("v.state"))
        .args(["--blocks", "1024", "write"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
    post(&api, "online");
    // 4 MiB at 256 KiB/s takes 16 s: the resync is still running.
    let c = component(&api, 1);
    assert_eq!(c["state"], "resyncing", "{c}");
    assert!(c["dirty_chunks"].as_u64().unwrap() > 0, "{c}");

    let _: serde_json::Value = api
        .call(
            "PUT",
            "/v1/disks/m/limits",
            Some(&serde_json::json!({"resync_bps_limit": 0})),
        )
        .unwrap();
    assert_eq!(rate(&api), 0);
    wait_for("the unlimited resync", Duration::from_secs(60), || {
        component(&api, 1)["state"] == "in_sync"
    });
    assert_nothing_failed(&api, "raw");
    let dir = keeld.stop();
    assert_eq!(differing_chunks(dir.path(), 64 << 10), 0);
}
