//! Whole-file OFD locks (`fcntl(F_OFD_SETLK)`), the kind QEMU and qemu-img take, so a second
//! keeld, or a QEMU opening the same image directly, is refused instead of overwriting the disk.
//!
//! Every backing file keeld opens (containers, raw images, mirror components) is locked here:
//! shared for a read-only disk, exclusive for a writable one. OFD locks belong to the open
//! file description, so they are released when the file is closed and are not shared with
//! other descriptors of the same process the way POSIX record locks are.
//!
//! The lock is taken on a descriptor of its own ([`lock_path`]) that no I/O goes through: an
//! io_uring request still in flight when a process is killed keeps its file description alive
//! for a while after the process is gone, and a lock on it would refuse the restarted keeld.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// How a file is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Other readers may hold it too; no writer may (a read-only disk).
    Shared,
    /// Nobody else may hold it (a writable disk).
    Exclusive,
}

/// How often, and how far apart, a held lock is asked for before it counts as taken.
const LOCK_TRIES: u32 = 20;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Locks all of `file`, waiting at most 0.2 s. A file someone else holds gives an
/// [`io::ErrorKind::WouldBlock`] error naming the holder when it can be found; callers put the
/// file's path in front.
pub fn lock_file(file: &File, mode: LockMode) -> io::Result<()> {
    let kind = match mode {
        LockMode::Shared => libc::F_RDLCK,
        LockMode::Exclusive => libc::F_WRLCK,
    };
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = kind as libc::c_short;
    range.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0 and l_len = 0: the whole file, however long it grows. l_pid must be 0.
    // A lock seen held is asked for again for a moment: a child process forked by this one
    // holds every descriptor, and with it every OFD lock, until it execs (a few ms at most).
    let mut tries = 0;
    let e = loop {
        // SAFETY: F_OFD_SETLK reads the flock we pass and nothing else; the descriptor is open.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &range) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let held = matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES));
        tries += 1;
        if !held || tries >= LOCK_TRIES {
            break e;
        }
        std::thread::sleep(LOCK_RETRY);
    };
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => {
            let holder = holder(file).map_or_else(
                || "another process".to_owned(),
                |(pid, name)| format!("process {pid} ({name})"),
            );
            let how = match mode {
                LockMode::Shared => "for reading",
                LockMode::Exclusive => "for writing",
            };
            Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "locked by {holder}; it cannot be opened {how} while that process has it open"
                ),
            ))
        }
        _ => Err(e),
    }
}

/// Opens `path` on a descriptor used for nothing but the lock, and locks it; the lock lasts as
/// long as the returned file. Errors name `path`.
pub fn lock_path(path: &Path, mode: LockMode) -> io::Result<File> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let file = File::options()
        .read(true)
        .write(mode == LockMode::Exclusive)
        // The path was resolved when the config was loaded; a symlink planted since is refused.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(named)?;
    lock_file(&file, mode).map_err(named)?;
    Ok(file)
}

/// A process other than this one that holds a lock on `file`, found through
/// `/proc/*/fdinfo` (OFD locks do not record their owner's pid). Best effort: `None` when
/// `/proc` does not say.
fn holder(file: &File) -> Option<(u32, String)> {
    let meta = file.metadata().ok()?;
    let me = std::process::id();
    // A bound on the scan: a host with more processes gets "another process".
    for entry in std::fs::read_dir("/proc").ok()?.flatten().take(65_536) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let same = std::fs::metadata(fd.path())
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if !same {
                continue;
            }
            let info = entry.path().join("fdinfo").join(fd.file_name());
            if std::fs::read_to_string(info).is_ok_and(|t| t.contains("lock:")) {
                let name = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_else(|_| "?".into());
                return Some((pid, name));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn exclusive_refuses_everyone_and_shared_admits_readers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let open_rw = || File::options().read(true).write(true).open(&path).unwrap();

        let first = open_rw();
        lock_file(&first, LockMode::Exclusive).unwrap();
        // A second open file description of the same process is refused too: OFD locks.
        let second = open_rw();
        let e = lock_file(&second, LockMode::Exclusive).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(
            e.to_string().starts_with("locked by another process"),
            "{e}"
        );
        assert!(lock_file(&second, LockMode::Shared).is_err());
        drop(first);
        lock_file(&second, LockMode::Exclusive).unwrap();
        drop(second);

        let reader = lock_path(&path, LockMode::Shared).unwrap();
        let another = lock_path(&path, LockMode::Shared).unwrap();
        let e = lock_path(&path, LockMode::Exclusive).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: locked by", path.display())),
            "{e}"
        );
        drop((reader, another));
        lock_path(&path, LockMode::Exclusive).unwrap();
    }

    #[test]
    fn names_a_holder_in_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        // Another process takes an OFD lock, as QEMU would.
        let script = "import fcntl,struct,sys,time\n\
            f=open(sys.argv[1],'r+')\n\
            fcntl.fcntl(f,fcntl.F_OFD_SETLK,struct.pack('hhqqi',fcntl.F_WRLCK,0,0,0,0))\n\
            print('locked',flush=True)\n\
            time.sleep(30)\n";
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the lock holder");
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert_eq!(line.trim(), "locked");
        let file = File::options().read(true).write(true).open(&path).unwrap();
        let e = lock_file(&file, LockMode::Exclusive).unwrap_err();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            e.to_string().contains(&format!("process {}", child.id())),
            "{e}"
        );
    }
}
