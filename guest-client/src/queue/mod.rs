//! One virtio-blk request queue: turns [`Request`]s into descriptor chains on a split ring and
//! used-ring entries back into [`Completion`]s.
//!
//! A `Queue` is `Send`: each one is meant to live on its own thread, with nothing shared with
//! the other queues except the (internally locked) buffer pool.

mod area;
mod doorbell;
mod limits;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use keel_protocol::request::WRITE_ZEROES_FLAG_UNMAP;
use keel_protocol::{DiscardSegment, RequestHeader, RequestType, Status};

use crate::buffer::{Buffer, BufferPool};
use crate::error::{Error, Result};
use crate::memory::SharedRegion;
use crate::request::{ByteRange, Completion, Request};
use crate::ring::{Segment, SplitRing};
pub use area::{MAX_RANGES, QueueArea};
pub use doorbell::{Doorbell, Hangup, Wake};
pub use limits::DeviceLimits;

/// How long a polling wait spins flat out before it yields the CPU between checks (keeld's
/// polling worker does the same).
const PURE_SPIN: std::time::Duration = std::time::Duration::from_micros(10);

/// How a queue learns about completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completions {
    /// Sleep on the call eventfd; the device signals (EVENT_IDX-suppressed when possible).
    Interrupt,
    /// Spin on the used ring (yielding the CPU between checks after 10 us); the device is
    /// asked never to signal.
    Poll,
}

/// How a queue was set up.
#[derive(Clone, Debug)]
pub struct QueueSetup {
    pub index: u16,
    pub area: QueueArea,
    pub indirect: bool,
    pub event_idx: bool,
    pub completions: Completions,
    /// Data buffers one read or write may carry.
    pub max_segments: usize,
    pub limits: DeviceLimits,
}

/// The outcome of [`Queue::push`].
#[must_use]
#[derive(Debug)]
pub enum Push {
    Queued,
    /// The ring has no room: the request is handed back untouched.
    Full(Request),
}

struct InFlight {
    token: u64,
    slot: u16,
    request_type: RequestType,
    offset: u64,
    buffers: Vec<Buffer>,
    /// Submitted by one of the blocking helpers, which waits for it by this flag.
    sync: bool,
}

/// A request queue of a [`crate::Disk`].
pub struct Queue {
    setup: QueueSetup,
    mem: SharedRegion,
    pool: Arc<BufferPool>,
    ring: SplitRing,
    doorbell: Doorbell,
    free_slots: Vec<u16>,
    /// Indexed by ring head.
    in_flight: Vec<Option<InFlight>>,
    /// Completions reaped while a blocking helper waited for its own.
    ready: VecDeque<Completion>,
    scratch: Vec<Segment>,
    /// Keeps the vhost-user connection open as long as a queue uses it.
    _keep_alive: Option<Arc<dyn Send + Sync>>,
}

impl Queue {
    pub(crate) fn new(
        setup: QueueSetup,
        mem: SharedRegion,
        pool: Arc<BufferPool>,
        doorbell: Doorbell,
        keep_alive: Option<Arc<dyn Send + Sync>>,
    ) -> Result<Self> {
        let size = setup.area.ring.size();
        let mut ring = SplitRing::new(mem.clone(), setup.area.ring, setup.event_idx)?;
        if setup.completions == Completions::Poll {
            ring.suppress_interrupts()?;
        }
        Ok(Self {
            mem,
            pool,
            ring,
            doorbell,
            free_slots: (0..size).rev().collect(),
            in_flight: (0..size).map(|_| None).collect(),
            ready: VecDeque::new(),
            scratch: Vec::with_capacity(QueueArea::max_chain(setup.max_segments)),
            _keep_alive: keep_alive,
            setup,
        })
    }

    pub(crate) fn doorbell(&self) -> &Doorbell {
        &self.doorbell
    }

    pub fn index(&self) -> u16 {
        self.setup.index
    }

    /// Ring entries; with indirect descriptors also the most requests in flight at once.
    pub fn size(&self) -> u16 {
        self.setup.area.ring.size()
    }

    pub fn limits(&self) -> &DeviceLimits {
        &self.setup.limits
    }

    pub fn max_segments(&self) -> usize {
        self.setup.max_segments
    }

    pub fn completions(&self) -> Completions {
        self.setup.completions
    }

    /// How many requests of `buffers` data buffers each fit the ring at once.
    pub fn request_capacity(&self, buffers: usize) -> usize {
        let size = usize::from(self.size());
        if self.setup.indirect {
            size
        } else {
            size / (buffers + 2)
        }
    }

    /// Requests submitted and not yet reaped.
    pub fn in_flight(&self) -> usize {
        usize::from(self.ring.outstanding())
    }

    /// A zeroed buffer from the disk's shared memory.
    pub fn alloc(&self, len: usize) -> Result<Buffer> {
        self.pool.alloc(len)
    }

    /// Puts a request on the ring, visible to a device that is looking, without notifying it;
    /// call [`Self::kick`] after a batch.
    pub fn push(&mut self, request: Request, token: u64) -> Result<Push> {
        self.push_inner(request, token, false)
    }

    fn push_inner(&mut self, request: Request, token: u64, sync: bool) -> Result<Push> {
        self.setup.limits.check(&request, self.setup.max_segments)?;
        for b in request_buffers(&request) {
            if !b.belongs_to(&self.mem) {
                return Err(Error::InvalidRequest(
                    "buffer does not belong to this disk's memory".into(),
                ));
            }
        }
        let Some(&slot) = self.free_slots.last() else {
            return Ok(Push::Full(request));
        };
        let area = self.setup.area;
        let request_type = request.request_type();
        let offset = request.offset();
        let header = RequestHeader {
            request_type,
            sector: match &request {
                Request::Read { offset, .. } | Request::Write { offset, .. } => {
                    offset >> keel_protocol::SECTOR_SHIFT
                }
                _ => 0,
            },
        };
        self.mem
            .write_slice(&header.to_bytes(), area.header(slot))?;
        // A status the device never wrote reads as an error, not as success.
        self.mem.write_obj(0xffu8, area.status(slot))?;

        self.scratch.clear();
        self.scratch.push(Segment {
            addr: area.header(slot),
            len: keel_protocol::request::HEADER_SIZE as u32,
            device_writes: false,
        });
        match &request {
            Request::Read { buffers, .. } | Request::Write { buffers, .. } => {
                let device_writes = request_type == RequestType::Read;
                for b in buffers {
                    self.scratch.push(Segment {
                        addr: b.guest_addr(),
                        len: b.len() as u32,
                        device_writes,
                    });
                }
            }
            Request::GetId { buffer } => self.scratch.push(Segment {
                addr: buffer.guest_addr(),
                len: keel_protocol::ID_BYTES as u32,
                device_writes: true,
            }),
            Request::Discard { ranges } => self.write_ranges(slot, ranges, 0)?,
            Request::WriteZeroes { ranges, unmap } => {
                let flags = if *unmap { WRITE_ZEROES_FLAG_UNMAP } else { 0 };
                self.write_ranges(slot, ranges, flags)?
            }
            Request::Flush => {}
        }
        self.scratch.push(Segment {
            addr: area.status(slot),
            len: 1,
            device_writes: true,
        });

        let head = if self.setup.indirect && self.scratch.len() > 1 {
            self.ring.add_indirect(area.table(slot), &self.scratch)?
        } else {
            self.ring.add_chain(&self.scratch)?
        };
        let Some(head) = head else {
            return Ok(Push::Full(request));
        };
        self.free_slots.pop();
        let buffers = request.into_buffers();
        self.in_flight[usize::from(head)] = Some(InFlight {
            token,
            slot,
            request_type,
            offset,
            buffers,
            sync,
        });
        // Visible at once, as Linux's driver does it: a device still busy with earlier requests
        // takes this one in the same pass instead of going idle and waiting for a kick.
        self.ring.expose()?;
        Ok(Push::Queued)
    }

    fn write_ranges(&mut self, slot: u16, ranges: &[ByteRange], flags: u32) -> Result<()> {
        let area = self.setup.area;
        let mut bytes = Vec::with_capacity(ranges.len() * 16);
        for r in ranges {
            let seg = DiscardSegment {
                sector: r.offset >> keel_protocol::SECTOR_SHIFT,
                num_sectors: (r.len >> keel_protocol::SECTOR_SHIFT) as u32,
                flags,
            };
            bytes.extend_from_slice(&seg.to_bytes());
        }
        self.mem.write_slice(&bytes, area.ranges(slot))?;
        self.scratch.push(Segment {
            addr: area.ranges(slot),
            len: bytes.len() as u32,
            device_writes: false,
        });
        Ok(())
    }

    /// Makes pushed requests visible and notifies the device if it asked for it.
    pub fn kick(&mut self) -> Result<()> {
        if self.ring.publish()? {
            self.doorbell.kick()?;
        }
        Ok(())
    }

    /// [`Self::push`] followed by [`Self::kick`].
    pub fn submit(&mut self, request: Request, token: u64) -> Result<Push> {
        let pushed = self.push(request, token)?;
        self.kick()?;
        Ok(pushed)
    }

    /// Moves every completion the device had returned when this call looked at the used ring
    /// into `out`, without blocking. Returns how many were added.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        let before = out.len();
        while let Some(c) = self.ready.pop_front() {
            out.push(c);
        }
        // Only what the device had returned when we looked: a reap that chased a device still
        // adding entries would hand back a whole batch late, and the device, finding no new
        // requests when it finishes, would go idle and need a kick.
        for _ in 0..self.ring.used_ready()? {
            let Some((c, _)) = self.pop_one()? else { break };
            out.push(c);
        }
        let n = out.len() - before;
        if self.setup.completions == Completions::Poll && n > 0 {
            // Keep the device's signal point away from where we now read.
            self.ring.suppress_interrupts()?;
        }
        Ok(n)
    }

    fn pop_one(&mut self) -> Result<Option<(Completion, bool)>> {
        let Some(used) = self.ring.pop_used()? else {
            return Ok(None);
        };
        let f = self.in_flight[usize::from(used.head)]
            .take()
            .ok_or_else(|| Error::DeviceBroken(format!("no request at head {}", used.head)))?;
        let status: u8 = self.mem.read_obj(self.setup.area.status(f.slot))?;
        self.free_slots.push(f.slot);
        Ok(Some((
            Completion {
                token: f.token,
                request_type: f.request_type,
                offset: f.offset,
                status: Status::from_raw(status),
                written: used.len,
                buffers: f.buffers,
            },
            f.sync,
        )))
    }

    /// Blocks until at least one completion is available, then reaps like [`Self::reap`].
    /// Returns 0 only if nothing is in flight.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        loop {
            let n = self.reap(out)?;
            if n > 0 || self.in_flight() == 0 {
                return Ok(n);
            }
            self.wait_for_used()?;
        }
    }

    /// Returns once the used ring has something (or the server is gone).
    fn wait_for_used(&mut self) -> Result<()> {
        match self.setup.completions {
            Completions::Poll => {
                let since = Instant::now();
                let mut last_check = since;
                let mut spins = 0u32;
                while !self.ring.has_used()? {
                    // Flat out briefly, then yield between checks: a polling server on the same
                    // CPU (keeld with poll_us on a small machine) must get to run, or every
                    // request waits for the end of our time slice.
                    if since.elapsed() < PURE_SPIN {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(1024) && last_check.elapsed().as_millis() >= 100 {
                        self.doorbell.check_hangup()?;
                        last_check = Instant::now();
                    }
                }
                Ok(())
            }
            Completions::Interrupt => loop {
                if self.ring.enable_interrupts()? {
                    return Ok(());
                }
                self.doorbell.wait_call(None)?;
            },
        }
    }

    /// Submits one request and blocks until it completes, keeping completions of other
    /// requests for the next [`Self::reap`]. Fails with [`Error::Io`] on a device error.
    pub fn run(&mut self, request: Request) -> Result<Completion> {
        let mut request = request;
        loop {
            match self.push_inner(request, 0, true)? {
                Push::Queued => break,
                Push::Full(back) => {
                    request = back;
                    self.kick()?;
                    self.wait_for_used()?;
                    self.stash_completions()?;
                }
            }
        }
        self.kick()?;
        loop {
            self.wait_for_used()?;
            while let Some((c, sync)) = self.pop_one()? {
                if sync {
                    c.result()?;
                    return Ok(c);
                }
                self.ready.push_back(c);
            }
        }
    }

    fn stash_completions(&mut self) -> Result<()> {
        while let Some((c, _)) = self.pop_one()? {
            self.ready.push_back(c);
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub fn read_vec(&mut self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let buf = self.alloc(len)?;
        let done = self.run(Request::Read {
            offset,
            buffers: vec![buf],
        })?;
        let mut out = Vec::with_capacity(len);
        for b in &done.buffers {
            out.extend_from_slice(&b.to_vec()?);
        }
        Ok(out)
    }

    /// Writes `data` at `offset`.
    pub fn write_slice(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut buf = self.alloc(data.len())?;
        buf.write_at(0, data)?;
        self.run(Request::Write {
            offset,
            buffers: vec![buf],
        })?;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.run(Request::Flush).map(|_| ())
    }

    pub fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        self.run(Request::Discard {
            ranges: vec![ByteRange { offset, len }],
        })
        .map(|_| ())
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.run(Request::WriteZeroes {
            ranges: vec![ByteRange { offset, len }],
            unmap,
        })
        .map(|_| ())
    }

    /// The device serial (GET_ID), without trailing NULs.
    pub fn get_id(&mut self) -> Result<String> {
        let buf = self.alloc(keel_protocol::ID_BYTES)?;
        let done = self.run(Request::GetId { buffer: buf })?;
        let raw = done
            .buffers
            .first()
            .map(|b| b.to_vec())
            .transpose()?
            .unwrap_or_default();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }
}

fn request_buffers(r: &Request) -> impl Iterator<Item = &Buffer> {
    let (many, one): (&[Buffer], Option<&Buffer>) = match r {
        Request::Read { buffers, .. } | Request::Write { buffers, .. } => (buffers, None),
        Request::GetId { buffer } => (&[], Some(buffer)),
        _ => (&[], None),
    };
    many.iter().chain(one)
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The device may still write into buffers of unfinished requests: never reuse them.
        for f in self.in_flight.iter_mut().filter_map(Option::take) {
            for b in f.buffers {
                b.leak();
            }
        }
    }
}

#[cfg(test)]
mod tests;
