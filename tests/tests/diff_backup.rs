//! Incremental backup through keeld and `keel`: `keel diff` lists the changed extents between
//! snapshots (and the running disk) of a served disk, `--export` writes them with their data,
//! and `keel apply` restores a full backup plus increments onto a raw image and onto another
//! container; the same diff offline on the stopped container; the API's errors.

use keel_backend::control::client::{ClientError, ControlClient};
use keel_backend::store::diff::{DiffReport, Extent, ExtentKind};
use keel_protocol::control::CreateSnapshot;
use keel_tests::client::Client;
use keel_tests::keeld::{InProcess, keel_binary, raw_disk};
use keel_tests::pattern;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;
const SIZE: usize = 16 * MIB;

/// Runs `keel ARGS` in `dir`; returns (exit code, stdout, stderr).
fn keel(dir: &Path, control: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(keel_binary());
    cmd.current_dir(dir).env_remove("KEEL_CONTROL");
    if let Some(c) = control {
        cmd.arg("--control").arg(c);
    }
    let out = cmd.args(args).output().expect("run keel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(r: (i32, String, String)) -> String {
    assert_eq!(r.0, 0, "keel failed: {}{}", r.1, r.2);
    r.1
}

fn whole_disk(c: &mut Client) -> Vec<u8> {
    let mut v = Vec::with_capacity(SIZE);
    for off in (0..SIZE).step_by(2 * MIB) {
        v.extend(c.read(0, off as u64, 2 * MIB).unwrap());
    }
    v
}

fn snapshot(api: &ControlClient, name: &str) {
    let _: serde_json::Value = api
        .post(
            "/v1/disks/k/snapshots",
            &CreateSnapshot { name: name.into() },
        )
        .unwrap();
}

fn extent(offset: usize, length: usize, kind: ExtentKind) -> Extent {
    Extent {
        offset: offset as u64,
        length: length as u64,
        kind,
    }
}

/// keeld with a control socket and a 16 MiB keel disk `k` (plus `more` disks): the daemon, its
/// directory and the control socket.
fn keel_disk_k(more: &str) -> (InProcess, PathBuf, PathBuf) {
    let toml = format!(
        "[server]\ncontrol_socket = \"keel.sock\"\n\n[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\n\
         engine = \"keel\"\npath = \"k.keel\"\nsize = \"16M\"\ndirect = false\n\n{more}"
    );
    let keeld = InProcess::start(&toml);
    let dir = keeld.dir().to_path_buf();
    let ctl = dir.join("keel.sock");
    (keeld, dir, ctl)
}

#[test]
fn full_and_incremental_backups_restore_every_point() {
    let (keeld, dir, ctl) = keel_disk_k(&raw_disk("r", "1M", ""));
    let api = ControlClient::new(&ctl);
    let mut c = Client::connect(&keeld.socket("k"), 1, 2 * MIB).unwrap();

    // 4 MiB mapped: several leaves, most of which the changes below leave shared.
    c.write(0, 0, &pattern(1, 2 * MIB)).unwrap();
    c.write(0, 2 << 20, &pattern(6, 2 * MIB)).unwrap();
    c.write(0, 8 << 20, &pattern(2, 64 << 10)).unwrap();
    snapshot(&api, "base");
    let at_base = whole_disk(&mut c);

    c.write(0, 4096, &pattern(3, 8192)).unwrap();
    c.discard(0, 8 << 20, 16 << 10).unwrap();
    c.write(0, (12 << 20) + 512, &pattern(4, 512)).unwrap(); // a partial block
    snapshot(&api, "incr");
    let at_incr = whole_disk(&mut c);

    c.write_zeroes(0, 0, 4096, false).unwrap();
    c.write(0, 15 << 20, &pattern(5, 4096)).unwrap();
    c.flush(0).unwrap();
    let now = whole_disk(&mut c);

    // The changed extents, exactly: as JSON through the CLI and through the API.
    let report: DiffReport = serde_json::from_str(&ok(keel(
        &dir,
        Some(&ctl),
        &["diff", "k", "base", "incr", "--json"],
    )))
    .unwrap();
    assert_eq!(
        report.extents,
        vec![
            extent(4096, 8192, ExtentKind::Data),
            extent(8 << 20, 16 << 10, ExtentKind::Zero),
            extent(12 << 20, 4096, ExtentKind::Data),
        ]
    );
    assert_eq!((report.data_bytes, report.zero_bytes), (12288, 16384));
    assert!(report.shared_skipped > 0);
    let running: DiffReport = api.get("/v1/disks/k/diff?from=incr").unwrap();
    assert_eq!(running.to, "@running");
    assert_eq!(
        running.extents,
        vec![
            extent(0, 4096, ExtentKind::Zero),
            extent(15 << 20, 4096, ExtentKind::Data),
        ]
    );
    let table = ok(keel(&dir, Some(&ctl), &["diff", "k", "base", "incr"]));
    assert!(
        table.contains("3 extents, 12.0 KiB of data, 16.0 KiB zeroed"),
        "{table}"
    );

    // Full backup, increment, and the running disk since the increment, streamed from keeld.
    for (from, to, file) in [
        ("@empty", "base", "full.kdiff"),
        ("base", "incr", "incr.kdiff"),
        ("incr", "@running", "now.kdiff"),
    ] {
        let out = ok(keel(
            &dir,
            Some(&ctl),
            &["diff", "k", from, to, "--export", file],
        ));
        let path = dir.join(file).display().to_string();
        assert!(out.starts_with(&format!("wrote {path}: ")), "{out}");
    }
    let (code, _, err) = keel(
        &dir,
        Some(&ctl),
        &["diff", "k", "base", "--export", "full.kdiff"],
    );
    assert!(code != 0 && err.contains("exists"), "{err}");

    // Restore onto a new raw image, point by point.
    ok(keel(&dir, None, &["apply", "full.kdiff", "restore.raw"]));
    assert!(std::fs::read(dir.join("restore.raw")).unwrap() == at_base);
    ok(keel(&dir, None, &["apply", "incr.kdiff", "restore.raw"]));
    assert!(std::fs::read(dir.join("restore.raw")).unwrap() == at_incr);
    ok(keel(&dir, None, &["apply", "now.kdiff", "restore.raw"]));
    assert!(std::fs::read(dir.join("restore.raw")).unwrap() == now);

    // Refused: a corrupt file (nothing applied), a disk of another size.
    let mut bad = std::fs::read(dir.join("incr.kdiff")).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    std::fs::write(dir.join("bad.kdiff"), &bad).unwrap();
    let (code, _, err) = keel(&dir, None, &["apply", "bad.kdiff", "restore.raw"]);
    assert!(code != 0 && err.contains("corrupt diff file"), "{err}");
    assert!(std::fs::read(dir.join("restore.raw")).unwrap() == now);
    std::fs::write(dir.join("small.raw"), vec![0u8; MIB]).unwrap();
    let (code, _, err) = keel(&dir, None, &["apply", "full.kdiff", "small.raw"]);
    assert!(code != 0 && err.contains("16777216-byte disk"), "{err}");

    // API errors: unknown snapshot or disk, no `from`, a disk without snapshot trees.
    let status = |path: &str| match api.get::<serde_json::Value>(path) {
        Err(ClientError::Api { status, .. }) => status,
        other => panic!("{path}: {other:?}"),
    };
    assert_eq!(status("/v1/disks/k/diff?from=nope"), 404);
    assert_eq!(status("/v1/disks/zz/diff?from=base"), 404);
    assert_eq!(status("/v1/disks/k/diff"), 400);
    assert_eq!(status("/v1/disks/r/diff?from=base"), 501);
    let mut sink = Vec::new();
    assert!(matches!(
        api.download("/v1/disks/k/export?from=nope", &mut sink),
        Err(ClientError::Api { status: 404, .. })
    ));
    drop(c);

    // Offline, on the stopped container: the same diff, and a restore into a new container.
    let dir_handle = keeld.stop();
    let offline: DiffReport = serde_json::from_str(&ok(keel(
        &dir,
        None,
        &["diff", "k.keel", "base", "incr", "--json"],
    )))
    .unwrap();
    assert_eq!(offline.extents, report.extents);
    ok(keel(&dir, None, &["create", "copy.keel", "--size", "16M"]));
    for f in ["full.kdiff", "incr.kdiff", "now.kdiff"] {
        ok(keel(&dir, None, &["apply", f, "copy.keel"]));
    }
    ok(keel(&dir, None, &["export", "copy.keel", "copy.raw"]));
    assert!(std::fs::read(dir.join("copy.raw")).unwrap() == now);
    assert!(ok(keel(&dir, None, &["fsck", "copy.keel"])).contains(" 0 problems"));
    drop(dir_handle);
}

#[test]
fn resize_refuses_shrinking_and_grows_online_and_stopped() {
    let (keeld, dir, ctl) = keel_disk_k("");
    let (code, _, err) = keel(&dir, Some(&ctl), &["resize", "k", "8M"]);
    assert_eq!(code, 2);
    assert!(err.contains("shrinking to 8388608 is refused"), "{err}");
    assert!(ok(keel(&dir, Some(&ctl), &["resize", "k", "16M"])).contains("16777216 bytes"));
    // Online: into the container's spare space (nobody attached to tell), and no further.
    let out = ok(keel(&dir, Some(&ctl), &["resize", "k", "17M"]));
    assert!(
        out.contains("k holds 17.0 MiB (17825792 bytes; no attached frontend to tell)"),
        "{out}"
    );
    let (code, _, err) = keel(&dir, Some(&ctl), &["resize", "k", "1G"]);
    assert_eq!(code, 2);
    assert!(err.contains("container itself must grow"), "{err}");
    let mut client = keel_tests::client::Client::connect(&keeld.socket("k"), 1, 1 << 20).unwrap();
    assert_eq!(
        client.capacity(),
        17825792,
        "a new frontend sees the new size"
    );
    client.write(0, 17825792 - 4096, &[7; 4096]).unwrap();
    assert!(client.write(0, 17825792, &[7; 4096]).is_err());
    drop(client);
    let (code, _, err) = keel(&dir, Some(&ctl), &["resize", "nope", "32M"]);
    assert!(code == 2 && err.contains("no such disk"), "{err}");

    // Offline, the stopped container file grows with its disk and keeps its spare percentage.
    let dir_handle = keeld.stop();
    let (code, _, err) = keel(&dir, None, &["resize", "k.keel", "8M"]);
    assert!(code == 2 && err.contains("shrinking"), "{err}");
    let out = ok(keel(&dir, None, &["resize", "k.keel", "17M"]));
    assert!(
        out.contains("disk grown from 17.0 MiB to 17.0 MiB (17825792 bytes)"),
        "the online growth was made durable: {out}"
    );
    let out = ok(keel(&dir, None, &["resize", "k.keel", "32M"]));
    assert!(
        out.contains("disk grown from 17.0 MiB to 32.0 MiB (33554432 bytes)"),
        "{out}"
    );
    let info = ok(keel(&dir, None, &["info", "k.keel", "--json"]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["capacity"], 33554432);
    drop(dir_handle);
}

/// `keel clone`: a snapshot of a served keel disk becomes a new disk, served at once on a socket
/// beside the source's, holding the snapshot's data and not what came after; the two go their
/// own ways. A taken name, an unknown snapshot and a raw disk are refused.
#[test]
fn clone_serves_a_snapshot_as_a_new_disk() {
    let (keeld, dir, ctl) = keel_disk_k(&raw_disk("r", "4M", ""));
    let mut client = Client::connect(&keeld.socket("k"), 1, 1 << 20).unwrap();
    client.write(0, 0, &[1; 8192]).unwrap();
    client.write(0, 1 << 20, &[2; 4096]).unwrap();
    client.flush(0).unwrap();
    ok(keel(&dir, Some(&ctl), &["snapshot", "create", "k", "gold"]));
    client.write(0, 0, &[3; 4096]).unwrap();

    let out = ok(keel(&dir, Some(&ctl), &["clone", "k", "gold", "copy"]));
    assert!(
        out.contains("copy cloned from k@gold (12.0 KiB copied in "),
        "{out}"
    );
    assert!(dir.join("copy.keel").exists());
    let mut copy = Client::connect(&dir.join("copy.sock"), 1, 1 << 20).unwrap();
    assert_eq!(copy.capacity(), 16 << 20);
    assert_eq!(copy.read(0, 0, 8192).unwrap(), vec![1; 8192]);
    assert_eq!(copy.read(0, 1 << 20, 4096).unwrap(), vec![2; 4096]);
    copy.write(0, 4096, &[9; 4096]).unwrap();
    assert_eq!(client.read(0, 0, 8192).unwrap()[..4096], [3; 4096]);
    assert_eq!(client.read(0, 4096, 4096).unwrap(), vec![1; 4096]);
    let list = ok(keel(&dir, Some(&ctl), &["disks"]));
    assert!(list.contains("copy"), "{list}");

    for (args, want) in [
        (["clone", "k", "gold", "copy"], "disk copy exists"),
        (["clone", "k", "nope", "other"], "no snapshot named nope"),
        (["clone", "r", "gold", "other"], "snapshot"),
        (["clone", "k", "gold", "r"], "disk r exists"),
    ] {
        let (code, _, err) = keel(&dir, Some(&ctl), &args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    drop((client, copy));
    let dir_handle = keeld.stop();
    // The clone's container is a keel container of its own, fsck clean.
    assert!(ok(keel(&dir, None, &["fsck", "copy.keel"])).contains(" 0 problems"));
    drop(dir_handle);
}
