//! A mirror with a remote leg: a local file and an NBD export (`qemu-nbd`, or another keeld's
//! NBD server), in the configuration users get (O_DIRECT, default chunk). The server is killed
//! with -9 while the guest writes: the guest sees no error, the leg goes offline and is
//! tracked; when the server is back the leg reconnects and resyncs on its own, copying about
//! what was written meanwhile, and the two legs end identical.

mod client_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client_support::keel_client;
use keel_backend::control::client::ControlClient;
use keel_tests::keeld::{InProcess, wait_for_socket};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 64 << 10;

/// The server of the remote leg: `qemu-nbd`, or a second keeld serving the image as a raw
/// disk with an `nbd_socket`. Either serves export `d` on `socket`; killed on drop.
#[derive(Clone, Copy, Debug)]
enum Server {
    QemuNbd,
    Keeld,
}

struct RemoteLeg {
    child: Child,
}

impl RemoteLeg {
    fn start(server: Server, image: &Path, socket: &Path) -> Self {
        let _ = std::fs::remove_file(socket);
        let mut cmd = match server {
            Server::QemuNbd => {
                let mut c = Command::new("qemu-nbd");
                c.args(["-f", "raw", "--persistent", "-x", "d", "--cache=none", "-k"])
                    .arg(socket)
                    .arg(image);
                c
            }
            Server::Keeld => {
                let dir = image.parent().unwrap();
                let config = dir.join("remote.toml");
                std::fs::write(
                    &config,
                    format!(
                        "[server]\nnbd_socket = \"{}\"\n\n[[disk]]\nname = \"d\"\n\
                         socket = \"d.sock\"\nengine = \"raw\"\npath = \"{}\"\n",
                        socket.display(),
                        image.display()
                    ),
                )
                .unwrap();
                let mut c = Command::new(keel_tests::keeld::keeld_binary());
                c.arg("--config").arg(config);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{server:?} (run qemu/prepare.sh): {e}"));
        assert!(
            wait_for_socket(socket, Duration::from_secs(10)),
            "{server:?} did not start"
        );
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RemoteLeg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The export's size: a keel container of a 64 MiB disk takes more than the disk's size.
fn export_len(engine: &str) -> u64 {
    match engine {
        "raw" => 64 * MIB,
        _ => 160 * MIB,
    }
}

fn component(api: &ControlClient, n: usize) -> serde_json::Value {
    let status: serde_json::Value = api.get("/v1/disks/m/mirror").unwrap();
    status["components"][n].clone()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn verify(socket: &Path, state: PathBuf, blocks: &str, seed: &str, what: &str) -> String {
    let out = Command::new(keel_client())
        .arg("verify")
        .arg(socket)
        .arg("--state")
        .arg(state)
        .args(["--blocks", blocks, "--seed", seed, what])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_qemu_nbd_leg_killed_under_writes_comes_back_and_resyncs_on_its_own() {
    for engine in ["raw", "keel"] {
        remote_leg_comes_back(Server::QemuNbd, engine);
    }
}

/// Two keelds: one's disk mirrored onto the other's NBD export; the remote keeld is killed
/// with -9 and started again.
#[test]
fn a_leg_on_another_keeld_killed_under_writes_comes_back_and_resyncs_on_its_own() {
    remote_leg_comes_back(Server::Keeld, "raw");
}

fn remote_leg_comes_back(kind: Server, engine: &str) {
    let remote_dir = tempfile::tempdir().unwrap();
    let image = remote_dir.path().join("b.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(export_len(engine))
        .unwrap();
    let nbd_socket = remote_dir.path().join("nbd.sock");
    let server = RemoteLeg::start(kind, &image, &nbd_socket);
    let uri = format!("nbd+unix:///d?socket={}", nbd_socket.display());
    let config = format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n[[disk]]\nname = \"m\"\nsocket = \"m.sock\"\n\
         engine = \"{engine}\"\nmirror = [\"a.img\", \"{uri}\"]\nsize = \"64M\"\n"
    );
    let keeld = InProcess::start(&config);
    let api = ControlClient::new(&keeld.dir().join("keel.sock"));
    let socket = keeld.socket("m");
    let home = keeld.dir().to_path_buf();

    let leg = component(&api, 1);
    assert_eq!(leg["remote"], true, "{leg}");
    assert_eq!(leg["path"], uri.as_str(), "{leg}");
    // The export may hold anything: the first open copies the whole disk onto it.
    wait_for(
        "the first copy onto the remote leg",
        Duration::from_secs(120),
        || component(&api, 1)["state"] == "in_sync",
    );
    verify(&socket, home.join("fill.state"), "4096", "1", "write");
    let copied_before = component(&api, 1)["resync_bytes_copied"].as_u64().unwrap();

    server.kill();
    // The guest keeps writing while the leg is gone: no error.
    verify(&socket, home.join("dirty.state"), "1024", "2", "write");
    let leg = component(&api, 1);
    assert_eq!(leg["state"], "offline", "{leg}");
    assert!(leg["why"].is_string(), "{leg}");
    let dirty = leg["dirty_chunks"].as_u64().unwrap();
    assert!(dirty > 0, "writes while the leg is gone are tracked: {leg}");
    wait_for(
        "a failed reconnect attempt",
        Duration::from_secs(10),
        || component(&api, 1)["reconnect"]["attempts"].as_u64() >= Some(1),
    );
    let status = Command::new(keel_tests::keeld::keel_binary())
        .arg("--control")
        .arg(home.join("keel.sock"))
        .args(["mirror", "status", "m"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(table.contains("offline (reconnecting"), "{table}");

    let server = RemoteLeg::start(kind, &image, &nbd_socket);
    wait_for(
        "the leg to reconnect and resync",
        Duration::from_secs(90),
        || component(&api, 1)["state"] == "in_sync",
    );
    let leg = component(&api, 1);
    let copied = leg["resync_bytes_copied"].as_u64().unwrap() - copied_before;
    let written = 1024 * 4096;
    // The raw engine writes in place; the log writes the 4 MiB at new places, with its
    // journal and maps besides: more chunks, but far from the whole disk.
    let most = match engine {
        "raw" => written * 11 / 10 + 2 * CHUNK,
        _ => 32 * MIB,
    };
    assert!(
        copied >= written && copied <= most,
        "{engine}: the resync copies about what was written while the leg was gone: {copied} \
         bytes for {written} written ({dirty} dirty chunks)"
    );
    let status: serde_json::Value = api.get("/v1/disks/m/mirror").unwrap();
    let events = status["events"].to_string();
    assert!(events.contains("reconnected"), "{events}");
    assert!(!events.contains("failed"), "{events}");

    let report = verify(&socket, home.join("dirty.state"), "1024", "2", "check");
    assert!(report.contains("1024 ok"), "{report}");
    let dir = keeld.stop();
    drop(server);
    let a = std::fs::read(dir.path().join("a.img")).unwrap();
    let b = std::fs::read(&image).unwrap();
    assert!(a.len() <= b.len(), "{engine}: {} > {}", a.len(), b.len());
    assert!(
        a[..] == b[..a.len()],
        "{engine}: the two legs differ after the resync"
    );
}
