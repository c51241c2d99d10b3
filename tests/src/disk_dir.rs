//! A test's directory holding one keeld config (`keel.toml`) with a disk `d` on `d.sock` and a
//! control socket `control.sock`, and the tools the tests run in it: the helpers the live-import
//! tests share.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_backend::control::client::ControlClient;
use keel_client::{Disk, DiskOptions, Queue};
use keel_protocol::control::DiskStats;

use crate::keeld::{KeeldProcess, wait_for_socket};

/// Runs `program` in `dir`; a failure stops the test with the program's output. Returns its
/// stdout and stderr.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

/// Starts keeld on `dir/keel.toml` and waits for disk `d` and the control socket (bound after
/// the disks' sockets).
pub fn start_keeld(dir: &Path) -> KeeldProcess {
    let keeld = KeeldProcess::spawn(&dir.join("keel.toml"));
    for socket in ["d.sock", "control.sock"] {
        assert!(
            wait_for_socket(&dir.join(socket), Duration::from_secs(20)),
            "keeld did not start"
        );
    }
    keeld
}

/// Queue 0 of disk `d`, retrying for a few seconds while keeld comes up.
pub fn connect_queue(dir: &Path) -> Queue {
    let started = Instant::now();
    loop {
        match Disk::connect(dir.join("d.sock"), &DiskOptions::default()) {
            Ok(mut d) => return d.take_queue(0).expect("queue 0"),
            Err(e) if started.elapsed() > Duration::from_secs(5) => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Disk `d`'s stats from the control API.
pub fn disk_stats(dir: &Path) -> DiskStats {
    ControlClient::new(&dir.join("control.sock"))
        .get("/v1/disks/d/stats")
        .expect("stats")
}

/// `keel.toml` for disk `d` on `d.keel`, imported live from `top.qcow2` at `rate` bytes/s.
pub fn live_import_config(rate: &str) -> String {
    format!(
        "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\n\
         socket = \"d.sock\"\nengine = \"keel\"\npath = \"d.keel\"\n\
         import_from = \"top.qcow2\"\nimport_rate = \"{rate}\"\n"
    )
}

/// Every MiB of the disk against `want` (the disk's whole size), naming the first wrong one.
pub fn check_all(q: &mut Queue, want: &[u8], when: &str) {
    const MIB: usize = 1 << 20;
    for at in (0..want.len()).step_by(MIB) {
        let got = q.read_vec(at as u64, MIB).unwrap();
        assert!(got == want[at..at + MIB], "{when}: the MiB at {at} differs");
    }
}

/// Writes `data` at `offset` through the guest's queue and into `want`, the expected disk.
pub fn guest_write(q: &mut Queue, want: &mut [u8], offset: u64, data: &[u8]) {
    q.write_slice(offset, data).unwrap();
    want[offset as usize..offset as usize + data.len()].copy_from_slice(data);
}

/// Moves the chain base.qcow2 <- mid.qcow2 <- top.qcow2 into `dir/gone`, out of the config's
/// reach.
pub fn move_chain_away(dir: &Path) {
    std::fs::create_dir(dir.join("gone")).unwrap();
    for f in ["base.qcow2", "mid.qcow2", "top.qcow2"] {
        std::fs::rename(dir.join(f), dir.join("gone").join(f)).unwrap();
    }
}

/// Stops keeld with SIGTERM, asserting a clean exit; returns its log.
pub fn stop_keeld(mut keeld: KeeldProcess) -> String {
    let (status, log) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    assert!(status.success(), "keeld: {status}\n{log}");
    log
}
