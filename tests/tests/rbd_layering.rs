//! `keel diff` and `keel clone` on rbd disks, against a real single-node Ceph cluster
//! (tests/ceph/start.sh) started once for this test binary: the diff is librbd's
//! `rbd_diff_iterate2` in `keel diff`'s format, the clone an RBD layered clone served at once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_backend::control::client::ControlClient;
use keel_backend::store::diff::{DiffReport, Extent, ExtentKind};
use keel_tests::ceph::{image_name, shared_cluster};
use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, keel_binary, wait_for_socket};
use keel_tests::pattern;

const MIB: usize = 1 << 20;

/// keeld serving rbd disk `d` on `image` (created with `size` if given) from a new directory.
fn start(image: &str, extra: &str) -> (tempfile::TempDir, KeeldProcess) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[server]\ncontrol_socket = \"control.sock\"\n\n[[disk]]\nname = \"d\"\n\
         socket = \"d.sock\"\nengine = \"rbd\"\nimage = \"{image}\"\nceph_conf = \"{}\"\n{extra}\n",
        shared_cluster().conf().display()
    );
    std::fs::write(dir.path().join("keel.toml"), toml).unwrap();
    let keeld = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    assert!(
        wait_for_socket(&dir.path().join("d.sock"), Duration::from_secs(60)),
        "keeld did not serve d.sock"
    );
    (dir, keeld)
}

/// Runs `keel --control DIR/control.sock ARGS`; (success, stdout, stderr).
fn keel(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(keel_binary())
        .env_remove("KEEL_CONTROL")
        .arg("--control")
        .arg(dir.join("control.sock"))
        .args(args)
        .output()
        .expect("run keel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keel_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = keel(dir, args);
    assert!(ok, "keel {args:?}: {out}{err}");
    out
}

fn diff(dir: &Path, args: &[&str]) -> DiffReport {
    let mut all = vec!["diff", "d"];
    all.extend_from_slice(args);
    all.push("--json");
    serde_json::from_str(&keel_ok(dir, &all)).expect("keel diff --json")
}

fn data(offset: u64, length: u64) -> Extent {
    Extent {
        offset,
        length,
        kind: ExtentKind::Data,
    }
}

fn zero(offset: u64, length: u64) -> Extent {
    Extent {
        offset,
        length,
        kind: ExtentKind::Zero,
    }
}

#[test]
fn rbd_diff_reports_the_extents_written_between_snapshots() {
    let image = format!("rbd/{}", image_name("diff"));
    let (dir, _keeld) = start(&image, "size = \"64M\"");
    let mut c = Client::connect(&dir.path().join("d.sock"), 1, 2 * MIB).unwrap();
    c.write(0, 0, &pattern(1, 64 << 10)).unwrap();
    c.write(0, 40 << 20, &pattern(2, 4096)).unwrap();
    // RBD objects (4 MiB) 1, 2 and 5 exist at s1 too.
    for off in [4 << 20, 9 << 20, 21 << 20] {
        c.write(0, off, &pattern(7, 512)).unwrap();
    }
    keel_ok(dir.path(), &["snapshot", "create", "d", "s1"]);

    // Between s1 and s2: sector-sized and unaligned pieces, one across two objects, a
    // rewrite of old data and a discard of some.
    c.write(0, 8192, &pattern(3, 512)).unwrap();
    c.write(0, (8 << 20) - 1536, &pattern(4, 4096)).unwrap();
    c.write(0, 20 << 20, &pattern(5, 3 * 512)).unwrap();
    c.discard(0, 40 << 20, 4096).unwrap();
    // An object that did not exist at s1 (object 12, from 48 MiB).
    c.write(0, (50 << 20) + 8192, &pattern(8, 4096)).unwrap();
    c.flush(0).unwrap();
    keel_ok(dir.path(), &["snapshot", "create", "d", "s2"]);
    // After s2, only on the head, within object 0's size.
    c.write(0, 12288, &pattern(6, 4096)).unwrap();

    let r = diff(dir.path(), &["s1", "s2"]);
    assert_eq!((r.from.as_str(), r.to.as_str()), ("s1", "s2"));
    assert_eq!(r.disk_size, 64 << 20);
    // Within an object's old size the extents are exact. Where an object grew, RADOS reports
    // from its old end to its new one: object 1 held 512 bytes at s1, so the write at its end
    // shows from 4 MiB + 512 on (merged with the exact 2560 bytes in object 2); object 12 is
    // new, so it shows from its start.
    let expected = vec![
        data(8192, 512),
        data((4 << 20) + 512, (4 << 20) - 512 + 2560),
        data(20 << 20, 1536),
        zero(40 << 20, 4096),
        data(48 << 20, (2 << 20) + 8192 + 4096),
    ];
    assert_eq!(r.extents, expected, "{r:?}");
    let sum = |kind| {
        expected
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum::<u64>()
    };
    assert_eq!(r.data_bytes, sum(ExtentKind::Data));
    assert_eq!(r.zero_bytes, 4096);

    // From s2 to the head (the default `to`): only what came after s2.
    let r = diff(dir.path(), &["s2"]);
    assert_eq!(r.to, "@running");
    assert_eq!(r.extents, vec![data(12288, 4096)], "{r:?}");

    // From @empty to s1: every object s1 holds, from its start to its end.
    let r = diff(dir.path(), &["@empty", "s1"]);
    assert_eq!(
        r.extents,
        vec![
            data(0, 64 << 10),
            data(4 << 20, 512),
            data(8 << 20, (1 << 20) + 512),
            data(20 << 20, (1 << 20) + 512),
            data(40 << 20, 4096),
        ],
        "{r:?}"
    );

    // The table form names the extents too.
    let table = keel_ok(dir.path(), &["diff", "d", "s1", "s2"]);
    assert!(table.contains("s1 to s2: 5 extents"), "{table}");

    // Wrong sides are refused with a reason, and so is an export to the head (it changes while
    // it is read; rbd_diff_file.rs covers exports between snapshots).
    let export = dir.path().join("x.kdiff");
    let export = export.to_str().unwrap();
    for (args, why) in [
        (&["diff", "d", "s2", "s1"][..], "newer than"),
        (
            &["diff", "d", "nosuch", "s2"][..],
            "no snapshot named nosuch",
        ),
        (
            &["diff", "d", "s1", "nosuch"][..],
            "no snapshot named nosuch",
        ),
        (&["diff", "d", "@running", "s1"][..], "from a snapshot"),
        (
            &["diff", "d", "s1", "@running", "--export", export][..],
            "ends at a snapshot",
        ),
    ] {
        let (ok, out, err) = keel(dir.path(), args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn rbd_clone_is_a_layered_child_served_at_once() {
    let name = image_name("parent");
    let image = format!("rbd/{name}");
    let (dir, _keeld) = start(&image, "size = \"32M\"");
    let mut c = Client::connect(&dir.path().join("d.sock"), 1, 2 * MIB).unwrap();
    c.write(0, 0, &pattern(1, MIB)).unwrap();
    c.write(0, 16 << 20, &pattern(2, MIB)).unwrap();
    keel_ok(dir.path(), &["snapshot", "create", "d", "gold"]);
    // The parent moves on after the snapshot: the clone must not see it.
    c.write(0, 0, &pattern(3, 4096)).unwrap();

    let child = image_name("child");
    let answer: serde_json::Value = serde_json::from_str(&keel_ok(
        dir.path(),
        &["clone", "d", "gold", &child, "--json"],
    ))
    .unwrap();
    assert_eq!(answer["state"], "serving", "{answer}");
    assert_eq!(answer["path"], format!("rbd/{child}"));
    let info = shared_cluster().rbd(&["info", "--format", "json", &format!("rbd/{child}")]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["parent"]["image"], name.as_str(), "{info}");
    assert_eq!(info["parent"]["snapshot"], "gold", "{info}");

    // Served at once: reads the parent's snapshot where not written, keeps its own writes.
    let mut k = Client::connect(&dir.path().join(format!("{child}.sock")), 1, 2 * MIB).unwrap();
    assert_eq!(k.capacity(), 32 << 20);
    assert_eq!(k.read(0, 0, MIB).unwrap(), pattern(1, MIB));
    k.write(0, 16 << 20, &pattern(4, 8192)).unwrap();
    k.write(0, 24 << 20, &pattern(5, 4096)).unwrap();
    assert_eq!(k.read(0, 16 << 20, 8192).unwrap(), pattern(4, 8192));
    assert_eq!(
        k.read(0, (16 << 20) + 8192, 4096).unwrap(),
        pattern(2, MIB)[8192..12288].to_vec(),
        "the rest of the object comes from the parent"
    );
    k.flush(0).unwrap();

    // The parent's snapshot and head are untouched by the clone's writes.
    let exported = dir.path().join("gold.img");
    shared_cluster().rbd(&[
        "export",
        &format!("{image}@gold"),
        exported.to_str().unwrap(),
    ]);
    let gold = std::fs::read(&exported).unwrap();
    assert!(gold[..MIB] == pattern(1, MIB)[..]);
    assert!(gold[16 << 20..(16 << 20) + MIB] == pattern(2, MIB)[..]);
    assert!(gold[24 << 20..(24 << 20) + 4096].iter().all(|&b| b == 0));
    assert_eq!(c.read(0, 0, 4096).unwrap(), pattern(3, 4096));
    assert_eq!(c.read(0, 16 << 20, 8192).unwrap(), pattern(2, MIB)[..8192]);

    // Listed as a served rbd disk; the same name again, or a missing snapshot, is refused.
    let control = ControlClient::new(&dir.path().join("control.sock"));
    let listed: serde_json::Value = control.get(&format!("/v1/disks/{child}")).unwrap();
    assert_eq!(listed["state"], "serving", "{listed}");
    assert_eq!(listed["engine"], "rbd", "{listed}");
    let (ok, _, err) = keel(dir.path(), &["clone", "d", "gold", &child]);
    assert!(!ok && err.contains("exists"), "{err}");
    // The table form says nothing was copied.
    let second = image_name("child");
    let out = keel_ok(dir.path(), &["clone", "d", "gold", &second]);
    assert!(
        out.contains(&format!("into rbd/{second} (copy-on-write), serving on")),
        "{out}"
    );
    let (ok, _, err) = keel(dir.path(), &["clone", "d", "nosuch", &image_name("x")]);
    assert!(!ok && err.contains("no snapshot named nosuch"), "{err}");
    // The snapshot is the clone's parent (protected, as a clone v1 on this cluster needs).
    let (ok, _, err) = keel(dir.path(), &["snapshot", "delete", "d", "gold"]);
    assert!(!ok && err.contains("is protected"), "{err}");
}

#[test]
fn rbd_clone_of_an_image_without_layering_is_refused() {
    let name = image_name("flat");
    let image = format!("rbd/{name}");
    shared_cluster().rbd(&[
        "create",
        "--size",
        "8M",
        "--image-feature",
        "exclusive-lock",
        &image,
    ]);
    let (dir, _keeld) = start(&image, "");
    keel_ok(dir.path(), &["snapshot", "create", "d", "s"]);
    let child = image_name("nochild");
    let (ok, _, err) = keel(dir.path(), &["clone", "d", "s", &child]);
    assert!(!ok, "a clone without layering succeeded");
    assert!(err.contains("lacks the layering feature"), "{err}");
    assert!(
        !shared_cluster().rbd(&["ls", "rbd"]).contains(&child),
        "no image was left behind"
    );
    assert!(!dir.path().join(format!("{child}.sock")).exists());
}
