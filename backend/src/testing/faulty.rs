//! [`FaultyDevice`]: a seeded, fault-injecting, in-memory [`BlockDevice`].
//!
//! It keeps two images: what reads see (`current`) and what would survive a power loss
//! (`durable`). Writes land in `current` and queue as pending until [`flush`](BlockDevice::flush).
//! A test can "pull the plug" in place ([`FaultyDevice::crash`]) or take the image a crash now
//! could leave behind ([`FaultyDevice::crash_image`]). Reads, writes and flushes fail on command,
//! after a count of writes, or at a seeded random rate. Every random choice comes from a seed, so
//! a failing test replays exactly.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::SplitMix;
use crate::device::{BlockDevice, check_range, direct_aligned};

/// What survives a crash of the writes made since the last completed flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// None of them.
    DropAll,
    /// A prefix of them, the last one torn at a random sector.
    TornPrefix,
    /// A random subset, in order, any of them possibly torn at a sector boundary.
    RandomSubset,
}

/// Counters for assertions on the I/O a device saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultyStats {
    pub reads: u64,
    /// Writes and discards that succeeded.
    pub writes: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    pub injected_errors: u64,
    /// Reads and writes refused because they break O_DIRECT's alignment rules (see
    /// [`FaultyDevice::set_direct`]): never injected, always a bug in the caller.
    pub misaligned: u64,
}

struct Inner {
    /// What reads see.
    current: Vec<u8>,
    /// What is known to be on stable storage.
    durable: Vec<u8>,
    /// Writes since the last flush, in order: (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
    rng: SplitMix,
    fail_reads: bool,
    fail_writes: bool,
    fail_flushes: bool,
    /// Writes left before every write fails (`None`: never).
    writes_until_failure: Option<u64>,
    /// Flushes left before every flush fails (`None`: never).
    flushes_until_failure: Option<u64>,
    read_error_ppm: u32,
    write_error_ppm: u32,
    direct: bool,
    stats: FaultyStats,
}

/// An in-memory device whose failures are scripted or seeded.
pub struct FaultyDevice {
    /// Grows like a container file (`grow_to`), never shrinks.
    len: AtomicU64,
    inner: Mutex<Inner>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

impl FaultyDevice {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self::seeded(len, 0)
    }

    /// A zero-filled device of `len` bytes whose random choices derive from `seed`.
    pub fn seeded(len: u64, seed: u64) -> Self {
        let len = usize::try_from(len).expect("a test device fits in memory");
        Self::with_image(vec![0; len], seed)
    }

    /// A device whose durable and visible contents are `image`.
    pub fn from_image(image: Vec<u8>) -> Self {
        Self::with_image(image, 0)
    }

    fn with_image(image: Vec<u8>, seed: u64) -> Self {
        Self {
            len: AtomicU64::new(image.len() as u64),
            inner: Mutex::new(Inner {
                current: image.clone(),
                durable: image,
                pending: Vec::new(),
                rng: SplitMix::new(seed),
                fail_reads: false,
                fail_writes: false,
                fail_flushes: false,
                writes_until_failure: None,
                flushes_until_failure: None,
                read_error_ppm: 0,
                write_error_ppm: 0,
                direct: false,
                stats: FaultyStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Only a failing test panics while holding the lock; its assertions already report it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every read fail (or succeed again).
    pub fn set_fail_reads(&self, on: bool) {
        self.lock().fail_reads = on;
    }

    /// Makes every write and discard fail (or succeed again).
    pub fn set_fail_writes(&self, on: bool) {
        self.lock().fail_writes = on;
    }

    /// Makes every flush fail (or succeed again).
    pub fn set_fail_flushes(&self, on: bool) {
        self.lock().fail_flushes = on;
    }

    /// Fails reads, writes and flushes: the device is gone.
    pub fn set_dead(&self, on: bool) {
        let mut g = self.lock();
        g.fail_reads = on;
        g.fail_writes = on;
        g.fail_flushes = on;
    }

    /// After `n` more successful writes, every write fails (`None`: never).
    pub fn fail_writes_after(&self, n: Option<u64>) {
        self.lock().writes_until_failure = n;
    }

    /// After `n` more successful flushes, every flush fails (`None`: never).
    pub fn fail_flushes_after(&self, n: Option<u64>) {
        self.lock().flushes_until_failure = n;
    }

    /// Random failures, in parts per million of reads and of writes.
    pub fn set_error_rates(&self, read_ppm: u32, write_ppm: u32) {
        let mut g = self.lock();
        g.read_error_ppm = read_ppm;
        g.write_error_ppm = write_ppm;
    }

    /// Behaves like a file opened with O_DIRECT: a read or write whose buffer address, offset
    /// or length is not a multiple of 512 fails with EINVAL (and counts as `misaligned`).
    pub fn set_direct(&self, on: bool) {
        self.lock().direct = on;
    }

    pub fn stats(&self) -> FaultyStats {
        self.lock().stats
    }

    /// A copy of what reads currently return.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().current.clone()
    }

    /// Number of writes not yet made durable.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    /// Flips bits in the visible and durable contents (simulated media corruption).
    pub fn corrupt(&self, offset: u64, xor: u8) {
        let g = &mut *self.lock();
        let at = offset as usize;
        for image in [&mut g.current, &mut g.durable] {
            if let Some(b) = image.get_mut(at) {
                *b ^= xor;
            }
        }
    }

    /// The image a power failure now could leave behind, its choices drawn from `rng`.
    pub fn crash_image(&self, mode: CrashMode, rng: &mut SplitMix) -> Vec<u8> {
        let g = self.lock();
        survivors(&g.durable, &g.pending, mode, rng)
    }

    /// Simulates a power loss in place: what reads see becomes what survived, the choices
    /// drawn from the device's seed.
    pub fn crash(&self, mode: CrashMode) {
        let mut g = self.lock();
        let mut rng = g.rng.clone();
        let image = survivors(&g.durable, &g.pending, mode, &mut rng);
        g.rng = rng;
        g.pending.clear();
        g.current.clone_from(&image);
        g.durable = image;
    }

    /// Whether the next write fails, by command, by count or at random; counts the failure.
    fn write_fails(g: &mut Inner) -> bool {
        let ppm = g.write_error_ppm;
        let counted_out = match g.writes_until_failure {
            Some(0) => true,
            Some(left) => {
                g.writes_until_failure = Some(left - 1);
                false
            }
            None => false,
        };
        let fails = g.fail_writes || counted_out || g.rng.chance_ppm(ppm);
        if fails {
            g.stats.injected_errors += 1;
        }
        fails
    }

    /// EINVAL, as the kernel answers, for a transfer O_DIRECT would refuse.
    fn check_direct(g: &mut Inner, buf: &[u8], offset: u64) -> io::Result<()> {
        if g.direct && !direct_aligned(buf, offset) {
            g.stats.misaligned += 1;
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    fn apply(g: &mut Inner, offset: u64, data: Vec<u8>) {
        let start = offset as usize;
        g.current[start..start + data.len()].copy_from_slice(&data);
        g.stats.writes += 1;
        g.stats.bytes_written += data.len() as u64;
        g.pending.push((offset, data));
    }
}

/// `durable` with the pending writes `mode` lets through.
fn survivors(
    durable: &[u8],
    pending: &[(u64, Vec<u8>)],
    mode: CrashMode,
    rng: &mut SplitMix,
) -> Vec<u8> {
    let mut img = durable.to_vec();
    let mut apply = |off: u64, data: &[u8], rng: &mut SplitMix, tear: bool| {
        let mut n = data.len();
        if tear && n > 0 {
            let sectors = n.div_ceil(512) as u64;
            n = (rng.below(sectors + 1) * 512).min(n as u64) as usize;
        }
        let off = off as usize;
        img[off..off + n].copy_from_slice(&data[..n]);
    };
    match mode {
        CrashMode::DropAll => {}
        CrashMode::TornPrefix => {
            let keep = rng.below(pending.len() as u64 + 1) as usize;
            for (k, (off, data)) in pending.iter().take(keep).enumerate() {
                apply(*off, data, rng, k + 1 == keep);
            }
        }
        CrashMode::RandomSubset => {
            for (off, data) in pending {
                if rng.chance(1, 2) {
                    let tear = rng.chance(1, 4);
                    apply(*off, data, rng, tear);
                }
            }
        }
    }
    img
}

impl BlockDevice for FaultyDevice {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.len(), offset, buf.len() as u64)?;
        let mut g = self.lock();
        Self::check_direct(&mut g, buf, offset)?;
        let ppm = g.read_error_ppm;
        if g.fail_reads || g.rng.chance_ppm(ppm) {
            g.stats.injected_errors += 1;
            return Err(injected("read"));
        }
        g.stats.reads += 1;
        let start = offset as usize;
        buf.copy_from_slice(&g.current[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.len(), offset, buf.len() as u64)?;
        let mut g = self.lock();
        Self::check_direct(&mut g, buf, offset)?;
        if Self::write_fails(&mut g) {
            return Err(injected("write"));
        }
        Self::apply(&mut g, offset, buf.to_vec());
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut g = self.lock();
        let counted_out = match g.flushes_until_failure {
            Some(0) => true,
            Some(left) => {
                g.flushes_until_failure = Some(left - 1);
                false
            }
            None => false,
        };
        if g.fail_flushes || counted_out {
            g.stats.injected_errors += 1;
            return Err(injected("flush"));
        }
        g.stats.flushes += 1;
        let pending = std::mem::take(&mut g.pending);
        for (offset, data) in pending {
            let start = offset as usize;
            g.durable[start..start + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.len(), offset, len)?;
        let mut g = self.lock();
        if Self::write_fails(&mut g) {
            return Err(injected("discard"));
        }
        Self::apply(&mut g, offset, vec![0; len as usize]);
        Ok(())
    }

    /// Extends the device with zeroes, durably at once (as a synced file extension is).
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let mut g = self.lock();
        if len > self.len() {
            g.current.resize(len as usize, 0);
            g.durable.resize(len as usize, 0);
            self.len.store(len, Ordering::Release);
        }
        Ok(())
    }
}
