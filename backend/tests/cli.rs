//! `keel` and `keeld` run as a user runs them: real binaries, real files, a live keeld;
//! each test asserts what is printed and the exit status.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEEL: &str = env!("CARGO_BIN_EXE_keel");
const KEELD: &str = env!("CARGO_BIN_EXE_keeld");

/// What a command printed and how it ended.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Ran {
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn fails_with(self, code: i32, message: &str) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(message),
            "stderr lacks {message:?}:\n{}",
            self.stderr
        );
        self
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn run(bin: &str, dir: &Path, args: &[&str]) -> Ran {
    Command::new(bin)
        .current_dir(dir)
        .args(args)
        .env_remove("KEEL_CONTROL")
        .output()
        .expect("run")
        .into()
}

fn keel(dir: &Path, args: &[&str]) -> Ran {
    run(KEEL, dir, args)
}

fn check(dir: &Path, config: &str) -> Ran {
    fs::write(dir.join("keel.toml"), config).unwrap();
    run(KEELD, dir, &["--check", "--config", "keel.toml"])
}

/// A keeld serving `dir/keel.toml`, its control socket at `dir/ctl.sock`, its log in
/// `dir/keeld.log`.
struct Keeld {
    child: Option<Child>,
    log: PathBuf,
}

impl Keeld {
    fn start(dir: &Path, disks: &str) -> Self {
        fs::write(
            dir.join("keel.toml"),
            format!("[server]\ncontrol_socket = \"ctl.sock\"\n{disks}"),
        )
        .unwrap();
        let log = dir.join("keeld.log");
        let mut child = Command::new(KEELD)
            .current_dir(dir)
            .args(["--config", "keel.toml"])
            .env("KEEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn keeld");
        let ready = wait_for(|| dir.join("ctl.sock").exists());
        if !ready || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "keeld did not start:\n{}",
                fs::read_to_string(&log).unwrap()
            );
        }
        Self {
            child: Some(child),
            log,
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, sig) };
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap()
    }

    /// SIGTERM, then the exit status and everything keeld logged.
    fn stop(mut self) -> (Option<i32>, String) {
        self.signal(libc::SIGTERM);
        let status = self.child.take().unwrap().wait().unwrap();
        (status.code(), self.log())
    }
}

impl Drop for Keeld {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `done` until it holds, for at most a minute (a loaded machine starts slowly).
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn raw_disk(name: &str, size: &str, extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"raw\"\n\
         path = \"{name}.img\"\nsize = \"{size}\"\n{extra}\n"
    )
}

fn keel_disk(name: &str, size: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsocket = \"{name}.sock\"\nengine = \"keel\"\n\
         path = \"{name}.keel\"\nsize = \"{size}\"\n"
    )
}

fn len(p: PathBuf) -> u64 {
    fs::metadata(p).unwrap().len()
}

#[test]
fn check_refuses_what_start_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::create_dir(d.join("run")).unwrap();
    keel(d, &["create", "--size", "16M", "small.keel"]).ok();
    let null = |name: &str, socket: &str| {
        format!(
            "[[disk]]\nname = \"{name}\"\nsocket = \"{socket}\"\nengine = \"null\"\n\
             size = \"1G\"\n"
        )
    };
    let long = format!("run/{}.sock", "s".repeat(110));
    let small = "[[disk]]\nname = \"k\"\nsocket = \"k.sock\"\nengine = \"keel\"\n\
                 path = \"small.keel\"\nsize = \"32M\"\n";
    let cases = [
        (
            format!(
                "[server]\nlog_level = \"verbose!!\"\n{}",
                null("a", "a.sock")
            ),
            "`log_level`: \"verbose!!\" is not a log filter",
        ),
        (null("a", &long), "a unix socket path holds at most 107"),
        (
            format!(
                "[server]\ncontrol_socket = \"nodir/c.sock\"\n{}",
                null("a", "a.sock")
            ),
            "`control_socket`: directory",
        ),
        (
            format!(
                "[server]\ncontrol_socket = \"a.sock\"\n{}",
                null("a", "a.sock")
            ),
            "is already used at line 2",
        ),
        (
            format!("{}{}", null("a", "run/a.sock"), null("b", "./run/a.sock")),
            "run/a.sock\" is already used at line 3",
        ),
        (
            small.into(),
            "holds a 16777216-byte disk, less than 33554432: grow it with `keel resize",
        ),
        (null("vm one", "a.sock"), "\"vm one\" is not a disk name"),
        (null("vm:1?x", "a.sock"), "\"vm:1?x\" is not a disk name"),
        (
            null("a", "a.sock").replace("\"1G\"", "-5"),
            "-5 is negative; expected a size",
        ),
    ];
    for (config, message) in cases {
        check(d, &config).fails_with(2, message);
    }
    let good = check(d, &null("a", "run/a.sock")).ok();
    assert!(good.stdout.ends_with("1 disk(s), OK\n"), "{}", good.stdout);
}

#[test]
fn versions_name_their_program() {
    let dir = tempfile::tempdir().unwrap();
    let v = run(KEELD, dir.path(), &["--version"]).ok();
    assert!(v.stdout.starts_with("keeld "), "{}", v.stdout);
    let v = keel(dir.path(), &["--version"]).ok();
    assert!(v.stdout.starts_with("keel "), "{}", v.stdout);
}

#[test]
fn an_online_grow_survives_a_restart_and_nothing_shrinks_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keeld = Keeld::start(d, &raw_disk("r1", "16M", ""));
    let grown = keel(
        d,
        &["--control", "ctl.sock", "resize", "r1", "32MiB", "--json"],
    )
    .ok();
    assert_eq!(grown.json()["size"], 32 << 20);
    let (code, log) = keeld.stop();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(len(d.join("r1.img")), 32 << 20);

    // The config still says 16M: the grown image is served whole.
    let config = format!(
        "[server]\ncontrol_socket = \"ctl.sock\"\n{}",
        raw_disk("r1", "16M", "")
    );
    check(d, &config).ok();
    let keeld = Keeld::start(d, &raw_disk("r1", "16M", ""));
    let disks = keel(d, &["--control", "ctl.sock", "disks", "--json"]).ok();
    assert_eq!(disks.json()[0]["size"], 32 << 20);
    let table = keel(d, &["--control", "ctl.sock", "disks"]).ok();
    let socket = d.join("r1.sock").display().to_string();
    assert!(table.stdout.contains("32.0 MiB"), "{}", table.stdout);
    assert!(table.stdout.contains(&socket), "{}", table.stdout);
    assert_eq!(keeld.stop().0, Some(0));

    // `resize = true` with a smaller size is refused, and the image keeps its size.
    check(d, &raw_disk("r1", "16M", "resize = true")).fails_with(2, "`resize` only grows an image");
    assert_eq!(len(d.join("r1.img")), 32 << 20);
}

#[test]
fn one_size_grammar_and_create_refuses_what_it_cannot_make() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keel(d, &["create", "--size", "1000", "a.keel"])
        .fails_with(2, "a keel disk's size is a positive multiple of 4K");
    assert!(!d.join("a.keel").exists());
    keel(d, &["create", "--size", "4X", "a.keel"]).fails_with(2, "unknown unit \"x\"");
    let made = keel(d, &["create", "--size", "4MiB", "a.keel", "--json"])
        .ok()
        .json();
    assert_eq!(made["size"], 4 << 20);
    assert_eq!(made["path"], d.join("a.keel").display().to_string());
    keel(d, &["create", "--size", "4M", "a.keel"])
        .fails_with(2, "exists: keel create never overwrites a file");
    let grown = keel(d, &["resize", "a.keel", "4200KiB", "--json"])
        .ok()
        .json();
    assert_eq!(grown["size"], 4200 << 10);
    assert!(grown["spare_percent"].as_u64().unwrap() >= 20, "{grown}");

    // Spare space chosen at create, kept when the container file grows with its disk.
    keel(d, &["create", "--size", "16M", "--spare", "5%", "s.keel"])
        .fails_with(2, "outside 15%..=400%");
    let made = keel(
        d,
        &[
            "create", "--size", "16M", "--spare", "8M", "s.keel", "--json",
        ],
    )
    .ok()
    .json();
    assert!(made["spare_percent"].as_u64().unwrap() >= 50, "{made}");
    let grown = keel(d, &["resize", "s.keel", "64M", "--json"]).ok().json();
    assert_eq!(grown["size"], 64 << 20);
    assert!(grown["spare_percent"].as_u64().unwrap() >= 50, "{grown}");
    assert_eq!(
        grown["container_bytes"],
        fs::metadata(d.join("s.keel")).unwrap().len(),
        "{grown}"
    );
}

#[test]
fn a_raw_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
    for cmd in [
        &["fsck", "disk.img"][..],
        &["info", "disk.img"],
        &["snapshot", "list", "disk.img"],
    ] {
        keel(d, cmd).fails_with(2, "disk.img is not a Keel container");
    }
}

#[test]
fn snapshot_output_is_one_table_offline_and_online() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keel(d, &["create", "--size", "16M", "k1.keel"]).ok();
    let long = "a-snapshot-name-of-31-character";
    assert_eq!(long.len(), 31);
    let made = keel(d, &["snapshot", "create", "k1.keel", long, "--json"])
        .ok()
        .json();
    assert_eq!(made["name"], long);
    let seq = made["seq"].as_u64().unwrap();
    let offline = keel(d, &["snapshot", "list", "k1.keel"]).ok().stdout;
    let offline_json = keel(d, &["snapshot", "list", "k1.keel", "--json"])
        .ok()
        .json();
    assert_eq!(offline_json[0]["seq"], seq);

    let keeld = Keeld::start(d, &keel_disk("k1", "16M"));
    let ctl = ["--control", "ctl.sock"];
    let online = keel(d, &[&ctl[..], &["snapshot", "list", "k1"]].concat())
        .ok()
        .stdout;
    let online_json = keel(
        d,
        &[&ctl[..], &["snapshot", "list", "k1", "--json"]].concat(),
    )
    .ok()
    .json();
    assert_eq!(online, offline);
    assert_eq!(online_json[0]["seq"], seq);
    assert_eq!(online_json[0]["created"], offline_json[0]["created"]);
    let lines: Vec<&str> = online.lines().collect();
    assert!(
        lines[0].starts_with("seq  name") && lines[0].ends_with("created (UTC)"),
        "{online}"
    );
    let row = lines[1];
    assert!(row.contains(&format!(" {long}  ")), "{online}");
    assert!(
        row.ends_with('Z') && row.contains('T'),
        "not an ISO time: {online}"
    );

    let cloned = keel(
        d,
        &[&ctl[..], &["clone", "k1", long, "k2", "--json"]].concat(),
    )
    .ok()
    .json();
    assert_eq!(cloned["disk"], "k2");
    assert!(
        cloned["path"].as_str().unwrap().starts_with('/'),
        "{cloned}"
    );
    keel(d, &[&ctl[..], &["stats", "vm one"]].concat())
        .fails_with(2, "no such disk: \"vm one\" is not a disk name");
    assert_eq!(keeld.stop().0, Some(0));

    let deleted = keel(d, &["snapshot", "delete", "k1.keel", long]).ok();
    assert_eq!(
        deleted.stdout,
        format!("snapshot {long} of k1.keel deleted\n")
    );
    assert_eq!(
        keel(d, &["snapshot", "list", "k1.keel"]).ok().stdout,
        "seq  name  created (UTC)\n"
    );
}

#[test]
fn sighup_adds_and_removes_disks_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctl = ["--control", "ctl.sock"];
    let keeld = Keeld::start(d, &raw_disk("r1", "1M", ""));
    let hup = |config: &str, said: &str| {
        fs::write(
            d.join("keel.toml"),
            format!("[server]\ncontrol_socket = \"ctl.sock\"\n{config}"),
        )
        .unwrap();
        keeld.signal(libc::SIGHUP);
        assert!(wait_for(|| keeld.log().contains(said)), "{}", keeld.log());
    };
    let names = || {
        let disks = keel(d, &[&ctl[..], &["disks", "--json"]].concat())
            .ok()
            .json();
        let list: Vec<String> = disks
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string())
            .collect();
        list
    };
    hup(&raw_disk("r1", "1M", ""), "SIGHUP: keel.toml is unchanged");

    // r2 joins; r1's new setting cannot change live and is refused.
    let both = format!(
        "{}{}",
        raw_disk("r1", "1M", "queues = 2"),
        raw_disk("r2", "1M", "")
    );
    let r2 = d.join("r2.sock").display().to_string();
    hup(&both, &format!("SIGHUP: disk r2 added on {r2}"));
    assert!(
        keeld
            .log()
            .contains("SIGHUP: disk r1 changed: a restart applies it (served as before)")
    );
    assert_eq!(names(), ["r1", "r2"]);
    assert!(d.join("r2.sock").exists());

    // A refused file changes nothing.
    hup(
        "[[disk]]\nname = \"bad one\"\n",
        "SIGHUP: not reloaded, serving as before",
    );
    assert_eq!(names(), ["r1", "r2"]);

    // r1 leaves: its socket goes, r2 stays.
    hup(&raw_disk("r2", "1M", ""), "SIGHUP: disk r1 removed");
    assert_eq!(names(), ["r2"]);
    assert!(!d.join("r1.sock").exists());

    let (code, log) = keeld.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");
    assert!(!d.join("r2.sock").exists());
}

#[test]
fn a_disk_socket_given_as_the_control_socket_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keeld = Keeld::start(d, &raw_disk("r1", "1M", ""));
    keel(d, &["--control", "r1.sock", "disks"])
        .fails_with(2, "r1.sock is not keeld's control socket");
    assert_eq!(keeld.stop().0, Some(0));
}

#[test]
fn import_and_export_end_with_a_summary_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut image = vec![0u8; 3 << 20];
    image[(1 << 20)..(1 << 20) + 4096].fill(0x5a);
    fs::write(d.join("in.img"), &image).unwrap();
    let imported = keel(d, &["import", "in.img", "c.keel"]).ok().stdout;
    // Zeroes are counted by block: all but the one 4 KiB block of data.
    let want = format!(
        "imported {} to {}: 3.0 MiB (3.0 MiB of it zeroes)",
        d.join("in.img").display(),
        d.join("c.keel").display()
    );
    assert!(imported.starts_with(&want), "{imported}");
    let again = keel(d, &["import", "in.img", "c2.keel", "--json"])
        .ok()
        .json();
    assert_eq!(again["bytes"], 3 << 20);
    assert_eq!(again["zero_bytes"], (3 << 20) - 4096);
    let exported = keel(d, &["export", "c.keel", "out.img", "--json"])
        .ok()
        .json();
    assert_eq!(exported["bytes"], 3 << 20);
    assert_eq!(fs::read(d.join("out.img")).unwrap(), image);
}
