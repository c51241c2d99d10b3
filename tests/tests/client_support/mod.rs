//! Starting qemu-storage-daemon for keel-client's whole-system tests, and finding the
//! `keel-client` binary.
//!
//! A missing tool fails the test with a clear message: these tests never skip.

#![allow(dead_code)]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const QSD: &str = "qemu-storage-daemon";

/// A qemu-storage-daemon exporting one vhost-user-blk device, killed on drop.
pub struct Qsd {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The raw image behind the export, for a `file` device.
    pub image: Option<PathBuf>,
    queues: u16,
}

fn spawn(blockdev: &str, socket: &Path, queues: u16) -> Child {
    let export = format!(
        "type=vhost-user-blk,id=export,node-name=disk,addr.type=unix,addr.path={},writable=on,num-queues={queues}",
        socket.display()
    );
    Command::new(QSD)
        .args(["--blockdev", blockdev, "--export", &export])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QSD} (is QEMU's storage daemon installed?): {e}"))
}

impl Qsd {
    /// Exports a raw image file of `size` bytes (sparse, zero-filled).
    pub fn file(size: u64, queues: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("disk.img");
        let f = std::fs::File::create(&image).expect("create image");
        f.set_len(size).expect("size image");
        let blockdev = format!("driver=file,filename={},node-name=disk", image.display());
        Self::start(dir, &blockdev, queues, Some(image))
    }

    /// Exports a null device of `size` bytes (reads return zeroes, writes vanish).
    pub fn null(size: u64, queues: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let blockdev = format!("driver=null-co,node-name=disk,size={size},read-zeroes=on");
        Self::start(dir, &blockdev, queues, None)
    }

    /// Kills the daemon and starts a new one on the same image and socket path.
    pub fn restart(&mut self) {
        self.kill();
        let image = self
            .image
            .clone()
            .expect("restart needs a file-backed device");
        let _ = std::fs::remove_file(&self.socket);
        let blockdev = format!("driver=file,filename={},node-name=disk", image.display());
        self.child = spawn(&blockdev, &self.socket, self.queues);
        self.wait_for_socket();
    }

    fn start(dir: tempfile::TempDir, blockdev: &str, queues: u16, image: Option<PathBuf>) -> Self {
        let socket = dir.path().join("vhost.sock");
        let child = spawn(blockdev, &socket, queues);
        let mut qsd = Self {
            child,
            dir,
            socket,
            image,
            queues,
        };
        qsd.wait_for_socket();
        qsd
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(m) = std::fs::metadata(&self.socket)
                && m.file_type().is_socket()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{QSD} exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "{QSD} did not create {:?}",
                self.socket
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `keel-client` binary, built on demand: it belongs to another package of the workspace,
/// so Cargo does not build it for this one's tests.
pub fn keel_client() -> PathBuf {
    let target = target_dir();
    let bin = target.join("keel-client");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "keel-client",
            "--bin",
            "keel-client",
        ])
        .args(if target.ends_with("release") {
            &["--release"][..]
        } else {
            &[][..]
        })
        .status()
        .expect("run cargo to build keel-client");
    assert!(status.success(), "building keel-client failed");
    assert!(bin.exists(), "keel-client not found at {}", bin.display());
    bin
}

/// `target/<profile>`, found from this test executable (`target/<profile>/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}
