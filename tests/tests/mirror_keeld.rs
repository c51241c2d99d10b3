//! `keel-client verify` against keeld on a mirrored disk: a component is taken offline in the
//! middle of the writes and brought back while they go on. Nothing acknowledged is lost, the
//! resync copies only the chunks the component missed, and the components end identical.

mod client_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use client_support::keel_client;
use keel_backend::control::client::ControlClient;
use keel_tests::keeld::InProcess;

const BLOCKS: &str = "2048";

fn mirrored(engine: &str) -> String {
    format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n[[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"{engine}\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"16M\"\ndirect = false\n"
    )
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
        let keeld = InProcess::start(&mirrored(engine));
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
        let a = std::fs::read(dir.path().join("a.img")).unwrap();
        let b = std::fs::read(dir.path().join("b.img")).unwrap();
        let differing = a
            .chunks(chunk as usize)
            .zip(b.chunks(chunk as usize))
            .filter(|(x, y)| x != y)
            .count();
        assert_eq!(
            differing, 0,
            "{engine}: components differ in {differing} chunks"
        );
    }
}
