//! Making qcow2 images and chains with the real QEMU tools, and reading them back as raw
//! files, for the import tests.

use std::path::Path;

use crate::disk_dir::run;

/// Creates `image` of `size` bytes.
pub fn create(dir: &Path, image: &str, size: u64) {
    let size = size.to_string();
    run(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", image, &size],
    );
}

/// Creates `image` over `backing` (a qcow2 in the same directory), as large as it.
pub fn create_over(dir: &Path, image: &str, backing: &str) {
    run(
        dir,
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", image,
        ],
    );
}

/// Runs `qemu-io` commands (`write -q -P 0x11 0 4M`, `write -q -z 9M 1M`...) on `image`.
pub fn qemu_io(dir: &Path, image: &str, commands: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in commands {
        args.extend(["-c", c]);
    }
    args.push(image);
    run(dir, "qemu-io", &args);
}

/// Takes internal snapshot `name` of `image`.
pub fn snapshot(dir: &Path, image: &str, name: &str) {
    run(dir, "qemu-img", &["snapshot", "-c", name, image]);
}

/// `qemu-img`'s view of `image` (its internal snapshot `snapshot`, if given) as the raw file
/// `file`.
pub fn to_raw(dir: &Path, image: &str, snapshot: Option<&str>, file: &str) {
    let mut args = vec!["convert", "-f", "qcow2", "-O", "raw"];
    let param;
    if let Some(s) = snapshot {
        param = format!("snapshot.name={}", s.replace(',', ",,"));
        args.extend(["-l", &param]);
    }
    args.extend([image, file]);
    run(dir, "qemu-img", &args);
}

/// Converts the raw file `raw` into the qcow2 `image` (unallocated where `raw` has holes or
/// zeroes).
pub fn from_raw(dir: &Path, raw: &str, image: &str) {
    run(
        dir,
        "qemu-img",
        &["convert", "-q", "-f", "raw", "-O", "qcow2", raw, image],
    );
}
