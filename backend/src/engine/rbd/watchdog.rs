//! Finds out, without guessing, that the cluster has blocklisted this client while writes wait.
//!
//! librbd writes straight from guest memory (zero-copy) and only calls a write back once it has
//! let go of that memory. A blocklisted client's write is never let go of (librbd 16), so its
//! guest would wait forever. One thread per writable disk looks at its queues every [`TICK`]:
//! when a queue has had writes out and no completion for [`STALL`], it reads one sector of the
//! image (a probe). A blocklisted client's read fails at once with `ESHUTDOWN` (Ceph's
//! `EBLOCKLISTED`), which [`Blocklist::note`] records; the queues, woken, then answer their
//! waiting requests IOERR. A slow or stopped OSD makes the probe wait or succeed: nothing is
//! failed then, the writes keep waiting as before (or `osd_timeout_s` ends them).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::Blocklist;
use super::ffi::{Api, CompletionT};
use super::image::Image;

/// How often the queues are looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a queue may have writes out without any completion before the image is probed.
pub const STALL: Duration = Duration::from_millis(1500);
/// The probe's size: one sector.
const PROBE_LEN: usize = 512;

/// What a queue shows the watchdog; updated by the queue and its completion callbacks.
pub(super) struct QueueWatch {
    /// Aio writes started and not yet called back.
    pub writes_out: AtomicUsize,
    /// Completions called back so far (of any kind).
    pub progress: AtomicU64,
    /// Wakes the queue's worker (a copy of the queue's completion eventfd).
    pub wake: EventFd,
}

/// How long one queue has waited with writes out and no completion: fed one sample per tick,
/// it does no I/O and reads no clock of its own.
#[derive(Debug, Default)]
pub struct Stall {
    progress: u64,
    since: Option<Instant>,
}

impl Stall {
    /// Takes the queue's counters at `now`; returns how long it has been stalled.
    pub fn observe(&mut self, now: Instant, writes_out: usize, progress: u64) -> Duration {
        if writes_out == 0 || progress != self.progress {
            self.progress = progress;
            self.since = (writes_out > 0).then_some(now);
            return Duration::ZERO;
        }
        let since = *self.since.get_or_insert(now);
        now.saturating_duration_since(since)
    }
}

/// One queue as the watchdog follows it.
struct Watched {
    queue: Weak<QueueWatch>,
    stall: Stall,
    /// Woken since the client is known blocklisted (once is enough).
    told: bool,
}

/// The watchdog of one disk (shared by its engine and queues): stops its thread when dropped.
pub(super) struct Watchdog {
    queues: Arc<Mutex<Vec<Watched>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the thread; it holds the image only while it starts a probe, so the image still
    /// closes when the disk goes.
    pub fn start(image: &Arc<Image>, api: Arc<Api>, blocklist: Arc<Blocklist>) -> Self {
        let queues: Arc<Mutex<Vec<Watched>>> = Arc::default();
        let (stop, stopped) = mpsc::channel();
        let image = Arc::downgrade(image);
        let watched = Arc::clone(&queues);
        let spec = blocklist.spec().to_string();
        let thread = std::thread::Builder::new()
            .name("rbd-watchdog".into())
            .spawn(move || {
                let probing = Arc::new(AtomicBool::new(false));
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    let Some(image) = image.upgrade() else { return };
                    tick(&watched, &image, &api, &blocklist, &probing);
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                log::error!(
                    "rbd image {}: no watchdog thread ({e}): a write of a blocklisted client \
                     would wait for ever",
                    spec
                );
                None
            }
        };
        Self {
            queues,
            stop: Some(stop),
            thread,
        }
    }

    /// Watches one more queue (until it is dropped).
    pub fn watch(&self, queue: &Arc<QueueWatch>) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues.retain(|w| w.queue.strong_count() > 0);
        queues.push(Watched {
            queue: Arc::downgrade(queue),
            stall: Stall::default(),
            told: false,
        });
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One look at the queues: wakes each once when the client is known blocklisted (a request of
/// any kind may wait behind a write librbd keeps), probes the image when one of them is
/// stalled.
fn tick(
    queues: &Mutex<Vec<Watched>>,
    image: &Image,
    api: &Arc<Api>,
    blocklist: &Arc<Blocklist>,
    probing: &Arc<AtomicBool>,
) {
    let now = Instant::now();
    let mut stalled = false;
    {
        let mut queues = queues.lock().unwrap_or_else(PoisonError::into_inner);
        for w in queues.iter_mut() {
            let Some(q) = w.queue.upgrade() else { continue };
            if blocklist.is_set() {
                if !std::mem::replace(&mut w.told, true) {
                    let _ = q.wake.write(1);
                }
                continue;
            }
            let out = q.writes_out.load(Ordering::Acquire);
            stalled |= w
                .stall
                .observe(now, out, q.progress.load(Ordering::Acquire))
                >= STALL;
        }
    }
    if stalled
        && !probing.swap(true, Ordering::AcqRel)
        && let Err(rc) = probe(image, api, blocklist, probing)
    {
        probing.store(false, Ordering::Release);
        blocklist.note(-rc);
    }
}

/// What the probe's callback owns.
struct ProbeArg {
    api: Arc<Api>,
    blocklist: Arc<Blocklist>,
    probing: Arc<AtomicBool>,
    /// librbd fills it before the callback, which frees it.
    _buf: Box<[u8]>,
}

/// Runs on librbd's finisher thread when the probe completes; must not panic.
unsafe extern "C" fn on_probe(c: CompletionT, arg: *mut c_void) {
    // SAFETY: `arg` is the Box::into_raw of the ProbeArg made for this completion alone
    // (`probe`); librbd calls the callback once.
    let arg = unsafe { Box::from_raw(arg.cast::<ProbeArg>()) };
    // SAFETY: `c` is this callback's completion, released once, after its value was read.
    let rc = unsafe {
        let rc = (arg.api.rbd_aio_get_return_value)(c);
        (arg.api.rbd_aio_release)(c);
        rc
    };
    if rc < 0 {
        arg.blocklist.note(i32::try_from(-rc).unwrap_or(libc::EIO));
    }
    arg.probing.store(false, Ordering::Release);
}

/// Starts a one-sector read at offset 0; `Err(rc)` if librbd refused it.
fn probe(
    image: &Image,
    api: &Arc<Api>,
    blocklist: &Arc<Blocklist>,
    probing: &Arc<AtomicBool>,
) -> Result<(), i32> {
    let mut buf = vec![0u8; PROBE_LEN].into_boxed_slice();
    let ptr = buf.as_mut_ptr();
    let arg = Box::into_raw(Box::new(ProbeArg {
        api: Arc::clone(api),
        blocklist: Arc::clone(blocklist),
        probing: Arc::clone(probing),
        _buf: buf,
    }));
    let mut c: CompletionT = std::ptr::null_mut();
    // SAFETY: `c` is a valid out-pointer; `arg` stays valid until the callback takes it back.
    let rc = unsafe { (api.rbd_aio_create_completion)(arg.cast(), on_probe, &mut c) };
    if rc < 0 {
        // SAFETY: no completion exists, so nothing else takes `arg` back.
        drop(unsafe { Box::from_raw(arg) });
        return Err(rc);
    }
    // SAFETY: the image is open (the caller holds it); `ptr` points into the heap buffer `arg`
    // owns, which lives until the callback frees it after librbd has filled it.
    let rc = unsafe { (api.rbd_aio_read)(image.raw(), 0, PROBE_LEN, ptr.cast(), c) };
    if rc < 0 {
        // SAFETY: librbd refused the call: its callback will not run; both are released once.
        unsafe {
            (api.rbd_aio_release)(c);
            drop(Box::from_raw(arg));
        }
        return Err(rc);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_queue_with_writes_and_no_completion_counts_as_stalled_from_the_first_sample() {
        let t0 = Instant::now();
        let mut s = Stall::default();
        assert_eq!(s.observe(t0, 2, 0), Duration::ZERO);
        assert_eq!(s.observe(t0 + 500 * MS, 2, 0), 500 * MS);
        assert_eq!(s.observe(t0 + 1600 * MS, 2, 0), 1600 * MS);
    }

    #[test]
    fn a_completion_or_no_write_out_restarts_the_count() {
        let t0 = Instant::now();
        let mut s = Stall::default();
        s.observe(t0, 1, 0);
        assert_eq!(s.observe(t0 + 1000 * MS, 1, 0), 1000 * MS);
        // A completion came in: the queue is moving, whatever is still out.
        assert_eq!(s.observe(t0 + 2000 * MS, 1, 5), Duration::ZERO);
        assert_eq!(s.observe(t0 + 2500 * MS, 1, 5), 500 * MS);
        // Nothing out: nothing to wait for, however long no completion came.
        assert_eq!(s.observe(t0 + 9000 * MS, 0, 5), Duration::ZERO);
        assert_eq!(s.observe(t0 + 9500 * MS, 0, 5), Duration::ZERO);
        // A write goes out again: counted from the first sample that sees it.
        assert_eq!(s.observe(t0 + 10_000 * MS, 1, 5), Duration::ZERO);
        assert_eq!(s.observe(t0 + 11_600 * MS, 1, 5), 1600 * MS);
    }

    #[test]
    fn a_busy_queue_never_reaches_the_stall_bound() {
        let t0 = Instant::now();
        let mut s = Stall::default();
        for i in 0..100u32 {
            let waited = s.observe(t0 + i * TICK, 8, u64::from(i));
            assert!(waited < STALL, "tick {i}: {waited:?}");
        }
    }
}
