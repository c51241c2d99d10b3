//! Holes stay holes, and are not read: an import asks its source where the data is (NBD block
//! status from `qemu-nbd`, `SEEK_DATA`/`SEEK_HOLE` on a sparse raw file) and reads only that.
//! A qcow2 of 256 MiB holding 4 MiB of data is imported live by keeld, a sparse raw file
//! offline, directly and through a `qemu-nbd` NBD export; each time the bytes read from the
//! source (`source_read_bytes`) stay near the data's size, the data reads right and the holes
//! read as zeroes.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_client::Queue;
use keel_protocol::control::{ImportReport, ImportState};
use keel_tests::disk_dir::{connect_queue, disk_stats, run, start_keeld};
use keel_tests::keeld::keel_binary;
use keel_tests::{pattern, qcow2};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;

/// `big.qcow2`: 256 MiB, data at 0 (1 MiB), 128 MiB (2 MiB) and 255 MiB (1 MiB), the rest
/// unallocated; `big.raw` is what `qemu-img` reads of it.
fn make_qcow2(dir: &Path) -> Vec<u8> {
    qcow2::create(dir, "big.qcow2", SIZE);
    qcow2::qemu_io(
        dir,
        "big.qcow2",
        &[
            "write -q -P 0x11 0 1M",
            "write -q -P 0x22 128M 2M",
            "write -q -P 0x33 255M 1M",
        ],
    );
    qcow2::to_raw(dir, "big.qcow2", None, "big.raw");
    std::fs::read(dir.join("big.raw")).unwrap()
}

fn report(dir: &Path) -> ImportReport {
    disk_stats(dir).import.expect("an import report")
}

/// Reads `[offset, offset + len)` in 1 MiB requests and compares it with `want`.
fn check(q: &mut Queue, want: &[u8], offset: u64, len: u64, when: &str) {
    for off in (offset..offset + len).step_by(MIB as usize) {
        let got = q.read_vec(off, MIB as usize).unwrap();
        assert!(
            got == want[off as usize..(off + MIB) as usize],
            "{when}: the MiB at {off} differs"
        );
    }
}

#[test]
fn a_live_import_reads_only_what_qemu_nbd_reports_as_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let want = make_qcow2(dir);
    // Slow enough that the guest reads the middle of the disk before the copy gets there.
    std::fs::write(
        dir.join("keel.toml"),
        "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\n\
         socket = \"d.sock\"\nengine = \"keel\"\npath = \"d.keel\"\n\
         import_from = \"big.qcow2\"\nimport_rate = \"16M\"\n",
    )
    .unwrap();
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    // 40 MiB around the 2 MiB of data at 128 MiB, most likely still on the source: only the
    // data is read from it, the holes are answered as zeroes.
    check(&mut q, &want, 100 * MIB, 40 * MIB, "while copying");
    let during = report(dir);
    assert!(
        during.source_read_bytes <= 4 * MIB,
        "holes were read from the source: {during:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let r = report(dir);
        if r.state == ImportState::Done {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the import did not finish: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The copy read the 4 MiB of data (and the guest 2 MiB of it once more), not 256 MiB.
    assert!(
        done.source_read_bytes >= 4 * MIB && done.source_read_bytes <= 8 * MIB,
        "{done:?}"
    );
    check(&mut q, &want, 0, SIZE, "import done");
    drop(q);
    let mut keeld = keeld;
    let (status, _) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    assert!(status.success());
    // Only the data is stored.
    let info = run(
        dir,
        keel_binary().to_str().unwrap(),
        &["info", "d.keel", "--json"],
    );
    let info: serde_json::Value = serde_json::from_str(&info).expect("info JSON");
    assert_eq!(info["mapped_bytes"], 4 * MIB, "{info}");
}

/// A `qemu-nbd` the test started; stopped when dropped.
struct NbdServer(Child);

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_nbd(dir: &Path, image: &str, format: &str) -> (NbdServer, String) {
    let socket = dir.join("src.sock");
    let child = Command::new("qemu-nbd")
        .current_dir(dir)
        .args(["--read-only", "--persistent", "--export-name=src"])
        .arg(format!("--format={format}"))
        .arg("--socket")
        .arg(&socket)
        .arg(image)
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let server = NbdServer(child);
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (
        server,
        format!("nbd+unix:///src?socket={}", socket.display()),
    )
}

/// `keel import SOURCE CONTAINER --json`: its summary.
fn import(dir: &Path, source: &str, container: &str) -> serde_json::Value {
    let out = run(
        dir,
        keel_binary().to_str().unwrap(),
        &["import", source, container, "--json"],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The container's disk, exported to a raw file and read back.
fn exported(dir: &Path, container: &str) -> Vec<u8> {
    let raw = format!("{container}.raw");
    run(
        dir,
        keel_binary().to_str().unwrap(),
        &["export", container, &raw],
    );
    let bytes = std::fs::read(dir.join(&raw)).unwrap();
    std::fs::remove_file(dir.join(&raw)).unwrap();
    bytes
}

#[test]
fn a_sparse_raw_file_is_imported_without_reading_its_holes_directly_or_through_nbd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = std::fs::File::create(dir.join("sparse.raw")).unwrap();
    file.set_len(SIZE).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    for (seed, at, len) in [
        (1, 0, 64 << 10),
        (2, 77 * MIB + 8192, MIB),
        (3, SIZE - MIB, MIB),
    ] {
        let data = pattern(seed, len as usize);
        file.write_all_at(&data, at).unwrap();
        want[at as usize..(at + len) as usize].copy_from_slice(&data);
    }
    file.sync_all().unwrap();
    drop(file);
    let data_bytes = (64 << 10) + 2 * MIB;

    let direct = import(dir, "sparse.raw", "direct.keel");
    let read = direct["source_read_bytes"]
        .as_u64()
        .expect("source_read_bytes");
    // File systems allocate in blocks: a little more than the data may be read, never the holes.
    assert!(read >= data_bytes && read <= data_bytes + MIB, "{direct}");
    assert!(exported(dir, "direct.keel") == want);

    let (server, uri) = serve_nbd(dir, "sparse.raw", "raw");
    let through_nbd = import(dir, &uri, "nbd.keel");
    drop(server);
    let read = through_nbd["source_read_bytes"]
        .as_u64()
        .expect("source_read_bytes");
    assert!(
        read >= data_bytes && read <= data_bytes + MIB,
        "{through_nbd}"
    );
    assert!(exported(dir, "nbd.keel") == want);
}

#[test]
fn an_image_read_through_qemu_nbd_is_read_only_where_it_has_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let want = make_qcow2(dir);
    let summary = import(dir, "big.qcow2", "q.keel");
    let read = summary["source_read_bytes"]
        .as_u64()
        .expect("source_read_bytes");
    assert_eq!(read, 4 * MIB, "{summary}");
    assert!(exported(dir, "q.keel") == want);
}
