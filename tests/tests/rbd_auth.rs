//! rbd disks on a cluster that requires cephx (tests/ceph/start.sh with KEEL_CEPH_AUTH=cephx),
//! started once for this test binary: wrong credentials fail their disk at once with a clear
//! error while keeld serves the others, and a client whose exclusive lock another client broke
//! (which blocklists it) fails its requests with IOERR instead of hanging, naming the image in
//! its log, while keeld's other disks are served.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_tests::ceph::Cluster;
use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, wait_for_socket};
use keel_tests::pattern;

const MIB: usize = 1 << 20;
/// Long enough for a loaded machine; a hang shows as this bound being hit.
const BOUND: Duration = Duration::from_secs(60);

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start_cephx)
}

/// A `[[disk]]` table of an rbd disk on `image` as client `id` with `keyring`.
fn rbd_disk(name: &str, image: &str, id: &str, keyring: &Path) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"rbd\"\n\
         image = \"rbd/{image}\"\nceph_conf = \"{}\"\nceph_id = \"{id}\"\nkeyring = \"{}\"\n\
         size = \"16M\"\n\n",
        cluster().conf().display(),
        keyring.display()
    )
}

const NULL_DISK: &str =
    "[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1M\"\n";

fn start(dir: &Path, disks: &str, sockets: &[&str]) -> KeeldProcess {
    let toml = format!("[server]\ncontrol_socket = \"control.sock\"\n\n{disks}{NULL_DISK}");
    std::fs::write(dir.join("keel.toml"), toml).unwrap();
    let keeld = KeeldProcess::spawn(&dir.join("keel.toml"));
    for s in sockets {
        assert!(
            wait_for_socket(&dir.join(s), BOUND),
            "{s} not served within {BOUND:?}"
        );
    }
    keeld
}

/// Runs `f` on a thread of its own; panics if it has not returned within [`BOUND`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{what} did not return within {BOUND:?}"))
}

fn tag() -> String {
    format!("{}", std::process::id())
}

#[test]
fn rbd_wrong_credentials_fail_their_disk_and_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.keyring");
    let stranger = dir.path().join("stranger.keyring");
    for (file, name) in [(&wrong, "client.keel"), (&stranger, "client.stranger")] {
        let out = std::process::Command::new("ceph-authtool")
            .arg("--create-keyring")
            .arg(file)
            .args(["--gen-key", "-n", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let t = tag();
    let good = cluster().keel_keyring();
    let disks = [
        rbd_disk("good", &format!("good{t}"), "keel", &good),
        // client.keel with a key the cluster never issued.
        rbd_disk("wrongkey", &format!("w{t}"), "keel", &wrong),
        // A client the cluster does not know.
        rbd_disk("unknown", &format!("u{t}"), "stranger", &stranger),
        // A keyring file that is not there.
        rbd_disk("nofile", &format!("f{t}"), "keel", &dir.path().join("gone")),
    ]
    .concat();
    let _keeld = start(dir.path(), &disks, &["good.sock", "n.sock"]);

    let mut c = Client::connect(&dir.path().join("good.sock"), 1, MIB).unwrap();
    c.write(0, 0, &pattern(1, 4096)).unwrap();
    assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(1, 4096));
    let mut n = Client::connect(&dir.path().join("n.sock"), 1, MIB).unwrap();
    n.write(0, 0, &[1; 512]).unwrap();

    let disks: serde_json::Value = ControlClient::new(&dir.path().join("control.sock"))
        .get("/v1/disks")
        .unwrap();
    let error = |name: &str| -> String {
        let d = disks
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} is listed: {disks}"));
        assert_eq!(d["state"], "failed", "{d}");
        d["error"].as_str().unwrap().to_string()
    };
    for (name, client) in [("wrongkey", "client.keel"), ("unknown", "client.stranger")] {
        let e = error(name);
        assert!(
            e.contains(&format!("as {client}: the cluster refused its credentials")),
            "{name}: {e}"
        );
    }
    let e = error("nofile");
    assert!(e.contains("keyring") && e.contains("gone"), "{e}");
}

/// The `rbd lock ls` entry of the exclusive lock keeld holds on `image`.
fn lock_of(image: &str) -> (String, String) {
    let locks: serde_json::Value =
        serde_json::from_str(&cluster().rbd(&["lock", "ls", "--format", "json", image])).unwrap();
    let lock = &locks[0];
    (
        lock["id"].as_str().expect("a lock id").to_string(),
        lock["locker"].as_str().expect("a locker").to_string(),
    )
}

/// Another client breaks keeld's lock on `image` (Ceph blocklists the old holder) and writes
/// to it.
fn steal_lock(image: &str) {
    let (id, locker) = lock_of(image);
    cluster().rbd(&["lock", "rm", image, &id, &locker]);
    cluster().rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4096",
        "--io-total",
        "65536",
        image,
    ]);
}

#[test]
fn rbd_client_that_lost_its_lock_fails_io_and_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag();
    let a = format!("rbd/a{t}");
    let keyring = cluster().keel_keyring();
    let disks = [
        rbd_disk("a", &format!("a{t}"), "keel", &keyring),
        rbd_disk("b", &format!("b{t}"), "keel", &keyring),
    ]
    .concat();
    let mut keeld = start(dir.path(), &disks, &["a.sock", "b.sock", "n.sock"]);
    let mut ca = Client::connect(&dir.path().join("a.sock"), 1, MIB).unwrap();
    let mut cb = Client::connect(&dir.path().join("b.sock"), 1, MIB).unwrap();
    // keeld took each image's exclusive lock when it opened it.
    ca.write(0, 0, &pattern(1, 4096)).unwrap();
    cb.write(0, 0, &pattern(2, 4096)).unwrap();

    // Another client breaks keeld's lock on `a` (Ceph blocklists the old holder) and writes.
    steal_lock(&a);

    // keeld's requests on `a` now fail; none hangs.
    let (ca, write) = bounded("a write after the lock was lost", move || {
        let r = ca.write(0, 8192, &pattern(3, 4096));
        (ca, r)
    });
    assert!(write.is_err(), "a write after the lock was lost succeeded");
    let read = bounded("a read after the lock was lost", move || {
        let mut ca = ca;
        ca.read(0, 0, 4096)
    });
    assert!(read.is_err(), "a read by a blocklisted client succeeded");

    // keeld's other disks are served meanwhile.
    cb.write(0, 4096, &pattern(4, 4096)).unwrap();
    assert_eq!(cb.read(0, 4096, 4096).unwrap(), pattern(4, 4096));
    let mut n = Client::connect(&dir.path().join("n.sock"), 1, MIB).unwrap();
    n.write(0, 0, &[5; 512]).unwrap();
    drop((cb, n));

    // keeld stops (reporting that `a`'s last flush failed) and its log names the image and why.
    let (status, log) = keeld.signal_and_wait(libc::SIGTERM, BOUND);
    assert!(
        !status.success() && log.contains("disk a: flush failed"),
        "{status:?}:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(&a) && l.contains("blocklisted")),
        "no log line names {a} as blocklisted:\n{log}"
    );
}

/// With zero-copy writes (keeld's default) librbd 16 never calls back a write of a client the
/// cluster has blocklisted. The disk's watchdog finds the blocklisting (a probe read fails with
/// `ESHUTDOWN`) and answers such a write IOERR within seconds, small or large; the requests
/// after it fail at once, and keeld still stops within the bound.
#[test]
fn rbd_zero_copy_write_of_a_blocklisted_client_fails_within_seconds() {
    /// The watchdog's stall bound (1.5 s) and tick (0.5 s), with room for a loaded machine.
    const QUICK: Duration = Duration::from_secs(15);
    let dir = tempfile::tempdir().unwrap();
    let t = tag();
    let a = format!("rbd/z{t}");
    let keyring = cluster().keel_keyring();
    let mut keeld = start(
        dir.path(),
        &rbd_disk("a", &format!("z{t}"), "keel", &keyring),
        &["a.sock", "n.sock"],
    );
    let mut ca = Client::connect(&dir.path().join("a.sock"), 1, MIB).unwrap();
    ca.write(0, 0, &pattern(1, MIB)).unwrap();
    assert_eq!(ca.read(0, 0, MIB).unwrap(), pattern(1, MIB));

    steal_lock(&a);

    let mut ca = Some(ca);
    for (offset, len) in [(8192, 4096), (2 * MIB as u64, MIB), (4 * MIB as u64, 4096)] {
        let mut c = ca.take().unwrap();
        let began = Instant::now();
        let (c, write) = bounded("a write after the lock was lost", move || {
            let r = c.write(0, offset, &pattern(3, len));
            (c, r)
        });
        let took = began.elapsed();
        eprintln!("a {len}-byte write of a blocklisted client failed after {took:?}");
        assert!(
            write.is_err(),
            "a {len}-byte write after the lock was lost succeeded"
        );
        assert!(
            took < QUICK,
            "a {len}-byte write of a blocklisted client took {took:?} to fail"
        );
        ca = Some(c);
    }
    let mut c = ca.unwrap();
    let began = Instant::now();
    assert!(
        c.read(0, 0, 4096).is_err(),
        "a blocklisted client's read succeeded"
    );
    assert!(
        began.elapsed() < QUICK,
        "the read took {:?}",
        began.elapsed()
    );
    let mut n = Client::connect(&dir.path().join("n.sock"), 1, MIB).unwrap();
    n.write(0, 0, &[5; 512]).unwrap();
    drop((c, n));

    let (status, log) = keeld.signal_and_wait(libc::SIGTERM, BOUND);
    assert!(!status.success(), "{status:?}:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(&a) && l.contains("blocklisted")),
        "no log line names {a} as blocklisted:\n{log}"
    );
}
