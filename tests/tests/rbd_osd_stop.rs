//! An OSD that stops answering (SIGSTOP, as a hung or partitioned OSD looks to a client), with a
//! cluster of its own so the other rbd tests are not held up: a disk with `osd_timeout_s` fails
//! the request with IOERR after that long, a disk without it waits and completes once the OSD
//! is back, and keeld's other disks are served meanwhile.

use std::time::{Duration, Instant};

use keel_tests::ceph::Cluster;
use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, wait_for_socket};
use keel_tests::pattern;

const MIB: usize = 1 << 20;

/// Sends `signal` to the OSD.
fn signal(pid: i32, signal: i32) {
    // SAFETY: kill(2) on the test cluster's OSD, whose pid file this process's cluster wrote.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn stopped_osd_times_out_with_a_timeout_and_waits_without_one() {
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let id = std::process::id();
    let toml = format!(
        "[[disk]]\nname = \"t\"\nsocket = \"t.sock\"\nengine = \"rbd\"\nimage = \"rbd/t{id}\"\n\
         ceph_conf = \"{conf}\"\nsize = \"16M\"\nosd_timeout_s = 3\n\n\
         [[disk]]\nname = \"w\"\nsocket = \"w.sock\"\nengine = \"rbd\"\nimage = \"rbd/w{id}\"\n\
         ceph_conf = \"{conf}\"\nsize = \"16M\"\n\n\
         [[disk]]\nname = \"n\"\nsocket = \"n.sock\"\nengine = \"null\"\nsize = \"1M\"\n",
        conf = cluster.conf().display()
    );
    std::fs::write(dir.path().join("keel.toml"), toml).unwrap();
    let mut keeld = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    for s in ["t.sock", "w.sock", "n.sock"] {
        assert!(
            wait_for_socket(&dir.path().join(s), Duration::from_secs(60)),
            "{s}"
        );
    }
    let mut t = Client::connect(&dir.path().join("t.sock"), 1, MIB).unwrap();
    let mut w = Client::connect(&dir.path().join("w.sock"), 1, MIB).unwrap();
    let mut n = Client::connect(&dir.path().join("n.sock"), 1, MIB).unwrap();
    // Both images are open and hold their locks before the OSD stops.
    t.write(0, 0, &pattern(1, 4096)).unwrap();
    w.write(0, 0, &pattern(2, 4096)).unwrap();

    let osd = cluster.osd_pid();
    signal(osd, libc::SIGSTOP);
    // Should the timeout not work, the OSD comes back anyway and the test fails instead of
    // hanging.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        // SAFETY: as in `signal`; a second SIGCONT does nothing.
        unsafe { libc::kill(osd, libc::SIGCONT) };
    });
    let waiting = std::thread::spawn(move || {
        let r = w.write(0, 8192, &pattern(3, 4096));
        (w, r)
    });
    let started = Instant::now();
    let timed_out = t.write(0, 8192, &pattern(4, 4096));
    let waited = started.elapsed();
    n.write(0, 0, &[5; 512]).unwrap();
    let still_waiting = !waiting.is_finished();
    signal(osd, libc::SIGCONT);
    assert!(timed_out.is_err(), "a request to a stopped OSD failed");
    assert!(
        waited >= Duration::from_secs(2),
        "it failed only after the timeout: {waited:?}"
    );
    assert!(
        still_waiting,
        "without a timeout the request waits for the OSD ({waited:?} after the stop)"
    );
    let (mut w, r) = waiting.join().unwrap();
    r.expect("the waiting request completes once the OSD is back");
    assert_eq!(w.read(0, 8192, 4096).unwrap(), pattern(3, 4096));
    // The disk whose request timed out serves again.
    t.write(0, 8192, &pattern(6, 4096)).unwrap();
    assert_eq!(t.read(0, 8192, 4096).unwrap(), pattern(6, 4096));
    assert_eq!(t.read(0, 0, 4096).unwrap(), pattern(1, 4096));

    // A disk whose OSD stopped answering does not keep keeld from exiting: shutdown stops the
    // other disks, gives up on this one at its deadline, says so and exits non-zero.
    signal(osd, libc::SIGSTOP);
    let stuck = std::thread::spawn(move || w.write(0, 12288, &pattern(7, 4096)));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (status, stderr) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
    let took = started.elapsed();
    signal(osd, libc::SIGCONT);
    assert!(
        !status.success(),
        "a disk that could not stop is an error: {status:?}\n{stderr}"
    );
    assert!(
        stderr.contains("disk w") && stderr.contains("still stopping"),
        "the log names the disk that did not stop:\n{stderr}"
    );
    assert!(
        took >= Duration::from_secs(25),
        "it waited for the disk first: {took:?}"
    );
    // The request keeld never answered fails (the test client gives up on it) rather than
    // completing.
    assert!(
        !matches!(stuck.join(), Ok(Ok(()))),
        "a request to a stopped OSD completed"
    );
}
