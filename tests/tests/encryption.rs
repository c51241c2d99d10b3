//! Encryption at rest, end to end: data written through keeld (keel-client as the guest,
//! default config, O_DIRECT) reads back but appears nowhere in the container file; the wrong
//! key, or none, fails that disk alone with a message saying so, and every `keel` command that
//! opens the container refuses it the same way. A mirror's components are encrypted alike.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_backend::control::client::ControlClient;
use keel_client::{Disk, DiskOptions};
use keel_protocol::control::{DiskInfo, DiskState};
use keel_tests::keeld::{
    InProcess, KeeldProcess, keel_binary, null_disk, run_keel, wait_for_socket,
};

const MIB: usize = 1 << 20;
/// What the guest writes: text that would stand out in the container file.
const TEXT: &[u8] = b"KEEL-PLAINTEXT-CANARY the quick brown fox jumps over the lazy dog. ";

fn key(fill: u8) -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(29).wrapping_add(fill))
        .collect()
}

fn encrypted_disk(name: &str, key_file: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"keel\"\n\
         path = \"{name}.keel\"\nsize = \"64M\"\nencryption = \"aes-xts-256\"\n\
         key_file = \"{key_file}\"\n"
    )
}

fn text(len: usize, salt: usize) -> Vec<u8> {
    let mut out: Vec<u8> = TEXT.iter().copied().cycle().take(len).collect();
    // A counter every 4 KiB keeps blocks distinct, so nothing is deduplicated away.
    for (i, block) in out.chunks_mut(4096).enumerate() {
        block[..12].copy_from_slice(format!("{:012}", i + salt).as_bytes());
    }
    out
}

/// The disk's first `len` bytes, read 256 KiB at a time.
fn read_all(q: &mut keel_client::Queue, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for at in (0..len).step_by(256 << 10) {
        let n = (256 << 10).min(len - at);
        out.extend(q.read_vec(at as u64, n).unwrap());
    }
    out
}

/// Whether `needle` occurs anywhere in `file`.
fn file_contains(file: &Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(file).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn written_text_reads_back_and_is_nowhere_in_the_container() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vm.key"), key(1)).unwrap();
    let keeld = InProcess::start_in(dir, &encrypted_disk("e", "vm.key"));
    let container = keeld.dir().join("e.keel");
    let data = text(4 * MIB, 0);
    {
        let mut disk = Disk::connect(keeld.socket("e"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        for (i, chunk) in data.chunks(256 << 10).enumerate() {
            q.write_slice((i * (256 << 10)) as u64, chunk).unwrap();
        }
        q.flush().unwrap();
        assert!(read_all(&mut q, data.len()) == data);
        // The journal still holds the records: the file is looked at before any checkpoint
        // has folded them in, and again after the closing one.
        assert!(!file_contains(&container, &TEXT[..24]));
    }
    let dir = keeld.stop();
    assert!(!file_contains(&container, &TEXT[..24]));
    assert!(!file_contains(&container, b"000000000001"));

    // Served again with the same key, the data is all there.
    let keeld = InProcess::start_in(dir, &encrypted_disk("e", "vm.key"));
    let mut disk = Disk::connect(keeld.socket("e"), &DiskOptions::default()).unwrap();
    let mut q = disk.take_queue(0).unwrap();
    assert!(read_all(&mut q, data.len()) == data);
    drop((q, disk));
    let dir = keeld.stop();

    // Offline, with the key: fsck reads every block and finds the container clean; export
    // writes the plaintext back out.
    let d = dir.path();
    let (code, out) = run_keel(d, &["--key-file", "vm.key", "fsck", "e.keel"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(", 0 problems"), "{out}");
    let (code, out) = run_keel(d, &["--key-file", "vm.key", "export", "e.keel", "e.raw"]);
    assert_eq!(code, 0, "{out}");
    let raw = std::fs::read(d.join("e.raw")).unwrap();
    assert!(raw[..data.len()] == data[..]);
}

fn disks(control: &Path) -> Vec<DiskInfo> {
    ControlClient::new(control).get("/v1/disks").unwrap()
}

#[test]
fn a_wrong_or_missing_key_fails_that_disk_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("right.key"), key(1)).unwrap();
    std::fs::write(d.join("wrong.key"), key(2)).unwrap();
    // Made by keeld with the right key.
    let keeld = InProcess::start_in(dir, &encrypted_disk("e", "right.key"));
    let dir = keeld.stop();
    let d = dir.path();

    let config = |disk: &str| {
        format!(
            "[server]\ncontrol_socket = \"ctl\"\n\n{disk}{}",
            null_disk("spare", "1G", "")
        )
    };
    let plain_keel =
        "[[disk]]\nname = \"e\"\nsocket = \"e.sock\"\nengine = \"keel\"\npath = \"e.keel\"\n";
    for (disk, want) in [
        (encrypted_disk("e", "wrong.key"), "wrong key"),
        (plain_keel.to_string(), "key required"),
    ] {
        std::fs::write(d.join("k.toml"), config(&disk)).unwrap();
        let mut keeld = KeeldProcess::spawn(&d.join("k.toml"));
        assert!(wait_for_socket(&d.join("ctl"), Duration::from_secs(20)));
        let listed = disks(&d.join("ctl"));
        let failed = listed.iter().find(|i| i.name == "e").unwrap();
        assert_eq!(failed.state, DiskState::Failed);
        let error = failed.error.clone().unwrap_or_default();
        assert!(error.contains(want), "{error}");
        assert!(!d.join("e.sock").exists());
        let spare = listed.iter().find(|i| i.name == "spare").unwrap();
        assert_eq!(spare.state, DiskState::Serving);
        let (status, log) = keeld.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
        assert!(status.success(), "{log}");
        assert!(log.contains("disk e") && log.contains(want), "{log}");
    }

    // Every offline command that opens the container says the same.
    for cmd in [
        &["fsck", "e.keel"][..],
        &["info", "e.keel"],
        &["info", "-U", "e.keel"],
        &["export", "e.keel", "out.raw"],
        &["diff", "e.keel", "@empty"],
        &["snapshot", "list", "e.keel"],
        &["snapshot", "create", "e.keel", "s1"],
        &["recover", "e.keel"],
        &["resize", "e.keel", "128M"],
    ] {
        let (code, out) = run_keel(d, cmd);
        assert_ne!(code, 0, "{cmd:?}: {out}");
        assert!(out.contains("key required"), "{cmd:?}: {out}");
        let mut wrong = vec!["--key-file", "wrong.key"];
        wrong.extend_from_slice(cmd);
        let (code, out) = run_keel(d, &wrong);
        assert_ne!(code, 0, "{cmd:?}: {out}");
        assert!(out.contains("wrong key"), "{cmd:?}: {out}");
    }
    assert!(!d.join("out.raw").exists());
    let (code, out) = run_keel(d, &["--key-file", "right.key", "info", "e.keel"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("aes-xts-256"), "{out}");
}

#[test]
fn bad_keys_and_changes_of_encryption_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = key(3);
    std::fs::write(d.join("short.key"), &good[..40]).unwrap();
    let mut newline = good.clone();
    newline.push(b'\n');
    std::fs::write(d.join("newline.key"), &newline).unwrap();
    std::fs::write(d.join("empty.key"), b"").unwrap();
    std::fs::write(d.join("good.key"), &good).unwrap();
    std::fs::write(d.join("half.key"), &good[..32]).unwrap();
    for (file, want) in [
        ("short.key", "40 bytes"),
        ("newline.key", "newline"),
        ("empty.key", "empty"),
        ("missing.key", "No such file"),
    ] {
        let (code, out) = run_keel(
            d,
            &[
                "--key-file",
                file,
                "create",
                "--encryption",
                "aes-xts-256",
                "--size",
                "16M",
                "x.keel",
            ],
        );
        assert_ne!(code, 0, "{out}");
        assert!(out.contains(want) && out.contains(file), "{file}: {out}");
        assert!(!d.join("x.keel").exists());
    }
    // A 32-byte key is accepted (expanded), and only that key opens the container.
    let (code, out) = run_keel(
        d,
        &[
            "--key-file",
            "half.key",
            "create",
            "--encryption",
            "aes-xts-256",
            "--size",
            "16M",
            "h.keel",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_keel(d, &["--key-file", "half.key", "fsck", "h.keel"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_keel(d, &["--key-file", "good.key", "fsck", "h.keel"]);
    assert!(code != 0 && out.contains("wrong key"), "{out}");

    // A key for a container made without encryption: refused, with the way to encrypt it.
    let (code, out) = run_keel(d, &["create", "--size", "16M", "p.keel"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_keel(d, &["--key-file", "good.key", "info", "p.keel"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("not encrypted") && out.contains("keel export"),
        "{out}"
    );
    let plain_as_encrypted = "[[disk]]\nname = \"p\"\nsocket = \"p.sock\"\nengine = \"keel\"\n\
         path = \"p.keel\"\nencryption = \"aes-xts-256\"\nkey_file = \"good.key\"\n";
    std::fs::write(d.join("p.toml"), plain_as_encrypted).unwrap();
    let (code, stderr) = keel_tests::keeld::run_expecting_failure(&d.join("p.toml"));
    assert_ne!(code, Some(0));
    assert!(stderr.contains("not encrypted"), "{stderr}");

    // --encryption without a key, or a key without --encryption, makes nothing.
    let (code, out) = run_keel(
        d,
        &[
            "create",
            "--encryption",
            "aes-xts-256",
            "--size",
            "16M",
            "y.keel",
        ],
    );
    assert!(code != 0 && out.contains("--key-file"), "{out}");
    let (code, out) = run_keel(
        d,
        &[
            "--key-file",
            "good.key",
            "create",
            "--size",
            "16M",
            "y.keel",
        ],
    );
    assert!(code != 0 && out.contains("--encryption"), "{out}");
    assert!(!d.join("y.keel").exists());

    // A key from an environment variable, in hex.
    let hex: String = good.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new(keel_binary())
        .current_dir(d)
        .env("KEEL_TEST_KEY", &hex)
        .args([
            "--key-file",
            "env:KEEL_TEST_KEY",
            "create",
            "--encryption",
            "aes-xts-256",
        ])
        .args(["--size", "16M", "v.keel"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, out) = run_keel(d, &["--key-file", "good.key", "fsck", "v.keel"]);
    assert_eq!(code, 0, "{out}");
}

/// A mirror's components hold the same ciphertext: the container is what is encrypted, and
/// each component is a copy of it.
#[test]
fn a_mirrored_encrypted_disk_has_no_plaintext_on_any_component() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.key"), key(4)).unwrap();
    let table = "[[disk]]\nname = \"m\"\nsocket = \"m.sock\"\nengine = \"keel\"\n\
                 mirror = [\"m0.keel\", \"m1.keel\"]\nsize = \"32M\"\n\
                 encryption = \"aes-xts-256\"\nkey_file = \"m.key\"\n";
    let keeld = InProcess::start_in(dir, table);
    let data = text(MIB, 7);
    {
        let mut disk = Disk::connect(keeld.socket("m"), &DiskOptions::default()).unwrap();
        let mut q = disk.take_queue(0).unwrap();
        for (i, chunk) in data.chunks(256 << 10).enumerate() {
            q.write_slice((i * (256 << 10)) as u64, chunk).unwrap();
        }
        q.flush().unwrap();
    }
    let dir = keeld.stop();
    for c in ["m0.keel", "m1.keel"] {
        assert!(!file_contains(&dir.path().join(c), &TEXT[..24]), "{c}");
    }
    let keeld = InProcess::start_in(dir, table);
    let mut disk = Disk::connect(keeld.socket("m"), &DiskOptions::default()).unwrap();
    let mut q = disk.take_queue(0).unwrap();
    assert!(read_all(&mut q, data.len()) == data);
}
