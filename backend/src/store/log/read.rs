//! The read path, split in two so that the device reads can run anywhere (in this thread, or
//! on a queue's own ring, many at once): [`Store::plan_read`] looks the blocks up and pins their
//! segments, the caller reads the plan's runs (the container's bytes as stored: ciphertext on an
//! encrypted container), [`Store::finish_read`] checks every block's crc32c, decrypts, and
//! copies the requested bytes out. Unwritten and discarded blocks need no I/O.

use crate::store::Store;
use crate::store::buf::AlignedBuf;
use crate::store::codec::block_crc;
use crate::store::compress::{self, block_of, place};
use crate::store::error::{Result, StoreError};
use crate::store::layout::BLOCK;
use crate::store::log::batch::check_request;
use crate::store::map::pins::PinGuard;
use crate::store::stats::Counters;

/// Longest device read of one run, in blocks.
const MAX_RUN_BLOCKS: usize = 256;

/// Contiguous blocks on the device that one read needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRun {
    /// First physical block.
    pub pba: u64,
    pub blocks: usize,
}

impl ReadRun {
    /// Byte offset on the device.
    pub fn offset(&self) -> u64 {
        self.pba * BLOCK
    }
}

/// Where one block of the request comes from.
#[derive(Debug, Clone, Copy)]
struct Source {
    vba: u64,
    /// As the VBA map has it: a packed block's carries its slot.
    pba: u64,
    crc: u32,
    run: usize,
    index: usize,
}

/// A looked-up read: its runs must be read into one buffer each before
/// [`Store::finish_read`]. Holds its segments pinned until dropped.
pub struct ReadPlan {
    offset: u64,
    len: u64,
    /// One per 4 KiB block the request touches; `None` reads as zeroes.
    blocks: Vec<Option<Source>>,
    runs: Vec<ReadRun>,
    _pins: PinGuard,
}

impl ReadPlan {
    /// The device reads this request needs (none if it only touches unwritten blocks).
    pub fn runs(&self) -> &[ReadRun] {
        &self.runs
    }

    /// A buffer for each run, ready to be read into.
    pub fn buffers(&self) -> Vec<AlignedBuf> {
        self.runs
            .iter()
            .map(|r| AlignedBuf::scratch(r.blocks))
            .collect()
    }
}

impl Store {
    /// Looks up `[offset, offset + len)` (multiples of 512 inside the disk) and pins the
    /// segments it reads from.
    pub fn plan_read(&self, offset: u64, len: u64) -> Result<ReadPlan> {
        check_request(offset, len, self.capacity())?;
        self.ensure_ok()?;
        Counters::add(&self.stats.guest_reads, 1);
        Counters::add(&self.stats.guest_read_bytes, len);
        self.note_guest_io();
        self.plan_read_unchecked(offset, len)
    }

    /// Which blocks of `[offset, offset + len)` are mapped, as runs of `(bytes, mapped)` from
    /// `offset`; scans at most `max_blocks` blocks (the runs then end early).
    pub fn allocation(&self, offset: u64, len: u64, max_blocks: u64) -> Vec<(u64, bool)> {
        let end = offset.saturating_add(len).min(self.capacity());
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let st = self.read_lock(&self.state);
        let mut pos = offset;
        let mut scanned = 0;
        while pos < end && scanned < max_blocks {
            let lba = pos / BLOCK;
            let next = ((lba + 1) * BLOCK).min(end);
            let mapped = st.maps.lookup(lba).is_some();
            match runs.last_mut() {
                Some((bytes, m)) if *m == mapped => *bytes += next - pos,
                _ => runs.push((next - pos, mapped)),
            }
            pos = next;
            scanned += 1;
        }
        runs
    }

    pub(in crate::store) fn plan_read_unchecked(&self, offset: u64, len: u64) -> Result<ReadPlan> {
        let mut pins = PinGuard::new(&self.pins);
        let mut blocks = Vec::new();
        let mut runs: Vec<ReadRun> = Vec::new();
        if len > 0 {
            let first = offset / BLOCK;
            let last = (offset + len - 1) / BLOCK;
            blocks.reserve((last - first + 1) as usize);
            let st = self.read_lock(&self.state);
            let geo = self.geometry();
            for lba in first..=last {
                let Some((vba, e)) = st.maps.lookup(lba) else {
                    blocks.push(None);
                    continue;
                };
                let pba = block_of(e.pba);
                if !geo.is_data_block(pba) || !self.data.valid_pba(e.pba) {
                    return Err(StoreError::corrupt(
                        "VBA map",
                        format!("LBA {lba} maps to block {:#x} outside the segments", e.pba),
                    ));
                }
                let after_mapped = blocks.last().is_some_and(Option::is_some);
                // Slots of one packed block share its read.
                let shares = place::slot_of(e.pba).is_some()
                    && after_mapped
                    && runs
                        .last()
                        .is_some_and(|r| r.pba + r.blocks as u64 - 1 == pba);
                let extends = runs.last().is_some_and(|r| {
                    r.pba + r.blocks as u64 == pba && r.blocks < MAX_RUN_BLOCKS && after_mapped
                });
                if shares {
                    // The run's last block is this one already.
                } else if extends {
                    let r = runs.last_mut().expect("a run to extend");
                    r.blocks += 1;
                } else {
                    runs.push(ReadRun { pba, blocks: 1 });
                }
                let run = runs.len() - 1;
                pins.pin(self.geo.segment_of(pba));
                blocks.push(Some(Source {
                    vba,
                    pba: e.pba,
                    crc: e.crc,
                    run,
                    index: runs[run].blocks - 1,
                }));
            }
        }
        // A batch applies its map changes while its data is being written.
        self.unwritten
            .wait_for(runs.iter().map(|r| (r.pba, r.blocks as u64)));
        // The wait ends early once a poisoned lock failed the store.
        self.ensure_ok()?;
        Ok(ReadPlan {
            offset,
            len,
            blocks,
            runs,
            _pins: pins,
        })
    }

    /// Checks the blocks read for `plan` (one buffer per run, in order, as stored), decrypts
    /// them in place on an encrypted container, and copies the requested bytes into `out`
    /// (`plan`'s length). A block whose checksum fails is an error.
    pub fn finish_read(
        &self,
        plan: &ReadPlan,
        bufs: &mut [AlignedBuf],
        out: &mut [u8],
    ) -> Result<()> {
        if bufs.len() != plan.runs.len() || out.len() as u64 != plan.len {
            return Err(StoreError::Invalid(
                "read buffers do not fit the plan".into(),
            ));
        }
        self.check_and_open(plan, bufs)?;
        let first = plan.offset / BLOCK;
        let end = plan.offset + plan.len;
        for (i, src) in plan.blocks.iter().enumerate() {
            let lba = first + i as u64;
            let bstart = lba * BLOCK;
            let lo = plan.offset.max(bstart);
            let hi = end.min(bstart + BLOCK);
            let dst = &mut out[(lo - plan.offset) as usize..(hi - plan.offset) as usize];
            let Some(s) = src else {
                dst.fill(0);
                continue;
            };
            let block = bufs[s.run].block(s.index);
            let range = (lo - bstart) as usize..(hi - bstart) as usize;
            if place::slot_of(s.pba).is_some() {
                let mut expanded = [0u8; BLOCK as usize];
                compress::expand(
                    self.codec,
                    self.dict.get().map(|d| &**d),
                    block,
                    s.pba,
                    &mut expanded,
                )?;
                dst.copy_from_slice(&expanded[range]);
            } else {
                dst.copy_from_slice(&block[range]);
            }
        }
        Ok(())
    }

    /// When `plan` is whole blocks, every one written and all in its one run, checks their
    /// checksums and returns the run's bytes: the caller copies them to the guest as they are,
    /// without [`finish_read`](Self::finish_read)'s copy. `None` for any other plan.
    pub fn finished_run<'b>(
        &self,
        plan: &ReadPlan,
        bufs: &'b mut [AlignedBuf],
    ) -> Option<Result<&'b [u8]>> {
        let whole = plan.offset.is_multiple_of(BLOCK) && plan.len.is_multiple_of(BLOCK);
        let [run] = plan.runs.as_slice() else {
            return None;
        };
        let [buf] = &*bufs else {
            return None;
        };
        if !whole || run.blocks != plan.blocks.len() || buf.len() != plan.len as usize {
            return None;
        }
        let raw = |b: &Option<Source>| b.is_some_and(|s| place::slot_of(s.pba).is_none());
        if !plan.blocks.iter().all(raw) {
            return None;
        }
        if let Err(e) = self.check_and_open(plan, bufs) {
            return Some(Err(e));
        }
        Some(Ok(&bufs[0][..]))
    }

    /// Checks every block of `plan` read into `bufs` (as stored) against its checksum, over
    /// the bytes the checksum covers, and leaves them decrypted.
    fn check_and_open(&self, plan: &ReadPlan, bufs: &mut [AlignedBuf]) -> Result<()> {
        for (run, buf) in plan.runs.iter().zip(bufs.iter_mut()) {
            self.data.covered(buf, run.offset())?;
        }
        let first = plan.offset / BLOCK;
        for (i, src) in plan.blocks.iter().enumerate() {
            if let Some(s) = src {
                self.check_block(first + i as u64, s, bufs[s.run].block(s.index))?;
            }
        }
        // Blocks tweaked by their VBA are opened under it: each run's owners, where known.
        let mut owners: Vec<Vec<Option<(u64, u64)>>> = Vec::new();
        if self.data.by_vba() {
            owners = plan.runs.iter().map(|r| vec![None; r.blocks]).collect();
            for s in plan.blocks.iter().flatten() {
                if let Some(o) = owners.get_mut(s.run).and_then(|r| r.get_mut(s.index)) {
                    *o = Some((s.vba, s.pba));
                }
            }
        }
        for (r, (run, buf)) in plan.runs.iter().zip(bufs.iter_mut()).enumerate() {
            let owner = |i: usize| owners.get(r).and_then(|o| o.get(i).copied().flatten());
            self.data.plaintext(buf, run.offset(), owner)?;
        }
        Ok(())
    }

    /// Checks one block read for LBA `lba` against its checksum; a mismatch is counted,
    /// logged and an error.
    fn check_block(&self, lba: u64, s: &Source, block: &[u8]) -> Result<()> {
        if block_crc(s.vba, compress::stored_bytes(block, s.pba)) == s.crc {
            return Ok(());
        }
        let pba = block_of(s.pba);
        Counters::add(&self.stats.checksum_errors, 1);
        log::error!("checksum mismatch: LBA {lba} at PBA {pba}");
        Err(StoreError::DataChecksum { lba, pba })
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of 512). Unwritten and discarded
    /// blocks read as zeroes without I/O; a block whose checksum fails is an error.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let plan = self.plan_read(offset, buf.len() as u64)?;
        self.read_plan(&plan, buf)
    }

    /// A read for the store's own use (read-modify-write), not counted as guest I/O.
    pub(in crate::store) fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let plan = self.plan_read_unchecked(offset, buf.len() as u64)?;
        self.read_plan(&plan, buf)
    }

    fn read_plan(&self, plan: &ReadPlan, buf: &mut [u8]) -> Result<()> {
        let mut bufs = plan.buffers();
        for (run, b) in plan.runs().iter().zip(bufs.iter_mut()) {
            self.data.read_raw(b, run.offset())?;
        }
        self.finish_read(plan, &mut bufs, buf)
    }
}
