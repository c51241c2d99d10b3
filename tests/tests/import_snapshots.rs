//! Offline `keel import` of a qcow2 whose top image has internal snapshots: the layers below
//! the top, then the top's internal snapshots (named as `qemu-img snapshot -l` lists them),
//! become Keel snapshots, oldest first, each reading exactly as `qemu-img` reads that view;
//! the disk reads as the top's current contents, and blocks the views share are stored once.

use std::path::Path;
use std::process::Command;

use keel_tests::disk_dir::run;
use keel_tests::keeld::keel_binary;
use keel_tests::qcow2;

const MIB: u64 = 1 << 20;

fn keel(dir: &Path, args: &[&str]) -> String {
    run(dir, keel_binary().to_str().unwrap(), args)
}

/// The Keel snapshot `name` of `container`, as a raw file `file`.
fn snapshot_as_raw(dir: &Path, container: &str, name: &str, file: &str) {
    let kx = format!("{file}.kx");
    keel(dir, &["diff", container, "@empty", name, "--export", &kx]);
    keel(dir, &["apply", &kx, file]);
}

fn snapshot_names(dir: &Path, container: &str) -> Vec<String> {
    let text = keel(dir, &["snapshot", "list", container, "--json"]);
    let list: serde_json::Value = serde_json::from_str(&text).expect("snapshot JSON");
    list.as_array()
        .expect("a list")
        .iter()
        .map(|s| s["name"].as_str().expect("a name").to_string())
        .collect()
}

#[test]
fn internal_snapshots_of_the_top_become_snapshots_after_the_backing_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let size = 32 * MIB;
    qcow2::create(dir, "base.qcow2", size);
    qcow2::qemu_io(dir, "base.qcow2", &["write -q -P 0x11 0 4M"]);
    qcow2::create_over(dir, "top.qcow2", "base.qcow2");
    qcow2::qemu_io(dir, "top.qcow2", &["write -q -P 0x22 1M 1M"]);
    qcow2::snapshot(dir, "top.qcow2", "first");
    // Over the base's data, and zeroes where the base had data.
    qcow2::qemu_io(
        dir,
        "top.qcow2",
        &["write -q -P 0x33 2M 1M", "write -q -z 0 64K"],
    );
    qcow2::snapshot(dir, "top.qcow2", "second,with comma");
    qcow2::qemu_io(
        dir,
        "top.qcow2",
        &["write -q -P 0x44 3M 1M", "write -q -P 0x45 20M 1M"],
    );

    keel(dir, &["import", "top.qcow2", "t.keel"]);
    assert_eq!(
        snapshot_names(dir, "t.keel"),
        ["base", "first", "second,with comma"]
    );
    for (name, image, internal) in [
        ("base", "base.qcow2", None),
        ("first", "top.qcow2", Some("first")),
        ("second,with comma", "top.qcow2", Some("second,with comma")),
    ] {
        let got = format!("got-{}.raw", name.len());
        let want = format!("want-{}.raw", name.len());
        snapshot_as_raw(dir, "t.keel", name, &got);
        qcow2::to_raw(dir, image, internal, &want);
        let (got, want) = (
            std::fs::read(dir.join(&got)).unwrap(),
            std::fs::read(dir.join(&want)).unwrap(),
        );
        assert!(got == want, "snapshot {name} differs from qemu-img's view");
    }
    keel(dir, &["export", "t.keel", "now.raw"]);
    qcow2::to_raw(dir, "top.qcow2", None, "want-now.raw");
    assert!(
        std::fs::read(dir.join("now.raw")).unwrap()
            == std::fs::read(dir.join("want-now.raw")).unwrap(),
        "the disk differs from the top's current contents"
    );
    // Stored once: the base's 4 MiB, then 1 MiB per write of the top (the zeroed 64 KiB are
    // unmapped, not stored).
    let info: serde_json::Value =
        serde_json::from_str(&keel(dir, &["info", "t.keel", "--json"])).expect("info JSON");
    assert_eq!(info["used_data_bytes"], 8 * MIB, "{info}");
    let fsck = keel(dir, &["fsck", "t.keel"]);
    assert!(fsck.contains(" 0 problems"), "{fsck}");

    // An image without a backing file: its internal snapshots alone.
    qcow2::create(dir, "solo.qcow2", size);
    qcow2::qemu_io(dir, "solo.qcow2", &["write -q -P 0x55 0 1M"]);
    qcow2::snapshot(dir, "solo.qcow2", "only");
    qcow2::qemu_io(dir, "solo.qcow2", &["write -q -P 0x66 0 512K"]);
    keel(dir, &["import", "solo.qcow2", "s.keel"]);
    assert_eq!(snapshot_names(dir, "s.keel"), ["only"]);
    snapshot_as_raw(dir, "s.keel", "only", "solo-only.raw");
    qcow2::to_raw(dir, "solo.qcow2", Some("only"), "solo-only-want.raw");
    assert!(
        std::fs::read(dir.join("solo-only.raw")).unwrap()
            == std::fs::read(dir.join("solo-only-want.raw")).unwrap()
    );
}

#[test]
fn two_views_that_would_share_a_snapshot_name_are_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qcow2::create(dir, "base.qcow2", 8 * MIB);
    qcow2::create_over(dir, "top.qcow2", "base.qcow2");
    qcow2::snapshot(dir, "top.qcow2", "base");
    let out = Command::new(keel_binary())
        .current_dir(dir)
        .args(["import", "top.qcow2", "t.keel"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("top.qcow2") && text.contains("\"base\""),
        "{text}"
    );
    assert!(!dir.join("t.keel").exists(), "no container is made");
}

/// A top that rewrites every block of a base filling the disk needs twice the disk's space:
/// `keel import` grows the container as the views need it, and both views read right.
#[test]
fn a_chain_that_rewrites_its_whole_base_is_imported_by_growing_the_container() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qcow2::create(dir, "base.qcow2", 16 << 20);
    qcow2::qemu_io(dir, "base.qcow2", &["write -q -P 0x21 0 16M"]);
    qcow2::create_over(dir, "top.qcow2", "base.qcow2");
    qcow2::qemu_io(dir, "top.qcow2", &["write -q -P 0x22 0 16M"]);
    keel(dir, &["import", "top.qcow2", "c.keel"]);
    assert_eq!(snapshot_names(dir, "c.keel"), ["base"]);
    snapshot_as_raw(dir, "c.keel", "base", "base.raw");
    snapshot_as_raw(dir, "c.keel", "@running", "top.raw");
    for (file, byte) in [("base.raw", 0x21u8), ("top.raw", 0x22)] {
        let got = std::fs::read(dir.join(file)).unwrap();
        assert!(
            got.len() == 16 << 20 && got.iter().all(|&b| b == byte),
            "{file} is not the view it was imported from"
        );
    }
}
