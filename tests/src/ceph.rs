//! A single-node Ceph cluster for the rbd tests (tests/ceph/start.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The cluster (no cephx) all tests of one test binary share, started on first use and stopped
/// by the start script's watcher once the binary exits.
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}

/// `<stem>-<pid>-<n>`: an image name no other test of this run uses.
pub fn image_name(stem: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running cluster; stopped (and its directory removed) on drop, or by the start script's
/// watcher once this process exits, whichever comes first.
pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    /// Starts a cluster in a new directory. Without Ceph installed this fails and says how to
    /// install it: the rbd tests never skip.
    pub fn start() -> Self {
        Self::start_with_auth("none")
    }

    /// Starts a cluster that requires cephx (`KEEL_CEPH_AUTH=cephx`): [`Self::keyring`] holds
    /// client.keel's key.
    pub fn start_cephx() -> Self {
        Self::start_with_auth("cephx")
    }

    fn start_with_auth(auth: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ceph");
        let dir = tempfile::Builder::new()
            .prefix("keel-ceph-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let out = Command::new("bash")
            .env("KEEL_CEPH_AUTH", auth)
            .arg(root.join("start.sh"))
            .arg(&dir)
            .arg(std::process::id().to_string())
            .output()
            .expect("run tests/ceph/start.sh");
        assert!(
            out.status.success(),
            "tests/ceph/start.sh failed (is Ceph installed? `bash qemu/prepare.sh` installs \
             ceph-mon and ceph-osd):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Self { dir, conf }
    }

    /// The cluster's ceph.conf, for `ceph_conf` and the `rbd` tool.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// client.keel's keyring (its key is only known to a cephx cluster).
    pub fn keel_keyring(&self) -> PathBuf {
        self.dir.join("client.keel.keyring")
    }

    /// The OSD's process id.
    pub fn osd_pid(&self) -> i32 {
        let text = std::fs::read_to_string(self.dir.join("run/osd.0.pid")).expect("osd pid file");
        text.trim().parse().expect("osd pid")
    }

    /// Runs the `rbd` tool on this cluster; panics with its stderr if it fails.
    pub fn rbd(&self, args: &[&str]) -> String {
        self.tool("rbd", args)
    }

    /// Runs the `ceph` tool on this cluster; panics with its stderr if it fails.
    pub fn ceph(&self, args: &[&str]) -> String {
        self.tool("ceph", args)
    }

    fn tool(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(tool)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .expect("run a Ceph tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stop = Path::new(env!("CARGO_MANIFEST_DIR")).join("ceph/stop.sh");
        let _ = Command::new("bash").arg(stop).arg(&self.dir).status();
    }
}
