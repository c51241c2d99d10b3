//! `keel diff --export` and `keel apply` on rbd disks, against a real single-node Ceph cluster
//! (tests/ceph/start.sh) started once for this test binary: an export between two RBD
//! snapshots is Keel's diff file, which restores a copy image byte for byte (compared with
//! `rbd export`), a raw image and a keel container; a keel disk's export applies to an rbd
//! disk; an apply onto an image not at the export's FROM point, or with a frontend attached,
//! is refused unless forced, and a damaged file is refused before anything is written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keel_backend::store::diff::{DiffReport, ExtentKind};
use keel_protocol::control::ApplyAnswer;
use keel_tests::ceph::{image_name, shared_cluster};
use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, keel_binary, wait_for_socket};
use keel_tests::pattern;

const MIB: usize = 1 << 20;
const SIZE: usize = 32 * MIB;

/// A `[[disk]]` table for rbd disk `name` on a new 32 MiB image; returns (table, image spec).
fn rbd_disk(name: &str) -> (String, String) {
    let image = format!("rbd/{}", image_name(name));
    let table = format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"rbd\"\n\
         image = \"{image}\"\nceph_conf = \"{}\"\nsize = \"32M\"\n\n",
        shared_cluster().conf().display()
    );
    (table, image)
}

/// keeld serving `disks` (tables) from a new directory, with a control socket.
fn start(disks: &str, names: &[&str]) -> (tempfile::TempDir, KeeldProcess) {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[server]\ncontrol_socket = \"control.sock\"\n\n{disks}");
    std::fs::write(dir.path().join("keel.toml"), toml).unwrap();
    let keeld = KeeldProcess::spawn(&dir.path().join("keel.toml"));
    for n in names {
        assert!(
            wait_for_socket(
                &dir.path().join(format!("{n}.sock")),
                Duration::from_secs(60)
            ),
            "keeld did not serve {n}"
        );
    }
    (dir, keeld)
}

/// Runs `keel ARGS`, with `--control DIR/control.sock` when `dir` is given.
fn keel(dir: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(keel_binary());
    cmd.env_remove("KEEL_CONTROL");
    if let Some(d) = dir {
        cmd.arg("--control").arg(d.join("control.sock"));
    }
    let out = cmd.args(args).output().expect("run keel");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keel_ok(dir: Option<&Path>, args: &[&str]) -> String {
    let (ok, out, err) = keel(dir, args);
    assert!(ok, "keel {args:?}: {out}{err}");
    out
}

fn keel_err(dir: Option<&Path>, args: &[&str], why: &str) {
    let (ok, out, err) = keel(dir, args);
    assert!(!ok, "keel {args:?} succeeded: {out}");
    assert!(err.contains(why), "keel {args:?}: {err}");
}

fn apply(dir: &Path, file: &Path, disk: &str, force: bool) -> ApplyAnswer {
    let mut args = vec!["apply", file.to_str().unwrap(), disk, "--json"];
    if force {
        args.push("--force");
    }
    serde_json::from_str(&keel_ok(Some(dir), &args)).expect("keel apply --json")
}

/// `keel diff DISK FROM TO --export DIR/NAME`; the file's path.
fn export(dir: &Path, disk: &str, from: &str, to: &str, name: &str) -> PathBuf {
    let file = dir.join(name);
    keel_ok(
        Some(dir),
        &["diff", disk, from, to, "--export", file.to_str().unwrap()],
    );
    file
}

/// The image (or `image@snap`) as `rbd export` reads it.
fn rbd_bytes(spec: &str, scratch: &Path) -> Vec<u8> {
    let out = scratch.join("rbd-export.raw");
    let _ = std::fs::remove_file(&out);
    shared_cluster().rbd(&["export", spec, out.to_str().unwrap()]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    bytes
}

fn whole_disk(c: &mut Client) -> Vec<u8> {
    let mut v = Vec::with_capacity(SIZE);
    for off in (0..SIZE).step_by(2 * MIB) {
        v.extend(c.read(0, off as u64, 2 * MIB).unwrap());
    }
    v
}

/// Asserts equality without printing 32 MiB: the first differing byte.
fn same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

#[test]
fn rbd_exports_restore_a_copy_image_a_raw_image_and_a_keel_container() {
    let (table_a, a) = rbd_disk("a");
    let (table_b, b) = rbd_disk("b");
    let (table_c, _) = rbd_disk("c");
    let (dir, _keeld) = start(&format!("{table_a}{table_b}{table_c}"), &["a", "b", "c"]);
    let d = dir.path();

    let mut c = Client::connect(&d.join("a.sock"), 1, 2 * MIB).unwrap();
    c.write(0, 0, &pattern(1, 64 << 10)).unwrap();
    c.write(0, (8 << 20) - 1536, &pattern(2, 4096)).unwrap(); // across two objects
    c.write(0, (20 << 20) + 512, &pattern(3, 512)).unwrap(); // one sector
    c.write(0, 24 << 20, &pattern(8, 4096)).unwrap();
    c.write(0, 28 << 20, &pattern(4, MIB)).unwrap();
    c.flush(0).unwrap();
    keel_ok(Some(d), &["snapshot", "create", "a", "s1"]);
    c.write(0, 4096 + 512, &pattern(5, 1024)).unwrap();
    c.discard(0, (28 << 20) + (64 << 10), 256 << 10).unwrap(); // inside an object
    c.discard(0, 24 << 20, 4 << 20).unwrap(); // a whole object (4 MiB): it is removed
    c.write_zeroes(0, 20 << 20, 4096, false).unwrap();
    c.write(0, (12 << 20) + 8192, &pattern(6, 8192)).unwrap(); // a new object
    c.flush(0).unwrap();
    keel_ok(Some(d), &["snapshot", "create", "a", "s2"]);

    let full = export(d, "a", "@empty", "s1", "full.kdiff");
    let incr = export(d, "a", "s1", "s2", "incr.kdiff");
    // The removed object is a zero extent, whole blocks: a zero record in the file.
    let r: DiffReport =
        serde_json::from_str(&keel_ok(Some(d), &["diff", "a", "s1", "s2", "--json"])).unwrap();
    assert!(
        r.extents.iter().any(|e| e.kind == ExtentKind::Zero),
        "{r:?}"
    );
    let at_s1 = rbd_bytes(&format!("{a}@s1"), d);
    let at_s2 = rbd_bytes(&format!("{a}@s2"), d);
    assert_ne!(at_s1, at_s2);

    // Onto the copy: the full backup takes it to s1 (and takes snapshot s1), the increment to s2.
    let got = apply(d, &full, "b", false);
    assert_eq!(
        (got.from.as_str(), got.to.as_str(), got.snapshot.as_deref()),
        ("@empty", "s1", Some("s1"))
    );
    same(&rbd_bytes(&format!("{b}@s1"), d), &at_s1, "copy at s1");
    let got = apply(d, &incr, "b", false);
    assert!(got.zero_bytes > 0 && got.data_bytes > 0, "{got:?}");
    same(&rbd_bytes(&b, d), &at_s2, "copy at s2");
    same(&rbd_bytes(&format!("{b}@s2"), d), &at_s2, "copy's s2");

    // The copy is no longer at s1 nor empty: an export from s1 or @empty is refused there, as
    // is one whose end it already holds, and one from a snapshot it lacks.
    c.write(0, 16 << 20, &pattern(7, 4096)).unwrap();
    c.flush(0).unwrap();
    keel_ok(Some(d), &["snapshot", "create", "a", "s3"]);
    let s1_s3 = export(d, "a", "s1", "s3", "s1-s3.kdiff");
    let incr3 = export(d, "a", "s2", "s3", "incr3.kdiff");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    keel_err(Some(d), &["apply", &path(&s1_s3), "b"], "changed since s1");
    keel_err(
        Some(d),
        &["apply", &path(&incr), "b"],
        "already holds snapshot s2",
    );
    keel_err(Some(d), &["apply", &path(&incr3), "c"], "does not hold");
    // A file cut short is refused before anything is written.
    let bytes = std::fs::read(&full).unwrap();
    let cut = d.join("cut.kdiff");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    keel_err(Some(d), &["apply", &path(&cut), "c"], "truncated");
    let untouched: DiffReport =
        serde_json::from_str(&keel_ok(Some(d), &["diff", "c", "@empty", "--json"])).unwrap();
    assert!(untouched.extents.is_empty(), "{untouched:?}");
    // An export ends at a snapshot: the head changes under it.
    keel_err(
        Some(d),
        &[
            "diff",
            "a",
            "s1",
            "@running",
            "--export",
            &path(&d.join("x")),
        ],
        "ends at a snapshot",
    );

    // With a frontend attached the apply waits for --force.
    let mut guest = Client::connect(&d.join("b.sock"), 1, 2 * MIB).unwrap();
    keel_err(Some(d), &["apply", &path(&incr3), "b"], "frontend attached");
    apply(d, &incr3, "b", true);
    same(
        &whole_disk(&mut guest),
        &rbd_bytes(&format!("{a}@s3"), d),
        "copy at s3, read through keeld",
    );

    // The same files restore a raw image and a keel container, offline.
    let raw = d.join("restore.raw");
    for f in [&full, &incr] {
        keel_ok(None, &["apply", &path(f), &path(&raw)]);
    }
    same(&std::fs::read(&raw).unwrap(), &at_s2, "raw image at s2");
    let container = d.join("restore.keel");
    keel_ok(None, &["create", &path(&container), "--size", "32M"]);
    for f in [&full, &incr] {
        keel_ok(None, &["apply", &path(f), &path(&container)]);
    }
    let out = d.join("container.raw");
    keel_ok(None, &["export", &path(&container), &path(&out)]);
    same(
        &std::fs::read(&out).unwrap(),
        &at_s2,
        "keel container at s2",
    );
}

#[test]
fn a_keel_disks_exports_apply_to_an_rbd_disk() {
    let keel_table = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\n\
                      path = \"k.keel\"\nsize = \"32M\"\n\n";
    let (table_r, r) = rbd_disk("r");
    let (dir, _keeld) = start(&format!("{keel_table}{table_r}"), &["k", "r"]);
    let d = dir.path();

    let mut k = Client::connect(&d.join("k.sock"), 1, 2 * MIB).unwrap();
    k.write(0, 0, &pattern(11, 2 * MIB)).unwrap();
    k.write(0, 9 << 20, &pattern(12, 64 << 10)).unwrap();
    k.write(0, (30 << 20) + 512, &pattern(13, 512)).unwrap();
    k.flush(0).unwrap();
    keel_ok(Some(d), &["snapshot", "create", "k", "k1"]);
    k.write(0, 4096, &pattern(14, 8192)).unwrap();
    k.discard(0, 9 << 20, 16 << 10).unwrap();
    k.write(0, 17 << 20, &pattern(15, 4096)).unwrap();
    k.flush(0).unwrap();
    keel_ok(Some(d), &["snapshot", "create", "k", "k2"]);
    let at_k2 = whole_disk(&mut k);

    let full = export(d, "k", "@empty", "k1", "k-full.kdiff");
    let incr = export(d, "k", "k1", "k2", "k-incr.kdiff");
    assert_eq!(apply(d, &full, "r", false).snapshot.as_deref(), Some("k1"));
    apply(d, &incr, "r", false);
    same(&rbd_bytes(&r, d), &at_k2, "rbd image at k2");
    let mut guest = Client::connect(&d.join("r.sock"), 1, 2 * MIB).unwrap();
    same(
        &whole_disk(&mut guest),
        &at_k2,
        "rbd disk at k2, read through keeld",
    );

    // A keel disk takes an export only while stopped.
    keel_err(
        Some(d),
        &["apply", full.to_str().unwrap(), "k", "--force"],
        "only while it is stopped",
    );
}
