//! A disk's backing file belongs to one server at a time, and one disk that cannot be opened
//! does not take the others down: a second keeld (or QEMU's tools) is refused a raw image
//! another keeld serves, a raw disk refuses a Keel container, and a corrupt container beside a
//! healthy disk is listed as failed while the healthy disk is served.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_backend::control::client::{ClientError, ControlClient};
use keel_backend::store::{CreateOptions, Store};
use keel_protocol::control::{DiskInfo, DiskState};
use keel_tests::client::Client;
use keel_tests::keeld::{
    InProcess, KeeldProcess, null_disk, raw_disk, run_expecting_failure, wait_for_socket,
};
use keel_tests::pattern;

const MIB: usize = 1 << 20;

fn raw_on(name: &str, image: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"raw\"\npath = \"{image}\"\n"
    )
}

fn with_control(control: &str, disks: &str) -> String {
    format!("[server]\ncontrol_socket = \"{control}\"\n\n{disks}")
}

fn disks(control: &Path) -> Vec<DiskInfo> {
    ControlClient::new(control).get("/v1/disks").unwrap()
}

#[test]
fn a_second_keeld_is_refused_a_raw_image_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("shared.img"), vec![0u8; 8 * MIB]).unwrap();
    std::fs::write(d.join("one.toml"), raw_on("first", "shared.img")).unwrap();
    let mut first = KeeldProcess::spawn(&d.join("one.toml"));
    assert!(wait_for_socket(
        &d.join("first.sock"),
        Duration::from_secs(20)
    ));
    let data = pattern(3, 1 << 16);
    let mut c = Client::connect(&d.join("first.sock"), 1, MIB).unwrap();
    c.write(0, 0, &data).unwrap();

    // A second keeld with only that disk serves nothing and says why.
    std::fs::write(d.join("two.toml"), raw_on("second", "shared.img")).unwrap();
    let (code, stderr) = run_expecting_failure(&d.join("two.toml"));
    assert_eq!(code, Some(1), "{stderr}");
    let image = d.join("shared.img").display().to_string();
    let holder = format!("{image}: locked by process {} (keeld)", first.pid());
    assert!(stderr.contains(&holder), "{stderr}");

    // With a healthy disk beside it, that disk is served and the other listed as failed.
    let both = with_control(
        "two.ctl",
        &format!(
            "{}{}",
            raw_on("second", "shared.img"),
            null_disk("spare", "1G", "")
        ),
    );
    std::fs::write(d.join("three.toml"), both).unwrap();
    let mut second = KeeldProcess::spawn(&d.join("three.toml"));
    assert!(wait_for_socket(&d.join("two.ctl"), Duration::from_secs(20)));
    let listed = disks(&d.join("two.ctl"));
    let failed = listed.iter().find(|i| i.name == "second").unwrap();
    assert_eq!(failed.state, DiskState::Failed);
    assert!(
        failed.error.as_deref().unwrap_or("").contains(&holder),
        "{failed:?}"
    );
    let spare = listed.iter().find(|i| i.name == "spare").unwrap();
    assert_eq!(spare.state, DiskState::Serving);
    assert!(!d.join("second.sock").exists());
    let mut s = Client::connect(&d.join("spare.sock"), 1, MIB).unwrap();
    s.write(0, 0, &data).unwrap();

    // QEMU takes the same kind of lock and is refused too.
    let qemu = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4096"])
        .arg(d.join("shared.img"))
        .output()
        .expect("qemu-io runs");
    assert!(!qemu.status.success());
    let qemu_err = String::from_utf8_lossy(&qemu.stderr);
    assert!(qemu_err.contains("Failed to lock"), "{qemu_err}");

    // The first keeld's data was never touched by the others.
    assert!(c.read(0, 0, data.len()).unwrap() == data);
    drop((c, s));
    let (status, log) = second.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "{log}");
    assert!(log.contains("ERROR") && log.contains(&holder), "{log}");
    let (status, log) = first.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "{log}");
}

#[test]
fn a_raw_disk_refuses_a_keel_container() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.keel");
    Store::create_path(&path, &CreateOptions::new(64 << 20)).unwrap();
    std::fs::write(dir.path().join("keel.toml.raw"), raw_on("r", "disk.keel")).unwrap();
    let (code, stderr) = run_expecting_failure(&dir.path().join("keel.toml.raw"));
    assert_eq!(code, Some(1), "{stderr}");
    let want = format!(
        "{}: is a Keel container; use engine = \"keel\"",
        path.display()
    );
    assert!(stderr.contains(&want), "{stderr}");

    // While a keeld serves the container, a raw disk on it is refused for the lock first.
    let keel =
        "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\npath = \"disk.keel\"\n";
    let serving = InProcess::start_in(dir, keel);
    let (code, stderr) = run_expecting_failure(&serving.dir().join("keel.toml.raw"));
    assert_eq!(code, Some(1), "{stderr}");
    let holder = format!(
        "{}: locked by process {}",
        path.display(),
        std::process::id()
    );
    assert!(stderr.contains(&holder), "{stderr}");
}

#[test]
fn a_corrupt_container_leaves_the_disk_beside_it_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.keel");
    Store::create_path(&path, &CreateOptions::new(64 << 20)).unwrap();
    // Both superblocks overwritten past their magic (a file with no magic at all is refused
    // as no container when the config is read).
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for copy in [0, 4096] {
        std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 4080], copy + 16).unwrap();
    }
    drop(f);
    let bad =
        "[[disk]]\nname = \"bad\"\nsocket = \"bad.sock\"\nengine = \"keel\"\npath = \"bad.keel\"\n";
    let toml = with_control("keel.sock", &format!("{bad}{}", raw_disk("good", "8M", "")));
    let keeld = InProcess::start_in(dir, &toml);
    assert_eq!(keeld.daemon().failed(), ["bad".to_string()]);
    let control = keeld.dir().join("keel.sock");
    let listed = disks(&control);
    assert_eq!(listed.len(), 2);
    let failed = &listed[1];
    assert_eq!(
        (failed.name.as_str(), failed.state),
        ("bad", DiskState::Failed)
    );
    let reason = failed.error.clone().unwrap_or_default();
    assert!(reason.starts_with("disk bad: "), "{reason}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].state),
        ("good", DiskState::Serving)
    );
    // Calls on the failed disk say why; the healthy one does I/O.
    let e = ControlClient::new(&control)
        .get::<serde_json::Value>("/v1/disks/bad/stats")
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api { status: 409, message } if message.contains("failed to open")),
        "{e:?}"
    );
    let mut c = Client::connect(&keeld.socket("good"), 1, MIB).unwrap();
    let data = pattern(9, 4096);
    c.write(0, 0, &data).unwrap();
    assert!(c.read(0, 0, 4096).unwrap() == data);
    drop(c);
    let dir = keeld.stop();

    // Alone, the corrupt disk is an error: keeld has nothing to serve.
    std::fs::write(dir.path().join("alone.toml"), bad).unwrap();
    let (code, stderr) = run_expecting_failure(&dir.path().join("alone.toml"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("disk bad: "), "{stderr}");
}
