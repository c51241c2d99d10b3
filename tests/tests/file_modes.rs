//! Every file keeld and `keel` create holds disk contents, so each is created readable by its
//! owner only (0600), whatever the umask: containers, clones, raw images, mirror components and
//! their sidecars, export images, export files and applied images.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use keel_backend::control::client::ControlClient;
use keel_protocol::control::{CloneAnswer, CloneDisk, CreateSnapshot};
use keel_tests::keeld::{InProcess, keel_binary};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `keel ARGS` in `dir` and insists on success.
fn keel(dir: &Path, args: &[&str]) {
    let out = Command::new(keel_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run keel");
    assert!(
        out.status.success(),
        "keel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_created_file_is_private() {
    // SAFETY: umask only swaps the process's file creation mask. With none, a file created
    // without an explicit mode would be 0666.
    let old = unsafe { libc::umask(0) };
    let toml = "[server]\ncontrol_socket = \"keel.sock\"\n\n\
        [[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"k.keel\"\nsize = \"64M\"\n\n\
        [[disk]]\nname = \"r\"\nsocket = \"r.sock\"\nengine = \"raw\"\npath = \"r.img\"\nsize = \"8M\"\n\n\
        [[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"raw\"\nmirror = [\"a.img\", \"b.img\"]\nsize = \"16M\"\n";
    let keeld = InProcess::start(toml);
    let d = keeld.dir().to_path_buf();
    let api = ControlClient::new(&d.join("keel.sock"));
    let _: serde_json::Value = api
        .post(
            "/v1/disks/k/snapshots",
            &CreateSnapshot { name: "s".into() },
        )
        .unwrap();
    let clone: CloneAnswer = api
        .post(
            "/v1/disks/k/clone",
            &CloneDisk {
                snapshot: "s".into(),
                new_disk: "k2".into(),
            },
        )
        .unwrap();
    let mut made = vec![
        d.join("k.keel"),
        d.join("r.img"),
        d.join("a.img"),
        d.join("b.img"),
        d.join("a.img.keelmirror"),
        d.join("b.img.keelmirror"),
        clone.path.into(),
    ];
    let dir = keeld.stop();
    let d = dir.path();

    keel(d, &["create", "new.keel", "--size", "64M"]);
    keel(d, &["export", "k.keel", "out.raw"]);
    keel(d, &["diff", "k.keel", "@empty", "--export", "full.kdiff"]);
    keel(d, &["apply", "full.kdiff", "restored.raw"]);
    for f in ["new.keel", "out.raw", "full.kdiff", "restored.raw"] {
        made.push(d.join(f));
    }
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(old) };

    let wrong: Vec<String> = made
        .iter()
        .filter(|p| mode(p) != 0o600)
        .map(|p| format!("{} is {:o}", p.display(), mode(p)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
}
