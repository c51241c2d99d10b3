//! A live import of a chain whose layers and internal snapshot become snapshots: keeld serves
//! a three-layer qcow2 chain whose top has an internal snapshot (`import_from`, defaults:
//! O_DIRECT), the guest writes while the views are staged, keeld is killed with SIGKILL
//! mid-staging and restarted; at the end `keel snapshot list` shows the layers and the
//! internal snapshot oldest first, each exporting byte for byte as `qemu-img convert` reads
//! that view, the disk reads as the top with the guest's writes over it, and `keel fsck` is
//! clean; with the chain's files moved away keeld serves the same disk and `base` reverts to
//! base.qcow2's view. A live import killed while staging is finished offline by `keel import` just the
//! same.

use std::path::Path;
use std::time::{Duration, Instant};

use keel_protocol::control::ImportState;
use keel_tests::disk_dir::{
    check_all, connect_queue, disk_stats, guest_write, live_import_config, move_chain_away, run,
    start_keeld, stop_keeld,
};
use keel_tests::keeld::keel_binary;
use keel_tests::{pattern, qcow2};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;

/// base.qcow2 <- mid.qcow2 <- top.qcow2, each layer writing known bytes (some over the layer
/// below, one zeroing what the base wrote), and an internal snapshot `frozen` of the top taken
/// before its last writes.
fn make_chain(dir: &Path) {
    qcow2::create(dir, "base.qcow2", SIZE);
    qcow2::qemu_io(
        dir,
        "base.qcow2",
        &["write -q -P 0x11 0 6M", "write -q -P 0x12 24M 1M"],
    );
    qcow2::create_over(dir, "mid.qcow2", "base.qcow2");
    qcow2::qemu_io(
        dir,
        "mid.qcow2",
        &["write -q -P 0x33 1M 1M", "write -q -z 4M 512K"],
    );
    qcow2::create_over(dir, "top.qcow2", "mid.qcow2");
    qcow2::qemu_io(dir, "top.qcow2", &["write -q -P 0x44 2M 1M"]);
    qcow2::snapshot(dir, "top.qcow2", "frozen");
    qcow2::qemu_io(
        dir,
        "top.qcow2",
        &["write -q -P 0x45 3M 1M", "write -q -P 0x46 16M 2M"],
    );
}

fn keel(dir: &Path, args: &[&str]) -> String {
    run(dir, keel_binary().to_str().unwrap(), args)
}

/// `keel snapshot list` shows the layers and the internal snapshot oldest first, each exporting
/// byte for byte as `qemu-img` reads that view.
fn check_snapshots(dir: &Path) {
    let text = keel(dir, &["snapshot", "list", "d.keel", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&text).expect("snapshot JSON");
    let names: Vec<&str> = (list.as_array().expect("a list").iter())
        .map(|s| s["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["base", "mid", "frozen"]);
    for (name, image, internal) in [
        ("base", "base.qcow2", None),
        ("mid", "mid.qcow2", None),
        ("frozen", "top.qcow2", Some("frozen")),
    ] {
        let (got, expected) = (format!("got-{name}.raw"), format!("want-{name}.raw"));
        let kx = format!("{name}.kx");
        keel(dir, &["diff", "d.keel", "@empty", name, "--export", &kx]);
        keel(dir, &["apply", &kx, &got]);
        qcow2::to_raw(dir, image, internal, &expected);
        let mut got = std::fs::read(dir.join(&got)).unwrap();
        got.resize(SIZE as usize, 0);
        let expected = std::fs::read(dir.join(&expected)).unwrap();
        assert!(
            got == expected,
            "snapshot {name} differs from qemu-img's view"
        );
    }
}

/// The running disk of `d.keel`, exported to a raw file.
fn disk_as_raw(dir: &Path) -> Vec<u8> {
    keel(
        dir,
        &[
            "diff", "d.keel", "@empty", "@running", "--export", "disk.kx",
        ],
    );
    keel(dir, &["apply", "disk.kx", "disk.raw"]);
    let mut got = std::fs::read(dir.join("disk.raw")).unwrap();
    got.resize(SIZE as usize, 0);
    got
}

#[test]
fn a_chain_imported_live_becomes_snapshots_and_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_chain(dir);
    qcow2::to_raw(dir, "top.qcow2", None, "top.raw");
    let mut want = std::fs::read(dir.join("top.raw")).unwrap();
    assert_eq!(want.len() as u64, SIZE);
    // 4 MiB/s over four 32 MiB views: still staging the first at the kill.
    std::fs::write(dir.join("keel.toml"), live_import_config("4M")).unwrap();
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    check_all(&mut q, &want, "served at once");
    // Over a layer's data, over a block the internal snapshot holds, a sector into source
    // data, and where no layer wrote.
    guest_write(&mut q, &mut want, 0, &pattern(1, 64 * 1024));
    guest_write(&mut q, &mut want, 2 * MIB + 4096, &pattern(2, 8192));
    guest_write(&mut q, &mut want, 3 * MIB + 512, &pattern(3, 512));
    guest_write(&mut q, &mut want, 30 * MIB, &pattern(4, 4096));
    q.flush().unwrap();
    check_all(&mut q, &want, "after the guest's writes");
    assert_eq!(
        disk_stats(dir).import.expect("an import report").state,
        ImportState::Copying,
        "the kill must land mid-import"
    );
    drop(q);
    let mut keeld = keeld;
    keeld.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));

    std::fs::write(dir.join("keel.toml"), live_import_config("256M")).unwrap();
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    check_all(&mut q, &want, "after kill -9");
    guest_write(&mut q, &mut want, 17 * MIB, &pattern(5, 4096));
    q.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while disk_stats(dir).import.expect("an import report").state != ImportState::Done {
        assert!(Instant::now() < deadline, "the import did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    check_all(&mut q, &want, "import done");
    drop(q);
    stop_keeld(keeld);

    check_snapshots(dir);
    let text = keel(dir, &["fsck", "d.keel"]);
    assert!(text.contains(" 0 problems"), "fsck: {text}");

    // The chain's files moved away: the container no longer refers to them. keeld serves the
    // disk as before (the config still names `import_from`), and `base` reverts to base.qcow2's
    // view without them.
    move_chain_away(dir);
    let keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    check_all(&mut q, &want, "with the chain moved away");
    drop(q);
    stop_keeld(keeld);
    keel(dir, &["snapshot", "revert", "d.keel", "base"]);
    let base = std::fs::read(dir.join("want-base.raw")).unwrap();
    assert!(
        disk_as_raw(dir) == base,
        "the disk reverted to base is not base.qcow2's view"
    );
}

#[test]
fn keel_import_finishes_a_live_import_of_a_chain_killed_while_staging() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_chain(dir);
    std::fs::write(dir.join("keel.toml"), live_import_config("4M")).unwrap();
    let mut keeld = start_keeld(dir);
    let mut q = connect_queue(dir);
    let mut want = {
        qcow2::to_raw(dir, "top.qcow2", None, "top.raw");
        std::fs::read(dir.join("top.raw")).unwrap()
    };
    guest_write(&mut q, &mut want, 5 * MIB, &pattern(6, 4096));
    q.flush().unwrap();
    drop(q);
    assert_eq!(
        disk_stats(dir).import.expect("an import report").state,
        ImportState::Copying
    );
    keeld.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
    keel(dir, &["import", "top.qcow2", "d.keel"]);
    check_snapshots(dir);
    assert!(
        disk_as_raw(dir) == want,
        "the disk is the top with the guest's write"
    );
    let text = keel(dir, &["fsck", "d.keel"]);
    assert!(text.contains(" 0 problems"), "fsck: {text}");
}

/// A chain whose top rewrites every block of a base that fills the disk: the base snapshot and
/// the disk share nothing, twice what a container the size of the source holds. The container
/// grows as the views need it (no `max_size` set), the import finishes, and both views read
/// right.
#[test]
fn a_chain_that_rewrites_its_whole_base_fits_by_growing_the_container() {
    const FULL: u64 = 16 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qcow2::create(dir, "base.qcow2", FULL);
    qcow2::qemu_io(dir, "base.qcow2", &["write -q -P 0x21 0 16M"]);
    qcow2::create_over(dir, "top.qcow2", "base.qcow2");
    qcow2::qemu_io(dir, "top.qcow2", &["write -q -P 0x22 0 16M"]);
    qcow2::to_raw(dir, "top.qcow2", None, "top.raw");
    let want = std::fs::read(dir.join("top.raw")).unwrap();
    std::fs::write(dir.join("keel.toml"), live_import_config("256M")).unwrap();
    let keeld = start_keeld(dir);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let import = disk_stats(dir).import.expect("an import report");
        assert!(
            import.error.is_none(),
            "the import failed: {:?}",
            import.error
        );
        if import.state == ImportState::Done {
            break;
        }
        assert!(Instant::now() < deadline, "the import did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut q = connect_queue(dir);
    check_all(&mut q, &want, "import done");
    drop(q);
    stop_keeld(keeld);
    let base = keel(
        dir,
        &["diff", "d.keel", "@empty", "base", "--export", "base.kx"],
    );
    assert!(!base.is_empty() || dir.join("base.kx").exists());
    keel(dir, &["apply", "base.kx", "base.raw"]);
    let got = std::fs::read(dir.join("base.raw")).unwrap();
    assert!(
        got.len() as u64 == FULL && got.iter().all(|&b| b == 0x21),
        "snapshot base"
    );
    let text = keel(dir, &["fsck", "d.keel"]);
    assert!(text.contains(" 0 problems"), "fsck: {text}");
}
