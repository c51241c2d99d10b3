//! Damage after a kill -9 never rolls flushed data back silently (keeld as a process, the
//! default config, O_DIRECT):
//! - 64 bytes of garbage over the newest superblock copy: the other copy is as new, the disk
//!   serves the last flushed data, and `keel fsck` reports the damaged copy;
//! - 16 bytes over a flushed journal record: keeld refuses the disk with a clear error,
//!   `keel fsck` fails naming it, and only `keel recover --rewind` opens it, saying what it
//!   discarded.

use keel_tests::client::Client;
use keel_tests::keeld::{KeeldProcess, keel_binary, keeld_binary, wait_for_socket};
use keel_tests::pattern;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const MIB: usize = 1 << 20;
/// The part of the disk the probes fill.
const FILLED: usize = 4 * MIB;

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("keel.toml");
    fs::write(
        &path,
        "[[disk]]\nname = \"d\"\nsocket = \"d.sock\"\nengine = \"keel\"\npath = \"d.keel\"\nsize = \"32M\"\n",
    )
    .unwrap();
    path
}

fn serve(dir: &Path) -> (KeeldProcess, Client) {
    let keeld = KeeldProcess::spawn(&config(dir));
    assert!(
        wait_for_socket(&dir.join("d.sock"), Duration::from_secs(20)),
        "keeld did not listen"
    );
    let c = Client::connect(&dir.join("d.sock"), 1, MIB).unwrap();
    (keeld, c)
}

/// Fills the first [`FILLED`] bytes with `seed`'s pattern, 64 KiB a request, and flushes.
fn fill(c: &mut Client, seed: u64) {
    let data = pattern(seed, FILLED);
    for (i, chunk) in data.chunks(64 << 10).enumerate() {
        c.write(0, (i * chunk.len()) as u64, chunk).unwrap();
    }
    c.flush(0).unwrap();
}

/// Reads the first [`FILLED`] bytes, 64 KiB a request.
fn read_filled(c: &mut Client) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILLED);
    for at in (0..FILLED).step_by(64 << 10) {
        out.extend(c.read(0, at as u64, 64 << 10).unwrap());
    }
    out
}

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    f.sync_all().unwrap();
}

fn keel(args: &[&str]) -> Output {
    Command::new(keel_binary()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The container's segment size, from its superblock (docs/format.md: blocks per segment at
/// byte 56).
fn segment_bytes(container: &Path) -> u64 {
    let f = fs::File::open(container).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 56).unwrap();
    u64::from_le_bytes(b) * 4096
}

/// A container holding seed 24 then seed 25 (both flushed), its keeld killed with SIGKILL.
fn killed_after_two_flushed_fills(dir: &Path) {
    let (mut keeld, mut c) = serve(dir);
    fill(&mut c, 24);
    fill(&mut c, 25);
    drop(c);
    keeld.signal_and_wait(libc::SIGKILL, Duration::from_secs(10));
}

#[test]
fn a_damaged_newest_superblock_rolls_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    killed_after_two_flushed_fills(dir.path());
    let container = dir.path().join("d.keel");
    overwrite(&container, 16, &pattern(7, 64));

    let out = keel(&["fsck", container.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("superblock A"), "{}", text(&out));
    // fsck's open rewrote the copy: clean from now on.
    let out = keel(&["fsck", container.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    let (_keeld, mut c) = serve(dir.path());
    assert!(
        read_filled(&mut c) == pattern(25, FILLED),
        "the last flushed fill reads back"
    );
}

#[test]
fn a_damaged_flushed_journal_record_is_refused_until_rewound() {
    let dir = tempfile::tempdir().unwrap();
    killed_after_two_flushed_fills(dir.path());
    let container = dir.path().join("d.keel");
    // The journal starts at the second segment; its fifth block is inside seed 24's records.
    let record = segment_bytes(&container) + 4 * 4096;
    overwrite(&container, record + 40, &pattern(9, 16));
    let damaged = fs::read(&container).unwrap();

    let started = Command::new(keeld_binary())
        .arg("--config")
        .arg(config(dir.path()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&started.stderr).into_owned();
    assert!(
        !started.status.success(),
        "keeld served a damaged disk: {log}"
    );
    assert!(
        log.contains("was flushed") && log.contains("--rewind"),
        "{log}"
    );
    assert!(
        fs::read(&container).unwrap() == damaged,
        "a refused disk is not written"
    );

    let out = keel(&["fsck", container.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("was flushed"), "{}", text(&out));

    let out = keel(&["recover", container.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "recover without --rewind: {}",
        text(&out)
    );
    let out = keel(&["recover", "--rewind", container.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("discarded"), "{}", text(&out));

    let out = keel(&["fsck", container.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let (_keeld, mut c) = serve(dir.path());
    assert_ne!(
        read_filled(&mut c),
        pattern(25, FILLED),
        "the rewound disk is an older state"
    );
}
