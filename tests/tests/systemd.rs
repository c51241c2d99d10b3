//! keeld under a service manager, with the test playing systemd: readiness, status, stopping
//! and watchdog notifications read from a `NOTIFY_SOCKET` the test owns, and socket
//! activation with a listening socket the test passes as descriptor 3.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_tests::client::Client;
use keel_tests::keeld::keeld_binary;

/// How long the test waits for a notification before it calls keeld broken.
const PATIENCE: Duration = Duration::from_secs(30);

fn raw_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("keel.toml");
    std::fs::write(
        &config,
        "[[disk]]\nname = \"vm1\"\nsocket = \"vm1.sock\"\nengine = \"raw\"\n\
         path = \"vm1.img\"\nsize = \"16M\"\n",
    )
    .unwrap();
    config
}

/// The next notification datagram, as text.
fn next_notification(manager: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let len = manager.recv(&mut buf).expect("a notification from keeld");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

#[test]
fn keeld_tells_the_manager_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = raw_config(dir.path());
    let notify_path = dir.path().join("notify");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut keeld = Command::new(keeld_binary())
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let ready = next_notification(&manager);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.lines().any(|l| l == "STATUS=serving 1 disk(s)"),
        "{ready:?}"
    );
    // READY=1 comes once the disk listens: a frontend can attach right away.
    let mut client = Client::connect(&dir.path().join("vm1.sock"), 1, 4096).expect("connect");
    client.write(0, 0, &[7; 4096]).unwrap();
    drop(client);

    // The manager asked for a watchdog: keeld pings it.
    assert_eq!(next_notification(&manager), "WATCHDOG=1");

    let status = terminate(&mut keeld);
    assert!(status.success(), "{status:?}");
    let stopping = loop {
        let n = next_notification(&manager);
        if n != "WATCHDOG=1" {
            break n;
        }
    };
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}

/// Starts keeld with `listener` passed as descriptor 3 named `name`, as systemd does: the
/// pre-exec puts the socket at descriptor 3, and `sh` sets LISTEN_PID to its own pid before
/// it execs keeld in place.
/// It also waits for keeld's `READY=1`, so that a keeld that failed is an error here rather
/// than a frontend waiting forever in the socket's backlog.
fn spawn_activated(config: &Path, listener: &UnixListener, name: &str) -> Child {
    let notify_path = config.with_file_name(format!("notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\"")
        .arg(keeld_binary())
        .arg(config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", name)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null());
    pass_as_fd3(&mut cmd, listener.as_raw_fd());
    let child = cmd.spawn().unwrap();
    let ready = next_notification(&manager);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    child
}

/// Makes `fd` the child's descriptor 3, open across exec.
fn pass_as_fd3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: runs in the forked child before exec and only calls dup2 and fcntl, which are
    // async-signal-safe. dup2 clears close-on-exec on the copy; when `fd` is 3 already, dup2
    // does nothing, so the flag is cleared by hand.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn an_inherited_socket_is_served_and_outlives_keeld() {
    let dir = tempfile::tempdir().unwrap();
    let config = raw_config(dir.path());
    let socket = dir.path().join("vm1.sock");
    let listener = UnixListener::bind(&socket).unwrap();

    let mut first = spawn_activated(&config, &listener, "vm1");
    let mut client = Client::connect(&socket, 1, 4096).expect("connect to the passed socket");
    client.write(0, 8192, &[0xa5; 4096]).unwrap();
    client.flush(0).unwrap();
    drop(client);
    assert!(terminate(&mut first).success());
    assert!(
        socket.exists(),
        "the socket file belongs to the manager and stays"
    );

    // A new keeld on the same socket: the frontend reconnects to the path it always used.
    let mut second = spawn_activated(&config, &listener, "vm1");
    let mut client = Client::connect(&socket, 1, 4096).expect("reconnect");
    assert_eq!(client.read(0, 8192, 4096).unwrap(), vec![0xa5; 4096]);
    drop(client);
    assert!(terminate(&mut second).success());
}

#[test]
fn a_passed_socket_that_is_not_listening_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = raw_config(dir.path());
    let datagram = UnixDatagram::bind(dir.path().join("dgram")).unwrap();
    let fd = datagram.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\"")
        .arg(keeld_binary())
        .arg(&config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "vm1")
        .stderr(Stdio::piped());
    pass_as_fd3(&mut cmd, fd);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a stream socket"), "{err}");
}
