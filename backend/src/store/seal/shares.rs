//! One large cipher pass shared between the caller's thread and a small pool of helpers.
//!
//! A 4 MiB batch is about 0.6 ms of AES-XTS, spent on the queue's thread before the batch's
//! writes are issued: latency on the batch's serial path, while the machine's other cores are
//! often idle. A pass over at least [`SPLIT_MIN_BLOCKS`] blocks is cut into pieces of one
//! [`CHUNK`] each, which the caller's thread and the helpers claim one at a time: the caller
//! never waits for a helper that has not started (on a busy machine the caller ciphers every
//! piece itself), only for the pieces a helper has claimed. A smaller pass stays on the
//! caller's thread: a helper woken from sleep starts too late to take a share of it. XTS ciphers every block on its
//! own, so the output does not depend on how a pass was shared.
//!
//! The pool is `rayon-core`'s; the claiming is here because a rayon scope waits for every job
//! it spawned to run, and a helper not yet scheduled then holds the caller up (measured with
//! `seal_bench` while other builds ran: shared passes were slower than one thread).

use super::{BLOCK_SIZE, CHUNK};
use rayon_core::{ThreadPool, ThreadPoolBuilder};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

/// Blocks from which a pass is shared (1 MiB; `seal_bench`'s wall-time rows,
/// docs/benchmarks.md): a helper asleep between batches took 100-150 us to start on this
/// 2-CPU machine, so a pass much shorter than that (about 0.7 us per block) gains nothing.
pub const SPLIT_MIN_BLOCKS: usize = 256;

/// Helper threads at most, however many CPUs there are: each queue's batches are sealed on
/// its own thread as well, and the cipher passes are a fraction of a batch's time.
const MAX_HELPERS: usize = 3;

/// Bytes of one piece of a shared pass.
const PIECE: usize = CHUNK * BLOCK_SIZE;

/// The helpers of the whole process, one fewer than the CPUs (capped), started on first use.
/// `None` on a single CPU, or when the threads cannot be started (passes then stay whole).
fn helpers() -> Option<&'static ThreadPool> {
    static POOL: OnceLock<Option<ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = cpus.saturating_sub(1).min(MAX_HELPERS);
        if count == 0 {
            return None;
        }
        ThreadPoolBuilder::new()
            .num_threads(count)
            .thread_name(|i| format!("keel-seal-{i}"))
            .build()
            .inspect_err(|e| log::warn!("cipher helpers not started, sealing on one thread: {e}"))
            .ok()
    })
    .as_ref()
}

/// How a sealer shares its passes: from how many blocks on, and with which helpers.
#[derive(Clone, Copy)]
pub(super) struct Shares {
    min_blocks: usize,
    pool: Option<&'static ThreadPool>,
}

impl Shares {
    /// Passes of `min_blocks` or more shared with the process's helpers; `usize::MAX`: never.
    pub fn from(min_blocks: usize) -> Self {
        Self {
            min_blocks: min_blocks.max(1),
            pool: (min_blocks != usize::MAX).then(helpers).flatten(),
        }
    }

    /// Shares with `pool` (tests: a pool of their own, whatever the machine's CPUs).
    #[cfg(test)]
    pub fn with_pool(min_blocks: usize, pool: &'static ThreadPool) -> Self {
        Self {
            min_blocks: min_blocks.max(1),
            pool: Some(pool),
        }
    }

    /// Runs `pass` over `buf` (whole blocks): whole, or piece by piece ([`CHUNK`] blocks
    /// each) on this thread and the helpers, each piece with the number of its first block
    /// in `buf`. Returns once every piece has ended, with the first error of any (a panic
    /// in a piece is an error too).
    pub fn run<F>(&self, buf: &mut [u8], pass: F) -> io::Result<()>
    where
        F: Fn(usize, &mut [u8]) -> io::Result<()> + Sync,
    {
        let pieces = buf.len().div_ceil(PIECE);
        let pool = match self.pool {
            Some(pool) if buf.len() / BLOCK_SIZE >= self.min_blocks && pieces > 1 => pool,
            _ => return pass(0, buf),
        };
        let shared = Arc::new(Pass {
            buf: buf.as_mut_ptr(),
            len: buf.len(),
            pass: (&raw const pass).cast(),
            call: call_pass::<F>,
            pieces,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            error: Mutex::new(None),
            caller: std::thread::current(),
        });
        for _ in 0..pool.current_num_threads().min(pieces - 1) {
            let shared = Arc::clone(&shared);
            pool.spawn(move || shared.work());
        }
        shared.work();
        // The helpers finish the pieces they claimed; none is claimed after `next` passed
        // the last, so once all are done nothing touches `buf` or `pass` again.
        while shared.done.load(Ordering::Acquire) < pieces {
            std::thread::park();
        }
        let error = shared.error.lock().map(|mut e| e.take());
        match error {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(io::Error::other("a shared cipher pass failed")),
        }
    }
}

/// A pass being shared: the buffer and the pass as raw parts, so helpers can hold them
/// beyond the caller's borrow; they are only reached through a piece claimed before the
/// caller's wait ends (see [`Shares::run`]).
struct Pass {
    buf: *mut u8,
    len: usize,
    /// The caller's `F`, called through `call`.
    pass: *const (),
    call: unsafe fn(*const (), usize, &mut [u8]) -> io::Result<()>,
    pieces: usize,
    /// The next piece to claim (past `pieces`: none left).
    next: AtomicUsize,
    /// Pieces ended.
    done: AtomicUsize,
    /// The first error of a piece.
    error: Mutex<Option<io::Error>>,
    /// Woken when the last piece ends.
    caller: Thread,
}

// SAFETY: `buf` and `pass` are only dereferenced for a piece claimed through `next`, each
// piece by one thread; the pass is `Sync` (`Shares::run` requires it) and the caller keeps
// both alive until every claimed piece is done. The other fields are Send and Sync.
unsafe impl Send for Pass {}
// SAFETY: as for Send: shared access only reaches the atomics, the mutex, and the disjoint
// pieces each claimer owns.
unsafe impl Sync for Pass {}

/// Calls the caller's pass `F` behind `pass`.
///
/// # Safety
/// `pass` must point to a live `F`.
unsafe fn call_pass<F>(pass: *const (), first: usize, piece: &mut [u8]) -> io::Result<()>
where
    F: Fn(usize, &mut [u8]) -> io::Result<()> + Sync,
{
    // SAFETY: the caller guarantees `pass` points to a live `F`.
    let pass = unsafe { &*pass.cast::<F>() };
    pass(first, piece)
}

impl Pass {
    /// Claims and ciphers pieces until none is left.
    fn work(&self) {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            if n >= self.pieces {
                return;
            }
            let at = n * PIECE;
            let len = PIECE.min(self.len - at);
            // SAFETY: piece `n` was claimed by this thread alone and lies within `buf`; the
            // caller waits for it to be done before its borrow of `buf` and `pass` ends.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe {
                let piece = std::slice::from_raw_parts_mut(self.buf.add(at), len);
                (self.call)(self.pass, at / BLOCK_SIZE, piece)
            }))
            .unwrap_or_else(|_| Err(io::Error::other("a cipher piece panicked")));
            if let Err(e) = result
                && let Ok(mut first) = self.error.lock()
            {
                first.get_or_insert(e);
            }
            let last = self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.pieces;
            if last && std::thread::current().id() != self.caller.id() {
                self.caller.unpark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A pool of two helpers, for tests only.
    fn pool() -> &'static ThreadPool {
        static POOL: OnceLock<ThreadPool> = OnceLock::new();
        POOL.get_or_init(|| {
            ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("a test pool")
        })
    }

    /// Every block is passed exactly once, with its own number, in pieces of whole chunks
    /// when the pass is shared and whole on the caller's thread when it is not.
    #[test]
    fn every_block_once_with_its_number() {
        for (min, blocks) in [(64, 10), (64, 63), (64, 64), (64, 200), (8, 1000), (1, 1)] {
            let shares = Shares::with_pool(min, pool());
            let mut buf = vec![0u8; blocks * BLOCK_SIZE];
            let calls = Mutex::new(Vec::new());
            shares
                .run(&mut buf, |first, piece| {
                    for (i, b) in piece.chunks_mut(BLOCK_SIZE).enumerate() {
                        b[..8].copy_from_slice(&((first + i) as u64 + 1).to_le_bytes());
                        b[8] += 1;
                    }
                    let on = std::thread::current().id();
                    calls
                        .lock()
                        .unwrap()
                        .push((first, piece.len() / BLOCK_SIZE, on));
                    Ok(())
                })
                .unwrap();
            for (i, b) in buf.chunks(BLOCK_SIZE).enumerate() {
                assert_eq!(b[..8], (i as u64 + 1).to_le_bytes(), "{blocks} blocks");
                assert_eq!(b[8], 1, "block {i} of {blocks} passed once");
            }
            let mut calls = calls.into_inner().unwrap();
            calls.sort_by_key(|c| c.0);
            let me = std::thread::current().id();
            if blocks < min || blocks <= CHUNK {
                assert_eq!(calls, vec![(0, blocks, me)], "{blocks} blocks: whole");
            } else {
                let pieces: Vec<(usize, usize)> = (0..blocks)
                    .step_by(CHUNK)
                    .map(|f| (f, CHUNK.min(blocks - f)))
                    .collect();
                let got: Vec<(usize, usize)> = calls.iter().map(|c| (c.0, c.1)).collect();
                assert_eq!(got, pieces, "{blocks} blocks: pieces of a chunk");
            }
        }
    }

    /// An error in any piece, the caller's or a helper's, is returned once the others have
    /// run to their end; so is a panic in a piece, as an error.
    #[test]
    fn an_error_or_a_panic_in_a_piece_is_returned() {
        let shares = Shares::with_pool(64, pool());
        for failing in [0usize, CHUNK, 3 * CHUNK] {
            for panics in [false, true] {
                let mut buf = vec![0u8; 4 * CHUNK * BLOCK_SIZE];
                let r = shares.run(&mut buf, |first, piece| {
                    if first == failing {
                        if panics {
                            panic!("piece at {first}");
                        }
                        return Err(io::Error::other(format!("piece at {first}")));
                    }
                    piece.fill(1);
                    Ok(())
                });
                let e = r.unwrap_err().to_string();
                if panics {
                    assert_eq!(e, "a cipher piece panicked");
                } else {
                    assert_eq!(e, format!("piece at {failing}"));
                }
                for (n, piece) in buf.chunks(CHUNK * BLOCK_SIZE).enumerate() {
                    let want = u8::from(n * CHUNK != failing);
                    assert!(piece.iter().all(|&b| b == want), "piece {n}");
                }
            }
        }
    }

    /// With every helper busy, the caller ciphers every piece itself and returns without
    /// waiting for them; a helper that starts later finds nothing left.
    #[test]
    fn busy_helpers_do_not_hold_the_caller() {
        static BUSY: OnceLock<ThreadPool> = OnceLock::new();
        let busy = BUSY.get_or_init(|| {
            ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("a test pool")
        });
        let (release, wait) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        busy.spawn(move || {
            started.send(()).unwrap();
            let _ = wait.recv();
        });
        running.recv().unwrap();
        let me = std::thread::current().id();
        let mut buf = vec![0u8; 8 * CHUNK * BLOCK_SIZE];
        let others = AtomicUsize::new(0);
        Shares::with_pool(1, busy)
            .run(&mut buf, |_, piece| {
                if std::thread::current().id() != me {
                    others.fetch_add(1, Ordering::Relaxed);
                }
                piece.fill(3);
                Ok(())
            })
            .unwrap();
        assert_eq!(others.load(Ordering::Relaxed), 0);
        assert!(buf.iter().all(|&b| b == 3));
        release.send(()).unwrap();
        // The late helper job runs and ends without touching anything.
        busy.install(|| ());
    }
}
