//! Surviving a frontend that truncates guest memory under keeld.
//!
//! Guest memory is the frontend's files, mapped into keeld. Each region is checked against its
//! file when the memory table arrives, but the frontend can truncate the file afterwards, and
//! touching a mapped page past the new end raises SIGBUS, which would end every disk of the
//! daemon. keeld maps no other file it does not control (inflight areas are memfds sealed against
//! shrinking; containers and images are read and written, never mapped), so a SIGBUS for a page
//! with nothing behind it (`BUS_ADRERR`) can only be that. The handler puts an anonymous zero page
//! in its place, counts it and returns: the access completes, the frontend has broken its own
//! guest's memory, and keeld and its other disks carry on. Anything else (hardware memory errors,
//! a fault the page cannot be replaced for, such as in a huge-page mapping) goes to the handler
//! that was installed before, or the default action.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Pages replaced so far, in the whole process.
static REPLACED: AtomicU64 = AtomicU64::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action before ours, restored for faults that are not ours to fix.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Installs the handler once per process.
pub fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: sigaction is plain data; all-zero is a valid (empty) value.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action.sa_mask` is a valid sigset to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: sigaction is plain data; all-zero is a valid value to be overwritten.
        let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid sigaction structures for the whole call.
        if unsafe { libc::sigaction(libc::SIGBUS, &action, &mut previous) } != 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        let _ = PREVIOUS.set(previous);
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// Pages of guest memory replaced because their file had been truncated.
pub fn replaced_pages() -> u64 {
    REPLACED.load(Ordering::Relaxed)
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only async-signal-safe work here: atomics and raw system calls.
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr()) };
    if code == libc::BUS_ADRERR {
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        let start = (addr as usize) & !(page - 1);
        // SAFETY: the faulting page belongs to a guest memory mapping (see the module comment);
        // replacing it with anonymous memory changes only what that mapping reads as.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            REPLACED.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    // Not ours to fix: put the previous action back; the access faults again and gets it.
    let previous = PREVIOUS.get().copied().unwrap_or_else(|| {
        // SAFETY: all-zero is SIG_DFL with an empty mask.
        unsafe { std::mem::zeroed() }
    });
    // SAFETY: a valid sigaction structure; the old action is not wanted.
    unsafe { libc::sigaction(libc::SIGBUS, &previous, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd};

    #[test]
    fn a_page_truncated_under_its_mapping_reads_as_zero_instead_of_killing_the_process() {
        install().unwrap();
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        // SAFETY: plain system call with a static NUL-terminated name; result checked.
        let fd = unsafe { libc::memfd_create(c"keel-sigbus-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(2 * page as u64).unwrap();
        // SAFETY: maps two pages of our own memfd; unmapped at the end of the test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let bytes = base.cast::<u8>();
        // SAFETY: both pages are mapped and backed by the file.
        unsafe {
            bytes.write_volatile(7);
            bytes.add(page).write_volatile(9);
        }
        // The "frontend" shrinks the file to one page.
        file.set_len(page as u64).unwrap();
        let before = replaced_pages();
        // SAFETY: the second page is still mapped; with its file gone it faults, the handler
        // replaces it, and the access completes.
        let (first, second) = unsafe { (bytes.read_volatile(), bytes.add(page).read_volatile()) };
        assert_eq!((first, second), (7, 0));
        assert_eq!(replaced_pages(), before + 1);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base, 2 * page) };
    }
}
