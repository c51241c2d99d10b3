//! CPU time for the examples' measurements: on a shared machine other processes slow the wall
//! clock, not this.

/// CPU time of `clock` (`libc::CLOCK_THREAD_CPUTIME_ID` or `libc::CLOCK_PROCESS_CPUTIME_ID`),
/// in seconds.
pub fn cpu_secs(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
