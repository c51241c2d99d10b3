//! A split virtqueue, driver side (virtio 1.2 §2.7).
//!
//! The driver owns the descriptor table and the available ring; the device owns the used ring.
//! Everything the device writes is checked before it is believed: a used entry must name a chain
//! that is outstanding, and the used index may not run ahead of what was made available. The
//! driver keeps its own copy of each chain's links, so freeing a chain never follows pointers the
//! device could have changed.
//!
//! Ordering: descriptors and the avail entry are written first, then `avail.idx` is stored with
//! release semantics; a full fence separates that store from reading the device's notification
//! suppression (`avail_event` or `used.flags`). On the completion side `used.idx` is loaded with
//! acquire semantics before any used entry or buffer is read, and re-enabling interrupts is
//! followed by a full fence and a re-check of `used.idx`, so a completion that raced with the
//! re-enable is never slept through.

mod layout;

use std::sync::atomic::{Ordering, fence};

use vm_memory::GuestAddress;

use crate::error::{Error, Result};
use crate::memory::SharedRegion;
pub use layout::RingLayout;

/// Size of one descriptor in the table.
pub const DESC_SIZE: u64 = 16;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a request as the device will see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    /// The device writes this buffer (a read's data, a status byte); otherwise it reads it.
    pub device_writes: bool,
}

/// One entry the device put in the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    /// Bytes the device says it wrote into the chain's device-writable buffers.
    pub len: u32,
}

/// The driver's half of one split virtqueue.
pub struct SplitRing {
    mem: SharedRegion,
    layout: RingLayout,
    event_idx: bool,
    /// Free descriptor indices, used as a stack (the most recently freed is warm in cache).
    free: Vec<u16>,
    /// Our own copy of each table descriptor's `next` link.
    next: Vec<u16>,
    /// Per head: number of table descriptors its chain holds, 0 when the head is not outstanding.
    chain_len: Vec<u16>,
    outstanding: u16,
    /// The avail index the next chain goes to (not yet visible to the device).
    avail_idx: u16,
    /// The avail index last stored in `avail.idx`.
    published: u16,
    /// The avail index up to which the device has been notified, or found not to want it.
    notified: u16,
    /// The next used entry to read.
    last_used: u16,
    /// The device's `used.idx` as last read.
    used_seen: u16,
    /// Reused per request, so adding a chain does not allocate.
    scratch_indices: Vec<u16>,
    scratch_table: Vec<u8>,
}

impl SplitRing {
    /// Takes over the ring at `layout`, zeroing its indices and flags.
    pub fn new(mem: SharedRegion, layout: RingLayout, event_idx: bool) -> Result<Self> {
        let size = layout.size();
        mem.write_slice(&vec![0u8; layout.avail_bytes() as usize], layout.avail())?;
        mem.write_slice(&vec![0u8; layout.used_bytes() as usize], layout.used())?;
        Ok(Self {
            mem,
            layout,
            event_idx,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            outstanding: 0,
            avail_idx: 0,
            published: 0,
            notified: 0,
            last_used: 0,
            used_seen: 0,
            scratch_indices: Vec::with_capacity(usize::from(size)),
            scratch_table: Vec::new(),
        })
    }

    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains made available and not yet returned by the device.
    pub fn outstanding(&self) -> u16 {
        self.outstanding
    }

    /// Puts a chain of direct descriptors on the ring (not yet visible: see [`Self::publish`]).
    /// Returns the head, or `None` when the table lacks free descriptors.
    pub fn add_chain(&mut self, segments: &[Segment]) -> Result<Option<u16>> {
        let n = segments.len();
        if n == 0 || n > usize::from(self.layout.size()) {
            return Err(Error::InvalidRequest(format!(
                "a chain of {n} descriptors does not fit a ring of {}",
                self.layout.size()
            )));
        }
        if n > self.free.len() {
            return Ok(None);
        }
        let start = self.free.len() - n;
        let mut indices = std::mem::take(&mut self.scratch_indices);
        indices.clear();
        indices.extend(self.free[start..].iter().rev());
        for (k, (seg, &idx)) in segments.iter().zip(&indices).enumerate() {
            let next = indices.get(k + 1).copied();
            let mut flags = if seg.device_writes {
                VRING_DESC_F_WRITE
            } else {
                0
            };
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = next.unwrap_or(0);
            self.next[usize::from(idx)] = next;
            if let Err(e) = self.write_desc(self.layout.desc(idx), seg.addr.0, seg.len, flags, next)
            {
                self.scratch_indices = indices;
                return Err(e);
            }
        }
        // Only now, with every descriptor written, do the indices leave the free list.
        self.free.truncate(start);
        let head = indices[0];
        self.scratch_indices = indices;
        self.chain_len[usize::from(head)] = n as u16;
        self.push_avail(head)?;
        Ok(Some(head))
    }

    /// Writes `segments` as an indirect table at `table` and puts one descriptor pointing at it
    /// on the ring. The caller owns `table` until the chain is returned.
    pub fn add_indirect(
        &mut self,
        table: GuestAddress,
        segments: &[Segment],
    ) -> Result<Option<u16>> {
        let n = segments.len();
        if n == 0 || n > usize::from(self.layout.size()) {
            return Err(Error::InvalidRequest(format!(
                "an indirect table of {n} descriptors is longer than the ring ({})",
                self.layout.size()
            )));
        }
        let Some(&head) = self.free.last() else {
            return Ok(None);
        };
        let mut bytes = std::mem::take(&mut self.scratch_table);
        bytes.clear();
        bytes.resize(n * DESC_SIZE as usize, 0);
        for (k, (seg, raw)) in segments
            .iter()
            .zip(bytes.chunks_exact_mut(DESC_SIZE as usize))
            .enumerate()
        {
            let last = k + 1 == n;
            let mut flags = if seg.device_writes {
                VRING_DESC_F_WRITE
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = if last { 0 } else { (k + 1) as u16 };
            encode_desc(raw, seg.addr.0, seg.len, flags, next);
        }
        let written = self.mem.write_slice(&bytes, table);
        self.scratch_table = bytes;
        written?;
        self.write_desc(
            self.layout.desc(head),
            table.0,
            (n as u64 * DESC_SIZE) as u32,
            VRING_DESC_F_INDIRECT,
            0,
        )?;
        self.free.pop();
        self.next[usize::from(head)] = 0;
        self.chain_len[usize::from(head)] = 1;
        self.push_avail(head)?;
        Ok(Some(head))
    }

    fn push_avail(&mut self, head: u16) -> Result<()> {
        self.mem
            .write_obj(head.to_le(), self.layout.avail_entry(self.avail_idx))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.outstanding += 1;
        Ok(())
    }

    fn write_desc(
        &self,
        at: GuestAddress,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let mut raw = [0u8; DESC_SIZE as usize];
        encode_desc(&mut raw, addr, len, flags, next);
        self.mem.write_slice(&raw, at)?;
        Ok(())
    }

    /// Makes every chain added so far visible to the device, without deciding about a kick. A
    /// device that is busy (or polling) picks them up at once; [`Self::publish`] still tells it
    /// about them if it asked.
    pub fn expose(&mut self) -> Result<()> {
        if self.avail_idx != self.published {
            self.mem.store(
                self.avail_idx.to_le(),
                self.layout.avail_idx(),
                Ordering::Release,
            )?;
            self.published = self.avail_idx;
        }
        Ok(())
    }

    /// Makes every chain added since the last call visible to the device. Returns whether the
    /// device asked to be notified (kicked) about them.
    pub fn publish(&mut self) -> Result<bool> {
        self.expose()?;
        if self.avail_idx == self.notified {
            return Ok(false);
        }
        let old = self.notified;
        let new = self.avail_idx;
        self.notified = new;
        // The device must see avail.idx before we read its suppression state, or it could
        // decide to sleep on an index we have already moved past (a store-load barrier).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = u16::from_le(
                self.mem
                    .load::<u16>(self.layout.avail_event(), Ordering::Acquire)?,
            );
            Ok(need_event(event, new, old))
        } else {
            let flags = u16::from_le(
                self.mem
                    .load::<u16>(self.layout.used_flags(), Ordering::Acquire)?,
            );
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Takes the next used entry, if the device has returned one, and frees its descriptors.
    pub fn pop_used(&mut self) -> Result<Option<Used>> {
        if self.last_used == self.used_seen {
            self.used_seen = self.load_used_idx()?;
            if self.last_used == self.used_seen {
                return Ok(None);
            }
        }
        let raw: [u8; 8] = self.mem.read_obj(self.layout.used_entry(self.last_used))?;
        let id = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let len = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.layout.size() && self.chain_len[usize::from(h)] != 0)
            .ok_or_else(|| {
                Error::DeviceBroken(format!("used entry names descriptor {id}, not outstanding"))
            })?;
        self.last_used = self.last_used.wrapping_add(1);
        self.free_chain(head);
        Ok(Some(Used { head, len }))
    }

    /// Whether the device has returned entries not yet popped.
    pub fn has_used(&mut self) -> Result<bool> {
        if self.last_used != self.used_seen {
            return Ok(true);
        }
        self.used_seen = self.load_used_idx()?;
        Ok(self.last_used != self.used_seen)
    }

    /// Reads `used.idx` once and returns how many entries it holds that were not yet popped:
    /// that many [`Self::pop_used`] calls succeed without looking at the device's index again.
    pub fn used_ready(&mut self) -> Result<u16> {
        if self.last_used == self.used_seen {
            self.used_seen = self.load_used_idx()?;
        }
        Ok(self.used_seen.wrapping_sub(self.last_used))
    }

    fn load_used_idx(&self) -> Result<u16> {
        let idx = u16::from_le(
            self.mem
                .load::<u16>(self.layout.used_idx(), Ordering::Acquire)?,
        );
        let ahead = idx.wrapping_sub(self.last_used);
        if ahead > self.outstanding {
            return Err(Error::DeviceBroken(format!(
                "used index {idx} is {ahead} entries ahead, only {} outstanding",
                self.outstanding
            )));
        }
        Ok(idx)
    }

    fn free_chain(&mut self, head: u16) {
        let n = std::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut idx = head;
        for _ in 0..n {
            self.free.push(idx);
            idx = self.next[usize::from(idx)];
        }
        self.outstanding -= 1;
    }

    /// Asks the device to signal the next completion. Returns true when completions are already
    /// waiting, in which case the caller must reap them instead of sleeping.
    pub fn enable_interrupts(&mut self) -> Result<bool> {
        if self.event_idx {
            self.mem.store(
                self.last_used.to_le(),
                self.layout.used_event(),
                Ordering::Relaxed,
            )?;
        } else {
            self.mem
                .store(0u16, self.layout.avail_flags(), Ordering::Relaxed)?;
        }
        // Publish the request for a signal before looking at used.idx again (store-load).
        fence(Ordering::SeqCst);
        self.has_used()
    }

    /// Tells the device not to signal completions: the driver polls the used ring.
    pub fn suppress_interrupts(&mut self) -> Result<()> {
        if self.event_idx {
            // Half the index space away from the next entry we will read. The device signals
            // when its used index crosses this value between two of its checks; its index stays
            // within one ring size of ours, so with rings up to 16384 entries it never does.
            // (A value just behind ours is crossed whenever the device's batch began before our
            // last reap, which made the server signal about one batch in fifteen.)
            self.mem.store(
                self.last_used.wrapping_add(0x8000).to_le(),
                self.layout.used_event(),
                Ordering::Relaxed,
            )?;
        } else {
            self.mem.store(
                VRING_AVAIL_F_NO_INTERRUPT.to_le(),
                self.layout.avail_flags(),
                Ordering::Relaxed,
            )?;
        }
        Ok(())
    }
}

fn encode_desc(raw: &mut [u8], addr: u64, len: u32, flags: u16, next: u16) {
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
}

/// virtio's `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests;
