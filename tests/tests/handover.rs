//! Two keelds on one container (`handover = true`), driven by keel-client's guest driver: the
//! second starts in standby, each takes the disk when its frontend starts a ring and the other
//! has let go, what one wrote the other reads, and the container is never open for writing
//! twice.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_backend::engine::handover::Holding;
use keel_client::{Disk, DiskOptions};
use keel_tests::keeld::{InProcess, keel_binary};
use keel_tests::pattern;

/// A keel disk `d` on `path`, handed over between keelds; every other key at its default.
fn disk(path: &str) -> String {
    format!(
        "[[disk]]\nname = \"d\"\nsocket = \"d.sock\"\nengine = \"keel\"\npath = \"{path}\"\n\
         size = \"16M\"\nhandover = true\n"
    )
}

fn holding(keeld: &InProcess) -> Holding {
    let disks = keeld.daemon().list().unwrap();
    disks[0].handover().expect("a handover disk").holding()
}

/// Waits (at most 20 s, so a broken release fails instead of hanging) for `keeld` to reach
/// `want`.
fn until(keeld: &InProcess, want: Holding) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while holding(keeld) != want {
        assert!(
            Instant::now() < deadline,
            "still {:?}, never {want:?}",
            holding(keeld)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `keel fsck` opens the container for writing (it replays): refused while a keeld holds it.
fn fsck(container: &std::path::Path) -> std::process::Output {
    Command::new(keel_binary())
        .arg("fsck")
        .arg(container)
        .output()
        .unwrap()
}

#[test]
fn two_keelds_hand_a_keel_container_over_and_never_both_hold_it() {
    let a = InProcess::start(&disk("disk.keel"));
    let container = a.dir().join("disk.keel");
    let b = InProcess::start(&disk(container.to_str().unwrap()));
    assert_eq!(holding(&a), Holding::Serving);
    assert_eq!(holding(&b), Holding::Standby, "the lock is a's");

    let data = pattern(11, 256 * 1024);
    {
        let mut disk = Disk::connect(a.socket("d"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        q.write_slice(4096, &data).unwrap();
        q.flush().unwrap();
    }
    // a's frontend left: a drains, checkpoints and closes the container.
    until(&a, Holding::Released);
    assert_eq!(
        holding(&b),
        Holding::Standby,
        "b takes it only for its frontend"
    );

    let second = pattern(12, 64 * 1024);
    {
        let mut disk = Disk::connect(b.socket("d"), &DiskOptions::default()).unwrap();
        assert_eq!(
            disk.info().capacity(),
            16 << 20,
            "b's size came from the superblock"
        );
        let mut q = disk.take_queue(0).unwrap();
        // The read waits while b takes the container (lock, open, replay), then is served.
        assert!(q.read_vec(4096, data.len()).unwrap() == data, "a's writes");
        assert_eq!(holding(&b), Holding::Serving);
        assert_eq!(holding(&a), Holding::Released);
        q.write_slice(0, &second).unwrap();
        q.flush().unwrap();
        let out = fsck(&container);
        assert!(!out.status.success(), "fsck opened a container b holds");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("locked"), "{text}");
    }
    until(&b, Holding::Released);

    // Back to a (a cancelled migration, or a second one): it reads both keelds' writes.
    {
        let mut disk = Disk::connect(a.socket("d"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        assert!(q.read_vec(0, second.len()).unwrap() == second, "b's writes");
        assert!(q.read_vec(65536, 4096).unwrap() == data[65536 - 4096..65536]);
        assert_eq!(holding(&a), Holding::Serving);
    }
    until(&a, Holding::Released);
    drop(b.stop());
    let _a_dir = a.stop();
    let out = fsck(&container);
    assert!(
        out.status.success(),
        "keel fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
