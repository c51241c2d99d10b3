//! Disks added and removed while keeld runs, through `keel disk add|remove`: a guest uses the
//! added disk, names, sockets and files in use are refused, bad tables get the config file's
//! messages, an attached disk is removed only by force (its writes reach the file), and a
//! SIGHUP reload takes an added disk copied into the file as unchanged; added disks are exported
//! over NBD (checked with qemu-img) until removed.

use std::path::Path;
use std::process::{Command, Output};

use keel_backend::config::Config;
use keel_backend::daemon::Daemon;
use keel_client::{Disk, DiskOptions};
use keel_tests::keeld::{keel_binary, raw_disk};
use keel_tests::pattern;

fn keel(dir: &Path, args: &[&str]) -> Output {
    Command::new(keel_binary())
        .current_dir(dir)
        .args(["--control", "ctl.sock"])
        .args(args)
        .output()
        .expect("run keel")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = keel(dir, args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a `keel` command that must fail and returns its message.
fn refused(dir: &Path, args: &[&str]) -> String {
    let out = keel(dir, args);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn names(daemon: &Daemon) -> Vec<String> {
    let list = daemon.list().unwrap();
    list.iter().map(|d| d.name().to_string()).collect()
}

const SERVER: &str = "[server]\ncontrol_socket = \"ctl.sock\"\n";

#[test]
fn an_added_disk_serves_a_guest_and_goes_only_by_force_while_attached() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("keel.toml");
    std::fs::write(&file, format!("{SERVER}{}", raw_disk("a", "1M", ""))).unwrap();
    let daemon = Daemon::start(&Config::load(&file).unwrap()).unwrap();

    let added = ok(
        d,
        &[
            "disk", "add", "--name", "b", "--socket", "b.sock", "--engine", "raw", "--path",
            "b.img", "--size", "16M",
        ],
    );
    assert!(
        added.starts_with("b added (raw engine, 16.0 MiB)"),
        "{added}"
    );
    assert_eq!(names(&daemon), ["a", "b"]);
    let mut disk = Disk::connect(d.join("b.sock"), &DiskOptions::default()).unwrap();
    let mut q = disk.take_queue(0).unwrap();
    q.write_slice(4096, &pattern(7, 4096)).unwrap();
    assert!(q.read_vec(4096, 4096).unwrap() == pattern(7, 4096));

    for (args, says) in [
        (
            &[
                "--name", "b", "--socket", "c.sock", "--engine", "null", "--size", "1M",
            ][..],
            "disk b exists".to_string(),
        ),
        (
            &[
                "--name", "c", "--socket", "b.sock", "--engine", "null", "--size", "1M",
            ],
            format!("socket {} is disk b's", d.join("b.sock").display()),
        ),
        (
            &[
                "--name", "c", "--socket", "c.sock", "--engine", "raw", "--path", "b.img",
            ],
            format!("{} is disk b's", d.join("b.img").display()),
        ),
    ] {
        let err = refused(d, &[&["disk", "add"][..], args].concat());
        assert!(err.contains(&says), "{args:?}: {err}");
    }
    let table = d.join("c.toml");
    for (body, says) in [
        ("size = \"1M\"\nsise = 1\n", "unknown field `sise`"),
        (
            "size = \"1M\"\nqueues = 0\n",
            "`queues`: 0 is outside 1..=64",
        ),
        ("", "`size`: missing: the null engine needs a size"),
    ] {
        std::fs::write(
            &table,
            format!("[[disk]]\nname = \"c\"\nsocket = \"c.sock\"\nengine = \"null\"\n{body}"),
        )
        .unwrap();
        let err = refused(d, &["disk", "add", "--file", "c.toml"]);
        assert!(err.contains(says), "{body}: {err}");
    }
    assert_eq!(names(&daemon), ["a", "b"], "nothing refused was added");

    let err = refused(d, &["disk", "remove", "b"]);
    assert!(err.contains("has a frontend attached"), "{err}");
    let removed = ok(d, &["disk", "remove", "b", "--force"]);
    assert_eq!(removed, "b removed (its frontend was detached)\n");
    assert_eq!(names(&daemon), ["a"]);
    assert!(!d.join("b.sock").exists(), "its socket is gone");
    let mut on_file = vec![0u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(d.join("b.img")).unwrap(),
        &mut on_file,
        4096,
    )
    .unwrap();
    assert!(
        on_file == pattern(7, 4096),
        "the guest's write reached the file"
    );
    drop(q);
    drop(disk);
    let err = refused(d, &["disk", "remove", "b"]);
    assert!(err.contains("no such disk: b"), "{err}");
    daemon.shutdown().unwrap();
}

#[test]
fn a_reload_takes_an_added_disk_now_in_the_file_as_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("keel.toml");
    let a = raw_disk("a", "1M", "");
    let c = raw_disk("c", "1M", "iops_limit = 500");
    std::fs::write(&file, format!("{SERVER}{a}")).unwrap();
    let mut daemon = Daemon::start(&Config::load(&file).unwrap()).unwrap();
    std::fs::write(d.join("c.toml"), &c).unwrap();
    ok(d, &["disk", "add", "--file", "c.toml"]);
    ok(
        d,
        &[
            "disk", "add", "--name", "x", "--socket", "x.sock", "--engine", "null", "--size", "1M",
        ],
    );

    // The file now holds c as added: nothing to do; x, added and not in the file, stays.
    std::fs::write(&file, format!("{SERVER}{a}{c}")).unwrap();
    let r = daemon.reload(&Config::load(&file).unwrap());
    assert!(r.applied.is_empty() && r.refused.is_empty(), "{r:?}");
    assert_eq!(names(&daemon), ["a", "c", "x"]);

    // Its limits change live with the file; its other settings do not.
    let c2 = raw_disk("c", "1M", "iops_limit = 800");
    std::fs::write(&file, format!("{SERVER}{a}{c2}")).unwrap();
    let r = daemon.reload(&Config::load(&file).unwrap());
    assert_eq!(r.applied, ["disk c: limits changed"], "{r:?}");
    let limits = ok(d, &["limits", "c", "--json"]);
    assert!(limits.contains("\"iops_limit\": 800"), "{limits}");
    let c3 = raw_disk("c", "1M", "iops_limit = 800\nqueues = 2");
    std::fs::write(&file, format!("{SERVER}{a}{c3}")).unwrap();
    let r = daemon.reload(&Config::load(&file).unwrap());
    assert_eq!(
        r.refused,
        ["disk c changed: a restart applies it (served as before)"]
    );

    // Now the file's, c goes when the file drops it; x is still left alone.
    std::fs::write(&file, format!("{SERVER}{a}")).unwrap();
    let r = daemon.reload(&Config::load(&file).unwrap());
    assert_eq!(r.applied, ["disk c removed"], "{r:?}");
    assert_eq!(names(&daemon), ["a", "x"]);

    // A file's disk removed through the API starts again at the next reload.
    ok(d, &["disk", "remove", "a"]);
    let r = daemon.reload(&Config::load(&file).unwrap());
    assert_eq!(r.applied.len(), 1, "{r:?}");
    assert!(r.applied[0].starts_with("disk a added on"), "{r:?}");
    daemon.shutdown().unwrap();
}

#[test]
fn an_added_disk_joins_the_nbd_exports_and_a_removed_one_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("keel.toml");
    std::fs::write(&file, format!("{SERVER}nbd_socket = \"nbd.sock\"\n")).unwrap();
    let daemon = Daemon::start(&Config::load(&file).unwrap()).unwrap();
    ok(
        d,
        &[
            "disk", "add", "--name", "e", "--socket", "e.sock", "--engine", "null", "--size", "2M",
        ],
    );
    let uri = format!("nbd+unix:///e?socket={}", d.join("nbd.sock").display());
    let info = |uri: &str| {
        Command::new("qemu-img")
            .args(["info", "--output=json", uri])
            .output()
            .expect("run qemu-img (is QEMU installed?)")
    };
    let out = info(&uri);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["virtual-size"], 2 << 20);
    ok(d, &["disk", "remove", "e"]);
    assert!(
        !info(&uri).status.success(),
        "the export went with the disk"
    );
    daemon.shutdown().unwrap();
}
