//! The rbd engine against a real single-node Ceph cluster (tests/ceph/start.sh), started once
//! for this test binary and stopped when it exits. Without Ceph installed the tests fail and say
//! how to install it (qemu/prepare.sh); they never skip.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_client::verify::check::Rules;
use keel_client::verify::state::State;
use keel_client::verify::{self, VerifyConfig, VerifyError};
use keel_client::{Disk, DiskOptions};
use keel_tests::ceph::{image_name, shared_cluster};
use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, keeld_binary, run_expecting_failure, wait_for_socket};
use keel_tests::pattern;

const MIB: usize = 1 << 20;
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn ceph_conf() -> &'static Path {
    shared_cluster().conf()
}

fn rbd_cli(args: &[&str]) -> String {
    shared_cluster().rbd(args)
}

fn image_size(image: &str) -> u64 {
    let info: serde_json::Value =
        serde_json::from_str(&rbd_cli(&["info", "--format", "json", image])).expect("rbd info");
    info["size"].as_u64().expect("size")
}

/// A config with one rbd disk `d` on `image` (plus `extra` lines in its section).
fn rbd_config(image: &str, extra: &str) -> String {
    format!(
        "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\n\
         socket = \"d.sock\"\nengine = \"rbd\"\nimage = \"{image}\"\nceph_conf = \"{}\"\n{extra}\n",
        ceph_conf().display()
    )
}

/// keeld serving `toml` from a new directory, once its socket `d.sock` listens.
fn start(toml: &str) -> (tempfile::TempDir, KeeldProcess) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keel.toml"), toml).expect("config");
    let keeld = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    assert!(
        wait_for_socket(&dir.path().join("d.sock"), START_TIMEOUT),
        "keeld did not serve d.sock"
    );
    (dir, keeld)
}

#[test]
fn rbd_disk_reads_writes_flushes_discards_and_zeroes() {
    let image = format!("rbd/{}", image_name("io"));
    let (dir, _keeld) = start(&rbd_config(&image, "size = \"64M\""));
    assert_eq!(
        image_size(&image),
        64 << 20,
        "the missing image was created with `size`"
    );
    let mut c = Client::connect(&dir.path().join("d.sock"), 1, 2 * MIB).unwrap();
    assert_eq!(c.capacity(), 64 << 20);
    let cases: &[(u64, usize)] = &[
        (0, 512),
        (4096, 4096),
        (7 * 512, 3 * 512),
        ((4 << 20) - 4096, 8192), // across two RBD objects
        ((64 << 20) - 4096, 4096),
        (12345 * 512, 2 * MIB),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64, len);
        c.write(0, off, &data).unwrap();
        assert!(
            c.read(0, off, len).unwrap() == data,
            "offset {off} len {len}"
        );
    }
    c.flush(0).unwrap();
    // Never-written space reads zeroes.
    assert_eq!(c.read(0, 32 << 20, 4096).unwrap(), vec![0; 4096]);

    c.write(0, 1 << 20, &pattern(9, MIB)).unwrap();
    c.discard(0, (1 << 20) + 4096, 8192).unwrap();
    let back = c.read(0, 1 << 20, 3 * 4096).unwrap();
    assert_eq!(&back[..4096], &pattern(9, 4096)[..]);
    assert_eq!(
        &back[4096..],
        &[0; 8192][..],
        "a discarded range reads zeroes"
    );
    c.write_zeroes(0, (1 << 20) + 65536, 4096, false).unwrap();
    c.write_zeroes(0, (1 << 20) + 131072, 4096, true).unwrap();
    assert_eq!(c.read(0, (1 << 20) + 65536, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(c.read(0, (1 << 20) + 131072, 4096).unwrap(), vec![0; 4096]);
    assert_eq!(
        c.read(0, (1 << 20) + 69632, 4096).unwrap(),
        pattern(9, MIB)[69632..73728].to_vec(),
        "bytes beside the zeroed range are untouched"
    );

    // Beyond the capacity: refused, and the disk keeps serving.
    assert!(c.read(0, 64 << 20, 4096).is_err());
    assert!(c.write(0, (64 << 20) - 512, &[1; 1024]).is_err());
    assert_eq!(c.read(0, 0, 512).unwrap(), pattern(0, 512));

    // What the guest wrote is in the image, as other RBD clients see it.
    drop(c);
    let out = dir.path().join("export.img");
    rbd_cli(&["export", &image, out.to_str().unwrap()]);
    let exported = std::fs::read(&out).unwrap();
    assert!(exported[..512] == pattern(0, 512)[..]);
}

#[test]
fn rbd_missing_image_without_size_is_refused() {
    let image = format!("rbd/{}", image_name("missing"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, rbd_config(&image, "")).unwrap();
    let (code, stderr) = run_expecting_failure(&config);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(&image) && stderr.contains("does not exist and no size is given"),
        "{stderr}"
    );
}

#[test]
fn rbd_unreachable_mon_fails_its_disk_in_bounded_time_and_others_serve() {
    // A cluster config whose mon address nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("nomon.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\n\
             ms bind ipv6 = false\nlog file = {}/client.log\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let toml = format!(
        "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"gone\"\n\
         socket = \"gone.sock\"\nengine = \"rbd\"\nimage = \"rbd/x\"\nceph_conf = \"{}\"\n\
         size = \"1M\"\n\n[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\n\
         size = \"1M\"\n",
        conf.display()
    );
    std::fs::write(dir.path().join("keel.toml"), toml).unwrap();
    let started = Instant::now();
    let _keeld = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    // The connection gives up after the engine's connect timeout (10 s); then the other disk
    // is served. The bound leaves room for a loaded machine.
    assert!(
        wait_for_socket(&dir.path().join("n.sock"), Duration::from_secs(40)),
        "the null disk was not served within 40 s"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "gave up too soon: {waited:?}"
    );
    let mut c = Client::connect(&dir.path().join("n.sock"), 1, MIB).unwrap();
    c.write(0, 0, &[7; 512]).unwrap();
    let disks: serde_json::Value = ControlClient::new(&dir.path().join("control.sock"))
        .get("/v1/disks")
        .unwrap();
    let gone = disks
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "gone")
        .expect("the rbd disk is listed");
    assert_eq!(gone["state"], "failed", "{gone}");
    let error = gone["error"].as_str().unwrap();
    assert!(error.contains("connecting to the Ceph cluster"), "{error}");
}

#[test]
fn rbd_grows_online() {
    let image = format!("rbd/{}", image_name("grow"));
    let (dir, _keeld) = start(&rbd_config(&image, "size = \"16M\""));
    let mut c = Client::connect(&dir.path().join("d.sock"), 1, MIB).unwrap();
    c.write(0, 0, &pattern(3, 4096)).unwrap();
    let control = ControlClient::new(&dir.path().join("control.sock"));
    let answer: serde_json::Value = control
        .post(
            "/v1/disks/d/resize",
            &serde_json::json!({"size": 32u64 << 20}),
        )
        .unwrap();
    assert_eq!(answer["size"], 32u64 << 20);
    assert_eq!(image_size(&image), 32 << 20);
    assert!(
        control
            .post::<_, serde_json::Value>(
                "/v1/disks/d/resize",
                &serde_json::json!({"size": 8u64 << 20})
            )
            .is_err(),
        "shrinking is refused"
    );
    drop(c);
    let mut c = Client::connect(&dir.path().join("d.sock"), 1, MIB).unwrap();
    assert_eq!(c.capacity(), 32 << 20);
    c.write(0, (32 << 20) - 4096, &pattern(4, 4096)).unwrap();
    assert_eq!(
        c.read(0, (32 << 20) - 4096, 4096).unwrap(),
        pattern(4, 4096)
    );
    assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(3, 4096));
}

#[test]
fn rbd_snapshots_create_list_revert_delete() {
    let image = format!("rbd/{}", image_name("snap"));
    let (dir, _keeld) = start(&rbd_config(&image, "size = \"16M\""));
    let sock = dir.path().join("d.sock");
    let control = ControlClient::new(&dir.path().join("control.sock"));
    let mut c = Client::connect(&sock, 1, MIB).unwrap();
    c.write(0, 8192, &pattern(1, 4096)).unwrap();
    let _: serde_json::Value = control
        .post("/v1/disks/d/snapshots", &serde_json::json!({"name": "s1"}))
        .unwrap();
    c.write(0, 8192, &pattern(2, 4096)).unwrap();
    let list: serde_json::Value = control.get("/v1/disks/d/snapshots").unwrap();
    assert_eq!(list[0]["name"], "s1", "{list}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let created = list[0]["created"].as_u64().unwrap();
    assert!(now - created < 600, "created {created}, now {now}");
    assert!(
        rbd_cli(&["snap", "ls", &image]).contains("s1"),
        "RBD holds the snapshot"
    );
    // The client is gone, though keeld may not have seen it leave yet: force.
    drop(c);
    let _: serde_json::Value = control
        .post(
            "/v1/disks/d/snapshots/s1/revert",
            &serde_json::json!({"force": true}),
        )
        .unwrap();
    let mut c = Client::connect(&sock, 1, MIB).unwrap();
    assert_eq!(c.read(0, 8192, 4096).unwrap(), pattern(1, 4096), "reverted");
    drop(c);
    let _: serde_json::Value = control.delete("/v1/disks/d/snapshots/s1").unwrap();
    let list: serde_json::Value = control.get("/v1/disks/d/snapshots").unwrap();
    assert_eq!(list, serde_json::json!([]));
    assert!(
        control
            .delete::<serde_json::Value>("/v1/disks/d/snapshots/s1")
            .is_err()
    );
}

/// keeld is SIGKILLed while the verify writer keeps 32 writes in flight; after each restart on
/// the same image every write a completed FLUSH covered reads back, and nothing is torn.
#[test]
fn rbd_kill_nine_under_load_loses_no_flushed_write() {
    const POINTS: u64 = 4;
    let image = format!("rbd/{}", image_name("kill"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("keel.toml"),
        rbd_config(&image, "size = \"8M\""),
    )
    .unwrap();
    let state_path = dir.path().join("verify.state");
    let config = VerifyConfig {
        block_size: 4096,
        blocks: 2048,
        seed: 7,
        iodepth: 32,
        flush_every: 32,
        rounds: 0,
        duration: None,
        rules: Rules::default(),
    };
    let options = DiskOptions {
        queues: Some(1),
        buffer_memory: 4 << 20,
        ..DiskOptions::default()
    };
    for point in 0..=POINTS {
        let mut keeld = Command::new(keeld_binary())
            .arg("--config")
            .arg(dir.path().join("keel.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_socket(&dir.path().join("d.sock"), START_TIMEOUT));
        let started = Instant::now();
        let mut disk = loop {
            match Disk::connect(dir.path().join("d.sock"), &options) {
                Ok(d) => break d,
                Err(e) if started.elapsed() > Duration::from_secs(5) => panic!("connect: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut queue = disk.take_queue(0).unwrap();
        let state = verify::open_state(&state_path, &config).unwrap();
        let report = verify::check(&mut queue, &state, &config).unwrap();
        assert_eq!(report.problems(), 0, "point {point}: {}", report.to_text());
        if point == POINTS {
            // SAFETY: kill(2) on our own child, reaped just below.
            unsafe { libc::kill(keeld.id() as i32, libc::SIGTERM) };
            assert!(keeld.wait().unwrap().success());
            break;
        }
        let mut state = verify::open_state(&state_path, &config).unwrap();
        let before = state.last_generation;
        let killed = Arc::new(AtomicBool::new(false));
        let pid = keeld.id() as i32;
        let killer = {
            let killed = Arc::clone(&killed);
            let state_path = state_path.clone();
            std::thread::spawn(move || {
                // Under load: once the writer has recorded a completed FLUSH, then a little
                // later, mid-epoch.
                let flushed = |s: Option<State>| s.is_some_and(|s| s.last_generation > before);
                while !flushed(State::load(&state_path).ok().flatten()) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_millis(50 + 70 * point));
                killed.store(true, Ordering::SeqCst);
                // SAFETY: kill(2) on our own child, reaped only after this thread is joined.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            })
        };
        let outcome = verify::write(&mut queue, &mut state, &state_path, &config);
        killer.join().unwrap();
        let _ = keeld.wait();
        assert!(
            matches!(outcome, Err(VerifyError::Disk(_))) && killed.load(Ordering::SeqCst),
            "point {point}: the writer ended without the kill"
        );
        assert!(
            state.last_generation > before,
            "point {point}: no FLUSH under load ({outcome:?})"
        );
    }
}

/// With the guest's write cache off, a write keeld answered is in the image even if keeld is
/// SIGKILLed right after: with `direct` at its default librbd's cache is off, so the write's own
/// completion means the OSD has it. The guest flushes first, which turns a librbd cache (on by
/// Ceph's default) from write-through to write-back.
#[test]
fn rbd_write_through_write_survives_kill_nine() {
    write_through_write_survives_kill_nine("size = \"8M\"");
}

/// As above with `direct = false`: librbd's cache is on and write-back after the guest's flush,
/// so each write-through write is answered only after a flush of its own.
#[test]
fn rbd_write_through_write_survives_kill_nine_with_librbd_cache() {
    write_through_write_survives_kill_nine("size = \"8M\"\ndirect = false");
}

fn write_through_write_survives_kill_nine(disk_keys: &str) {
    const BLOCKS: u64 = 64;
    let image = format!("rbd/{}", image_name("wt"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keel.toml"), rbd_config(&image, disk_keys)).unwrap();
    let spawn = || {
        let keeld = Command::new(keeld_binary())
            .arg("--config")
            .arg(dir.path().join("keel.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_for_socket(&dir.path().join("d.sock"), START_TIMEOUT));
        keeld
    };
    let options = DiskOptions {
        queues: Some(1),
        buffer_memory: 4 << 20,
        write_through: true,
        ..DiskOptions::default()
    };
    let mut keeld = spawn();
    let mut disk = Disk::connect(dir.path().join("d.sock"), &options).unwrap();
    assert_eq!(disk.info().config.wce, 0, "the write cache is off");
    let mut queue = disk.take_queue(0).unwrap();
    queue.write_slice(0, &pattern(100, 4096)).unwrap();
    queue.flush().unwrap();
    for i in 0..BLOCKS {
        queue.write_slice(i * 4096, &pattern(i, 4096)).unwrap();
    }
    keeld.kill().unwrap();
    keeld.wait().unwrap();
    drop(queue);
    drop(disk);

    let mut keeld = spawn();
    let mut disk = Disk::connect(dir.path().join("d.sock"), &options).unwrap();
    let mut queue = disk.take_queue(0).unwrap();
    for i in 0..BLOCKS {
        assert!(
            queue.read_vec(i * 4096, 4096).unwrap() == pattern(i, 4096),
            "block {i} of {BLOCKS}, answered before the kill, is not in the image"
        );
    }
    drop(queue);
    drop(disk);
    keeld.kill().unwrap();
    keeld.wait().unwrap();
}

/// The librbd settings keeld applies, read back from librbd itself (its admin socket): the
/// default disk runs with librbd's cache off (every answered write is on the OSDs), `direct =
/// false` with it on; both send writes straight from guest memory (librbd's zero-copy writes,
/// whose memory the queues keep mapped until librbd calls back) and start requests on the
/// queue's worker. The ceph.conf each disk reads asks for the opposite, which keeld overrides. Each disk
/// then round-trips a write.
#[test]
fn rbd_librbd_settings_hold_whatever_ceph_conf_says() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_conf = std::fs::read_to_string(ceph_conf()).unwrap();
    let disks = [("d", "", "false"), ("f", "direct = false", "true")];
    let mut toml = String::from("[server]\ncontrol_socket = \"control.sock\"\n");
    for (name, keys, _) in disks {
        let conf = dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "{cluster_conf}\n[client]\nadmin socket = {}\nrbd cache = true\n\
                 rbd disable zero copy writes = true\nrbd non blocking aio = true\n",
                dir.path().join(format!("{name}.asok")).display()
            ),
        )
        .unwrap();
        toml += &format!(
            "\n[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"rbd\"\n\
             image = \"rbd/{}\"\nceph_conf = \"{}\"\nsize = \"8M\"\n{keys}\n",
            image_name(name),
            conf.display()
        );
    }
    std::fs::write(dir.path().join("keel.toml"), toml).unwrap();
    let _keeld = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    for (name, _, cache) in disks {
        assert!(
            wait_for_socket(&dir.path().join(format!("{name}.sock")), START_TIMEOUT),
            "keeld did not serve {name}.sock"
        );
        let setting = |option: &str| {
            let asok = dir.path().join(format!("{name}.asok"));
            let out = Command::new("ceph")
                .arg("--admin-daemon")
                .arg(&asok)
                .args(["config", "get", option])
                .output()
                .expect("ceph --admin-daemon");
            assert!(
                out.status.success(),
                "config get {option} on {name}: {out:?}"
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v[option].as_str().expect("a string value").to_string()
        };
        assert_eq!(setting("rbd_cache"), cache, "disk {name}: rbd_cache");
        assert_eq!(
            setting("rbd_disable_zero_copy_writes"),
            "false",
            "disk {name}: rbd_disable_zero_copy_writes"
        );
        assert_eq!(setting("rbd_non_blocking_aio"), "false", "disk {name}");

        let mut c = Client::connect(&dir.path().join(format!("{name}.sock")), 1, 2 * MIB).unwrap();
        let data = pattern(7, MIB + 4096);
        c.write(0, (4 << 20) - 8192, &data).unwrap();
        assert!(
            c.read(0, (4 << 20) - 8192, data.len()).unwrap() == data,
            "disk {name}: a write across two objects reads back"
        );
    }
}

/// A second keeld on an image the first one serves is refused at open, naming the lock, and
/// serves its other disks; the first keeld keeps writing. Once the first one has stopped (and
/// released the lock), the image can be added to the second through the API.
#[test]
fn rbd_second_keeld_on_a_served_image_is_refused() {
    let image = format!("rbd/{}", image_name("twice"));
    let (first_dir, mut first) = start(&rbd_config(&image, "size = \"16M\""));
    let mut c = Client::connect(&first_dir.path().join("d.sock"), 1, MIB).unwrap();
    c.write(0, 0, &pattern(1, 4096)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "{}\n[[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1M\"\n",
        rbd_config(&image, "")
    );
    std::fs::write(dir.path().join("keel.toml"), toml).unwrap();
    let _second = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    assert!(
        wait_for_socket(&dir.path().join("n.sock"), START_TIMEOUT),
        "the second keeld did not serve its null disk"
    );
    let control = ControlClient::new(&dir.path().join("control.sock"));
    let d: serde_json::Value = control.get("/v1/disks/d").unwrap();
    assert_eq!(d["state"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains(&image) && error.contains("held by another client"),
        "{error}"
    );
    assert!(!dir.path().join("d.sock").exists());

    // The first keeld still holds the image and writes.
    c.write(0, 4096, &pattern(2, 4096)).unwrap();
    assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(1, 4096));
    drop(c);
    let (status, log) = first.signal_and_wait(libc::SIGTERM, START_TIMEOUT);
    assert!(status.success(), "{log}");

    // Released: the second keeld can serve it now.
    let table = serde_json::json!({
        "name": "again", "socket": dir.path().join("again.sock"), "engine": "rbd",
        "image": image, "ceph_conf": ceph_conf(),
    });
    let _: serde_json::Value = control.post("/v1/disks", &table).unwrap();
    let mut c = Client::connect(&dir.path().join("again.sock"), 1, MIB).unwrap();
    assert_eq!(c.read(0, 4096, 4096).unwrap(), pattern(2, 4096));
    c.write(0, 8192, &pattern(3, 4096)).unwrap();
}
