//! Starting keeld for tests and benchmarks: in-process from the library (fast), or as the real
//! binary with a config file (signals, exit codes, error messages).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_backend::config::Config;
use keel_backend::daemon::Daemon;

/// A `[[disk]]` table for a null disk named `name` with socket `<name>.sock`.
pub fn null_disk(name: &str, size: &str, extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"null\"\nsize = \"{size}\"\n{extra}\n"
    )
}

/// A `[[disk]]` table for a raw disk backed by `<name>.img`.
pub fn raw_disk(name: &str, size: &str, extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"raw\"\npath = \"{name}.img\"\nsize = \"{size}\"\n{extra}\n"
    )
}

/// Waits until a unix socket exists at `path` (the daemon is listening).
pub fn wait_for_socket(path: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// keeld running inside the test process, with its config and files in a temporary directory.
pub struct InProcess {
    daemon: Option<Daemon>,
    dir: tempfile::TempDir,
}

impl InProcess {
    /// Writes `toml` as keel.toml in a fresh directory and starts every disk in it.
    pub fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, toml)
    }

    pub fn start_in(dir: tempfile::TempDir, toml: &str) -> Self {
        let file = dir.path().join("keel.toml");
        fs::write(&file, toml).expect("write config");
        let config = Config::load(&file).expect("config");
        let daemon = Daemon::start(&config).expect("start keeld");
        Self {
            daemon: Some(daemon),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The socket of disk `name` (as `null_disk` / `raw_disk` name it).
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("running")
    }

    /// Stops the daemon (like SIGTERM) and hands back the directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        if let Some(d) = self.daemon.take() {
            d.shutdown().expect("clean shutdown");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(d) = self.daemon.take() {
            let _ = d.shutdown();
        }
    }
}

/// Path of the keeld binary, built (once per test process) with the same profile as the tests.
pub fn keeld_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("keeld")).clone()
}

/// The `keel` CLI, built once with the tests' profile.
pub fn keel_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_binary("keel")).clone()
}

/// Runs the `keel` CLI in `dir` (no `KEEL_CONTROL` from the caller's environment); returns
/// (exit code or -1, stdout followed by stderr), so tests can assert on failures too.
pub fn run_keel(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(keel_binary())
        .current_dir(dir)
        .env_remove("KEEL_CONTROL")
        .args(args)
        .output()
        .expect("run keel");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Builds keel-backend's binary `name` with the running test's profile and target dir.
fn built_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "keel-backend", "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {name} failed");
    profile_dir.join(name)
}

/// The keeld binary running as a child process.
pub struct KeeldProcess {
    child: Option<Child>,
}

impl KeeldProcess {
    /// Starts `keeld --config <config>`; stderr is captured.
    pub fn spawn(config: &Path) -> Self {
        Self::spawn_command(Self::command(config))
    }

    /// Starts keeld allowed at most `limit` open descriptors (RLIMIT_NOFILE), as a host with
    /// a low limit would run it.
    pub fn spawn_with_fd_limit(config: &Path, limit: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Self::command(config);
        let rlim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe, on a value it owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::spawn_command(cmd)
    }

    fn command(config: &Path) -> Command {
        let mut cmd = Command::new(keeld_binary());
        cmd.arg("--config")
            .arg(config)
            .env("KEEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }

    fn spawn_command(mut cmd: Command) -> Self {
        let child = cmd.spawn().expect("spawn keeld");
        Self { child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends `signal` and waits for the exit (at most `timeout`); returns status and stderr.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status, err);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keeld did not exit within {timeout:?} of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KeeldProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `keeld --config <config>` expecting it to refuse the file; returns (exit code, stderr).
pub fn run_expecting_failure(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(keeld_binary())
        .arg("--config")
        .arg(config)
        .output()
        .expect("run keeld");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Path of a keeld binary next to the running executable (same target profile), for tools that
/// are run after `cargo build` rather than from `cargo test`.
pub fn keeld_binary_near_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let direct = dir.join("keeld");
    if direct.exists() {
        return direct;
    }
    dir.parent().map_or(direct.clone(), |p| p.join("keeld"))
}

/// Spawns the keeld binary next to the running executable, serving one keel-engine disk named
/// `b` of `size` bytes from a new container `dir/<stem>.keel` (O_DIRECT) on `dir/<stem>.sock`,
/// with its control socket at `dir/control.sock`; for benchmark programs. The child process is
/// stopped when the returned [`Running`](crate::bench::Running) is dropped.
pub fn spawn_keel_bench_disk(
    dir: &Path,
    stem: &str,
    size: u64,
) -> (crate::bench::Running, PathBuf, PathBuf) {
    spawn_keel_bench_disk_with(&keeld_binary_near_exe(), dir, stem, size)
}

/// [`spawn_keel_bench_disk`] with the keeld binary `keeld` (to compare two builds).
pub fn spawn_keel_bench_disk_with(
    keeld: &Path,
    dir: &Path,
    stem: &str,
    size: u64,
) -> (crate::bench::Running, PathBuf, PathBuf) {
    spawn_keel_bench_disk_keys(keeld, dir, stem, size, "")
}

/// [`spawn_keel_bench_disk_with`] with more `[[disk]]` keys (`extra`, whole lines).
pub fn spawn_keel_bench_disk_keys(
    keeld: &Path,
    dir: &Path,
    stem: &str,
    size: u64,
    extra: &str,
) -> (crate::bench::Running, PathBuf, PathBuf) {
    let sock = dir.join(format!("{stem}.sock"));
    let ctl = dir.join("control.sock");
    let path = dir.join(format!("{stem}.keel"));
    let cfg = dir.join(format!("{stem}.toml"));
    for p in [&sock, &ctl, &path] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(
        &cfg,
        format!(
            "[server]\ncontrol_socket = \"{}\"\n[[disk]]\nname = \"b\"\nsocket = \"{}\"\nengine = \"keel\"\npath = \"{}\"\nsize = {size}\ndirect = true\n{extra}",
            ctl.display(),
            sock.display(),
            path.display()
        ),
    )
    .expect("write config");
    let child = Command::new(keeld)
        .arg("--config")
        .arg(&cfg)
        // KEEL_BENCH_LOG=debug shows what keeld does under a benchmark (on stderr).
        .env(
            "KEEL_LOG",
            std::env::var("KEEL_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start keeld");
    (crate::bench::Running(child), sock, ctl)
}

/// keeld on `dir/keel.toml` as a child process logging (info level) to `dir/keeld.log`: the
/// process the kill -9 campaigns kill and restart.
pub struct LoggedKeeld {
    child: Child,
}

impl LoggedKeeld {
    pub fn spawn(dir: &Path) -> Self {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("keeld.log"))
            .expect("open keeld.log");
        let child = Command::new(keeld_binary())
            .arg("--config")
            .arg(dir.join("keel.toml"))
            .env("KEEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn keeld");
        Self { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL and reap (so every request keeld had in the kernel has finished).
    pub fn kill(mut self) {
        kill9(self.pid());
        let _ = self.child.wait();
    }

    /// SIGTERM, and its exit status.
    pub fn terminate(mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.child.wait().expect("wait for keeld")
    }
}

/// A failing check must not leave keeld running.
impl Drop for LoggedKeeld {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGKILL to `pid`, a keeld child of this process not reaped yet (so the pid cannot have been
/// reused).
pub fn kill9(pid: i32) {
    // SAFETY: kill(2) on our own child; it is reaped only after this returns.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}
