//! [`FaultyDevice`]: keeps a durable image plus the writes made since the last flush, so a
//! test can "pull the plug" and get back what a real disk might hold afterwards.

use crate::device::{BlockDevice, check_range};
use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::SplitMix;

/// What survives a crash of the writes made since the last completed flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// None of them.
    DropAll,
    /// A prefix of them, the last one torn at a random sector.
    TornPrefix,
    /// A random subset, in any order, any of them possibly torn.
    RandomSubset,
}

struct Inner {
    /// What reads see.
    current: Vec<u8>,
    /// What is known to be on stable storage.
    durable: Vec<u8>,
    /// Writes since the last flush, in order: (offset, bytes).
    unflushed: Vec<(u64, Vec<u8>)>,
    /// Write calls left before writes start failing (`None`: never).
    writes_until_failure: Option<u64>,
    writes: u64,
    flushes: u64,
}

/// An in-memory [`BlockDevice`] with crash and failure injection.
pub struct FaultyDevice {
    /// Grows like a container file (`grow_to`), never shrinks.
    len: AtomicU64,
    inner: Mutex<Inner>,
}

impl FaultyDevice {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self::from_image(vec![0; len as usize])
    }

    /// A device whose durable and visible contents are `image`.
    pub fn from_image(image: Vec<u8>) -> Self {
        Self {
            len: AtomicU64::new(image.len() as u64),
            inner: Mutex::new(Inner {
                current: image.clone(),
                durable: image,
                unflushed: Vec::new(),
                writes_until_failure: None,
                writes: 0,
                flushes: 0,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After `n` more successful writes, every write fails with an I/O error.
    pub fn fail_writes_after(&self, n: Option<u64>) {
        self.inner().writes_until_failure = n;
    }

    /// Write calls and flushes seen so far.
    pub fn counts(&self) -> (u64, u64) {
        let i = self.inner();
        (i.writes, i.flushes)
    }

    /// The visible contents (for corrupting a copy in tests).
    pub fn image(&self) -> Vec<u8> {
        self.inner().current.clone()
    }

    /// Flips bits in the visible and durable contents (simulated media corruption).
    pub fn corrupt(&self, offset: u64, xor: u8) {
        let mut i = self.inner();
        if let Some(b) = i.current.get_mut(offset as usize) {
            *b ^= xor;
        }
        if let Some(b) = i.durable.get_mut(offset as usize) {
            *b ^= xor;
        }
    }

    /// The image a power failure now could leave behind.
    pub fn crash_image(&self, mode: CrashMode, rng: &mut SplitMix) -> Vec<u8> {
        let i = self.inner();
        let mut img = i.durable.clone();
        let apply = |img: &mut Vec<u8>, off: u64, data: &[u8], rng: &mut SplitMix, tear: bool| {
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
                let keep = rng.below(i.unflushed.len() as u64 + 1) as usize;
                for (k, (off, data)) in i.unflushed.iter().take(keep).enumerate() {
                    apply(&mut img, *off, data, rng, k + 1 == keep);
                }
            }
            CrashMode::RandomSubset => {
                for (off, data) in &i.unflushed {
                    if rng.chance(1, 2) {
                        let tear = rng.chance(1, 4);
                        apply(&mut img, *off, data, rng, tear);
                    }
                }
            }
        }
        img
    }
}

impl BlockDevice for FaultyDevice {
    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.len(), offset, buf.len() as u64)?;
        let i = self.inner();
        let o = offset as usize;
        buf.copy_from_slice(&i.current[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.len(), offset, buf.len() as u64)?;
        let mut i = self.inner();
        if let Some(left) = i.writes_until_failure {
            if left == 0 {
                return Err(io::Error::other("injected write failure"));
            }
            i.writes_until_failure = Some(left - 1);
        }
        i.writes += 1;
        let o = offset as usize;
        i.current[o..o + buf.len()].copy_from_slice(buf);
        i.unflushed.push((offset, buf.to_vec()));
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut i = self.inner();
        i.flushes += 1;
        let pending = std::mem::take(&mut i.unflushed);
        for (off, data) in pending {
            let o = off as usize;
            i.durable[o..o + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    /// Extends the device with zeroes, durably at once (as a synced file extension is).
    fn grow_to(&self, len: u64) -> io::Result<()> {
        let mut i = self.inner();
        if len > self.len() {
            i.current.resize(len as usize, 0);
            i.durable.resize(len as usize, 0);
            self.len.store(len, Ordering::Release);
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_at(&vec![0; len as usize], offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_flushed_and_drops_unflushed() {
        let d = FaultyDevice::new(8192);
        d.write_at(&[1; 4096], 0).unwrap();
        d.flush().unwrap();
        d.write_at(&[2; 4096], 4096).unwrap();
        let mut rng = SplitMix::new(1);
        let img = d.crash_image(CrashMode::DropAll, &mut rng);
        assert_eq!(img[0], 1);
        assert_eq!(img[4096], 0);
        let mut torn_seen = false;
        for s in 0..64 {
            let img = d.crash_image(CrashMode::TornPrefix, &mut SplitMix::new(s));
            assert_eq!(img[0], 1);
            let twos = img[4096..].iter().filter(|b| **b == 2).count();
            assert_eq!(twos % 512, 0, "tears at sector boundaries");
            torn_seen |= twos > 0 && twos < 4096;
        }
        assert!(torn_seen);
    }

    #[test]
    fn injected_failures() {
        let d = FaultyDevice::new(4096);
        d.fail_writes_after(Some(1));
        assert!(d.write_at(&[1; 512], 0).is_ok());
        assert!(d.write_at(&[1; 512], 0).is_err());
        d.fail_writes_after(None);
        assert!(d.write_at(&[1; 512], 0).is_ok());
    }
}
