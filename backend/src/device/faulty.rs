//! A seeded, fault-injecting, in-memory [`BlockDevice`] for deterministic simulation.
//!
//! It keeps two images: what reads see (`current`) and what would survive a power loss
//! (`durable`). Writes land in `current` and queue as pending until [`flush`](BlockDevice::flush);
//! [`FaultyDevice::crash`] throws the pending writes away (or, in [`CrashMode::Torn`], keeps a
//! seeded random subset, some of them torn at sector granularity). Reads, writes and flushes can
//! be made to fail on command or at a seeded random rate. Every random choice comes from the seed,
//! so a failing test replays exactly.

use super::{BlockDevice, check_range};
use std::io;
use std::sync::Mutex;

/// What survives a [`FaultyDevice::crash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unflushed write is lost.
    DropUnflushed,
    /// Each unflushed write is kept, lost, or torn (a prefix of whole 512-byte sectors kept).
    Torn,
}

/// Counters for assertions on the I/O a device saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultyStats {
    pub reads: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    pub injected_errors: u64,
    /// Reads and writes refused because they break O_DIRECT's alignment rules (see
    /// [`FaultyDevice::set_direct`]): never injected, always a bug in the caller.
    pub misaligned: u64,
}

/// A deterministic, seeded pseudo-random generator (splitmix64); good enough for fault schedules.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// True with probability `ppm` in a million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }
}

struct Pending {
    offset: u64,
    data: Vec<u8>,
}

struct Inner {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    rng: SimRng,
    fail_reads: bool,
    fail_writes: bool,
    fail_flushes: bool,
    read_error_ppm: u32,
    write_error_ppm: u32,
    direct: bool,
    stats: FaultyStats,
}

/// An in-memory device whose failures are scripted or seeded.
pub struct FaultyDevice {
    size: u64,
    inner: Mutex<Inner>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

impl FaultyDevice {
    /// A zero-filled device of `size` bytes whose random choices derive from `seed`.
    pub fn new(size: usize, seed: u64) -> Self {
        Self {
            size: size as u64,
            inner: Mutex::new(Inner {
                current: vec![0; size],
                durable: vec![0; size],
                pending: Vec::new(),
                rng: SimRng::new(seed),
                fail_reads: false,
                fail_writes: false,
                fail_flushes: false,
                read_error_ppm: 0,
                write_error_ppm: 0,
                direct: false,
                stats: FaultyStats::default(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock only happens in a failing test; keep going regardless.
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

    /// EINVAL, as the kernel answers, for a transfer O_DIRECT would refuse.
    fn check_direct(g: &mut Inner, buf: &[u8], offset: u64) -> io::Result<()> {
        if g.direct && !super::file::direct_aligned(buf, offset) {
            g.stats.misaligned += 1;
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    /// Simulates a power loss: unflushed writes are lost (or kept/torn per `mode`).
    pub fn crash(&self, mode: CrashMode) {
        let mut g = self.lock();
        let pending = std::mem::take(&mut g.pending);
        if mode == CrashMode::Torn {
            for p in pending {
                let sectors = p.data.len().div_ceil(512) as u64;
                let keep = match g.rng.below(3) {
                    0 => 0,
                    1 => p.data.len(),
                    _ => (g.rng.below(sectors + 1) as usize * 512).min(p.data.len()),
                };
                let start = p.offset as usize;
                g.durable[start..start + keep].copy_from_slice(&p.data[..keep]);
            }
        }
        let durable = g.durable.clone();
        g.current = durable;
    }

    /// A copy of what reads currently return.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().current.clone()
    }

    /// Number of writes not yet made durable.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn stats(&self) -> FaultyStats {
        self.lock().stats
    }

    fn apply(g: &mut Inner, offset: u64, data: Vec<u8>) {
        let start = offset as usize;
        g.current[start..start + data.len()].copy_from_slice(&data);
        g.pending.push(Pending { offset, data });
    }
}

impl BlockDevice for FaultyDevice {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
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
        check_range(self.size, offset, buf.len() as u64)?;
        let mut g = self.lock();
        Self::check_direct(&mut g, buf, offset)?;
        let ppm = g.write_error_ppm;
        if g.fail_writes || g.rng.chance_ppm(ppm) {
            g.stats.injected_errors += 1;
            return Err(injected("write"));
        }
        g.stats.writes += 1;
        g.stats.bytes_written += buf.len() as u64;
        Self::apply(&mut g, offset, buf.to_vec());
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut g = self.lock();
        if g.fail_flushes {
            g.stats.injected_errors += 1;
            return Err(injected("flush"));
        }
        g.stats.flushes += 1;
        let pending = std::mem::take(&mut g.pending);
        for p in pending {
            let start = p.offset as usize;
            g.durable[start..start + p.data.len()].copy_from_slice(&p.data);
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        let mut g = self.lock();
        if g.fail_writes {
            g.stats.injected_errors += 1;
            return Err(injected("discard"));
        }
        Self::apply(&mut g, offset, vec![0; len as usize]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_mode_refuses_what_o_direct_refuses() {
        let d = FaultyDevice::new(8192, 1);
        d.set_direct(true);
        let aligned = crate::store::buf::AlignedBuf::copy_of(&[3u8; 1024]);
        d.write_at(&aligned, 512).unwrap();
        let odd = vec![1u8; 1025];
        for (buf, at) in [
            (&odd[1..], 512u64),
            (&aligned[..1000], 512),
            (&aligned[..], 100),
        ] {
            let e = d.write_at(buf, at).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        }
        assert_eq!(d.stats().misaligned, 3);
        d.set_direct(false);
        d.write_at(&odd[1..], 100).unwrap();
    }

    #[test]
    fn crash_drops_unflushed_writes() {
        let d = FaultyDevice::new(8192, 1);
        d.write_at(&[1; 512], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2; 512], 0).unwrap();
        d.write_at(&[3; 512], 4096).unwrap();
        let mut b = [0u8; 512];
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [2; 512]);
        d.crash(CrashMode::DropUnflushed);
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [1; 512]);
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [0; 512]);
    }

    #[test]
    fn torn_crash_keeps_sector_prefixes_and_replays_from_seed() {
        let run = |seed| {
            let d = FaultyDevice::new(1 << 16, seed);
            for i in 0..16u8 {
                d.write_at(&[i + 1; 2048], u64::from(i) * 4096).unwrap();
            }
            d.crash(CrashMode::Torn);
            d.contents()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same outcome");
        for i in 0..16usize {
            let block = &a[i * 4096..i * 4096 + 2048];
            let kept = block.iter().take_while(|&&b| b == i as u8 + 1).count();
            assert_eq!(kept % 512, 0, "tears fall on sector boundaries");
            assert!(block[kept..].iter().all(|&b| b == 0));
        }
        let outcomes: std::collections::HashSet<_> = (0..20).map(run).collect();
        assert!(outcomes.len() > 1, "different seeds tear differently");
    }

    #[test]
    fn scripted_and_random_failures() {
        let d = FaultyDevice::new(4096, 3);
        d.set_fail_writes(true);
        assert!(d.write_at(&[1; 16], 0).is_err());
        d.set_fail_writes(false);
        d.write_at(&[1; 16], 0).unwrap();
        d.set_fail_flushes(true);
        assert!(d.flush().is_err());
        d.set_dead(false);
        d.set_error_rates(500_000, 0);
        let mut b = [0u8; 16];
        let failures = (0..200).filter(|_| d.read_at(&mut b, 0).is_err()).count();
        assert!(failures > 50 && failures < 150, "{failures} of 200 failed");
        assert_eq!(d.stats().injected_errors, failures as u64 + 2);
    }
}
