//! Dirty-page logging for live migration (VHOST_F_LOG_ALL, VHOST_USER_PROTOCOL_F_LOG_SHMFD).
//!
//! While QEMU migrates a guest it copies guest RAM in passes and must learn which pages changed
//! behind its back: keeld writes guest memory (read data, status bytes, used rings) without QEMU
//! seeing it. QEMU hands keeld a log (SET_LOG_BASE: a sealed memfd holding one bit per 4 KiB page
//! of guest physical address space) and turns logging on and off with the LOG_ALL feature bit
//! (SET_FEATURES). While it is on, keeld sets the bit of every page it wrote, with an atomic OR,
//! after the write landed: QEMU reads and clears the log between passes, so a page marked before
//! its data arrived could be sent without it and never again.
//!
//! Marking is by guest physical address, not through vm-memory's per-region bitmaps: most of what
//! keeld writes into guest memory is written by the kernel (io_uring reads straight into guest
//! buffers) or by engines through host pointers, which vm-memory never sees. The worker marks
//! those ranges itself when a request completes ([`super::worker`]).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use vm_memory::FileOffset;
use vm_memory::mmap::MmapRegion;

/// The vhost feature bit that turns logging on (VHOST_F_LOG_ALL).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
/// Bytes of guest memory one bit of the log stands for (VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 4096;
/// Seals that make the memfd's size final, so the mapping can never fault (SIGBUS).
const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// Why a log was refused.
#[derive(Debug, Error)]
pub enum DirtyLogError {
    #[error("the log is empty")]
    Empty,
    #[error("the log's file must be a memfd sealed against shrinking and growing")]
    NotSealed,
    #[error("the log's file holds {have} bytes, the message claims {want}")]
    TooSmall { have: u64, want: u64 },
    #[error("dirty log: {0}")]
    Io(#[from] io::Error),
    #[error("dirty log: mmap: {0}")]
    Map(String),
}

/// A mapped dirty log: bit `p % 8` of byte `p / 8` is page `p` (guest address `p * 4096`).
pub struct DirtyLog {
    map: MmapRegion<()>,
}

impl std::fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirtyLog")
            .field("bytes", &self.map.size())
            .finish()
    }
}

impl DirtyLog {
    /// Maps `size` bytes of `file` from `offset`, as SET_LOG_BASE describes them. The file must
    /// be sealed against shrinking and hold the whole range, so that the frontend cannot make a
    /// later mark fault.
    pub fn open(file: File, size: u64, offset: u64) -> Result<Self, DirtyLogError> {
        if size == 0 {
            return Err(DirtyLogError::Empty);
        }
        // SAFETY: F_GET_SEALS only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SIZE_SEALS != SIZE_SEALS {
            return Err(DirtyLogError::NotSealed);
        }
        let have = file.metadata()?.len();
        let want = offset.checked_add(size).ok_or(DirtyLogError::TooSmall {
            have,
            want: u64::MAX,
        })?;
        if want > have {
            return Err(DirtyLogError::TooSmall { have, want });
        }
        let bytes = usize::try_from(size).map_err(|_| DirtyLogError::TooSmall { have, want })?;
        let map = MmapRegion::from_file(FileOffset::new(file, offset), bytes)
            .map_err(|e| DirtyLogError::Map(e.to_string()))?;
        Ok(Self { map })
    }

    /// Guest bytes the log covers.
    pub fn covers(&self) -> u64 {
        self.map.size() as u64 * 8 * LOG_PAGE
    }

    /// The log's byte `i`, which the frontend reads and clears concurrently.
    fn byte(&self, i: usize) -> &AtomicU8 {
        debug_assert!(i < self.map.size());
        // SAFETY: `i` is inside the mapping (callers bound it by `map.size()`), which lives as
        // long as `self`; AtomicU8 has the size and alignment of u8, and every access to the log
        // from this process is atomic.
        unsafe { AtomicU8::from_ptr(self.map.as_ptr().add(i)) }
    }

    /// Marks every page `[gpa, gpa + len)` touches. Pages beyond the log (the frontend sized it
    /// for its memory; a range past it is not guest RAM) are left alone.
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let limit = self.map.size() as u64 * 8;
        if first >= limit {
            return;
        }
        let last = last.min(limit - 1);
        let mut page = first;
        while page <= last {
            let byte = page / 8;
            let lo = page % 8;
            let hi = if last / 8 == byte { last % 8 } else { 7 };
            let mask = (((1u16 << (hi - lo + 1)) - 1) << lo) as u8;
            self.byte(byte as usize).fetch_or(mask, Ordering::SeqCst);
            page = (byte + 1) * 8;
        }
    }

    /// Whether the page holding `gpa` is marked.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        let byte = page / 8;
        byte < self.map.size() as u64
            && self.byte(byte as usize).load(Ordering::SeqCst) & (1 << (page % 8)) != 0
    }
}

/// A session's logging state: the log the frontend gave and whether LOG_ALL is on. Workers
/// read it through a [`LogView`]; the generation tells them it changed.
#[derive(Debug, Default)]
pub struct LogSwitch {
    generation: AtomicU64,
    state: Mutex<SwitchState>,
}

#[derive(Debug, Default)]
struct SwitchState {
    log: Option<Arc<DirtyLog>>,
    log_all: bool,
}

impl LogSwitch {
    /// Installs the log from SET_LOG_BASE (replacing an earlier one: QEMU sends a larger log
    /// when guest memory grows).
    pub fn set_base(&self, log: DirtyLog) {
        self.update(|s| s.log = Some(Arc::new(log)));
    }

    /// Follows the LOG_ALL bit of SET_FEATURES; returns whether logging was switched. Clearing
    /// it also drops the log: the frontend frees it and sends a new one before logging again.
    pub fn set_log_all(&self, on: bool) -> bool {
        let mut changed = false;
        self.update(|s| {
            changed = s.log_all != on;
            s.log_all = on;
            if !on {
                s.log = None;
            }
        });
        changed
    }

    /// The log to mark, when logging is on.
    pub fn active(&self) -> Option<Arc<DirtyLog>> {
        let s = self.state.lock().ok()?;
        s.log.as_ref().filter(|_| s.log_all).cloned()
    }

    fn update(&self, f: impl FnOnce(&mut SwitchState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A worker's view of the session's [`LogSwitch`]: one atomic load per look while nothing
/// changes.
#[derive(Debug)]
pub struct LogView {
    switch: Arc<LogSwitch>,
    generation: u64,
    log: Option<Arc<DirtyLog>>,
}

impl LogView {
    pub fn new(switch: Arc<LogSwitch>) -> Self {
        Self {
            switch,
            generation: 0,
            log: None,
        }
    }

    /// The log to mark now, if logging is on. Call it after the write the mark is for: a write
    /// that finds logging off landed before the frontend turned it on, so before its first copy.
    pub fn current(&mut self) -> Option<&DirtyLog> {
        let generation = self.switch.generation.load(Ordering::SeqCst);
        if generation != self.generation {
            self.log = self.switch.active();
            self.generation = generation;
        }
        self.log.as_deref()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sealed memfd of `bytes` zero bytes, as QEMU allocates its log.
    pub(crate) fn sealed_log_file(bytes: u64) -> File {
        let file = memfd(bytes);
        // SAFETY: F_ADD_SEALS on a descriptor we own.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SIZE_SEALS) };
        assert_eq!(rc, 0);
        file
    }

    fn memfd(bytes: u64) -> File {
        // SAFETY: a valid NUL-terminated name; the returned descriptor is ours.
        let fd = unsafe {
            libc::memfd_create(
                c"keel-test-log".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        assert!(fd >= 0);
        // SAFETY: memfd_create gave us this descriptor; nothing else owns it.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(bytes).unwrap();
        file
    }

    fn dirty_pages(log: &DirtyLog) -> Vec<u64> {
        (0..log.covers() / LOG_PAGE)
            .filter(|p| log.is_dirty(p * LOG_PAGE))
            .collect()
    }

    #[test]
    fn marks_every_page_a_range_touches_and_no_other() {
        let log = DirtyLog::open(sealed_log_file(8), 8, 0).unwrap();
        assert_eq!(log.covers(), 64 * LOG_PAGE);
        log.mark(LOG_PAGE - 1, 2);
        assert_eq!(dirty_pages(&log), [0, 1]);
        log.mark(5 * LOG_PAGE, 20 * LOG_PAGE);
        assert_eq!(
            dirty_pages(&log),
            [0, 1].into_iter().chain(5..25).collect::<Vec<_>>()
        );
        log.mark(63 * LOG_PAGE + 100, 1);
        assert!(log.is_dirty(63 * LOG_PAGE));
        assert!(!log.is_dirty(62 * LOG_PAGE) && !log.is_dirty(4 * LOG_PAGE));
    }

    #[test]
    fn ranges_past_the_log_are_ignored() {
        let log = DirtyLog::open(sealed_log_file(1), 1, 0).unwrap();
        log.mark(6 * LOG_PAGE, 100 * LOG_PAGE);
        log.mark(u64::MAX - 10, 100);
        log.mark(3 * LOG_PAGE, 0);
        assert_eq!(dirty_pages(&log), [6, 7]);
    }

    #[test]
    fn refuses_logs_that_could_fault() {
        assert!(matches!(
            DirtyLog::open(memfd(4096), 4096, 0),
            Err(DirtyLogError::NotSealed)
        ));
        assert!(matches!(
            DirtyLog::open(sealed_log_file(4096), 4096, 4096),
            Err(DirtyLogError::TooSmall { .. })
        ));
        assert!(matches!(
            DirtyLog::open(sealed_log_file(4096), 0, 0),
            Err(DirtyLogError::Empty)
        ));
        assert!(DirtyLog::open(sealed_log_file(4096), u64::MAX, 1).is_err());
    }

    #[test]
    fn logging_needs_both_a_log_and_log_all() {
        let switch = Arc::new(LogSwitch::default());
        let mut view = LogView::new(Arc::clone(&switch));
        assert!(view.current().is_none());
        switch.set_base(DirtyLog::open(sealed_log_file(8), 8, 0).unwrap());
        assert!(view.current().is_none(), "LOG_ALL is still off");
        assert!(switch.set_log_all(true));
        view.current().unwrap().mark(0, 1);
        assert!(switch.active().unwrap().is_dirty(0));
        assert!(switch.set_log_all(false));
        assert!(view.current().is_none(), "cleared LOG_ALL stops logging");
        assert!(!switch.set_log_all(false));
        switch.set_log_all(true);
        assert!(view.current().is_none(), "the old log was dropped");
    }
}
