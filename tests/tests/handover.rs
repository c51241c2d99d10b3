//! Two keelds on one container (`handover = true`), driven by keel-client's guest driver (and,
//! to stop a ring as QEMU does, a raw vhost-user frontend): the second starts in standby, each
//! takes the disk when its frontend starts a ring and the other has let go, what one wrote the
//! other reads, and the container is never open for writing twice.

use std::process::Command;
use std::time::{Duration, Instant};

use keel_backend::engine::handover::Holding;
use keel_client::{Disk, DiskOptions};
use keel_tests::keeld::{InProcess, keel_binary};
use keel_tests::pattern;
use keel_tests::raw_frontend::session::{
    ring_start, with_a_started_ring as session_with_a_started_ring,
};
use keel_tests::raw_frontend::{Message, RawFrontend, code};

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

/// A raw vhost-user frontend on `keeld`'s disk with ring 0 started, as QEMU's guest runs.
fn frontend_with_a_started_ring(keeld: &InProcess) -> RawFrontend {
    let mut fe = RawFrontend::connect(&keeld.socket("d")).unwrap();
    for m in session_with_a_started_ring() {
        fe.send(&m).unwrap();
    }
    fe
}

/// Stops ring 0 as a migration's source stops the guest (GET_VRING_BASE) and waits for the
/// answer; replies come in order, earlier ones first.
fn stop_the_ring(fe: &mut RawFrontend) {
    fe.send(&Message::vring_state(code::GET_VRING_BASE, 0, 0))
        .unwrap();
    while fe.read_reply().unwrap().0 != code::GET_VRING_BASE {}
}

/// Restarts ring 0 (a cancelled migration's source resuming the guest).
fn restart_the_ring(fe: &mut RawFrontend) {
    for m in ring_start() {
        fe.send(&m).unwrap();
    }
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
    assert!(free(&container), "a let the container go");
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

/// A raw disk mirrored on two files (`mirror`, `resync_chunk` etc. at their defaults).
fn mirrored(engine: &str, dir: &str) -> String {
    format!(
        "[[disk]]\nname = \"d\"\nsocket = \"d.sock\"\nengine = \"{engine}\"\n\
         mirror = [\"{dir}m0.img\", \"{dir}m1.img\"]\nsize = \"16M\"\nhandover = true\n"
    )
}

/// Whether `path` can be locked for writing now (nobody holds it).
fn free(path: &std::path::Path) -> bool {
    keel_backend::device::lock::lock_path(path, keel_backend::device::lock::LockMode::Exclusive)
        .is_ok()
}

#[test]
fn a_raw_mirror_is_handed_over_with_every_component() {
    mirror_handed_over("raw");
}

#[test]
fn a_keel_mirror_is_handed_over_with_every_component() {
    mirror_handed_over("keel");
}

fn mirror_handed_over(engine: &str) {
    let a = InProcess::start(&mirrored(engine, ""));
    let dir = format!("{}/", a.dir().display());
    let b = InProcess::start(&mirrored(engine, &dir));
    assert_eq!(holding(&a), Holding::Serving);
    assert_eq!(holding(&b), Holding::Standby);
    let components = [a.dir().join("m0.img"), a.dir().join("m1.img")];
    assert!(
        !free(&components[0]) && !free(&components[1]),
        "a holds both"
    );

    let data = pattern(21, 128 * 1024);
    {
        let mut disk = Disk::connect(a.socket("d"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        q.write_slice(1 << 20, &data).unwrap();
        q.flush().unwrap();
    }
    until(&a, Holding::Released);
    assert!(
        free(&components[0]) && free(&components[1]),
        "a let both go"
    );
    {
        let mut disk = Disk::connect(b.socket("d"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        assert!(
            q.read_vec(1 << 20, data.len()).unwrap() == data,
            "a's writes"
        );
        assert_eq!(holding(&b), Holding::Serving);
        assert!(
            !free(&components[0]) && !free(&components[1]),
            "b holds both components"
        );
    }
    until(&b, Holding::Released);
    drop(b.stop());
    drop(a.stop());
}

#[test]
fn stopping_every_ring_releases_the_disk_and_restarting_one_takes_it_back() {
    let a = InProcess::start(&disk("disk.keel"));
    let container = a.dir().join("disk.keel");
    let b = InProcess::start(&disk(container.to_str().unwrap()));
    let mut fe = frontend_with_a_started_ring(&a);
    // The source stops the guest.
    stop_the_ring(&mut fe);
    assert_eq!(
        holding(&a),
        Holding::Released,
        "released before the last GET_VRING_BASE is answered, the frontend still attached"
    );
    assert!(free(&container), "a let the container go");

    // A cancelled migration: the same frontend restarts its ring; a takes the container back.
    restart_the_ring(&mut fe);
    until(&a, Holding::Serving);
    assert!(!free(&container));
    assert_eq!(holding(&b), Holding::Standby);
    drop(fe);
    until(&a, Holding::Released);
    drop(b.stop());
    drop(a.stop());
}

/// Two keelds on one container after a's frontend stopped its ring (a released it) and b's
/// frontend wrote `data` at 0 through b, which took it.
struct BServing {
    a: InProcess,
    b: InProcess,
    container: std::path::PathBuf,
    /// a's frontend, its ring stopped.
    fe: RawFrontend,
    disk_b: Disk,
    q: keel_client::Queue,
}

fn b_serving_after_a_released(data: &[u8]) -> BServing {
    let a = InProcess::start(&disk("disk.keel"));
    let container = a.dir().join("disk.keel");
    let b = InProcess::start(&disk(container.to_str().unwrap()));
    let mut fe = frontend_with_a_started_ring(&a);
    stop_the_ring(&mut fe);
    assert_eq!(holding(&a), Holding::Released);
    let mut disk_b = Disk::connect(b.socket("d"), &DiskOptions::default()).unwrap();
    let mut q = disk_b.take_queue(0).unwrap();
    q.write_slice(0, data).unwrap();
    assert_eq!(holding(&b), Holding::Serving);
    BServing {
        a,
        b,
        container,
        fe,
        disk_b,
        q,
    }
}

#[test]
fn both_keelds_asking_for_the_disk_never_both_hold_it() {
    let data = pattern(31, 64 * 1024);
    let BServing {
        a,
        b,
        mut fe,
        disk_b,
        mut q,
        ..
    } = b_serving_after_a_released(&data);

    // a's frontend restarts its ring while b serves: a asks for the container and waits.
    restart_the_ring(&mut fe);
    until(&a, Holding::Taking);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(holding(&a), Holding::Taking, "a opened a container b holds");
    assert_eq!(holding(&b), Holding::Serving);
    assert!(q.read_vec(0, data.len()).unwrap() == data, "b still serves");

    // b's frontend leaves: b lets go, and a, still asking, gets it.
    drop(q);
    drop(disk_b);
    until(&a, Holding::Serving);
    assert_eq!(holding(&b), Holding::Released);
    drop(fe);
    drop(b.stop());
    drop(a.stop());
}

#[test]
fn a_take_that_ends_after_its_rings_stopped_gives_the_disk_back() {
    let BServing {
        a,
        b,
        container,
        mut fe,
        disk_b,
        q,
    } = b_serving_after_a_released(&pattern(41, 4096));

    // a's frontend restarts its ring (a asks for the container and waits for b), then stops it
    // again before b lets go: a migration to a cancelled while a still waited.
    restart_the_ring(&mut fe);
    until(&a, Holding::Taking);
    stop_the_ring(&mut fe);
    assert_eq!(holding(&a), Holding::Taking, "still waiting for b's lock");

    // b lets go: a's take completes, finds no ring running, and gives the container back.
    drop(q);
    drop(disk_b);
    until(&b, Holding::Released);
    until(&a, Holding::Released);
    assert!(
        free(&container),
        "a let the container go after its late take"
    );
    drop(fe);
    drop(b.stop());
    drop(a.stop());
}
