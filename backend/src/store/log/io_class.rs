//! The I/O priority class of the background cleaner's reads and writes.
//!
//! Linux's schedulers that honour I/O priorities (mq-deadline, BFQ) hand the device no request
//! of the idle class while one of a higher class is pending, until it has waited a long time
//! (mq-deadline's `prio_aging_expire`, 10 s by default). The cleaner reads victims with many
//! requests in flight and writes their live blocks megabytes at a time; a guest's batch issued
//! meanwhile waits behind them in the device's queue. On the benchmark host (a virtio disk
//! under mq-deadline) a 128 KiB write at depth 1 took 0.09 ms alone, 7-10 ms next to 4 MiB
//! writes at depth 4 and 128 KiB random reads at depth 32, and 0.07 ms with those two in the
//! idle class (fio, docs/benchmarks.md).
//!
//! With `cleaner_io = "idle"` the cleaner's I/O goes in the idle class while it works ahead of
//! need, and in the thread's normal class (best effort) once free segments are short: the
//! guest's writers then wait for it, and an idle request could wait seconds behind their
//! batches. A thread's class covers its synchronous reads and writes and the io_uring requests
//! it prepares without a priority of their own (the victims' reads, `victim_read`).
//!
//! It is not the default: in keeld's full-disk random writes on the benchmark host the device
//! was not the limit (keeld used about half of what it sustains), the idle class slowed the
//! cleaner enough that guest batches waited for segments, and the guest was no faster
//! (docs/benchmarks.md, "The device under the full-disk writes").

use std::io;

/// Which class the background cleaner's I/O goes in while it cleans ahead of need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CleanerIo {
    /// The idle class while cleaning ahead; the normal class when space is short.
    Idle,
    /// Always the normal class, as the guest's I/O.
    #[default]
    Normal,
}

impl CleanerIo {
    /// Parses the `cleaner_io` setting.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "idle" => Ok(Self::Idle),
            "normal" => Ok(Self::Normal),
            _ => Err(format!("\"{s}\" is not a cleaner I/O class (idle, normal)")),
        }
    }

    /// The class for one step of the cleaner, space being short (`urgent`) or not.
    pub fn class(self, urgent: bool) -> IoClass {
        match self {
            Self::Idle if !urgent => IoClass::Idle,
            _ => IoClass::Normal,
        }
    }
}

/// An I/O priority class a thread's I/O is issued in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    /// The thread's default: best effort, its level from the thread's nice value.
    Normal,
    /// Served only when no request of a higher class is pending.
    Idle,
}

/// `IOPRIO_WHO_PROCESS`: `ioprio_set`'s target is one thread (0: the caller).
const WHO_THREAD: libc::c_int = 1;
/// The class sits above these bits of an I/O priority value.
const CLASS_SHIFT: u32 = 13;
const CLASS_IDLE: libc::c_int = 3;

impl IoClass {
    /// The kernel's I/O priority value of the class.
    fn value(self) -> libc::c_int {
        match self {
            // Class "none", level 0: the thread's I/O follows its CPU nice value.
            Self::Normal => 0,
            Self::Idle => CLASS_IDLE << CLASS_SHIFT,
        }
    }
}

/// Issues the calling thread's I/O in `class` from now on.
pub fn set_thread_class(class: IoClass) -> io::Result<()> {
    // SAFETY: ioprio_set takes three integers and reads or writes no memory of this process.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, WHO_THREAD, 0, class.value()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The class the calling thread's I/O is issued in (the idle class or another).
pub fn thread_class() -> io::Result<IoClass> {
    // SAFETY: ioprio_get takes two integers and reads or writes no memory of this process.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, WHO_THREAD, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match (r as libc::c_int) >> CLASS_SHIFT {
        CLASS_IDLE => IoClass::Idle,
        _ => IoClass::Normal,
    })
}

/// Keeps the calling thread's I/O in a class, and puts it back in the normal class when
/// dropped. Where the kernel refuses, the I/O stays as it was: logged once per thread.
pub struct ClassGuard {
    set: bool,
}

impl ClassGuard {
    pub fn enter(class: IoClass) -> Self {
        if class == IoClass::Normal {
            return Self { set: false };
        }
        match set_thread_class(class) {
            Ok(()) => Self { set: true },
            Err(e) => {
                thread_local! {
                    static TOLD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
                }
                if !TOLD.replace(true) {
                    log::info!(
                        "cleaner: I/O priority class not set ({e}); its I/O competes with the guest's"
                    );
                }
                Self { set: false }
            }
        }
    }
}

impl Drop for ClassGuard {
    fn drop(&mut self) {
        if self.set
            && let Err(e) = set_thread_class(IoClass::Normal)
        {
            log::warn!("cleaner: I/O priority class not restored: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_setting_and_rejects_others() {
        assert_eq!(CleanerIo::parse("idle"), Ok(CleanerIo::Idle));
        assert_eq!(CleanerIo::parse("normal"), Ok(CleanerIo::Normal));
        assert!(CleanerIo::parse("rt").unwrap_err().contains("idle, normal"));
        assert_eq!(CleanerIo::default(), CleanerIo::Normal);
    }

    #[test]
    fn idle_only_while_space_is_not_short() {
        assert_eq!(CleanerIo::Idle.class(false), IoClass::Idle);
        assert_eq!(CleanerIo::Idle.class(true), IoClass::Normal);
        assert_eq!(CleanerIo::Normal.class(false), IoClass::Normal);
        assert_eq!(CleanerIo::Normal.class(true), IoClass::Normal);
    }

    #[test]
    fn the_guard_sets_the_thread_class_and_puts_it_back() {
        // A thread of its own: the class belongs to the thread, not the test harness's.
        std::thread::spawn(|| {
            assert_eq!(thread_class().unwrap(), IoClass::Normal);
            // A thread started before (one started after inherits the class).
            let (ask, asked) = std::sync::mpsc::channel::<()>();
            let other = std::thread::spawn(move || {
                asked.recv().unwrap();
                thread_class().unwrap()
            });
            {
                let _g = ClassGuard::enter(IoClass::Idle);
                assert_eq!(thread_class().unwrap(), IoClass::Idle);
                ask.send(()).unwrap();
                assert_eq!(
                    other.join().unwrap(),
                    IoClass::Normal,
                    "another thread's I/O"
                );
            }
            assert_eq!(thread_class().unwrap(), IoClass::Normal);
            let _g = ClassGuard::enter(IoClass::Normal);
            assert_eq!(thread_class().unwrap(), IoClass::Normal);
        })
        .join()
        .unwrap();
    }
}
