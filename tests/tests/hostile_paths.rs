//! Isolation on the host: who may connect to a disk's socket, and whether a path keeld was given
//! can be redirected through a symlink to a file it was not configured for.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use keel_backend::config::Config;
use keel_backend::daemon::Daemon;
use keel_tests::keeld::{InProcess, null_disk, raw_disk};

#[test]
fn sockets_are_private_to_the_owner() {
    let keeld = InProcess::start(&format!(
        "{}{}",
        null_disk("a", "1G", ""),
        raw_disk("b", "1M", "")
    ));
    for name in ["a", "b"] {
        let meta = fs::symlink_metadata(keeld.socket(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket of {name}");
    }
}

#[test]
fn raw_images_are_created_private() {
    let keeld = InProcess::start(&raw_disk("b", "1M", ""));
    let meta = fs::metadata(keeld.dir().join("b.img")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

/// A symlink planted where the socket should go is neither followed nor removed.
#[test]
fn symlink_at_the_socket_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"keep").unwrap();
    symlink(&victim, dir.path().join("a.sock")).unwrap();
    fs::write(dir.path().join("keel.toml"), null_disk("a", "1G", "")).unwrap();
    let config = Config::load(&dir.path().join("keel.toml")).unwrap();
    let err = Daemon::start(&config).err().expect("must refuse");
    assert!(
        err.to_string().contains("exists and is not a socket"),
        "{err}"
    );
    assert!(
        fs::symlink_metadata(dir.path().join("a.sock"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&victim).unwrap(), b"keep");
}

/// An image that does not exist yet, with a dangling symlink planted at its path: keeld creates
/// images with O_EXCL, which does not follow the link, so the link's target is not created.
#[test]
fn dangling_symlink_at_a_new_image_path_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(dir.path().join("keel.toml"), raw_disk("b", "1M", "")).unwrap();
    let config = Config::load(&dir.path().join("keel.toml")).unwrap();
    // Planted after the config was checked, before the engine opens the file.
    symlink(&victim, dir.path().join("b.img")).unwrap();
    assert!(Daemon::start(&config).is_err());
    assert!(!victim.exists(), "keeld created the symlink's target");
}

/// An image swapped for a symlink between config load and open must not redirect guest writes
/// to the link's target. Today the raw engine opens the path without O_NOFOLLOW and serves the
/// target (see docs/security.md, "Paths and symlinks").
#[test]
fn image_swapped_for_a_symlink_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, vec![7u8; 1 << 20]).unwrap();
    fs::write(dir.path().join("b.img"), vec![0u8; 1 << 20]).unwrap();
    fs::write(dir.path().join("keel.toml"), raw_disk("b", "1M", "")).unwrap();
    let config = Config::load(&dir.path().join("keel.toml")).unwrap();
    fs::remove_file(dir.path().join("b.img")).unwrap();
    symlink(&victim, dir.path().join("b.img")).unwrap();
    assert!(
        Daemon::start(&config).is_err(),
        "keeld serves {} through a symlink it was not configured for",
        victim.display()
    );
}
