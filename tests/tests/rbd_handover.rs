//! Two keelds (two processes) on one RBD image with `handover = true`, against a real
//! single-node Ceph cluster (tests/ceph/start.sh): the second starts in standby, each takes the
//! image's exclusive lock when its frontend starts a ring and the other has let go, what one
//! wrote the other reads, and the image never has two lock holders, even while the standby asks
//! for the lock as the active keeld serves.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_client::{Disk, DiskOptions};
use keel_tests::ceph::{image_name, shared_cluster};
use keel_tests::keeld::{KeeldProcess, wait_for_socket};
use keel_tests::pattern;
use keel_tests::raw_frontend::session::with_a_started_ring;
use keel_tests::raw_frontend::{Message, RawFrontend, code};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `rbd/<stem>-<pid>-<n>`: an image no other test of this run uses.
fn image_spec(stem: &str) -> String {
    format!("rbd/{}", image_name(stem))
}

/// How many clients hold a lock on `image` (`rbd lock ls`; the exclusive lock is one).
fn lockers(image: &str) -> usize {
    let text = shared_cluster().rbd(&["lock", "ls", "--format", "json", image]);
    match serde_json::from_str::<serde_json::Value>(&text).expect("rbd lock ls json") {
        serde_json::Value::Array(a) => a.len(),
        serde_json::Value::Object(o) => o.len(),
        other => panic!("rbd lock ls: {other}"),
    }
}

/// One keeld serving disk `d` on an RBD image, with `handover = true` and every other key at
/// its default, plus a null disk `n` so that its start can be waited for in any state.
struct Keeld {
    dir: tempfile::TempDir,
    process: KeeldProcess,
    control: ControlClient,
}

impl Keeld {
    fn start(image: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\n\
             socket = \"d.sock\"\nengine = \"rbd\"\nimage = \"{image}\"\nceph_conf = \"{}\"\n\
             size = \"16M\"\nhandover = true\n\n[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\n\
             engine = \"null\"\nsize = \"1M\"\n",
            shared_cluster().conf().display()
        );
        std::fs::write(dir.path().join("keel.toml"), toml).expect("config");
        let process = KeeldProcess::spawn(&dir.path().join("keel.toml"));
        // The control socket is bound after every disk's socket.
        for socket in ["n.sock", "control.sock"] {
            assert!(
                wait_for_socket(&dir.path().join(socket), START_TIMEOUT),
                "keeld did not start"
            );
        }
        let control = ControlClient::new(&dir.path().join("control.sock"));
        Self {
            dir,
            process,
            control,
        }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("d.sock")
    }

    /// The disk as `GET /v1/disks/d` lists it.
    fn listed(&self) -> serde_json::Value {
        self.control.get("/v1/disks/d").expect("GET /v1/disks/d")
    }

    /// `standby`, `taking`, `serving` or `released` (the stats' `handover`).
    fn holding(&self) -> String {
        let stats: serde_json::Value = self.control.get("/v1/disks/d/stats").expect("stats");
        stats["handover"]
            .as_str()
            .expect("a handover disk")
            .to_string()
    }

    /// Waits (at most 30 s, so a broken handover fails instead of hanging) for `want`.
    fn until(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.holding();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {now}, never {want}: {}",
                self.listed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops keeld (SIGTERM), which must exit cleanly; returns its log.
    fn stop(mut self) -> String {
        let (status, log) = self.process.signal_and_wait(libc::SIGTERM, START_TIMEOUT);
        assert!(status.success(), "{log}");
        log
    }
}

/// Stops `fe`'s ring 0 as a migration's source does; returns once keeld has answered.
fn stop_ring(fe: &mut RawFrontend) {
    fe.send(&Message::vring_state(code::GET_VRING_BASE, 0, 0))
        .unwrap();
    while fe.read_reply().unwrap().0 != code::GET_VRING_BASE {}
}

#[test]
fn two_keelds_hand_an_rbd_image_over_through_its_exclusive_lock() {
    let image = image_spec("handover");
    let a = Keeld::start(&image);
    assert_eq!(a.listed()["state"], "serving", "{}", a.listed());
    let b = Keeld::start(&image);
    assert_eq!(b.listed()["state"], "standby", "{}", b.listed());
    assert_eq!(b.holding(), "standby");
    assert_eq!(
        b.listed()["size"],
        16 << 20,
        "the image's size, read unlocked"
    );
    assert_eq!(lockers(&image), 1, "a holds the exclusive lock");

    // a serves and writes.
    let first = pattern(1, 256 * 1024);
    let mut disk_a = Disk::connect(a.socket(), &DiskOptions::default()).unwrap();
    let mut qa = disk_a.take_queue(0).unwrap();
    qa.write_slice(4096, &first).unwrap();
    qa.flush().unwrap();

    // b's frontend starts a ring while a serves: b asks for the lock over and over, and a,
    // which took it with rbd_lock_acquire, refuses to hand it over; a keeps writing.
    let mut fe_b = RawFrontend::connect(&b.socket()).unwrap();
    for m in with_a_started_ring() {
        fe_b.send(&m).unwrap();
    }
    b.until("taking");
    for i in 0..16u64 {
        let block = pattern(100 + i, 4096);
        let offset = (1 << 20) + i * 4096;
        qa.write_slice(offset, &block).unwrap();
        qa.flush().unwrap();
        assert!(qa.read_vec(offset, 4096).unwrap() == block, "block {i}");
        assert_eq!(b.holding(), "taking", "b took the lock a holds");
        assert_eq!(lockers(&image), 1);
    }
    assert_eq!(a.holding(), "serving");

    // a's frontend leaves (its rings stop): a flushes, releases the lock and closes the image;
    // b, still asking, takes it.
    drop(qa);
    drop(disk_a);
    b.until("serving");
    assert_eq!(a.holding(), "released");
    assert_eq!(lockers(&image), 1, "b holds the lock");

    // b's frontend stops its ring (GET_VRING_BASE): b lets go before answering.
    stop_ring(&mut fe_b);
    assert_eq!(b.holding(), "released");
    assert_eq!(lockers(&image), 0, "b released the lock");
    drop(fe_b);

    // A guest on b: it takes the image again and reads what a wrote.
    let second = pattern(2, 64 * 1024);
    {
        let mut disk = Disk::connect(b.socket(), &DiskOptions::default()).unwrap();
        assert_eq!(disk.info().capacity(), 16 << 20);
        let mut q = disk.take_queue(0).unwrap();
        assert!(
            q.read_vec(4096, first.len()).unwrap() == first,
            "a's writes"
        );
        for i in 0..16u64 {
            let offset = (1 << 20) + i * 4096;
            assert!(q.read_vec(offset, 4096).unwrap() == pattern(100 + i, 4096));
        }
        assert_eq!(b.holding(), "serving");
        q.write_slice(0, &second).unwrap();
        q.flush().unwrap();
    }
    b.until("released");

    // Back to a (a cancelled migration, or a second one): it reads b's writes.
    {
        let mut disk = Disk::connect(a.socket(), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        assert!(q.read_vec(0, second.len()).unwrap() == second, "b's writes");
        assert!(q.read_vec(65536, 4096).unwrap() == first[65536 - 4096..65536]);
        assert_eq!(a.holding(), "serving");
        assert_eq!(b.holding(), "released");
    }
    a.until("released");
    assert_eq!(lockers(&image), 0);
    // Each keeld took and released the image twice (its log says how long each took).
    for (name, log) in [("b", b.stop()), ("a", a.stop())] {
        let lines = |what: &str| log.lines().filter(|l| l.contains(what)).count();
        for line in log
            .lines()
            .filter(|l| l.contains("taken in") || l.contains("released for"))
        {
            println!("{name}: {line}");
        }
        assert_eq!(lines("taken in"), if name == "a" { 1 } else { 2 }, "{log}");
        assert_eq!(lines("released for another keeld"), 2, "{log}");
    }
}

#[test]
fn handover_needs_the_exclusive_lock_feature() {
    let image = image_spec("nolock");
    shared_cluster().rbd(&[
        "create",
        "--size",
        "16M",
        "--image-feature",
        "layering",
        &image,
    ]);
    let keeld = Keeld::start(&image);
    let d = keeld.listed();
    assert_eq!(d["state"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("exclusive-lock") && error.contains(&image),
        "{error}"
    );
    assert!(!Path::new(&keeld.socket()).exists());
    drop(keeld.stop());
}
