//! A hostile client on the control socket: many idle connections, partial heads and stalled
//! bodies, held while vhost-user frontends attach and while other calls are made. keeld runs with
//! a low descriptor limit, so a control server that spent a descriptor per waiting client would
//! refuse the frontends; and the control API must answer throughout and after.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use keel_backend::control::client::ControlClient;
use keel_protocol::control::{DiskInfo, DiskState};
use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, null_disk, raw_disk, wait_for_socket};
use keel_tests::pattern;

const MIB: usize = 1 << 20;
/// keeld's descriptor limit in this test: well under the number of flooding connections.
const FD_LIMIT: u64 = 256;
/// Idle connections opened, more than twice keeld's descriptor limit.
const IDLE: usize = 600;
const PARTIAL_HEADS: usize = 200;
const STALLED_BODIES: usize = 20;

/// Open descriptors of process `pid`.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Opens `n` connections and sends each `prefix` (possibly nothing); write errors are expected
/// once keeld has closed a connection to make room, and ignored.
fn flood(path: &Path, n: usize, prefix: &[u8]) -> Vec<UnixStream> {
    (0..n)
        .map(|_| {
            let mut s = UnixStream::connect(path).expect("the control socket accepts");
            if !prefix.is_empty() {
                let _ = s.write_all(prefix);
            }
            s
        })
        .collect()
}

/// GET /v1/disks, failing if no answer comes within a few seconds.
fn list(control: &Path) -> Vec<DiskInfo> {
    ControlClient::new(control)
        .with_timeout(Duration::from_secs(4))
        .get("/v1/disks")
        .expect("GET /v1/disks answers during and after the flood")
}

#[test]
fn a_flooded_control_socket_still_answers_and_refuses_no_frontend() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    let toml = format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n{}{}",
        null_disk("n", "64M", ""),
        raw_disk("r", "8M", "")
    );
    std::fs::write(&config, toml).unwrap();
    let mut keeld = KeeldProcess::spawn_with_fd_limit(&config, FD_LIMIT);
    let control = dir.path().join("keel.sock");
    for sock in [&control, &dir.path().join("r.sock")] {
        assert!(wait_for_socket(sock, Duration::from_secs(20)), "{sock:?}");
    }

    let idle = flood(&control, IDLE, b"");
    let heads = flood(
        &control,
        PARTIAL_HEADS,
        b"GET /v1/disks HTTP/1.1\r\nHost: k",
    );
    let bodies = flood(
        &control,
        STALLED_BODIES,
        b"POST /v1/disks/r/snapshots HTTP/1.1\r\nContent-Length: 100000\r\n\r\n{\"name\"",
    );

    // With all of that held, frontends attach and do I/O...
    let data = pattern(7, 64 << 10);
    let mut raw = Client::connect(&dir.path().join("r.sock"), 1, MIB).expect("raw frontend");
    raw.write(0, 4096, &data).unwrap();
    assert_eq!(raw.read(0, 4096, data.len()).unwrap(), data);
    let mut null = Client::connect(&dir.path().join("n.sock"), 1, MIB).expect("null frontend");
    null.write(0, 0, &data).unwrap();
    // ...the API answers, and keeld has kept most of its descriptors.
    let disks = list(&control);
    assert_eq!(disks.len(), 2);
    assert!(
        disks.iter().all(|d| d.state == DiskState::Serving),
        "{disks:?}"
    );
    assert!(disks.iter().all(|d| d.connected), "{disks:?}");
    let used = open_fds(keeld.pid());
    assert!(
        used < FD_LIMIT as usize / 2,
        "keeld holds {used} descriptors under the flood"
    );

    drop((idle, heads, bodies));
    drop((raw, null));
    // After the flood, the API still works and a new frontend is welcome.
    assert_eq!(list(&control).len(), 2);
    let mut again = Client::connect(&dir.path().join("r.sock"), 1, MIB).expect("frontend");
    assert_eq!(again.read(0, 4096, data.len()).unwrap(), data);
    drop(again);

    let (status, stderr) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(!stderr.contains("Too many open files"), "{stderr}");
}
