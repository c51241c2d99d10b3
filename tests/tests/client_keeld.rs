//! keel-client's library against keeld (raw, null and keel engines): every request type, two
//! queues on two threads, poll mode, read-only disks and out-of-range requests.

use std::os::unix::fs::FileExt;

use keel_client::queue::Completions;
use keel_client::{Disk, DiskOptions};
use keel_protocol::features;
use keel_tests::keeld::{InProcess, null_disk, raw_disk};
use keel_tests::pattern;

const MIB: u64 = 1 << 20;

fn keel_disk(name: &str, size: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"keel\"\npath = \"{name}.keel\"\nsize = \"{size}\"\ndirect = false\n"
    )
}

/// Write, flush, discard, write-zeroes and GET_ID on one queue; checks what reads back.
fn every_request_type(keeld: &InProcess, name: &str, options: &DiskOptions) {
    let mut disk = Disk::connect(keeld.socket(name), options).unwrap();
    let mut q = disk.take_queue(0).unwrap();
    let data = pattern(3, 64 * 1024);
    q.write_slice(0, &data).unwrap();
    q.flush().unwrap();
    assert_eq!(q.get_id().unwrap(), name);
    q.discard(0, 4096).unwrap();
    q.write_zeroes(8192, 8192, false).unwrap();
    q.write_zeroes(32768, 4096, true).unwrap();
    q.flush().unwrap();
    let back = q.read_vec(0, data.len()).unwrap();
    assert!(
        back[..4096].iter().all(|&b| b == 0),
        "keel engines discard to zeroes"
    );
    assert!(back[8192..16384].iter().all(|&b| b == 0));
    assert!(back[32768..36864].iter().all(|&b| b == 0));
    assert!(back[4096..8192] == data[4096..8192]);
    assert!(back[16384..32768] == data[16384..32768]);
    assert!(back[36864..] == data[36864..]);
    // Beyond the end: an error with the offset, and the queue keeps working.
    let cap = disk.info().capacity();
    assert!(q.read_vec(cap, 4096).is_err());
    assert!(q.read_vec(4096, 4096).unwrap() == data[4096..8192]);
}

#[test]
fn raw_disk_serves_every_request_type_and_reaches_the_file() {
    let keeld = InProcess::start(&raw_disk("r", "16M", ""));
    every_request_type(&keeld, "r", &DiskOptions::default());
    let f = std::fs::File::open(keeld.dir().join("r.img")).unwrap();
    let mut buf = vec![1u8; 8192];
    f.read_exact_at(&mut buf, 8192).unwrap();
    assert_eq!(buf, vec![0u8; 8192]);
}

#[test]
fn keel_disk_serves_every_request_type_in_poll_mode() {
    let keeld = InProcess::start(&keel_disk("k", "16M"));
    let options = DiskOptions {
        completions: Completions::Poll,
        ..DiskOptions::default()
    };
    every_request_type(&keeld, "k", &options);
}

#[test]
fn two_queues_on_two_threads() {
    let keeld = InProcess::start(&raw_disk("q", "32M", "queues = 2"));
    let mut disk = Disk::connect(keeld.socket("q"), &DiskOptions::default()).unwrap();
    assert_eq!(disk.info().queues, 2);
    let queues = disk.take_queues();
    std::thread::scope(|s| {
        for mut q in queues {
            s.spawn(move || {
                let base = u64::from(q.index()) * 8 * MIB;
                for i in 0..32u64 {
                    let data = pattern(i + 100 * u64::from(q.index()), 4096);
                    q.write_slice(base + i * 4096, &data).unwrap();
                }
                for i in 0..32u64 {
                    let data = pattern(i + 100 * u64::from(q.index()), 4096);
                    assert!(q.read_vec(base + i * 4096, 4096).unwrap() == data);
                }
            });
        }
    });
}

#[test]
fn read_only_null_disk_refuses_writes() {
    let keeld = InProcess::start(&null_disk("n", "8M", "read_only = true"));
    let mut disk = Disk::connect(keeld.socket("n"), &DiskOptions::default()).unwrap();
    assert!(features::has(disk.info().features, features::RO));
    let mut q = disk.take_queue(0).unwrap();
    assert!(q.write_slice(0, &[1u8; 4096]).is_err());
    assert_eq!(q.read_vec(0, 4096).unwrap(), vec![0u8; 4096]);
}

#[test]
fn a_third_frontend_is_told_why_it_was_refused() {
    let keeld = InProcess::start(&raw_disk("r", "1M", ""));
    let first = Disk::connect(keeld.socket("r"), &DiskOptions::default()).unwrap();
    // A second one attaches (a migration's destination) and waits.
    let second = Disk::connect(keeld.socket("r"), &DiskOptions::default()).unwrap();
    match Disk::connect(keeld.socket("r"), &DiskOptions::default()) {
        Err(e @ keel_client::Error::HungUp { .. }) => {
            let message = e.to_string();
            assert!(message.contains("is another attached?"), "{message}");
        }
        Err(e) => panic!("expected HungUp, got {e}"),
        Ok(_) => panic!("a third frontend attached"),
    }
    drop((first, second));
}

#[test]
fn keelds_control_socket_is_not_taken_for_a_disk() {
    let keeld = InProcess::start(&format!(
        "[server]\ncontrol_socket = \"ctl.sock\"\n{}",
        raw_disk("r", "1M", "")
    ));
    let ctl = keeld.dir().join("ctl.sock");
    match Disk::connect_within(
        &ctl,
        &DiskOptions::default(),
        std::time::Duration::from_secs(1),
    ) {
        Err(
            e @ (keel_client::Error::NotVhostUser { .. } | keel_client::Error::NoAnswer { .. }),
        ) => {
            let message = e.to_string();
            assert!(message.contains("not"), "{message}");
        }
        Err(e) => panic!("expected NotVhostUser or NoAnswer, got {e:?}"),
        Ok(_) => panic!("the control socket served a disk"),
    }
}

#[test]
fn a_reload_does_not_take_a_disk_from_an_attached_guest() {
    use keel_backend::config::Config;
    use keel_backend::vhost::Daemon;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keel.toml");
    std::fs::write(&file, raw_disk("r", "1M", "")).unwrap();
    let mut daemon = Daemon::start(&Config::load(&file).unwrap()).unwrap();
    let mut disk = Disk::connect(dir.path().join("r.sock"), &DiskOptions::default()).unwrap();
    let mut q = disk.take_queue(0).unwrap();
    q.write_slice(0, &pattern(5, 4096)).unwrap();

    let empty = Config::parse("", &file, dir.path()).unwrap();
    let r = daemon.reload(&empty);
    assert!(r.applied.is_empty(), "{r:?}");
    assert_eq!(
        r.refused,
        [
            "disk r not removed: a frontend is attached: still served; detach it and send SIGHUP again"
        ]
    );
    q.flush().unwrap();
    assert!(q.read_vec(0, 4096).unwrap() == pattern(5, 4096));

    // Once the guest has gone, the same reload removes the disk.
    drop(q);
    drop(disk);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = daemon.reload(&empty);
        if r.applied == ["disk r removed"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!dir.path().join("r.sock").exists());
    daemon.shutdown().unwrap();
}
