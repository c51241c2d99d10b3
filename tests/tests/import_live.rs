//! Live import against real QEMU tools: a qcow2 chain of three layers written by `qemu-io`
//! is served by keeld at once (`import_from`), read through keel-client while the copy runs,
//! written to, killed with SIGKILL mid-copy, restarted, and left to finish; then the chain is
//! moved away and the disk still reads right, with `import_from` still in the config, and
//! `keel fsck` finds the container clean. The expected contents are what
//! `qemu-img convert -O raw` makes of the chain, plus the guest's writes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_protocol::control::ImportState;
use keel_tests::disk_dir::{
    check_all, connect_queue, disk_stats, guest_write, live_import_config, move_chain_away, run,
    start_keeld, stop_keeld,
};
use keel_tests::keeld::keel_binary;
use keel_tests::{pattern, qcow2};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 48 * MIB;

/// base.qcow2 <- mid.qcow2 <- top.qcow2, each layer writing known bytes, some over the layer
/// below, one zeroing a range the base wrote; most of the disk stays unallocated.
fn make_chain(dir: &Path) {
    qcow2::create(dir, "base.qcow2", SIZE);
    qcow2::qemu_io(
        dir,
        "base.qcow2",
        &[
            "write -q -P 0x11 0 6M",
            "write -q -P 0x22 8M 4M",
            "write -q -P 0x12 40M 1M",
        ],
    );
    qcow2::create_over(dir, "mid.qcow2", "base.qcow2");
    qcow2::create_over(dir, "top.qcow2", "mid.qcow2");
    qcow2::qemu_io(
        dir,
        "mid.qcow2",
        &["write -q -P 0x33 1M 1M", "write -q -P 0x34 20M 2M"],
    );
    qcow2::qemu_io(
        dir,
        "top.qcow2",
        &[
            "write -q -P 0x44 3M 2M",
            "write -q -z 9M 1M",
            "write -q -P 0x45 30M 64K",
        ],
    );
}

/// The three-layer chain, and `expected.raw`: what qemu-img reads through its top.
fn make_chain_and_its_raw_view(dir: &Path) {
    make_chain(dir);
    qcow2::to_raw(dir, "top.qcow2", None, "expected.raw");
}

#[test]
fn a_qcow2_chain_is_served_at_once_survives_kill_9_and_ends_without_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_chain_and_its_raw_view(dir);
    let mut want = std::fs::read(dir.join("expected.raw")).unwrap();
    assert_eq!(want.len() as u64, SIZE);
    // Slow enough (4 MiB/s over 48 MiB) that the copy is still running at the kill.
    std::fs::write(dir.join("keel.toml"), live_import_config("4M")).unwrap();

    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    let s = disk_stats(dir).import.expect("an import report");
    assert_eq!(s.state, ImportState::Copying);
    assert_eq!(s.total_bytes, SIZE);
    let (ok, text) = keel(dir, &["--control", "control.sock", "disks"]);
    assert!(ok && text.contains("d: import copying"), "{text}");
    let (ok, text) = keel(dir, &["--control", "control.sock", "stats", "d", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
    assert!(ok && v["import"]["state"] == "copying", "{text}");
    assert_eq!(v["import"]["total_bytes"], SIZE);
    // The container does not hold the whole disk yet: no snapshot of it.
    let (ok, text) = keel(
        dir,
        &["--control", "control.sock", "snapshot", "create", "d", "s1"],
    );
    assert!(!ok && text.contains("import"), "{text}");
    check_all(&mut q, &want, "served at once");

    // Writes while the copy runs: whole blocks beyond the cursor, a 512-byte write into a
    // block the source holds (merged with it), a discard over source data, and a write over
    // a zeroed range.
    guest_write(&mut q, &mut want, 41 * MIB, &pattern(1, 256 * 1024));
    guest_write(&mut q, &mut want, 30 * MIB + 1024, &pattern(2, 512));
    q.discard(8 * MIB, 64 * 1024).unwrap();
    want[8 * MIB as usize..8 * MIB as usize + 64 * 1024].fill(0);
    guest_write(&mut q, &mut want, 9 * MIB + 4096, &pattern(3, 8192));
    q.flush().unwrap();
    check_all(&mut q, &want, "after the guest's writes");
    let before_kill = disk_stats(dir).import.expect("an import report");
    assert_eq!(
        before_kill.state,
        ImportState::Copying,
        "the kill must land mid-copy"
    );
    drop(q);

    let mut keeld = keeld;
    keeld.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));

    // Restarted faster: the copy resumes and finishes.
    std::fs::write(dir.join("keel.toml"), live_import_config("64M")).unwrap();
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    let resumed = disk_stats(dir).import.expect("an import report");
    assert_ne!(resumed.state, ImportState::Paused);
    check_all(&mut q, &want, "after kill -9");
    guest_write(&mut q, &mut want, 47 * MIB, &pattern(4, 4096));
    q.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = disk_stats(dir).import.expect("an import report");
        if s.state == ImportState::Done {
            assert_eq!(s.copied_bytes, SIZE);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the import did not finish: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check_all(&mut q, &want, "import done");
    drop(q);
    stop_keeld(keeld);

    // The chain is gone; the config still names it.
    move_chain_away(dir);
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    assert_eq!(
        disk_stats(dir).import,
        None,
        "a finished import is not reported"
    );
    check_all(&mut q, &want, "without the chain");
    drop(q);
    let log = stop_keeld(keeld);
    assert!(
        log.contains("finished earlier; import_from is ignored"),
        "{log}"
    );

    let out = Command::new(keel_binary())
        .current_dir(dir)
        .args(["fsck", "d.keel"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fsck: {text}");
    assert!(text.contains(" 0 problems"), "fsck: {text}");
}

fn keel(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(keel_binary())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run keel");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn mapped_bytes(dir: &Path, container: &str) -> u64 {
    let (ok, text) = keel(dir, &["info", container, "--json"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("info JSON");
    v["mapped_bytes"].as_u64().expect("mapped_bytes")
}

#[test]
fn offline_import_reads_the_same_sources_and_keeps_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_chain_and_its_raw_view(dir);
    let (ok, text) = keel(dir, &["import", "top.qcow2", "chain.keel"]);
    assert!(ok, "{text}");
    let (ok, text) = keel(dir, &["export", "chain.keel", "chain.raw"]);
    assert!(ok, "{text}");
    let want = std::fs::read(dir.join("expected.raw")).unwrap();
    assert!(std::fs::read(dir.join("chain.raw")).unwrap() == want);
    // Only what the chain shows as data is mapped; the rest are holes.
    let data = want
        .chunks(4096)
        .filter(|b| b.iter().any(|x| *x != 0))
        .count() as u64
        * 4096;
    assert_eq!(mapped_bytes(dir, "chain.keel"), data);
    assert!(data < SIZE / 2);
    // The layers below the top are snapshots holding what the chain showed at them.
    let (ok, text) = keel(dir, &["snapshot", "list", "chain.keel", "--json"]);
    assert!(ok, "{text}");
    let list: serde_json::Value = serde_json::from_str(&text).expect("snapshot JSON");
    let names: Vec<&str> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["base", "mid"]);
    for layer in ["base", "mid"] {
        let (ok, text) = keel(
            dir,
            &[
                "diff",
                "chain.keel",
                "@empty",
                layer,
                "--export",
                &format!("{layer}.kx"),
            ],
        );
        assert!(ok, "{text}");
        let (ok, text) = keel(
            dir,
            &["apply", &format!("{layer}.kx"), &format!("{layer}.img")],
        );
        assert!(ok, "{text}");
        run(
            dir,
            "qemu-img",
            &[
                "compare",
                "-f",
                "qcow2",
                "-F",
                "raw",
                &format!("{layer}.qcow2"),
                &format!("{layer}.img"),
            ],
        );
    }
    // Shared blocks are stored once: base 11 MiB, then what mid (3 MiB) and top (2 MiB +
    // 64 KiB) wrote; top's zeroed MiB is unmapped, not stored.
    let (ok, text) = keel(dir, &["info", "chain.keel", "--json"]);
    assert!(ok, "{text}");
    let info: serde_json::Value = serde_json::from_str(&text).expect("info JSON");
    assert_eq!(info["used_data_bytes"], 16 * MIB + 64 * 1024, "{text}");

    // A sparse raw file: its holes stay holes too, and the size comes from the file.
    let raw = std::fs::File::create(dir.join("sparse.raw")).unwrap();
    raw.set_len(16 * MIB).unwrap();
    use std::os::unix::fs::FileExt;
    raw.write_all_at(&pattern(9, 8192), 5 * MIB).unwrap();
    drop(raw);
    let (ok, text) = keel(dir, &["import", "sparse.raw", "sparse.keel"]);
    assert!(ok, "{text}");
    assert_eq!(mapped_bytes(dir, "sparse.keel"), 8192);
    let (ok, text) = keel(dir, &["fsck", "sparse.keel"]);
    assert!(ok && text.contains(" 0 problems"), "{text}");
    // A container that holds data is not imported over.
    let (ok, text) = keel(dir, &["import", "sparse.raw", "chain.keel"]);
    assert!(!ok && text.contains("holds data"), "{text}");
}

#[test]
fn a_bad_source_is_refused_at_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_chain(dir);
    std::fs::rename(dir.join("mid.qcow2"), dir.join("mid-moved.qcow2")).unwrap();
    std::fs::write(dir.join("keel.toml"), live_import_config("4M")).unwrap();
    let (code, stderr) = keel_tests::keeld::run_expecting_failure(&dir.join("keel.toml"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("top.qcow2") && stderr.contains("mid.qcow2"),
        "the error names the image and its missing backing file: {stderr}"
    );
    assert!(
        !dir.join("d.keel").exists(),
        "no container is made for a bad source"
    );

    let (ok, text) = keel(dir, &["import", "missing.qcow2", "m.keel"]);
    assert!(!ok && text.contains("missing.qcow2"), "{text}");
    std::fs::write(dir.join("junk.vhdx"), b"vhdxfile but not really one").unwrap();
    let (ok, text) = keel(dir, &["import", "junk.vhdx", "j.keel"]);
    assert!(!ok && text.contains("junk.vhdx"), "{text}");
}

/// A `qemu-nbd` the test started; stopped when dropped.
struct NbdServer(std::process::Child);

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `qemu-nbd` serving `image` on `socket`, as an NBD source keeld does not control.
fn serve_nbd(dir: &Path, image: &str, socket: &str) -> NbdServer {
    let child = Command::new("qemu-nbd")
        .current_dir(dir)
        .args(["--read-only", "--persistent", "--shared=8", "--format=raw"])
        .args(["--export-name=src", "--socket"])
        .arg(dir.join(socket))
        .arg(image)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(dir.join(socket)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    NbdServer(child)
}

fn wait_for_state(dir: &Path, state: ImportState) -> keel_protocol::control::ImportReport {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = disk_stats(dir).import.expect("an import report");
        if s.state == state {
            return s;
        }
        assert!(Instant::now() < deadline, "no {state:?} state: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_nbd_source_that_goes_away_pauses_the_import_until_it_is_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut want = pattern(5, SIZE as usize);
    want[20 * MIB as usize..28 * MIB as usize].fill(0);
    std::fs::write(dir.join("src.raw"), &want).unwrap();
    let server = serve_nbd(dir, "src.raw", "src.sock");
    let uri = format!("nbd+unix:///src?socket={}", dir.join("src.sock").display());
    std::fs::write(
        dir.join("keel.toml"),
        live_import_config("4M").replace("top.qcow2", &uri),
    )
    .unwrap();
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk_stats(dir).import.expect("report").copied_bytes < 4 * MIB {
        assert!(Instant::now() < deadline, "the copy does not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    drop(server);
    let paused = wait_for_state(dir, ImportState::Paused);
    assert!(paused.error.is_some_and(|e| e.contains("src.sock")));
    // Blocks not yet moved cannot be read; moved ones and whole-block writes are served.
    assert!(q.read_vec(44 * MIB, 4096).is_err());
    assert!(q.read_vec(0, 4096).unwrap() == want[..4096]);
    guest_write(&mut q, &mut want, 40 * MIB, &pattern(6, 8192));
    q.flush().unwrap();

    let _server = serve_nbd(dir, "src.raw", "src.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while disk_stats(dir).import.expect("report").state == ImportState::Paused {
        assert!(Instant::now() < deadline, "the import does not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    check_all(&mut q, &want, "after the source came back");
    drop(q);
    let mut keeld = keeld;
    keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
}

#[test]
fn a_source_that_changed_size_is_refused_when_the_import_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("src.raw"), pattern(8, SIZE as usize)).unwrap();
    std::fs::write(
        dir.join("keel.toml"),
        live_import_config("4M").replace("top.qcow2", "src.raw"),
    )
    .unwrap();
    let mut keeld = start_keeld(dir);
    let s = disk_stats(dir).import.expect("an import report");
    assert_eq!(s.state, ImportState::Copying);
    let (status, _) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    assert!(status.success());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("src.raw"))
        .unwrap();
    f.set_len(SIZE - MIB).unwrap();
    drop(f);
    let (code, stderr) = keel_tests::keeld::run_expecting_failure(&dir.join("keel.toml"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("src.raw") && stderr.contains("size changed"),
        "{stderr}"
    );
}

#[test]
fn a_chain_whose_contents_changed_is_refused_when_the_import_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_chain(dir);
    std::fs::write(dir.join("keel.toml"), live_import_config("4M")).unwrap();
    let mut keeld = start_keeld(dir);
    assert_eq!(
        disk_stats(dir).import.expect("an import report").state,
        ImportState::Copying
    );
    let (status, _) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    assert!(status.success());
    // The same size, other bytes, in a backing file.
    qcow2::qemu_io(dir, "mid.qcow2", &["write -q -P 0x77 44M 1M"]);
    let (code, stderr) = keel_tests::keeld::run_expecting_failure(&dir.join("keel.toml"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("top.qcow2") && stderr.contains("changed since the import began"),
        "{stderr}"
    );
    // keel import resumes the same container only from the same files too.
    let (ok, text) = keel(dir, &["import", "top.qcow2", "d.keel"]);
    assert!(
        !ok && text.contains("changed since the import began"),
        "{text}"
    );
}
