//! Keel's NBD client device against real NBD servers: qemu-nbd and qemu-storage-daemon's NBD
//! export (and keeld's own). Round trips are checked in the image file; a killed server or one
//! that never answers is an error, not a hang.

use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_backend::device::BlockDevice;
use keel_backend::device::nbd::{NbdDevice, NbdOptions};
use keel_tests::keeld::{InProcess, raw_disk, wait_for_socket};

const MIB: u64 = 1 << 20;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// An NBD server process on a fresh 64 MiB image, killed on drop.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    fn image(&self) -> PathBuf {
        self.dir.path().join("d.img")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///d?socket={}", self.socket().display())
    }

    fn start(kind: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let sock = dir.path().join("nbd.sock");
        let mut cmd = match kind {
            "qemu-nbd" => {
                let mut c = Command::new("qemu-nbd");
                c.args(["-f", "raw", "-t", "-x", "d", "--cache=none", "-k"])
                    .arg(&sock)
                    .arg(&img);
                c
            }
            _ => {
                let mut c = Command::new("qemu-storage-daemon");
                c.arg("--blockdev")
                    .arg(format!(
                        "driver=file,filename={},cache.direct=on,node-name=n",
                        img.display()
                    ))
                    .arg("--nbd-server")
                    .arg(format!("addr.type=unix,addr.path={}", sock.display()))
                    .args(["--export", "type=nbd,id=e,node-name=n,name=d,writable=on"]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        assert!(
            wait_for_socket(&sock, Duration::from_secs(10)),
            "{kind} did not start"
        );
        Self { child, dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut out, offset)
        .unwrap();
    out
}

fn round_trips(kind: &str) {
    let server = Server::start(kind);
    round_trips_on(kind, &server.uri(), &server.image());
}

fn round_trips_on(kind: &str, uri: &str, image: &Path) {
    let dev = NbdDevice::open(uri, NbdOptions::default()).unwrap();
    assert_eq!(dev.len(), 64 * MIB);
    assert!(!dev.read_only());

    let data = pattern(5, 3 * MIB as usize);
    dev.write_at(&data, 4 * MIB).unwrap();
    dev.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read_at(&mut back, 4 * MIB).unwrap();
    assert!(back == data, "{kind}: read back differs");
    assert!(image_bytes(image, 4 * MIB, data.len()) == data);

    // Many requests in flight on the one connection, from several threads.
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let dev = &dev;
            s.spawn(move || {
                let chunk = pattern(t, 64 << 10);
                let at = 16 * MIB + u64::from(t) * (64 << 10);
                for _ in 0..16 {
                    dev.write_at(&chunk, at).unwrap();
                    let mut got = vec![0u8; chunk.len()];
                    dev.read_at(&mut got, at).unwrap();
                    assert!(got == chunk);
                }
            });
        }
    });

    // Discard reads back as zeroes; write-zeroes with and without deallocation.
    dev.discard(4 * MIB, MIB).unwrap();
    dev.write_zeroes(5 * MIB, 4096, false, false).unwrap();
    dev.trim(6 * MIB + 4096, 4096).unwrap();
    dev.flush().unwrap();
    let mut z = vec![1u8; MIB as usize];
    dev.read_at(&mut z, 4 * MIB).unwrap();
    assert!(z.iter().all(|&b| b == 0));
    let mut z = vec![1u8; 4096];
    dev.read_at(&mut z, 5 * MIB).unwrap();
    assert!(z.iter().all(|&b| b == 0));
    assert_eq!(
        image_bytes(image, 5 * MIB + 4096, 4096),
        data[MIB as usize + 4096..MIB as usize + 8192]
    );
    // Fast zeroing is either done or refused as unsupported, never silently slow.
    match dev.write_zeroes(8 * MIB, MIB, true, true) {
        Ok(()) => assert_eq!(image_bytes(image, 8 * MIB, 4096), vec![0u8; 4096]),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}"),
    }

    // Out-of-range and unaligned requests are refused before they reach the server.
    assert!(dev.read_at(&mut [0u8; 4096], 64 * MIB).is_err());
    assert!(dev.write_at(&[0u8; 100], 0).is_err() || dev.info().min_block == 1);
    assert!(dev.failure().is_none());
}

#[test]
fn round_trips_against_qemu_nbd() {
    round_trips("qemu-nbd");
}

#[test]
fn round_trips_against_qemu_storage_daemon() {
    round_trips("qsd");
}

#[test]
fn round_trips_against_keelds_own_export() {
    let keeld = InProcess::start(&format!(
        "[server]\nnbd_socket = \"nbd.sock\"\n{}",
        raw_disk("d", "64M", "")
    ));
    let uri = format!(
        "nbd+unix:///d?socket={}",
        keeld.dir().join("nbd.sock").display()
    );
    round_trips_on("keeld", &uri, &keeld.dir().join("d.img"));
}

/// What the server reports of the whole export: (offset, length, reads as zeroes), asking
/// again from where each answer ends.
fn allocation_map(dev: &NbdDevice) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = 0;
    while at < dev.len() {
        for e in dev.block_status(at, dev.len() - at).unwrap() {
            match out.last_mut() {
                Some(last) if last.2 == e.hole => last.1 += e.len,
                _ => out.push((at, e.len, e.hole)),
            }
            at += e.len;
        }
    }
    out
}

/// A fresh sparse image with 1 MiB written at 8 MiB: the server reports that MiB as data and
/// the rest as zeroes.
fn block_status_on(kind: &str) {
    let server = Server::start(kind);
    let dev = NbdDevice::open(&server.uri(), NbdOptions::default()).unwrap();
    assert!(dev.has_block_status(), "{kind} offers base:allocation");
    dev.write_at(&pattern(3, MIB as usize), 8 * MIB).unwrap();
    dev.flush().unwrap();
    assert_eq!(
        allocation_map(&dev),
        [
            (0, 8 * MIB, true),
            (8 * MIB, MIB, false),
            (9 * MIB, 55 * MIB, true)
        ],
        "{kind}"
    );
}

#[test]
fn block_status_against_qemu_nbd() {
    block_status_on("qemu-nbd");
}

#[test]
fn block_status_against_qemu_storage_daemon() {
    block_status_on("qemu-storage-daemon");
}

#[test]
fn a_killed_server_fails_requests_instead_of_hanging() {
    let mut server = Server::start("qemu-nbd");
    let options = NbdOptions {
        request_timeout: Duration::from_secs(5),
        ..NbdOptions::default()
    };
    let dev = NbdDevice::open(&server.uri(), options).unwrap();
    dev.write_at(&[7u8; 4096], 0).unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut buf = [0u8; 4096];
    assert!(dev.read_at(&mut buf, 0).is_err());
    assert!(dev.failure().is_some());
    assert!(dev.write_at(&[1u8; 4096], 0).is_err());
}

#[test]
fn a_server_that_never_answers_times_out_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("mute.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let options = NbdOptions {
        connect_timeout: Duration::from_millis(300),
        ..NbdOptions::default()
    };
    let uri = format!("nbd+unix:///d?socket={}", sock.display());
    let err = NbdDevice::open(&uri, options)
        .err()
        .expect("no handshake, no device");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    drop(listener);
    // And an unknown export is refused by a real server.
    let server = Server::start("qemu-nbd");
    let uri = format!("nbd+unix:///other?socket={}", server.socket().display());
    assert!(NbdDevice::open(&uri, NbdOptions::default()).is_err());
}
