//! Connection handling: reconnects, a second and a third frontend, several disks, the real binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use keel_tests::client::Client;
use keel_tests::keeld::{
    InProcess, KeeldProcess, null_disk, raw_disk, run_expecting_failure, wait_for_socket,
};

const MIB: usize = 1 << 20;

#[test]
fn disconnect_and_reconnect_keeps_the_data() {
    let keeld = InProcess::start(&raw_disk("d", "8M", ""));
    for round in 0..5u8 {
        let mut c = Client::connect(&keeld.socket("d"), 1, MIB).unwrap();
        if round > 0 {
            assert_eq!(c.read(0, 0, 4096).unwrap(), vec![round - 1; 4096]);
        }
        c.write(0, 0, &[round; 4096]).unwrap();
        // Leave with requests in flight now and then.
        if round % 2 == 1 {
            for i in 0..8 {
                c.enqueue_write(0, 4096 * (i + 1) as u64, 0, 4096, i);
            }
            c.submit(0);
        }
    }
    let s = keeld.daemon().stats()[0].1.snapshot();
    assert_eq!(s.connections, 5);
    assert_eq!(s.refused_connections, 0);
}

/// A migration's destination on the same socket: it attaches beside the first frontend, its
/// I/O waits while the first runs, and is served once the first leaves. A third is refused.
#[test]
fn a_second_frontend_waits_for_the_first_and_a_third_is_refused() {
    let keeld = InProcess::start(&raw_disk("d", "8M", ""));
    let socket = keeld.socket("d");
    let mut first = Client::connect(&socket, 1, MIB).unwrap();
    first.write(0, 0, &[1; 4096]).unwrap();
    let (attached, on_attach) = std::sync::mpsc::channel();
    let waiting = std::thread::spawn(move || {
        let mut second = Client::connect(&socket, 1, MIB).unwrap();
        attached.send(()).unwrap();
        second.write(0, 0, &[2; 4096]).unwrap();
        second.read(0, 0, 8192).unwrap()
    });
    on_attach.recv().unwrap();
    let third = Client::connect(&keeld.socket("d"), 1, MIB);
    assert!(third.is_err(), "a third frontend must not attach");
    // The first one still works, with its rings and memory untouched, and the second's write
    // is not served meanwhile.
    for round in 0..20u8 {
        first.write(0, 4096, &[round; 4096]).unwrap();
        assert_eq!(first.read(0, 0, 8192).unwrap()[..4096], [1; 4096]);
    }
    assert!(!waiting.is_finished(), "the second frontend was served");
    let s = keeld.daemon().stats()[0].1.snapshot();
    assert!(s.refused_connections >= 1, "{s:?}");
    drop(first);
    // Once the first leaves, the second is served: its write, then what the first wrote last.
    let seen = waiting.join().unwrap();
    assert_eq!(seen[..4096], [2; 4096]);
    assert_eq!(seen[4096..], [19; 4096]);
}

/// The guest turned the write cache off through the first frontend: a second one (a
/// migration's destination, which reads the config space from keeld) sees it off too.
#[test]
fn a_second_frontend_sees_the_write_cache_the_guest_left() {
    use keel_tests::raw_frontend::{Message, RawFrontend, code};
    let keeld = InProcess::start(&raw_disk("d", "8M", ""));
    let patience = Duration::from_secs(10);
    let start = || {
        let mut fe = RawFrontend::connect(&keeld.socket("d")).unwrap();
        for m in [
            Message::new(code::SET_OWNER, Vec::new()),
            Message::new(code::GET_FEATURES, Vec::new()),
            Message::u64(code::SET_FEATURES, (1 << 32) | (1 << 30)),
            Message::u64(code::SET_PROTOCOL_FEATURES, (1 << 9) | (1 << 3) | 1),
        ] {
            fe.send(&m).unwrap();
        }
        assert_eq!(fe.read_reply().unwrap().0, code::GET_FEATURES);
        fe
    };
    let wce = |fe: &mut RawFrontend| {
        fe.send(&Message::config(code::GET_CONFIG, 32, 1, &[0]))
            .unwrap();
        let (c, _, p) = fe.read_reply().unwrap();
        assert_eq!((c, p.len()), (code::GET_CONFIG, 13));
        p[12]
    };
    let mut first = start();
    assert_eq!(wce(&mut first), 1, "write-back by default");
    first
        .send(&Message::config(code::SET_CONFIG, 32, 1, &[0]))
        .unwrap();
    assert_eq!(wce(&mut first), 0);
    let mut second = start();
    assert_eq!(
        wce(&mut second),
        0,
        "the destination kept the guest's setting"
    );
    assert!(second.finish(patience));
    assert!(first.finish(patience));
}

#[test]
fn two_disks_are_independent() {
    let toml = format!(
        "{}{}",
        raw_disk("a", "4M", ""),
        null_disk("b", "1G", "queues = 2")
    );
    let keeld = InProcess::start(&toml);
    let mut a = Client::connect(&keeld.socket("a"), 1, MIB).unwrap();
    let mut b = Client::connect(&keeld.socket("b"), 2, MIB).unwrap();
    assert_eq!(a.capacity(), 4 << 20);
    assert_eq!(b.capacity(), 1 << 30);
    a.write(0, 0, &[5; 4096]).unwrap();
    b.write(1, 0, &[6; 4096]).unwrap();
    assert_eq!(a.read(0, 0, 4096).unwrap(), vec![5; 4096]);
    assert_eq!(b.read(1, 0, 4096).unwrap(), vec![0; 4096]);
    // Dropping one disk's frontend does not disturb the other.
    drop(b);
    assert_eq!(a.read(0, 0, 4096).unwrap(), vec![5; 4096]);
    let stats = keeld.daemon().stats();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].1.snapshot().writes, 1);
    assert_eq!(stats[1].1.snapshot().writes, 1);
}

#[test]
fn socket_is_private_and_removed_at_shutdown() {
    let keeld = InProcess::start(&null_disk("n", "1M", ""));
    let sock = keeld.socket("n");
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir = keeld.stop();
    assert!(!dir.path().join("n.sock").exists());
}

#[test]
fn binary_serves_until_sigterm_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    fs::write(
        &config,
        format!("{}{}", raw_disk("a", "4M", ""), null_disk("b", "1G", "")),
    )
    .unwrap();
    let mut keeld = KeeldProcess::spawn(&config);
    assert!(wait_for_socket(
        &dir.path().join("a.sock"),
        Duration::from_secs(60)
    ));
    assert!(wait_for_socket(
        &dir.path().join("b.sock"),
        Duration::from_secs(10)
    ));
    let mut c = Client::connect(&dir.path().join("a.sock"), 1, MIB).unwrap();
    c.write(0, 8192, &[0x42; 4096]).unwrap();
    // SIGTERM with a frontend attached: in-flight work finishes, writes are flushed, exit 0.
    let (status, stderr) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    drop(c);
    assert!(!dir.path().join("a.sock").exists());
    let img = fs::read(dir.path().join("a.img")).unwrap();
    assert_eq!(&img[8192..12288], &[0x42; 4096][..]);
}

#[test]
fn binary_exits_zero_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    fs::write(&config, null_disk("n", "1G", "")).unwrap();
    let mut keeld = KeeldProcess::spawn(&config);
    assert!(wait_for_socket(
        &dir.path().join("n.sock"),
        Duration::from_secs(60)
    ));
    let (status, stderr) = keeld.signal_and_wait(libc::SIGINT, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn binary_refuses_a_bad_config_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    fs::write(&config, format!("{}queues = 0\n", null_disk("n", "1G", ""))).unwrap();
    let (code, stderr) = run_expecting_failure(&config);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("keel.toml:7: `queues`"), "{stderr}");
    assert!(!dir.path().join("n.sock").exists());

    fs::write(
        &config,
        format!("{}{}", null_disk("n", "1G", ""), null_disk("n", "1G", "")),
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(&config);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("`name`") && stderr.contains("already used"),
        "{stderr}"
    );

    fs::write(
        &config,
        "[[disk]]\nname = \"x\"\nsocket = \"x.sock\"\nengine = \"raw\"\nsize = \"1G\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(&config);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("bogus") && stderr.contains("line 6"),
        "{stderr}"
    );

    let (code, stderr) = run_expecting_failure(&dir.path().join("missing.toml"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("missing.toml"), "{stderr}");
}
